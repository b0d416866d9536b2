"""Writing benchmark output: resumable JSON row logs, markdown tables, PNG figures.

Every ``bilevel bench`` subcommand and ``bilevel demo`` writes three kinds of file into its
output folder: ``<name>.json`` (all numbers, machine-readable), ``<name>.md`` (a markdown
table) and one or more ``<name>.png`` figures. :class:`RowLog` makes long runs
interruptible: each finished row is written to the JSON file as soon as it completes
(atomically: a temporary file renamed over the old one), and a run started with
``resume=True`` skips the rows already present. Rows are identified by a key (a tuple of
strings); the configuration the rows were computed under (quick, backend, seed, ...) is
stored beside them and must match for a resume. Each save keeps the file it replaces as
``<name>.prev``; a results file that cannot be read (truncated, corrupt) is refused as a
:class:`~bilevel.outer.CheckpointError` naming it, or replaced by its ``.prev`` with a
:class:`~bilevel.outer.CheckpointWarning` when that one is good.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..outer.atomic import atomic_write, previous
from ..outer.errors import CheckpointError, CheckpointWarning, ResumeError
from ..outer.memory import peak_memory

__all__ = [
    "RowLog",
    "figure",
    "format_bytes",
    "format_number",
    "jsonable",
    "markdown_table",
    "markdown_to_rst",
    "merge_results",
    "peak_memory",
    "read_json",
    "read_rows",
    "save_figure",
    "write_json",
    "write_rst_page",
    "write_text",
]


# ------------------------------------------------------------------ JSON
def jsonable(obj: Any) -> Any:
    """``obj`` with arrays, NumPy scalars and tuples turned into JSON types.

    Arrays (NumPy or CuPy, via ``tolist``/``get``) become nested lists, NumPy scalars
    Python numbers, non-finite floats stay floats (``json`` writes them as ``NaN``/
    ``Infinity``, which :func:`read_json` reads back).
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if hasattr(obj, "get") and hasattr(obj, "__cuda_array_interface__"):
        return jsonable(obj.get())
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (int, float, str)):
        return obj
    return repr(obj)


def write_json(path: str | os.PathLike, obj: Any, keep_previous: bool = False) -> str:
    """Write ``jsonable(obj)`` to ``path`` atomically
    (:func:`bilevel.outer.atomic.atomic_write`), keeping the old file as ``<path>.prev``
    when ``keep_previous``."""
    with atomic_write(path, "w", suffix=".json", keep_previous=keep_previous) as fh:
        json.dump(jsonable(obj), fh, indent=1)
    return os.fspath(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    with open(path) as fh:
        return json.load(fh)


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` atomically (creating the folder); returns the path."""
    path = os.fspath(path)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return path


def _read_rows(path: str) -> dict:
    """The JSON document of a row log; raises :class:`CheckpointError` when unreadable."""
    try:
        doc = read_json(path)
    except (OSError, ValueError) as err:
        why = "the file is empty" if os.path.getsize(path) == 0 else f"{err}"
        raise CheckpointError(
            f"results file {path!r} is unreadable ({why}); delete it, or rerun without "
            "--resume (resume=False) to start afresh") from err
    if not isinstance(doc, dict):
        raise CheckpointError(f"results file {path!r} is not a row log; delete it, or rerun "
                              "without --resume (resume=False)")
    return doc


def read_rows(path: str | os.PathLike) -> dict:
    """The document of the row log ``path``, or of ``<path>.prev`` (with a
    :class:`~bilevel.outer.CheckpointWarning`) when ``path`` is unreadable and that is good.

    Raises
    ------
    CheckpointError
        When neither can be read.
    """
    path = os.fspath(path)
    try:
        return _read_rows(path)
    except CheckpointError as err:
        prev = previous(path)
        if not os.path.exists(prev):
            raise
        try:
            doc = _read_rows(prev)
        except CheckpointError:
            raise err from None
        warnings.warn(f"{err}; resuming from the previous version {prev!r} "
                      f"({len(doc.get('rows', []))} rows) instead", CheckpointWarning,
                      stacklevel=2)
        return doc


class RowLog:
    """Rows of a benchmark, saved to a JSON file after every row (interrupt-safe resume).

    The file holds ``{"benchmark": name, "config": config, "rows": [...], **extra}``; each
    row is a dict with a ``"key"`` entry (a list of strings).

    Parameters
    ----------
    path : str or None
        The JSON file; None keeps the rows in memory only.
    name : str
        Benchmark name stored in the file.
    config : dict
        Settings the rows depend on (size, backend, seed). A resume needs the same config.
    resume : bool
        Load the rows already in ``path`` (when it exists) and let :meth:`get` return them;
        otherwise start empty and overwrite the file at the first :meth:`add`.

    Raises
    ------
    ResumeError
        When resuming from a file written for another benchmark or another config; the
        message names the differing settings (a ``ValueError``).
    CheckpointError
        When the file (and its ``.prev``) cannot be read.
    """

    def __init__(
        self, path: str | os.PathLike | None, name: str, config: dict, resume: bool = False
    ):
        self.path = None if path is None else os.fspath(path)
        self.name = name
        self.config = jsonable(config)
        self.rows: list[dict] = []
        self.extra: dict[str, Any] = {}
        self.resumed = 0
        if resume and self.path is not None and os.path.exists(self.path):
            old = read_rows(self.path)
            if old.get("benchmark") != name:
                raise ResumeError(
                    f"cannot resume from {self.path!r}: it holds benchmark "
                    f"{old.get('benchmark')!r}, not {name!r}; use another --out or drop --resume"
                )
            before = old.get("config", {})
            if before != self.config:
                diff = ", ".join(
                    f"{k}={before.get(k)!r} there, {self.config.get(k)!r} now"
                    for k in sorted(set(self.config) | set(before))
                    if self.config.get(k) != before.get(k)
                )
                raise ResumeError(
                    f"cannot resume from {self.path!r}: it was written with different settings "
                    f"({diff}); rerun with the same settings or without --resume"
                )
            self.rows = list(old.get("rows", []))
            self.resumed = len(self.rows)

    @staticmethod
    def _key(key: Sequence[Any]) -> list[str]:
        return [str(k) for k in key]

    def get(self, key: Sequence[Any]) -> dict | None:
        """The saved row with ``key``, or None."""
        want = self._key(key)
        for row in self.rows:
            if row.get("key") == want:
                return row
        return None

    def add(self, key: Sequence[Any], row: dict) -> dict:
        """Store ``row`` under ``key`` (replacing a row with that key) and save the file."""
        row = dict(jsonable(row), key=self._key(key))
        self.rows = [r for r in self.rows if r.get("key") != row["key"]] + [row]
        self.save()
        return row

    def save(self) -> str | None:
        """Write the file now (nothing for an in-memory log); returns the path."""
        if self.path is None:
            return None
        return write_json(
            self.path, {"benchmark": self.name, "config": self.config, **self.extra,
                        "rows": self.rows}, keep_previous=True
        )

    def compute(self, key: Sequence[Any], fn: Callable[[], dict]) -> dict:
        """The saved row with ``key`` if present, else ``fn()`` added under ``key``."""
        row = self.get(key)
        return row if row is not None else self.add(key, fn())


def merge_results(parts: Iterable[dict]) -> dict:
    """Merge partial benchmark results (one per method) into one result dict.

    Lists are concatenated, except under keys ending in ``grid`` (``K_grid``), whose sorted
    union is kept; dicts are merged recursively, numbers under keys
    ending in ``seconds`` summed; other values are taken from the first part that has them.
    """
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = json.loads(json.dumps(jsonable(v)))
            elif isinstance(v, list) and isinstance(out[k], list):
                both = out[k] + jsonable(v)
                out[k] = sorted(set(both)) if k.endswith("grid") else both
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = merge_results([out[k], v])
            elif k.endswith("seconds") and isinstance(v, (int, float)):
                out[k] = out[k] + v
    return out


# ------------------------------------------------------------------ text
def format_number(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits; ``—`` for None, ``nan`` kept visible."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    x = float(x)
    if math.isnan(x):
        return "nan"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 0)}e}"


def format_bytes(b: Any) -> str:
    """Bytes in B/kB/MB/GB (decimal units)."""
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "—"
    b = float(b)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def markdown_table(
    rows: Sequence[dict], columns: Sequence[tuple[str, str, Callable[[Any], str] | None]]
) -> str:
    """A GitHub markdown table.

    Parameters
    ----------
    rows
        One dict per table row.
    columns
        ``(header, key, formatter)``; ``formatter`` (default :func:`format_number` for
        numbers, ``str`` otherwise) turns ``row[key]`` into text; a missing key gives ``—``.
    """
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            val = row.get(key)
            if fmt is not None and val is not None:
                cells.append(fmt(val))
            elif isinstance(val, (int, float, np.number)) and not isinstance(val, bool):
                cells.append(format_number(val))
            else:
                cells.append("—" if val is None else str(val))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ figures
def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> tuple:
    """A matplotlib ``(fig, axes)`` on the non-interactive Agg backend (no display needed).

    ``axes`` is always a 2-D array ``(nrows, ncols)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    return fig, axes


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Save ``fig`` as a PNG at ``path`` (tight layout, 100 dpi), close it, return the path."""
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ docs page
def markdown_to_rst(text: str) -> str:
    """Convert the markdown written by the benchmarks (paragraphs, ``###`` headings, pipe
    tables, backticks, bold) to reStructuredText; tables become ``list-table`` blocks."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = s.replace("**", "\x00")
        s = s.replace("`", "``").replace("\x00", "**")
        return s.replace("*", "\\*").replace("\\*\\*", "**")

    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not set(lines[i]) <= set("|-: "):
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out += ["", ".. list-table::", "   :header-rows: 1", ""]
            for row in rows:
                for j, cell in enumerate(row):
                    out.append(f"   {'* -' if j == 0 else '  -'} {inline(cell) or '..'}")
            out.append("")
            continue
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            out += ["", title, "~" * max(len(title), 3), ""]
        elif line.startswith("* "):
            out.append("* " + inline(line[2:]))
        else:
            out.append(inline(line))
        i += 1
    return "\n".join(out).strip() + "\n"


_PAGE_ORDER = ("memory", "accuracy", "speed", "meta", "peers")


def write_rst_page(results: str | os.PathLike, path: str | os.PathLike) -> str:
    """Write the Sphinx page ``path`` (``docs/benchmarks.rst``) from the ``<name>.md`` and
    ``<name>.png`` files of ``bilevel bench`` in the folder ``results``.

    Figures are copied to ``_static/bench/`` beside the page. Benchmarks without output in
    ``results`` are listed with the command that produces them.
    """
    import shutil

    results, path = os.fspath(results), os.fspath(path)
    static = os.path.join(os.path.dirname(os.path.abspath(path)), "_static", "bench")
    parts = [
        ".. Generated by docs/gen_bench_page.py (or bilevel bench NAME --docs); do not edit.",
        "",
        "Benchmarks",
        "==========",
        "",
        "Produced by ``bilevel bench {memory,accuracy,speed,meta} --out RESULTS`` and turned into",
        "this page by ``python docs/gen_bench_page.py RESULTS``. Memory is measured with",
        "tracemalloc on NumPy and with a memory-pool hook on CuPy. Timings depend on the",
        "machine; ratios are the quantities to compare.",
        "",
    ]
    for name in _PAGE_ORDER:
        title = f"bilevel bench {name}"
        parts += [title, "-" * len(title), ""]
        md = os.path.join(results, f"{name}.md")
        if not os.path.exists(md):
            parts += [f"Not run for this page: ``bilevel bench {name} --out {results}``.", ""]
            continue
        with open(md) as fh:
            parts += [markdown_to_rst(fh.read()), ""]
        png = os.path.join(results, f"{name}.png")
        if os.path.exists(png):
            os.makedirs(static, exist_ok=True)
            shutil.copyfile(png, os.path.join(static, f"{name}.png"))
            parts += [f".. image:: _static/bench/{name}.png", f"   :alt: {name} benchmark", ""]
    return write_text(path, "\n".join(parts))
