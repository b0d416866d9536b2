"""Tests of the ``bilevel`` command: help, the quick demo, bench subcommands, errors."""

import json
import os

import pytest

from bilevel import backend
from bilevel.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("demo", "bench", "meta-train", "meta-eval"):
        assert name in text
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for name in ("memory", "accuracy", "speed", "meta"):
        assert name in text


@pytest.mark.skipif(backend.available("cupy"), reason="a GPU is present")
def test_cupy_without_gpu_is_a_clean_error(capsys, tmp_path):
    code = main(["demo", "--quick", "--backend", "cupy", "--out", os.fspath(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("bilevel: error: the 'cupy' backend is not available")
    assert "Traceback" not in err and 'pip install "bilevel[gpu]"' in err


@pytest.mark.slow  # integration run (seconds)
def test_demo_quick_writes_report_and_resumes(tmp_path, capsys):
    out = os.fspath(tmp_path / "demo")
    assert main(["demo", "--quick", "--no-progress", "--out", out]) == 0
    files = set(os.listdir(out))
    assert {"ridge.json", "ridge.md", "ridge.png", "meta.json", "meta.png",
            "report.md"} <= files
    for png in ("ridge.png", "meta.png"):
        assert open(os.path.join(out, png), "rb").read(8) == PNG
    rows = json.load(open(os.path.join(out, "ridge.json")))["rows"]
    methods = {r["method"]: r for r in rows}
    assert {"Reverse", "Forward", "Implicit(CG)", "Historyless", "Adjoint(store)"} <= set(methods)
    # forward and reverse mode differentiate the same unrolled map: same error to rounding
    assert methods["Reverse"]["rel_error"] == pytest.approx(methods["Forward"]["rel_error"],
                                                            rel=1e-8)
    assert methods["Implicit(Direct)"]["rel_error"] == pytest.approx(
        methods["Implicit(CG)"]["rel_error"], rel=1e-6)
    assert "wrote" in capsys.readouterr().out
    mtime = os.path.getmtime(os.path.join(out, "ridge.json"))
    assert main(["demo", "--quick", "--no-progress", "--resume", "--out", out]) == 0
    assert json.load(open(os.path.join(out, "ridge.json")))["rows"] == rows
    assert os.path.getmtime(os.path.join(out, "ridge.json")) == mtime


def test_bench_meta_quick_and_resume_mismatch(tmp_path, capsys):
    out = os.fspath(tmp_path)
    args = ["bench", "meta", "--quick", "--no-progress", "--out", out, "--methods", "Reptile"]
    assert main(args) == 0
    for ext in ("json", "md"):
        assert os.path.exists(os.path.join(out, f"meta.{ext}"))
    assert open(os.path.join(out, "meta.png"), "rb").read(8) == PNG
    data = json.load(open(os.path.join(out, "meta.json")))
    assert [r["key"] for r in data["rows"]] == [["Reptile", "2"], ["Reptile", "8"]]
    assert data["result"]["rows"][0]["algorithm"] == "Reptile"
    capsys.readouterr()
    code = main(["bench", "meta", "--quick", "--no-progress", "--out", out, "--resume",
                 "--seed", "3", "--methods", "Reptile"])
    assert code == 2
    assert "seed=0 there, 3 now" in capsys.readouterr().err


def test_bench_speed_quick_with_docs_page(tmp_path):
    out, page = os.fspath(tmp_path / "res"), os.fspath(tmp_path / "docs" / "benchmarks.rst")
    assert main(["bench", "speed", "--quick", "--no-progress", "--out", out,
                 "--methods", "Reverse", "Historyless", "--docs", page]) == 0
    rows = json.load(open(os.path.join(out, "speed.json")))["result"]["methods"]
    assert {r["method"] for r in rows} == {"Reverse", "Historyless"}
    text = open(page).read()
    assert "bilevel bench speed" in text and ".. list-table::" in text
    assert os.path.exists(tmp_path / "docs" / "_static" / "bench" / "speed.png")


@pytest.mark.slow  # integration run (seconds)
def test_bench_memory_quick_per_method_rows(tmp_path, capsys):
    out = os.fspath(tmp_path)
    args = ["bench", "memory", "--quick", "--no-progress", "--out", out,
            "--methods", "Implicit", "Forward", "--budget", "20"]
    assert main(args) == 0
    data = json.load(open(os.path.join(out, "memory.json")))
    # one resumable row per (method, problem), problem by problem; Forward runs on ridge only
    assert [r["key"] for r in data["rows"]] == [
        ["Implicit", "ridge"], ["Forward", "ridge"], ["Implicit", "mlp"], ["Forward", "mlp"]]
    result = data["result"]
    assert result["K_grid"] == [10, 30, 100]
    cells = [(r["problem"], r["method"], r["K"]) for r in result["rows"]]
    skipped = [(r["problem"], r["method"], r["K"]) for r in result["skipped"]]
    assert not set(cells) & set(skipped) and len(set(cells)) == len(cells)
    # every cell of the grid is measured or listed as skipped, never dropped
    expected = {(p, m, K) for p in ("ridge", "mlp") for m in ("Implicit", "Forward")
                for K in (10, 30, 100) if not (p == "mlp" and m == "Forward")}
    assert set(cells) | set(skipped) == expected
    assert {("ridge", "Implicit", K) for K in (10, 30, 100)} <= set(cells)
    assert open(os.path.join(out, "memory.png"), "rb").read(8) == PNG
    table = open(os.path.join(out, "memory.md")).read()
    headers = [line for line in table.splitlines() if line.startswith("| method |")]
    assert len(headers) == 2 and all(h.count("K=") == 3 for h in headers)  # one column per K
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "resuming: 4 finished row(s)" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "memory.json")))["result"]["rows"] == result["rows"]


def test_bench_memory_budget_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "memory", "--budget", "0"])
    assert exc.value.code == 2
    assert "expected a positive number of seconds" in capsys.readouterr().err



def test_version_single_source_and_python_m(capsys):
    import configparser
    import subprocess
    import sys

    import bilevel

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"bilevel {bilevel.__version__}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(bilevel.__file__)))
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(root, "setup.cfg"))
    assert cfg["metadata"]["version"] == "attr: bilevel.__version__"
    proc = subprocess.run([sys.executable, "-m", "bilevel", "--version"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bilevel {bilevel.__version__}"


def test_packaging_ships_py_typed_and_imported_dependencies_only():
    import configparser
    import re

    import bilevel

    pkg = os.path.dirname(os.path.abspath(bilevel.__file__))
    root = os.path.dirname(pkg)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(root, "setup.cfg"))
    assert "py.typed" in cfg["options.package_data"]["bilevel"]
    declared = [re.split(r"[<>=\[ ]", line.strip())[0]
                for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    source = ""
    for folder, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as fh:
                    source += fh.read()
    for dist in declared:
        module = dist.replace("-", "_")
        assert re.search(rf"^\s*(import|from) {module}\b", source, re.M), (
            f"{dist} is declared in install_requires but nothing in bilevel imports it")


@pytest.mark.parametrize("algorithm, lr, steps", [
    ("maml", 0.01, 1), ("imaml", 0.01, 20), ("anil", 0.1, 5), ("reptile", 0.01, 5),
    ("memory-reduced", 0.02, 20), ("amaml", 0.005, 20),
])
def test_meta_train_inner_defaults_are_the_algorithms(algorithm, lr, steps):
    from bilevel.meta.cli import _parser, build

    args = _parser("bilevel meta-train").parse_args(["--algorithm", algorithm])
    built, _ = build(args)
    assert (args.inner_lr, args.inner_steps) == (lr, steps)
    assert built.steps == steps
    args = _parser("bilevel meta-train").parse_args(["--algorithm", algorithm,
                                                     "--inner-steps", "3"])
    assert build(args)[0].steps == 3  # explicit flags win


def test_meta_train_quick_then_resume_and_meta_eval(tmp_path, capsys):
    out = os.fspath(tmp_path / "run")
    assert main(["meta-train", "--quick", "--algorithm", "imaml", "--hidden", "8",
                 "--no-progress", "--out", out]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["steps"], cfg["inner_steps"], cfg["backend"]) == (20, 20, "numpy")
    capsys.readouterr()
    # --resume continues the finished run (nothing left to do); other flags are refused
    assert main(["meta-train", "--quick", "--algorithm", "imaml", "--hidden", "8",
                 "--no-progress", "--resume", "--out", out]) == 0
    code = main(["meta-train", "--quick", "--algorithm", "imaml", "--hidden", "8",
                 "--inner-steps", "5", "--no-progress", "--resume", "--out", out])
    assert code == 2 and "--inner-steps 20" in capsys.readouterr().err
    assert main(["meta-eval", out, "--tasks-per-eval", "5", "--backend", "numpy"]) == 0
    assert "random init" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["meta-train", "--resume", "--no-resume"])


@pytest.mark.skipif(backend.available("cupy"), reason="a GPU is present")
@pytest.mark.parametrize("command", ["meta-train", "meta-eval"])
def test_meta_commands_cupy_without_gpu_is_a_clean_error(command, tmp_path, capsys):
    run = os.fspath(tmp_path)
    argv = (["meta-train", "--quick", "--out", run] if command == "meta-train"
            else ["meta-eval", run])
    if command == "meta-eval":
        assert main(["meta-train", "--quick", "--hidden", "4", "--no-progress",
                     "--out", run]) == 0
    code = main([*argv, "--backend", "cupy"])
    err = capsys.readouterr().err
    assert code == 2 and "the 'cupy' backend is not available" in err
    assert "Traceback" not in err
