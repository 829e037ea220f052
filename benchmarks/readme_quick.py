"""The quick-suite tables and time of the README and the docs' getting-started page, from a run of
the code as it is.

    python benchmarks/readme_quick.py              # runs `tlbench run quick` cold, then rewrites both files
    python benchmarks/readme_quick.py RUN_DIR      # rewrites them from that run's report and stored timing
    python benchmarks/readme_quick.py --check RUN_DIR   # exit 1 (and the differences) if a file disagrees

The files mark what this script owns with HTML comments: ``<!-- quick:test -->`` (the test
accuracy table), ``<!-- quick:shifted -->`` (the shifted-test table) and ``<!-- quick:time -->``
(the run's wall time and where it went), each closed by ``<!-- /quick:NAME -->``. The README holds
the test table and the time; ``docs/getting-started.md`` all three. The prose around them is the
author's: read it again after a rewrite. ``benchmarks/test_bench_quick_suite.py`` checks that a
fresh cold run gives exactly these tables.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
FILES = (README, GETTING_STARTED)  # every file with quick blocks; together they hold all three
HEADINGS = {"test": "**Test accuracy (%)**", "shifted": "**Shifted-test (out-of-distribution) accuracy (%)**"}


def tables_of(table_md: str) -> dict[str, str]:
    """The test and shifted-test tables of a report's ``table.md`` (the Markdown table lines only)."""
    out = {}
    for name, heading in HEADINGS.items():
        rest = table_md.split(heading, 1)[1]
        lines = [ln for ln in rest.strip().splitlines()]
        out[name] = "\n".join(ln for ln in _leading_table(lines))
    return out


def _leading_table(lines: list[str]) -> list[str]:
    table = []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def time_text(timing: dict[str, float]) -> str:
    """The run's time in the README's words: the wall time and each phase's share."""
    from tlbench.core.phases import LABELS

    wall = timing["wall"]
    parts = [f"{LABELS.get(k, k)} {v:.0f} s" for k, v in timing.items()
             if k not in ("wall", "worker", "ended") and isinstance(v, (int, float)) and v >= 0.5]
    return (f"**{wall:.0f} s** ({wall / 60:.1f} minutes) from a cold cache on {os.cpu_count()} CPU cores: "
            + ", ".join(parts) + f" (everything else {100 * timing['other'] / wall:.0f}% of the wall time)")


def blocks(readme: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"<!-- quick:(\w+) -->\n(.*?)<!-- /quick:\1 -->",
                                                                readme, flags=re.S)}


def rewrite(readme: str, new: dict[str, str], file: str = "README.md") -> str:
    for name, text in new.items():
        pattern = re.compile(rf"(<!-- quick:{name} -->\n).*?(<!-- /quick:{name} -->)", flags=re.S)
        if not pattern.search(readme):
            raise SystemExit(f"{file}: no <!-- quick:{name} --> block")
        readme = pattern.sub(lambda m, text=text: m.group(1) + text + "\n" + m.group(2), readme)
    return readme


def from_run(run_dir: Path) -> dict[str, str]:
    """The README's blocks from a run folder: its report's tables, its store's last timing."""
    from tlbench.store.opening import open_storage
    from tlbench.store.progress import stored_timings

    new = tables_of((run_dir / "table.md").read_text())
    timings = stored_timings(open_storage(None, run_dir), "quick")
    if timings:
        new["time"] = time_text(timings[-1])
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the README disagrees")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:
        from tlbench.cli.main import main as tlbench

        run_dir = Path(tempfile.mkdtemp(prefix="tlbench-quick-")) / "out"
        os.environ["TLBENCH_CACHE"] = str(run_dir.parent / "cache")  # cold: pretraining included
        if tlbench(["run", "quick", "--out", str(run_dir)]) != 0:
            return 1
    new = from_run(run_dir)
    if args.check:
        differ = 0
        for path in FILES:
            old = blocks(path.read_text())
            for name in ("test", "shifted"):
                if name in old and old[name] != new[name]:
                    differ += 1
                    print(f"{path.relative_to(ROOT)}'s {name} table differs from {run_dir}:\n--- file\n{old[name]}"
                          f"\n--- run\n{new[name]}")
        return 1 if differ else 0
    for path in FILES:
        text = path.read_text()
        mine = {name: value for name, value in new.items() if name in blocks(text)}
        path.write_text(rewrite(text, mine, str(path.relative_to(ROOT))))
        print(f"{path.relative_to(ROOT)}: rewrote {', '.join(mine)} from {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
