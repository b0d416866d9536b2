"""The outer-loop checkpoint file: exact, atomic, one format for every outer loop.

A checkpoint is one ``.npz`` file holding a nested dict: every array leaf is stored as a
NumPy array (CuPy arrays are copied to the host and restored to the backend named at load
time), and the structure with every non-array leaf (``int``, ``float``, ``str``, ``bool``,
``None``, lists and tuples of them, NumPy scalars, RNG states) as JSON, which round-trips
Python floats exactly. No pickles. The file is written by
:func:`bilevel.outer.atomic.atomic_write`, so a crash never leaves a half-written file.

:func:`save_checkpoint` / :func:`load_checkpoint` store any such dict. An outer loop
(:func:`bilevel.outer.drive`) stores the run layout ``{"step", "params",
"optimizer_state", "rng", "history", "config", "extra"}``; :func:`read_run` reads it, and
also reads the two formats of earlier versions (``bilevel.hpo.checkpoint/1`` and
``bilevel.meta.checkpoint/1``) into that layout.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..backend import is_array, name_of, to_backend, to_numpy
from .atomic import atomic_write

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

    Memory: one host copy of every array; the file holds the arrays uncompressed.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    arrays: dict[str, np.ndarray] = {}
    meta = json.dumps({"format": FORMAT, "tree": _encode(payload, "", arrays)})
    with atomic_write(path, "wb", suffix=".npz") as fh:
        np.savez(fh, __meta__=np.array(meta), **{f"a{k}": v for k, v in arrays.items()})


def _open(path: str | os.PathLike) -> tuple[str, dict, dict[str, np.ndarray]]:
    """``(format, JSON document, arrays)`` of a checkpoint file of any known format."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with np.load(path, allow_pickle=False) as z:
        files = dict(z.items())
    for key in ("__meta__", "meta"):
        if key in files:
            doc = json.loads(str(files.pop(key)))
            return str(doc.get("format")), doc, files
    raise ValueError(
        f"{path!r} is not a bilevel checkpoint (no metadata entry); delete it or pass "
        "another checkpoint path to start afresh"
    )


def load_checkpoint(path: str | os.PathLike, backend: str | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path
        The ``.npz`` file.
    backend : {"numpy", "cupy"}, optional
        Put every array on this backend; default: the backend each array was saved from.
    """
    fmt, doc, files = _open(path)
    if fmt not in (FORMAT, _HPO_V1):
        raise ValueError(
            f"{os.fspath(path)!r} has checkpoint format {fmt!r}; expected {FORMAT!r}"
        )
    arrays = {k[1:]: v for k, v in files.items()}
    return _decode(doc["tree"], arrays, backend)


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


def read_run(path: str | os.PathLike, backend: str = "numpy") -> dict:
    """The run layout of an outer-loop checkpoint (current or earlier format), arrays on
    ``backend``: ``step`` (outer steps done), ``params``, ``optimizer_state``, ``rng``
    (bit-generator state), ``history``, ``config`` and ``extra``."""
    fmt, doc, files = _open(path)
    if fmt == _META_V1:
        return _from_meta_v1(doc, files, backend)
    ck = load_checkpoint(path, backend)
    if fmt == _HPO_V1:
        return _from_hpo_v1(ck)
    missing = {"step", "params", "optimizer_state", "rng", "history", "config"} - set(ck)
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} is a bilevel checkpoint but not of an outer loop (no "
            f"{', '.join(sorted(missing))}); pass another checkpoint path to start afresh"
        )
    ck.setdefault("extra", {})
    return ck
