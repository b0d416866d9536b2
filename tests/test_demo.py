"""The quick demo teaches: a memory-versus-K figure that separates unrolled and flat
methods, a report with a legend, takeaways and commands, short labels, every file named."""

import os

import pytest

from bilevel.demo import MEMORY_METHODS, run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    with _no_runtime_warnings():
        paths = run(os.fspath(out), quick=True, progress=False, echo=lines.append)
    return out, paths, lines


class _no_runtime_warnings:
    """Fail on any raw NumPy RuntimeWarning raised inside the demo."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_wrote_line_names_every_file(demo):
    out, paths, lines = demo
    assert set(os.listdir(out)) == set(paths)
    wrote = lines[-1]
    assert wrote.startswith("wrote ")
    for name in os.listdir(out):
        assert name in wrote, name


def test_memory_figure_separates_unrolled_from_flat(demo):
    import json

    out, paths, _ = demo
    rows = json.load(open(paths["memory.json"]))["rows"]
    Ks = sorted({r["K"] for r in rows})
    peak = {(r["method"], r["K"]): r["peak_bytes"] for r in rows}
    assert {r["method"] for r in rows} == set(MEMORY_METHODS)
    # reverse mode grows with K; the flat methods do not (within 20 %)
    assert peak["Reverse", Ks[-1]] > 1.5 * peak["Reverse", Ks[0]]
    for flat in ("Implicit", "Historyless"):
        assert peak[flat, Ks[-1]] < 1.2 * peak[flat, Ks[0]] + 2048
        assert peak[flat, Ks[-1]] < peak["Reverse", Ks[-1]]
    assert open(paths["memory.png"], "rb").read(4) == b"\x89PNG"


def test_report_reads_cold(demo):
    _, paths, _ = demo
    report = open(paths["report.md"], encoding="utf-8").read()
    for part in ("## Takeaways", "1. **Memory.**", "2. **Time and accuracy.**",
                 "3. **Which to pick.**", "How to read the tables", "## Go further",
                 "bilevel bench memory", "![memory](memory.png)"):
        assert part in report, part
    labels = [line.split("|")[1].strip() for line in report.splitlines()
              if line.startswith("| ") and not line.startswith("| method")]
    assert labels and max(map(len, labels)) <= 40, max(labels, key=len)
