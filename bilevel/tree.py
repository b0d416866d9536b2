"""Structured parameters: ravel nested dicts/lists/tuples of arrays into one flat vector.

Solvers work on flat vectors ``(n,)`` or ``(B, n)``. :func:`ravel`
concatenates the leaves once; the returned ``unravel`` maps a flat vector back to the
structure with *views* (basic slicing and reshape), so it costs no copies and is
differentiable under autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import is_array, namespace

__all__ = ["ravel", "leaves", "Unravel"]


def _flatten(tree: Any, path: tuple = ()) -> tuple[list[tuple[tuple, Any]], Any]:
    """Leaves (with their paths) and a structure description of ``tree``."""
    if isinstance(tree, dict):
        keys = list(tree.keys())
        out, subs = [], []
        for k in keys:
            lv, st = _flatten(tree[k], path + (k,))
            out += lv
            subs.append(st)
        return out, ("dict", type(tree), keys, subs)
    if isinstance(tree, (list, tuple)):
        out, subs = [], []
        for i, v in enumerate(tree):
            lv, st = _flatten(v, path + (i,))
            out += lv
            subs.append(st)
        return out, ("seq", type(tree), len(tree), subs)
    if is_array(tree) or (isinstance(tree, np.generic) and tree.dtype.kind in "biufc"):
        return [(path, tree)], ("leaf",)
    raise TypeError(
        f"ravel expects nested dicts/lists/tuples of arrays; found {type(tree).__name__} at "
        f"path {path!r}"
    )


def leaves(tree: Any) -> list[Any]:
    """The arrays of ``tree`` in ravel order (dict insertion order, depth first)."""
    return [leaf for _, leaf in _flatten(tree)[0]]


class Unravel:
    """Inverse of :func:`ravel`: a flat vector back to the nested structure, as views.

    Parameters of the original structure are recorded as ``shapes`` and ``sizes``; a
    flat vector with a leading batch axis ``(B, n)`` gives leaves of shape
    ``(B, *shape)``. Cost: O(number of leaves) slicing, no data copied.
    """

    def __init__(self, structure: Any, shapes: list[tuple[int, ...]], batch: bool):
        self.structure = structure
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.size = sum(self.sizes)
        self.batch = batch

    def __call__(self, flat: Any) -> Any:
        lead = tuple(flat.shape[:-1])
        if flat.shape[-1] != self.size:
            raise ValueError(
                f"unravel expects a flat vector with last axis {self.size}, got shape "
                f"{tuple(flat.shape)}"
            )
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            piece = flat[..., start : start + size]
            parts.append(piece.reshape(lead + shape) if lead else piece.reshape(shape))
            start += size
        it = iter(parts)
        return _build(self.structure, it)

    def __repr__(self) -> str:
        return f"Unravel(n={self.size}, leaves={len(self.shapes)}, batch={self.batch})"


def _build(structure: Any, it: Any) -> Any:
    kind = structure[0]
    if kind == "leaf":
        return next(it)
    if kind == "dict":
        _, typ, keys, subs = structure
        return typ((k, _build(s, it)) for k, s in zip(keys, subs, strict=True))
    _, typ, _, subs = structure
    vals = [_build(s, it) for s in subs]
    if hasattr(typ, "_fields"):
        return typ(*vals)
    return typ(vals)


def ravel(tree: Any, batch: bool = False) -> tuple[Any, Callable[[Any], Any]]:
    """Concatenate the arrays of ``tree`` into one flat vector.

    Parameters
    ----------
    tree
        Nested dicts, lists and tuples (named tuples too) whose leaves are arrays
        (NumPy scalars such as ``np.float64(1.0)`` count as 0-d arrays).
    batch
        When True every leaf carries a leading batch axis ``B`` and the result has shape
        ``(B, n)``; otherwise ``(n,)``.

    Returns
    -------
    flat : array
        ``concat([leaf.reshape(-1) for leaf in leaves])``: one copy of the data.
    unravel : Unravel
        ``unravel(flat)`` rebuilds the structure from views of ``flat`` (no copy).
    """
    items, structure = _flatten(tree)
    if not items:
        raise ValueError("ravel got a structure with no arrays")
    arrays = [a for _, a in items]
    xp = namespace(*arrays)
    if batch:
        b = {a.shape[0] if a.ndim else None for a in arrays}
        if len(b) != 1 or None in b:
            raise ValueError(
                "ravel(batch=True) needs every leaf to share the leading batch axis; got shapes "
                + ", ".join(str(tuple(a.shape)) for a in arrays)
            )
        (nb,) = b
        shapes = [tuple(a.shape[1:]) for a in arrays]
        flat = xp.concat([xp.reshape(a, (nb, -1)) for a in arrays], axis=-1)
    else:
        shapes = [tuple(a.shape) for a in arrays]
        flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays])
    return flat, Unravel(structure, shapes, batch)
