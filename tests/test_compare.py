"""``tlbench compare``: paired differences between stores, against scipy and statsmodels; what else
differs; the refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from tlbench.core.errors import ConfigError
from tlbench.reports import stats
from tlbench.reports.compare import Side, compare, tables, write_comparison
from tlbench.reports.results import Results
from tlbench.reports.tables import to_markdown
from tlbench.store.records import Protocol


def runs(shift: dict[str, float], *, seeds=range(6), noise=0.01, rng_seed=0, cells=None,
         fingerprint="f1") -> pd.DataFrame:
    """Runs of three cells; ``shift`` adds to a strategy's accuracy (the change being compared)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for task, strategy in cells or [("t1", "lp"), ("t1", "ft"), ("t2", "ft")]:
        for seed in seeds:
            base = 0.6 + 0.01 * seed  # seed effects shared by both stores: what pairing removes
            acc = base + shift.get(strategy, 0.0) + rng.normal(0, noise)
            rows.append({"suite": "s", "task": task, "backbone": "b", "strategy": strategy, "seed": seed,
                         "test_accuracy": acc, "shifted_test_accuracy": acc - 0.1, "split_fingerprint": fingerprint,
                         "suite_fingerprint": "x", "tlbench_version": "1", "strategy_origin": "tlbench"})
    return pd.DataFrame(rows)


def side(label: str, frame: pd.DataFrame, *, settings=None, sampler="TPESampler") -> Side:
    protocol = Protocol(budget=6, sampler=sampler, n_startup_trials=3, pruner="MedianPruner",
                        pruner_startup_trials=3, pruner_warmup_epochs=3, objective="val accuracy")
    return Side(label, Results(frame, pd.DataFrame(), pd.DataFrame(), protocol, settings=settings or {}))


def test_paired_differences_equal_scipy_and_statsmodels() -> None:
    a = runs({}, rng_seed=1)
    b = runs({"ft": 0.05}, rng_seed=2)
    result = compare([side("a", a), side("b", b)])
    test = result.frame[result.frame["metric"] == "test_accuracy"]
    assert len(test) == 3
    pvalues = []
    for r in test.to_dict("records"):
        x = a[(a["task"] == r["task"]) & (a["strategy"] == r["strategy"])].set_index("seed")["test_accuracy"]
        y = b[(b["task"] == r["task"]) & (b["strategy"] == r["strategy"])].set_index("seed")["test_accuracy"]
        assert r["n"] == 6 and math.isclose(r["diff"], (y - x).mean()) and math.isclose(r["mean"], y.mean())
        assert (r["low"], r["high"]) == stats.bootstrap_ci((y - x).to_numpy(), seed=0)
        pvalues.append(sps.ttest_rel(y, x).pvalue)
    assert np.allclose(test["p"], pvalues)
    assert np.allclose(test["p_holm"], multipletests(pvalues, method="holm")[1])
    verdicts = dict(zip(test["strategy"] + "/" + test["task"], test["significant"]))
    assert verdicts == {"lp/t1": False, "ft/t1": True, "ft/t2": True}  # +5 points on ft, nothing on lp
    text = to_markdown(tables(result)[0])
    assert "better" in text and "no significant difference" in text and "Holm-corrected over the 3 cells" in text


def test_only_shared_seeds_are_paired_and_cells_of_one_store_are_listed() -> None:
    a = runs({}, seeds=range(5))
    b = runs({}, seeds=range(2, 8), cells=[("t1", "lp"), ("t3", "ft")])
    result = compare([side("a", a), side("b", b)])
    assert list(result.frame["n"].unique()) == [3]  # seeds 2, 3, 4
    assert result.only == {"a, not b": ["t1 / b / ft", "t2 / b / ft"], "b, not a": ["t3 / b / ft"]}
    assert "Cells not in both stores" in "".join(to_markdown(t) for t in tables(result))


def test_a_constant_difference_and_no_difference() -> None:
    a = runs({}, noise=0.0)
    same = compare([side("a", a), side("b", a.copy())]).frame
    assert (same["diff"] == 0).all() and (same["p"] == 1.0).all() and not same["significant"].any()
    shifted = a.assign(test_accuracy=a["test_accuracy"] + 0.02)
    sure = compare([side("a", a), side("b", shifted)]).frame
    sure = sure[sure["metric"] == "test_accuracy"]
    assert (sure["p"] == 0.0).all() and sure["significant"].all()


def test_other_settings_protocol_and_code_are_listed_field_by_field() -> None:
    a, b = runs({}), runs({}).assign(tlbench_version="2")
    result = compare([side("a", a, settings={"training": {"epochs": [2, 4], "batch_size": 32}}),
                      side("b", b, settings={"training": {"epochs": [3, 5], "batch_size": 32}}, sampler="RandomSampler")])
    assert ("settings", "training.epochs", ["[2, 4]", "[3, 5]"]) in result.differences
    assert ("protocol", "sampler", ["TPESampler", "RandomSampler"]) in result.differences
    assert ("provenance", "tlbench_version", ["1", "2"]) in result.differences
    assert not [d for d in result.differences if d[1] == "training.batch_size"]


def test_different_test_data_is_refused_in_one_line() -> None:
    a, b = runs({}), runs({}, fingerprint="f2")
    with pytest.raises(ConfigError, match=r"t1 / b / ft: a and b were tested on different data \(split fingerprint "
                                          r"f1 vs f2\)"):
        compare([side("a", a), side("b", b)])


def test_three_stores_against_the_first_and_the_outputs(tmp_path) -> None:
    a, b, c = runs({}, rng_seed=1), runs({"lp": 0.03}, rng_seed=2), runs({"ft": -0.03}, rng_seed=3)
    result = compare([side("a", a), side("b", b), side("c", c)])
    assert set(result.frame["label"]) == {"b", "c"} and set(result.frame["baseline"]) == {"a"}
    files = write_comparison(result, tmp_path, title="t")
    names = {f.relative_to(tmp_path).as_posix() for f in files}
    assert names == {"compare.parquet", "compare.csv", "compare.md", "compare.tex", "compare.html",
                     "figures/compare.png", "figures/compare.pdf"}
    back = pd.read_parquet(tmp_path / "compare.parquet")
    pd.testing.assert_frame_equal(back, result.frame, check_dtype=False)
    markdown = (tmp_path / "compare.md").read_text()
    assert markdown.count("vs a: test accuracy") == 2 and "<img" in (tmp_path / "compare.html").read_text()


def test_labels_and_command_line_refusals(tmp_path, capsys) -> None:
    from tlbench.cli.compare import split_label
    from tlbench.cli.main import main

    assert split_label("before=runs/x") == ("before", "runs/x")
    assert split_label("postgresql+psycopg2://me@db/tlbench") == (None, "postgresql+psycopg2://me@db/tlbench")
    odd = tmp_path / "wd=0"
    odd.mkdir()
    assert split_label(str(odd)) == (None, str(odd))  # an existing path is a path
    assert main(["compare", str(tmp_path)]) == 2
    assert "give at least two stores" in capsys.readouterr().err
    assert main(["compare", str(odd), str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no store there" in err[0]
    assert main(["compare", "runs/lnger", str(odd)]) == 2  # a typo: no such path, not a --storage message
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tlbench: error: compare: runs/lnger: no such folder or journal file (give a run's --out directory, "
                   "a journal file or a storage URL)"]
    assert main(["compare", "a&b=runs/x", "=runs/y"]) == 2
    assert "not LABEL=STORE with a plain label" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="labels must differ"):
        compare([side("a", runs({})), side("a", runs({}))])


def test_the_comparison_tex_compiles(tmp_path) -> None:
    """compare.tex through pdflatex: its captions hold "long_er − base_1", a Unicode minus pdflatex refused."""
    from helpers import compile_tables

    result = compare([side("base_1", runs({})), side("long_er", runs({"ft": 0.05}, rng_seed=4))])
    write_comparison(result, tmp_path, title="t", draw=False)
    compile_tables(tmp_path / "compare.tex", tmp_path)
