"""Tests of bilevel.bench: row logs (resume), tables, the method suite, speed and meta."""

import json
import os

import numpy as np
import pytest

from bilevel.bench import method_suite
from bilevel.bench.report import (
    RowLog,
    jsonable,
    markdown_table,
    markdown_to_rst,
    merge_results,
    write_rst_page,
)
from bilevel.demo import diabetes_split, ridge_exact_hypergrad


def test_rowlog_saves_each_row_and_resumes(tmp_path):
    path = tmp_path / "x.json"
    log = RowLog(path, "bench", {"quick": True})
    calls = []
    log.compute(["a"], lambda: calls.append("a") or {"v": np.float64(1.5)})
    assert json.loads(path.read_text())["rows"] == [{"v": 1.5, "key": ["a"]}]
    again = RowLog(path, "bench", {"quick": True}, resume=True)
    assert again.resumed == 1
    row = again.compute(["a"], lambda: calls.append("again") or {"v": 2.0})
    assert row["v"] == 1.5 and calls == ["a"]
    fresh = RowLog(path, "bench", {"quick": True}, resume=False)
    assert fresh.get(["a"]) is None


def test_rowlog_refuses_resume_from_other_config(tmp_path):
    path = tmp_path / "x.json"
    RowLog(path, "bench", {"quick": True}).add(["a"], {"v": 1})
    with pytest.raises(ValueError, match="quick=True there, False now"):
        RowLog(path, "bench", {"quick": False}, resume=True)
    with pytest.raises(ValueError, match="holds benchmark 'bench'"):
        RowLog(path, "other", {"quick": True}, resume=True)


def test_jsonable_and_merge():
    out = jsonable({"a": np.arange(3), "b": (np.int64(2), np.bool_(True))})
    assert out == {"a": [0, 1, 2], "b": [2, True]}
    merged = merge_results([
        {"rows": [1], "slopes": {"p": {"A": 1.0}}, "total_seconds": 1.0, "backend": "numpy"},
        {"rows": [2], "slopes": {"p": {"B": 0.0}}, "total_seconds": 2.5, "backend": "numpy"},
    ])
    assert merged == {"rows": [1, 2], "slopes": {"p": {"A": 1.0, "B": 0.0}},
                      "total_seconds": 3.5, "backend": "numpy"}


def test_markdown_table_and_rst():
    md = markdown_table([{"m": "A", "x": 0.5}, {"m": "B"}],
                        [("method", "m", None), ("value", "x", None)])
    assert md.splitlines() == ["| method | value |", "|---|---|", "| A | 0.5 |", "| B | — |"]
    rst = markdown_to_rst("Intro `code`.\n\n" + md)
    assert ".. list-table::" in rst and "   * - A" in rst and "``code``" in rst


def test_write_rst_page_lists_missing_benchmarks(tmp_path):
    (tmp_path / "speed.md").write_text("| a |\n|---|\n| 1 |\n")
    page = write_rst_page(tmp_path, tmp_path / "docs" / "benchmarks.rst")
    text = open(page).read()
    assert "Not run for this page: ``bilevel bench memory" in text
    assert "   * - 1" in text


def test_method_suite_labels_and_validation():
    suite = method_suite(50, 0.1)
    assert "Reverse(truncate=5)" in suite and "Adjoint(reconstruct)" in suite
    assert "Forward" not in method_suite(10, 0.1, forward=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        method_suite(0, 0.1)
    with pytest.raises(ValueError, match="lr must be (positive|a finite number > 0)"):
        method_suite(10, -1.0)


def test_exact_ridge_hypergrad_matches_finite_differences():
    X, y, Xv, yv = diabetes_split(0)
    lam = np.linspace(-2.0, 0.0, X.shape[1])

    def F(lam):
        A = X.T @ X / len(y) + np.diag(np.exp(lam))
        w = np.linalg.solve(A, X.T @ y / len(y))
        return 0.5 * np.mean((Xv @ w - yv) ** 2)

    eps = 1e-6
    fd = np.array([(F(lam + eps * e) - F(lam - eps * e)) / (2 * eps) for e in np.eye(len(lam))])
    np.testing.assert_allclose(ridge_exact_hypergrad(X, y, Xv, yv, lam), fd, rtol=1e-6,
                               atol=1e-10)


def test_speed_quick_rows_resume(tmp_path):
    from bilevel.bench import speed

    path = tmp_path / "speed.json"
    log = RowLog(path, "speed", {"quick": True})
    res = speed.run(True, methods=["Reverse", "Implicit(CG)"], problems=("ridge",),
                    primitives=False, log=log)
    assert [r["method"] for r in res["methods"]] == ["Reverse", "Implicit(CG)"]
    assert all(r["ratio"] > 0 and r["success"] for r in res["methods"])
    assert res["oracles"][0]["hvp_over_grad"] > 0
    before = json.loads(path.read_text())["rows"]
    again = speed.run(True, methods=["Reverse", "Implicit(CG)"], problems=("ridge",),
                      primitives=False, log=RowLog(path, "speed", {"quick": True}, resume=True))
    assert again["methods"] == res["methods"]
    assert json.loads(path.read_text())["rows"] == before
    png = speed.plot(res, os.fspath(tmp_path / "speed.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| ridge | Reverse |" in speed.to_markdown(res)


def test_meta_bench_rows():
    from bilevel.bench import meta

    res = meta.run(True, methods=["FOMAML", "MemoryReduced"])
    assert [(r["algorithm"], r["K"]) for r in res["rows"]] == [
        ("FOMAML", 2), ("FOMAML", 8), ("MemoryReduced", 2), ("MemoryReduced", 8)]
    assert all(r["peak_bytes"] > 0 and r["seconds"] > 0 for r in res["rows"])
    with pytest.raises(ValueError, match="unknown meta-learning algorithm"):
        meta.run(True, methods=["SuperMAML"])


def test_meta_bench_conv4_rows_against_torch_when_installed():
    from bilevel.bench import conv_peers, meta

    res = meta.run(True, methods=["conv4"])
    assert res["rows"] == [] and [r["K"] for r in res["conv4"]] == [1]
    row = res["conv4"][0]
    assert (row["hidden"], row["side"], row["meta_batch"]) == (8, 12, 2)
    assert row["seconds"]["bilevel"] > 0 and row["peak_bytes"] > 0
    assert row["peak_rss"]["bilevel"] >= 0  # resident-set growth; ~0 at this tiny size
    md = meta.to_markdown(res)
    assert "Conv4 MAML against PyTorch eager" in md and "| 1 |" in md
    if conv_peers.installed_peers():
        assert row["seconds"]["torch"] > 0 and row["peak_rss"]["torch"] >= 0
        assert row["time_ratio"]["torch"] > 0 and row["agree"]["torch"] < 1e-4
        assert "time bilevel / torch" in md
    with pytest.raises(ValueError, match="not an algorithm"):
        meta.algorithm("Conv4", 1)


def test_conv4_row_without_peers_is_bilevel_alone(monkeypatch):
    from bilevel.bench import conv_peers, meta

    monkeypatch.setattr(conv_peers, "installed_peers", lambda: [])
    res = meta.run(True, methods=["Conv4"])
    row = res["conv4"][0]
    assert set(row["seconds"]) == set(row["peak_rss"]) == {"bilevel"} and not row["agree"]
    assert "PyTorch not installed" in meta.to_markdown(res)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-11), ("float32", 1e-4)])
def test_torch_conv4_maml_meta_gradient_equals_bilevel(dtype, tol):
    pytest.importorskip("torch")
    from bilevel.bench.conv_peers import conv4_case, meta_gradient_fn
    from bilevel.bench.interleaved import relative_difference

    for K in (1, 2):
        case = conv4_case(hidden=4, side=12, T=2, K=K, dtype=dtype)
        ours, theirs = (meta_gradient_fn(fw, *case)() for fw in ("bilevel", "torch"))
        assert ours.dtype == theirs.dtype == np.dtype(dtype)
        assert relative_difference(theirs, ours) < tol


def test_peers_conv4_row_with_torch():
    pytest.importorskip("torch")
    from bilevel.bench import peers

    res = peers.run(quick=True, methods=["torch"], rows=["Conv4"])
    [row] = res["rows"]
    assert row["row"] == "Conv4 MAML K=1" and row["seconds"]["torch"] > 0
    assert row["agree"]["torch"] < 1e-4
