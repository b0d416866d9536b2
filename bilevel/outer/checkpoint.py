"""The outer-loop checkpoint file: exact, atomic, one format for every outer loop.

A checkpoint is one ``.npz`` file holding a nested dict: every array leaf is stored as a
NumPy array (CuPy arrays are copied to the host and restored to the backend named at load
time), and the structure with every non-array leaf (``int``, ``float``, ``str``, ``bool``,
``None``, lists and tuples of them, NumPy scalars, RNG states) as JSON, which round-trips
Python floats exactly. No pickles. The file is written by
:func:`bilevel.outer.atomic.atomic_write`, so a crash never leaves a half-written file, and
the version it replaces is kept as ``<name>.prev``. A file that cannot be read (truncated,
bit-flipped, empty, not a checkpoint) raises :class:`~bilevel.outer.errors.CheckpointError`
naming the file and what to do; :func:`read_run` then falls back to ``<name>.prev`` with a
:class:`~bilevel.outer.errors.CheckpointWarning`.

:func:`save_checkpoint` / :func:`load_checkpoint` store any such dict. An outer loop
(:func:`bilevel.outer.drive`) stores the run layout ``{"step", "params",
"optimizer_state", "rng", "history", "config", "extra"}``; :func:`read_run` reads it, and
also reads the two formats of earlier versions (``bilevel.hpo.checkpoint/1`` and
``bilevel.meta.checkpoint/1``) into that layout.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Any

import numpy as np

from ..backend import is_array, name_of, to_backend, to_numpy
from .atomic import atomic_write, previous
from .errors import CheckpointError, CheckpointWarning, MissingFileError

__all__ = ["FORMAT", "load_checkpoint", "read_run", "save_checkpoint"]

FORMAT = "bilevel.checkpoint/1"
_HPO_V1 = "bilevel.hpo.checkpoint/1"
_META_V1 = "bilevel.meta.checkpoint/1"
_CONTAINERS = {"__dict__": dict, "__list__": list, "__tuple__": tuple}


def _encode_dict(node: dict, path: str, arrays: dict[str, np.ndarray]) -> dict:
    out = {}
    for k, v in node.items():
        if not isinstance(k, str) or "/" in k:
            raise TypeError(f"checkpoint keys must be strings without '/', got {k!r} at {path!r}")
        out[k] = _encode(v, f"{path}/{k}", arrays)
    return {"__dict__": out}


def _encode(node: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, dict):
        return _encode_dict(node, path, arrays)
    if isinstance(node, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(node)]
        return {"__tuple__" if isinstance(node, tuple) else "__list__": items}
    if isinstance(node, np.generic):
        return {"__scalar__": node.item(), "dtype": str(node.dtype)}
    if is_array(node):
        arrays[path] = to_numpy(node)
        return {"__array__": path, "backend": name_of(node)}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(
        f"cannot checkpoint {type(node).__name__} at {path!r}: only dicts, lists, tuples, "
        "arrays, Python scalars, strings and None are stored"
    )


def _decode(node: Any, arrays: Any, backend: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    for tag, kind in _CONTAINERS.items():
        if tag in node:
            items = node[tag]
            if kind is dict:
                return {k: _decode(v, arrays, backend) for k, v in items.items()}
            return kind(_decode(v, arrays, backend) for v in items)
    if "__array__" in node:
        arr = arrays[node["__array__"]]
        name = backend or node["backend"]
        return arr if name == "numpy" else to_backend(arr, name)
    if "__scalar__" in node:
        return np.dtype(node["dtype"]).type(node["__scalar__"])
    return node


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (a nested dict) to ``path`` atomically.

    The file replaced is kept as ``<path>.prev`` (unless it is visibly damaged), so a
    checkpoint corrupted later on disk has a predecessor to fall back on.
    Memory: one host copy of every array; the file holds the arrays uncompressed.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    arrays: dict[str, np.ndarray] = {}
    meta = json.dumps({"format": FORMAT, "tree": _encode(payload, "", arrays)})
    # the file replaced is kept as <path>.prev, unless it is visibly damaged (not a zip)
    keep = os.path.exists(path) and zipfile.is_zipfile(path)
    with atomic_write(path, "wb", suffix=".npz", keep_previous=keep) as fh:
        np.savez(fh, __meta__=np.array(meta), **{f"a{k}": v for k, v in arrays.items()})


_AFRESH = ("delete it (or restore {prev} if it is good) or pass resume=False / another "
           "checkpoint path to start afresh")


def _refuse(path: str, why: str) -> CheckpointError:
    remedy = _AFRESH.format(prev=os.path.basename(previous(path)))
    return CheckpointError(
        f"checkpoint {path!r} is unreadable ({why}); {remedy}",
        cli=f"checkpoint {path!r} is unreadable ({why}); delete it, or rerun with --no-resume "
            "to start afresh",
    )


def _read(path: str) -> tuple[str, dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict(z.items())
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        if os.path.getsize(path) == 0:
            raise _refuse(path, "the file is empty") from err
        raise _refuse(path, f"{type(err).__name__}: {err}") from err
    for key in ("__meta__", "meta"):
        if key in files:
            try:
                doc = json.loads(str(files.pop(key)))
            except ValueError as err:
                raise _refuse(path, f"its metadata is not JSON: {err}") from err
            if not isinstance(doc, dict):
                raise _refuse(path, "its metadata is not a JSON object")
            return str(doc.get("format")), doc, files
    raise _refuse(path, "not a bilevel checkpoint: no metadata entry")


def _open(path: str | os.PathLike) -> tuple[str, dict, dict[str, np.ndarray]]:
    """``(format, JSON document, arrays)`` of a checkpoint file of any known format."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"no checkpoint at {path!r}")
    return _read(path)


def load_checkpoint(path: str | os.PathLike, backend: str | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path
        The ``.npz`` file.
    backend : {"numpy", "cupy"}, optional
        Put every array on this backend; default: the backend each array was saved from.
    """
    return _tree(os.fspath(path), *_open(path), backend)


def _tree(path: str, fmt: str, doc: dict, files: dict, backend: str | None) -> dict:
    if fmt not in (FORMAT, _HPO_V1):
        raise CheckpointError(
            f"{path!r} has checkpoint format {fmt!r}; expected {FORMAT!r}: pass another "
            "checkpoint path, or resume=False to start afresh",
            cli=f"{path!r} has checkpoint format {fmt!r}, not {FORMAT!r}; delete it or rerun "
                "with --no-resume",
        )
    arrays = {k[1:]: v for k, v in files.items()}
    try:
        return _decode(doc["tree"], arrays, backend)
    except (KeyError, TypeError, AttributeError) as err:
        raise _refuse(path, f"its contents are damaged ({type(err).__name__}: {err})") from err


def _from_hpo_v1(ck: dict) -> dict:
    extra = {"hypergrad_state": ck["hypergrad_state"], "best": ck["best"]}
    return {"step": ck["t"], "params": ck["u"], "optimizer_state": ck["optimizer_state"],
            "rng": ck["rng"], "history": ck["history"], "config": ck["settings"],
            "extra": extra}


def _from_meta_v1(doc: dict, files: dict[str, np.ndarray], backend: str) -> dict:
    opt = dict(doc["opt_scalars"])
    opt.update({k[4:]: to_backend(np.array(v), backend)
                for k, v in files.items() if k.startswith("opt/")})
    return {"step": int(doc["iteration"]), "params": to_backend(np.array(files["params"]), backend),
            "optimizer_state": opt, "rng": doc["rng"], "history": doc["history"],
            "config": doc["config"], "extra": {"evaluations": doc["evaluations"]}}


def _run(path: str, backend: str) -> dict:
    fmt, doc, files = _open(path)
    if fmt == _META_V1:
        try:
            return _from_meta_v1(doc, files, backend)
        except (KeyError, TypeError, ValueError) as err:
            raise _refuse(path, f"its contents are damaged ({type(err).__name__})") from err
    ck = _tree(path, fmt, doc, files, backend)
    if fmt == _HPO_V1:
        return _from_hpo_v1(ck)
    missing = {"step", "params", "optimizer_state", "rng", "history", "config"} - set(ck)
    if missing:
        raise CheckpointError(
            f"{path!r} is a bilevel checkpoint but not of an outer loop (no "
            f"{', '.join(sorted(missing))}); pass another checkpoint path to start afresh",
            cli=f"{path!r} is not a checkpoint of this command; pass another --out",
        )
    ck.setdefault("extra", {})
    return ck


def read_run(path: str | os.PathLike, backend: str = "numpy") -> dict:
    """The run layout of an outer-loop checkpoint (current or earlier format), arrays on
    ``backend``: ``step`` (outer steps done), ``params``, ``optimizer_state``, ``rng``
    (bit-generator state), ``history``, ``config`` and ``extra``.

    When ``path`` is unreadable and its previous version ``<path>.prev`` is good, that one
    is returned, with a :class:`~bilevel.outer.errors.CheckpointWarning` saying so.

    Raises
    ------
    CheckpointError
        When neither ``path`` nor ``<path>.prev`` can be read (the message names the file
        and says what to do). ``MissingFileError`` when ``path`` does not exist.
    """
    path = os.fspath(path)
    try:
        return _run(path, backend)
    except CheckpointError as err:
        prev = previous(path)
        if not os.path.exists(prev):
            raise
        try:
            ck = _run(prev, backend)
        except CheckpointError:
            raise err from None
        warnings.warn(f"{err}; resuming from the previous checkpoint {prev!r} (outer step "
                      f"{int(ck['step'])}) instead", CheckpointWarning, stacklevel=2)
        return ck
