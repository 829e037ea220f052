"""The image cache: images decoded once into memory-mapped uint8 entries and read back as the
file path reads them (exactly where preprocessing is deterministic, in distribution for random
resized crops); keys that follow the files, the preprocessing and the code; corrupt, partial
and concurrent entries; the disk limit; and a run that records how its inputs were produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from tlbench.core.errors import ConfigError, UnreadableData
from tlbench.data.imagecache import ImageCache, StoredForm, crop_boxes, parse_size
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading, Reader, sequential
from tlbench.data.views import ImageView

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def write_images(root: Path, n: int = 40, *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ()) -> None:
    """``root/c<k>/<i>.{png,jpg}``: sizes vary (landscape and portrait), some grayscale, one
    16-bit PNG, one palette image, one RGBA."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)] if sizes else (24 + 7 * (i % 5), 20 + 5 * (i % 3))
        small = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
        if i == 5:
            Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / f"{i}.png")
        elif i == 6:
            Image.fromarray(pixels).convert("P").save(folder / f"{i}.png")
        elif i == 7:
            Image.fromarray(pixels).convert("RGBA").save(folder / f"{i}.png")
        elif i % 4 == 3:
            Image.fromarray(pixels[..., 0], "L").save(folder / f"{i}.png")
        else:
            Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}", quality=90)


def folder_view(root: Path, preprocess: Preprocess, augment: str = "none") -> ImageView:
    import torchvision

    from tlbench.suites.images import identity_of

    ds = torchvision.datasets.ImageFolder(str(root))
    return ImageView(ds, torch.arange(len(ds)), f"folder:{identity_of(ds, root)}").bound(preprocess, augment)


def read(view: ImageView, *, cache: ImageCache | None = None, seed: int = 0, batch: int = 16,
         order: list[torch.Tensor] | None = None, seen: set[str] | None = None) -> torch.Tensor:
    reader = Reader(view, device=CPU, loading=Loading(images=cache, seen=seen), train=True, seed=seed)
    batches = order or sequential(len(view), batch)
    out = torch.empty((len(view), *view.shape[1:]))
    for idx, xb in zip(batches, reader(batches)):
        out[idx] = xb
    return out


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_images(tmp_path / "imgs")
    return tmp_path / "imgs"


PRE = Preprocess(resize=20, crop=16, interpolation="bilinear")


# --------------------------------------------------------------------------- deterministic: exact


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_deterministic_preprocessing_reads_exactly_what_the_files_give(images: Path, tmp_path: Path,
                                                                       augment: str) -> None:
    view = folder_view(images, PRE, augment)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    from_files, from_cache = read(view, seed=3), read(view, cache=cache, seed=3)
    assert torch.equal(from_files, from_cache)  # bit for bit: same uint8 pixels, same flips, same normalisation
    assert cache.summary().built == 1
    # and the stored uint8 pixels are torchvision's pipeline on the PIL image, 0 mismatched
    from torchvision.transforms import v2

    from tlbench.data.views import read_rgb

    entry = cache.open(view, augment).entry  # type: ignore[union-attr]
    stored = entry.images().permute(0, 3, 1, 2)
    reference = v2.Compose([v2.Resize(20, antialias=True), v2.CenterCrop(16), v2.ToImage()])
    want = torch.stack([reference(read_rgb(view.source, i)) for i in range(len(view))])
    assert int((stored != want).sum()) == 0
    # the float tensors the model sees equal the whole reference pipeline's to float tolerance
    if augment == "none":
        full = torch.stack([PRE.transform()(read_rgb(view.source, i)) for i in range(len(view))])
        assert torch.allclose(from_cache, full, atol=2e-6, rtol=0)


def test_a_second_reader_reuses_the_entry_across_processes(images: Path, tmp_path: Path) -> None:
    view = folder_view(images, PRE)
    first = ImageCache(tmp_path / "cache", log=lambda line: None)
    read(view, cache=first)
    again = ImageCache(tmp_path / "cache", log=lambda line: None)  # a new process's cache object
    seen: set[str] = set()
    read(view, cache=again, seen=seen)
    assert again.summary().built == 0 and seen == {"cache"}
    assert again.summary().images_read == len(view)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from tlbench.data.views import to_rgb

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 … 65,520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode in ("I;16", "I")
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (64, 64, 3)
    want = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], want) and np.array_equal(rgb[..., 2], want)
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") clips ~99% of this ramp to white


@pytest.mark.parametrize("cached", [False, True], ids=["files", "cache"])
def test_sixteen_bit_pngs_in_an_image_folder_reach_the_model_scaled(tmp_path: Path, cached: bool) -> None:
    """Through the whole path a suite uses (``image_folder`` → task → Reader), not only
    ``to_rgb``: torchvision's folder loader converts to RGB itself, which clips."""
    from tlbench.data.preprocess import normalize
    from tlbench.suites.datasets import DataAccess
    from tlbench.suites.schema import SplitSpec, TaskSpec
    from tlbench.suites.splitting import build_task

    rng = np.random.default_rng(0)
    values = {}
    for label in ("a", "b"):
        (tmp_path / "f" / label).mkdir(parents=True)
        for i in range(4):
            deep = (rng.integers(0, 256, (8, 8)).astype(np.uint16) * 257)
            Image.fromarray(deep).save(tmp_path / "f" / label / f"{i}.png")
            values[str(tmp_path / "f" / label / f"{i}.png")] = deep
    spec = TaskSpec(dataset="image_folder", args={"path": "f"}, split=SplitSpec(val_per_class=1, test_fraction=0.25))
    task = build_task("deep", spec, where="t", data=DataAccess(tmp_path)).bound(Preprocess().at("native"))
    view = task.train.x
    cache = ImageCache(tmp_path / "cache", log=lambda line: None) if cached else None
    x = read(view, cache=cache)
    files = [view.source.samples[int(i)][0] for i in view.indices]
    want = torch.stack([torch.from_numpy((values[f] // 257).astype(np.uint8)).expand(3, 8, 8) for f in files])
    assert torch.equal(x, normalize(want, view.preprocess))


# --------------------------------------------------------------------------- random resized crops


def test_crop_boxes_follow_random_resized_crop_distribution() -> None:
    from torchvision.transforms import v2

    height, width, n = 375, 500, 4000
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = np.array([v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                   dtype=np.float64)
    got = crop_boxes(np.tile([[height, width]], (n, 1)), list(range(10_000, 10_000 + n))).astype(np.float64)
    for name, f in (("scale", lambda b: b[:, 2] * b[:, 3] / (height * width)),
                    ("log aspect", lambda b: np.log(b[:, 3] / b[:, 2])),
                    ("top", lambda b: b[:, 0] / np.maximum(1, height - b[:, 2])),
                    ("left", lambda b: b[:, 1] / np.maximum(1, width - b[:, 3]))):
        assert stats.ks_2samp(f(ref), f(got)).pvalue > 1e-3, name
    assert (got[:, 0] + got[:, 2] <= height).all() and (got[:, 1] + got[:, 3] <= width).all()
    # a strip too thin for any attempt falls back to torchvision's clamped-ratio centre crop
    strip = crop_boxes(np.array([[8, 400]]), [1])[0]
    assert strip.tolist() == list(v2.RandomResizedCrop.get_params(torch.zeros(3, 8, 400), [0.99, 1.0], [3 / 4, 4 / 3]))


def test_random_crops_are_seeded_per_example_not_per_batch(images: Path, tmp_path: Path) -> None:
    view = folder_view(images, PRE, "crop_flip")
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    a = read(view, cache=cache, seed=1, batch=16)
    shuffled = list(torch.randperm(len(view)).split(7))  # other batches, other order, same examples
    b = read(view, cache=cache, seed=1, order=shuffled)
    assert torch.equal(a, b)
    assert not torch.equal(a, read(view, cache=cache, seed=2))
    assert a.shape == (len(view), 3, 16, 16)
    entry = cache.open(view, "crop_flip").entry  # type: ignore[union-attr]
    assert not entry.fixed and entry.shapes.min() >= 1
    bound = StoredForm.of(PRE, "crop_flip").bound
    assert bound == 24 and (entry.shapes.min(1) <= bound).all()  # shorter side bounded, never enlarged


def test_random_crops_match_the_file_path_in_distribution(tmp_path: Path) -> None:
    """Per-pixel means and spreads of many crops of one image: cache path vs torchvision's
    RandomResizedCrop on the PIL image (the file path)."""
    root = tmp_path / "one"
    write_images(root, 4, sizes=((48, 36),))
    pre = Preprocess(resize=20, crop=16)
    view = folder_view(root, pre, "crop_flip")[torch.zeros(600, dtype=torch.int64)]  # one image, 600 times
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    files, cached = read(view, seed=5, batch=100), read(view, cache=cache, seed=5, batch=100)
    assert abs(float(files.mean() - cached.mean())) < 0.05
    assert abs(float(files.std() - cached.std())) < 0.05
    assert float((files.mean(0) - cached.mean(0)).abs().mean()) < 0.1  # the average crop looks alike


# --------------------------------------------------------------------------- keys, corruption, limits


def test_the_code_that_opens_a_folders_images_is_part_of_the_key(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An image folder's loader (how it opens 16-bit files, say) lives in suites/images.py, not in
    the cache's own modules: editing it must not leave entries it decoded differently."""
    from tlbench.data import imagecache
    from tlbench.suites.datasets import DataAccess
    from tlbench.suites.schema import SplitSpec, TaskSpec
    from tlbench.suites.splitting import build_task

    write_images(tmp_path / "f", 12)
    spec = TaskSpec(dataset="image_folder", args={"path": "f"}, split=SplitSpec(val_per_class=1, test_fraction=0.25))
    view = build_task("t", spec, where="t", data=DataAccess(tmp_path)).bound(PRE).train.x
    import tlbench.suites.images as folders

    assert imagecache.source_code(view.source) == [folders.__name__]
    before = ImageCache.key(view, StoredForm.of(PRE, "none"))
    read_source = imagecache._module_source
    monkeypatch.setattr(imagecache, "_module_source",
                        lambda name: b"# edited" if name == folders.__name__ else read_source(name))
    assert ImageCache.key(view, StoredForm.of(PRE, "none")) != before


def test_changed_file_or_preprocessing_makes_a_new_entry(images: Path, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    view = folder_view(images, PRE)
    read(view, cache=cache)
    key = cache.open(view, "none").entry.key  # type: ignore[union-attr]
    assert cache.open(folder_view(images, Preprocess(24, 16)), "none").entry.key != key  # type: ignore[union-attr]
    target = next(images.glob("c0/*.png"))
    Image.new("RGB", (30, 30), (255, 0, 0)).save(target)
    os.utime(target, ns=(1, 1))
    changed = folder_view(images, PRE)
    fresh = ImageCache(tmp_path / "cache", log=lambda line: None)
    x = read(changed, cache=fresh)
    assert fresh.summary().built == 1 and fresh.open(changed, "none").entry.key != key  # type: ignore[union-attr]
    assert torch.equal(x, read(changed))  # the new pixels, not the old entry's


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "garbage index", "no index"])
def test_a_corrupt_entry_is_rebuilt_never_trusted(images: Path, tmp_path: Path, damage: str) -> None:
    view = folder_view(images, PRE)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    good = read(view, cache=cache)
    data, index = cache.paths(cache.open(view, "none").entry.key)  # type: ignore[union-attr]
    if damage == "flip a byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "garbage index":
        index.write_text("{not json")
    else:
        index.unlink()
    lines: list[str] = []
    fresh = ImageCache(tmp_path / "cache", log=lines.append)
    assert torch.equal(read(view, cache=fresh), good)
    assert fresh.summary().built == 1
    if damage != "no index":  # a missing index is a missing entry; the others say they rebuild
        assert any("is corrupt" in line and "rebuilding" in line for line in lines), lines
    assert json.loads(index.read_text())["nbytes"] == data.stat().st_size


def _flip(path: Path, where: str) -> None:
    """Flips one byte of ``path`` in place (same inode), in the middle or at the end."""
    size = path.stat().st_size
    at = size // 2 if where == "middle" else size - 1
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x5A]))


def _counting_digests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    import tlbench.data.imagecache as imagecache

    calls: list[Path] = []
    real = imagecache._sha256
    monkeypatch.setattr(imagecache, "_sha256", lambda path: (calls.append(path), real(path))[1])
    return calls


def test_a_checked_entry_is_trusted_through_its_seal_without_rehashing(images: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    view = folder_view(images, PRE)
    good = read(view, cache=ImageCache(tmp_path / "cache", log=lambda line: None))
    calls = _counting_digests(monkeypatch)
    later = ImageCache(tmp_path / "cache", log=lambda line: None)  # another process: its entries are unchecked
    assert torch.equal(read(view, cache=later), good)
    assert calls == [] and later.summary().sealed_opens == 1 and later.summary().full_checks == 0
    on_demand = ImageCache(tmp_path / "cache", log=lambda line: None, verify="full")
    assert torch.equal(read(view, cache=on_demand), good)
    assert len(calls) == 1 and on_demand.summary().full_checks == 1
    with pytest.raises(ConfigError, match="verify: 'sometimes' is not one of: seal, full"):
        ImageCache(tmp_path / "cache", verify="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["middle", "end"])
@pytest.mark.parametrize("metadata", ["changed by the write", "restored, as by bit rot"])
def test_a_sealed_entry_with_a_flipped_byte_is_still_caught(images: Path, tmp_path: Path, where: str,
                                                            metadata: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tlbench.data.imagecache as imagecache

    monkeypatch.setattr(imagecache, "SEAL_WINDOW", 256)  # so the windows are a sample of this small entry, not all
    view = folder_view(images, PRE)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    good = read(view, cache=cache)
    key = cache.open(view, "none").entry.key  # type: ignore[union-attr]
    data, seal = cache.paths(key)[0], cache.seal_path(key)
    assert seal.is_file() and 33 * 256 < data.stat().st_size
    _flip(data, where)
    if metadata != "changed by the write":  # the seal's metadata made to match: only the sampled bytes can tell
        stored = json.loads(seal.read_text())
        st = data.stat()
        stored.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
        seal.write_text(json.dumps(stored))
    lines: list[str] = []
    fresh = ImageCache(tmp_path / "cache", log=lines.append)
    assert torch.equal(read(view, cache=fresh), good)  # rebuilt from the files, not read corrupt
    assert fresh.summary().built == 1 and any("is corrupt" in line for line in lines), lines
    assert json.loads(seal.read_text())["inode"] == data.stat().st_ino  # the rebuilt entry is sealed anew


def test_a_flip_between_the_sampled_windows_needs_the_full_check(images: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The seal's limit, stated: bytes changed under unchanged metadata outside every window
    pass the seal; ``verify="full"`` catches them."""
    import tlbench.data.imagecache as imagecache

    monkeypatch.setattr(imagecache, "SEAL_WINDOW", 64)
    view = folder_view(images, PRE)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    good = read(view, cache=cache)
    key = cache.open(view, "none").entry.key  # type: ignore[union-attr]
    data, seal = cache.paths(key)[0], cache.seal_path(key)
    sampled = [range(o, o + 64) for o in imagecache._windows(data.stat().st_size)]
    at = next(i for i in range(data.stat().st_size) if not any(i in w for w in sampled))
    stat = data.stat()
    with open(data, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 1]))
    stored = json.loads(seal.read_text())
    st = data.stat()
    assert st.st_ino == stat.st_ino
    stored.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    seal.write_text(json.dumps(stored))
    assert not torch.equal(read(view, cache=ImageCache(tmp_path / "cache", log=lambda line: None)), good)
    lines: list[str] = []
    assert torch.equal(read(view, cache=ImageCache(tmp_path / "cache", log=lines.append, verify="full")), good)
    assert any("is corrupt" in line for line in lines), lines


def test_the_disk_limit_falls_back_to_the_files_with_one_line(images: Path, tmp_path: Path) -> None:
    view = folder_view(images, PRE)
    lines: list[str] = []
    cache = ImageCache(tmp_path / "cache", limit=1000, log=lines.append)
    seen: set[str] = set()
    x = read(view, cache=cache, seen=seen)
    assert seen == {"files"} and torch.equal(x, read(view))
    assert len(lines) == 1 and "not caching" in lines[0] and "--image-cache-limit" in lines[0]
    assert not list((tmp_path / "cache").glob("*/*.u8"))
    # crossing the limit while building (the bounded form's size is only known then): no partial entry
    big = folder_view(images, PRE, "crop_flip")
    lines.clear()
    limited = ImageCache(tmp_path / "cache2", limit=40 * 3 * 24 * 24 + 500, log=lines.append)
    read(big, cache=limited)
    assert len(lines) == 1 and "would take the cache over" in lines[0], lines  # no "decoding …" line first
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.suffix in (".u8", ".json", ".tmp")]


def test_sizes_parse_and_bad_ones_are_refused() -> None:
    assert parse_size("20GB") == 20 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(ConfigError, match="--image-cache-limit 'lots'"):
        parse_size("lots")


def test_an_unreadable_image_leaves_no_entry(images: Path, tmp_path: Path) -> None:
    (images / "c1" / "broken.png").write_bytes(b"not a png")
    view = folder_view(images, PRE)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    with pytest.raises(UnreadableData, match="broken.png"):
        read(view, cache=cache)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".u8", ".json", ".tmp")]


BUILD = """
import sys, torch, torchvision
from tlbench.data.preprocess import Preprocess
from tlbench.data.reader import Loading, Reader, sequential
from tlbench.data.views import ImageView
from tlbench.data.imagecache import ImageCache
from tlbench.suites.images import identity_of
from pathlib import Path
root = Path(sys.argv[1])
ds = torchvision.datasets.ImageFolder(str(root))
view = ImageView(ds, torch.arange(len(ds)), "folder:" + identity_of(ds, root)).bound(Preprocess(20, 16))
cache = ImageCache(Path(sys.argv[2]), log=lambda line: print(line, flush=True))
x = torch.cat(list(Reader(view, device=torch.device("cpu"), loading=Loading(images=cache))(sequential(len(view), 16))))
print("SUM", float(x.double().sum()), "BUILT", cache.summary().built)
"""


@pytest.mark.slow
def test_two_processes_building_one_entry_build_it_once(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 400, seed=2)  # enough images that the builds overlap
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "imgs"), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    finals = [o[0].strip().splitlines()[-1].split() for o in outs]
    assert finals[0][1] == finals[1][1]  # the same pixels
    assert sorted(int(f[3]) for f in finals) == [0, 1]  # one built it, the other waited and read it
    assert len(list((tmp_path / "cache").glob("*/*.u8"))) == 1


# --------------------------------------------------------------------------- native size


def test_native_size_keeps_every_pixel(tmp_path: Path) -> None:
    write_images(tmp_path / "n", 12, sizes=((32, 32),))
    pre = Preprocess().at("native")
    view = folder_view(tmp_path / "n", pre)
    assert view.shape[1:] == (3, 32, 32)
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    x = read(view, cache=cache)
    assert torch.equal(x, read(view))
    from tlbench.data.preprocess import normalize
    from tlbench.data.views import read_rgb

    raw = torch.stack([torch.from_numpy(np.array(read_rgb(view.source, i))).permute(2, 0, 1) for i in range(12)])
    assert torch.equal(x, normalize(raw, pre))  # no resize, no crop
    crops = read(view.bound(pre, "crop_flip"), cache=cache, seed=1)
    assert crops.shape == (12, 3, 32, 32)


@pytest.mark.parametrize("how", ["cache", "files", "two workers"])
def test_native_size_needs_one_size(tmp_path: Path, how: str) -> None:
    write_images(tmp_path / "n", 12)  # mixed sizes: the second image (c0/4.png) differs from the first
    view = folder_view(tmp_path / "n", Preprocess().at("native"))
    cache = ImageCache(tmp_path / "cache", log=lambda line: None) if how == "cache" else None
    with pytest.raises(ConfigError) as err:  # the cache is built as the Reader opens it
        reader = Reader(view, device=CPU, loading=Loading(images=cache, workers=2 if how == "two workers" else 0))
        for _ in reader(sequential(len(view), 4)):
            pass
    message = str(err.value)
    assert "\n" not in message and message.startswith("image_size: native needs images of one size; "), message
    assert f"{tmp_path / 'n' / 'c0' / '4.png'} is 52x25, but the first, {tmp_path / 'n' / 'c0' / '0.png'}, is " \
           f"24x20 (width x height); set image_size to a number of pixels instead" in message  # both images named


# --------------------------------------------------------------------------- a run


def _suite(root: Path, augment: str) -> None:
    from test_images import write_folder

    write_folder(root / "data" / "tr", ["a", "b", "c"], 10)
    write_folder(root / "data" / "te", ["a", "b", "c"], 4, seed=1)
    (root / "s.yaml").write_text(textwrap.dedent(f"""
        name: cached
        trials: 1
        seeds: 2
        strategies: [full_finetune]
        training: {{epochs: [1, 2], batch_size: 8}}
        data_root: data
        tasks:
          shapes:
            dataset: image_folder
            args: {{path: tr, test: te}}
            split: {{val_per_class: 2}}
            image_size: 16
            augment: {augment}
            backbones: [net]
        backbones:
          net: {{arch: cnn2d, args: {{in_channels: 3, width: 8, depth: 2}}}}
    """))


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TLBENCH_DATA"}
    return subprocess.run([sys.executable, "-m", "tlbench.cli", "run", "s.yaml", "--cache-dir", "cache",
                           "--report", "none", "--threads", "1", *args], capture_output=True, text=True, cwd=root,
                          timeout=600, env=env)


@pytest.mark.slow
def test_a_run_reads_the_cache_by_default_and_records_it(tmp_path: Path) -> None:
    import pandas as pd

    from tlbench.store.opening import open_existing_storage
    from tlbench.store.records import load_runs

    _suite(tmp_path, "flip")
    cached = _run(tmp_path, "--out", "a")
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert "image cache: " in cached.stderr and "decoding" in cached.stderr
    summary = [line for line in cached.stderr.splitlines() if "images from it" in line]
    assert len(summary) == 1 and "decoding saved" in summary[0], cached.stderr
    files = _run(tmp_path, "--out", "b", "--image-cache", "off")
    assert files.returncode == 0, files.stderr[-2000:]
    assert "image cache: off" in files.stderr

    def runs(out: str) -> pd.DataFrame:
        return load_runs(open_existing_storage(str(tmp_path / out / "store.journal")), "cached").sort_values("seed")

    a, b = runs("a"), runs("b")
    assert set(a["image_inputs"]) == {"cache"} and set(b["image_inputs"]) == {"files"}
    # flip is deterministic given the seed: the same inputs, so the same runs
    assert a["test_accuracy"].tolist() == b["test_accuracy"].tolist()
    assert a["params"].astype(str).tolist() == b["params"].astype(str).tolist()


@pytest.mark.slow
def test_bad_image_cache_options_are_one_line(tmp_path: Path) -> None:
    _suite(tmp_path, "none")
    (tmp_path / "afile").write_text("x")
    r = _run(tmp_path, "--out", "o", "--image-cache", str(tmp_path / "afile" / "images"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--image-cache" in r.stderr and "not a directory" in r.stderr
    r = _run(tmp_path, "--out", "o", "--image-cache-limit", "huge")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--image-cache-limit" in r.stderr
    for share in ("2", "half"):
        r = _run(tmp_path, "--out", "o", "--image-cache-device-share", share)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "--image-cache-device-share" in r.stderr and f"between 0 and 0.9 (got {share!r})" in r.stderr
    r = _run(tmp_path, "--out", "o", "--image-cache-verify", "sometimes")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--image-cache-verify" in r.stderr and "'sometimes'" in r.stderr and "seal" in r.stderr and "full" in r.stderr


# --------------------------------------------------------------------------- output buffers


def test_an_output_buffer_is_reused_only_when_nothing_else_holds_it() -> None:
    from tlbench.data.preprocess import OutputPool

    shape = (2, 3, 4, 4)

    def handed_out_again(hold) -> bool:
        """Whether the pool hands a batch's memory out again while ``hold(batch)`` keeps
        something of it alive."""
        pool = OutputPool()
        batch = pool.get(shape, channels_last=False)
        ptr = batch.data_ptr()
        keep = hold(batch)
        del batch
        again = pool.get(shape, channels_last=False).data_ptr() == ptr
        del keep
        return again

    assert handed_out_again(lambda b: None)  # nothing holds it: reused
    assert not handed_out_again(lambda b: b)  # a variable
    assert not handed_out_again(lambda b: b[0])  # a view
    assert not handed_out_again(lambda b: b.numpy())  # an array over its memory
    assert not handed_out_again(lambda b: [b])  # a list of batches
    assert not handed_out_again(lambda b: torch.nn.Conv2d(3, 1, 1)(b))  # the graph saves the input
    pool = OutputPool()
    assert pool.get(shape, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_batches_kept_by_the_caller_are_never_overwritten(images: Path, tmp_path: Path) -> None:
    view = folder_view(images, PRE, "flip")
    cache = ImageCache(tmp_path / "cache", log=lambda line: None)
    for loading in (Loading(images=cache), Loading()):
        batches = sequential(len(view), 8)
        kept = list(Reader(view, device=CPU, loading=loading, train=True, seed=1)(batches))
        copied = [xb.clone() for xb in Reader(view, device=CPU, loading=loading, train=True, seed=1)(batches)]
        assert len({xb.data_ptr() for xb in kept}) == len(kept)
        assert all(torch.equal(a, b) for a, b in zip(kept, copied))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_the_cpu_crop_is_torchvisions_resized_crop(mode: str) -> None:
    """The CPU path calls torch's uint8 resize directly (torchvision's dispatch costs ~0.1 ms a
    crop); it must give torchvision's bytes for downscaled and upscaled crops alike."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from tlbench.data.imagecache import cpu_resized_crop

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 57, 83, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    for _ in range(40):
        h, w = int(rng.integers(1, 58)), int(rng.integers(1, 84))
        top, left = int(rng.integers(0, 58 - h)), int(rng.integers(0, 84 - w))
        size = (int(rng.integers(4, 96)), int(rng.integers(4, 96)))
        ours = cpu_resized_crop(image, top, left, h, w, size, mode)
        theirs = F.resized_crop(image, top, left, h, w, list(size), interpolation=InterpolationMode(mode),
                                antialias=True)
        assert torch.equal(ours, theirs), (top, left, h, w, size)
