"""Atomic, exact checkpoints of an outer loop: nested dicts of arrays and scalars.

A checkpoint is one ``.npz`` file: every array leaf is stored as a NumPy array (CuPy
arrays are copied to the host and restored to the backend named at load time), and the
structure with every non-array leaf (``int``, ``float``, ``str``, ``bool``, ``None``,
lists of them, RNG states) is stored as JSON, which round-trips Python floats exactly.
Writes go to a temporary file in the same folder, then ``os.replace`` it over the target,
so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from ..backend import is_array, name_of, to_backend, to_numpy

__all__ = ["load_checkpoint", "save_checkpoint"]

_FORMAT = "bilevel.hpo.checkpoint/1"


def _encode(node: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if not isinstance(k, str) or "/" in k:
                raise TypeError(
                    f"checkpoint keys must be strings without '/', got {k!r} at {path!r}"
                )
            out[k] = _encode(v, f"{path}/{k}", arrays)
        return {"__dict__": out}
    if isinstance(node, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(node)]
        return {"__tuple__" if isinstance(node, tuple) else "__list__": items}
    if is_array(node) and not isinstance(node, np.generic):
        arrays[path] = to_numpy(node)
        return {"__array__": path, "backend": name_of(node)}
    if isinstance(node, np.generic):
        return {"__scalar__": node.item(), "dtype": str(node.dtype)}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(
        f"cannot checkpoint {type(node).__name__} at {path!r}: only dicts, lists, tuples, "
        "arrays, Python scalars, strings and None are stored"
    )


def _decode(node: Any, arrays: Any, backend: str | None) -> Any:
    if isinstance(node, dict):
        if "__dict__" in node:
            return {k: _decode(v, arrays, backend) for k, v in node["__dict__"].items()}
        if "__list__" in node:
            return [_decode(v, arrays, backend) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_decode(v, arrays, backend) for v in node["__tuple__"])
        if "__array__" in node:
            arr = arrays[node["__array__"]]
            name = backend or node["backend"]
            return arr if name == "numpy" else to_backend(arr, name)
        if "__scalar__" in node:
            return np.dtype(node["dtype"]).type(node["__scalar__"])
    return node


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (a nested dict) to ``path`` atomically (tmp file + ``os.replace``).

    Memory: one host copy of every array; the file holds the arrays uncompressed.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(payload, "", arrays)
    meta = json.dumps({"format": _FORMAT, "tree": tree})
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __meta__=np.array(meta), **{f"a{k}": v for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, backend: str | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path
        The ``.npz`` file.
    backend : {"numpy", "cupy"}, optional
        Put every array on this backend; default: the backend each array was saved from.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with np.load(path, allow_pickle=False) as z:
        if "__meta__" not in z.files:
            raise ValueError(f"{path!r} is not a bilevel.hpo checkpoint (no __meta__ entry)")
        meta = json.loads(str(z["__meta__"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{path!r} has checkpoint format {meta.get('format')!r}; expected {_FORMAT!r}"
            )
        arrays = {k[1:]: z[k] for k in z.files if k != "__meta__"}
    return _decode(meta["tree"], arrays, backend)
