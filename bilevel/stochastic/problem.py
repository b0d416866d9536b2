"""A bilevel problem at data-set scale: objectives that are means over samples.

.. math::

    g(w, λ) = \\frac1{n}\\sum_{i=1}^{n} g_i(w, λ),  \\qquad
    f(w, λ) = \\frac1{m}\\sum_{j=1}^{m} f_j(w, λ)

:class:`StochasticProblem` holds the objectives ``inner(w, lam, batch)`` and
``outer(w, lam, batch)`` (each the *mean* over the samples of ``batch``), the inner and outer
data sets (pytrees of arrays whose leading axis is the sample axis), and the mini-batch
oracles the stochastic methods need. Mini-batches are the contiguous slices of a fixed
partition of each data set (:meth:`StochasticProblem.batch`), so a batch costs no copy and
SABA can keep one memory row per batch; :meth:`StochasticProblem.select` gathers any other
set of sample indices. The oracles reuse the derivative machinery of
:class:`bilevel.BilevelProblem` (:mod:`bilevel.oracles`) on the batch's data, so they work on
every backend ``bilevel.numpy`` supports; the full-batch problem is :attr:`full`.

=================================  ===============================  =======================
oracle on batch B                  value                            cost (per sample of B)
=================================  ===============================  =======================
``inner_grad(w, λ, B)``            ∇_w g_B                          1 gradient
``inner_products(w, λ, B, v)``     (∇_w g_B, H_B v, M_Bᵀ v)         1 gradient + 1 VJP
``hvp(w, λ, B, v)``                H_B v                            1 gradient + 1 VJP
``cross(w, λ, B, v)``              M_Bᵀ v = ∂_λ⟨∇_w g_B, v⟩         1 gradient + 1 VJP
``outer_grads(w, λ, B)``           (∇_w f_B, ∇_λ f_B)               1 gradient
=================================  ===============================  =======================

Work is counted in :attr:`StochasticProblem.work`: ``samples`` adds the batch size for each
per-sample derivative evaluated (a gradient, a Hessian-vector or a cross product), the unit in
which the benchmark plots "oracle calls".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import is_array, namespace
from ..nonfinite import traced_vjp
from ..problem import BilevelProblem
from ..tree import leaves as tree_leaves

__all__ = ["Part", "StochasticProblem", "Work"]


@dataclass(frozen=True)
class Part:
    """``(w, λ, data) ↦ fn(w, λ, data[index])``: one objective of the full problem, whose data
    is the pair ``(inner batch, outer batch)`` (picklable, unlike a lambda)."""

    fn: Callable
    index: int

    def __call__(self, w: Any, lam: Any, data: Any) -> Any:
        return self.fn(w, lam, data[self.index])


@dataclass
class Work:
    """Per-sample oracle evaluations: ``samples`` (gradients, HVPs and cross products, each
    counted once per sample of its batch) and ``calls`` (mini-batch oracle calls)."""

    samples: int = 0
    calls: int = 0

    def add(self, batch_size: int, products: int = 1) -> None:
        self.samples += batch_size * products
        self.calls += 1


def _size(data: Any, name: str) -> int:
    try:
        leaves = tree_leaves(data)
    except TypeError:
        leaves = []
    if not leaves or not all(is_array(x) for x in leaves):
        raise TypeError(
            f"{name} must be an array or a dict/tuple of arrays with the samples on the "
            f"leading axis, got {type(data).__name__}"
        )
    sizes = {int(x.shape[0]) if len(x.shape) else 0 for x in leaves}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"every array of {name} needs the same leading (sample) axis of length >= 1; got "
            f"lengths {sorted(sizes)}"
        )
    return sizes.pop()


def _rows(data: Any, rows: slice) -> Any:
    if isinstance(data, dict):
        return {k: _rows(v, rows) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_rows(v, rows) for v in data)
    return data[rows]


class StochasticProblem:
    """``min_λ f(w*(λ), λ)``, ``w*(λ) = argmin_w g(w, λ)``, with g and f means over samples.

    Parameters
    ----------
    inner : callable
        ``inner(w, lam, batch) -> scalar``: the mean of the per-sample inner losses ``g_i``
        over the samples of ``batch`` (a pytree of rows of ``inner_data``), plus any
        sample-free term (a regulariser is added once per batch, so the mean over batches is
        the full objective).
    outer : callable
        ``outer(w, lam, batch) -> scalar``: the mean of the outer losses ``f_j`` over
        ``batch`` (rows of ``outer_data``).
    inner_data, outer_data
        Arrays, or dicts/tuples of arrays, with the samples on the leading axis. A batch is
        a contiguous slice: shuffle the data once beforehand if it is sorted.
    name : str, optional
        Shown in messages and benchmark tables.
    check_finite : bool
        Check every oracle's output for NaN/inf (one host read each). Off by default: the
        stochastic driver checks its iterates instead, once per evaluation.

    Attributes
    ----------
    full : BilevelProblem
        The full-batch problem (data ``(inner_data, outer_data)``), for deterministic
        methods and for evaluation.
    n_inner, n_outer : int
        Number of inner and outer samples.
    work : Work
        Per-sample oracle evaluations so far.
    """

    def __init__(self, inner: Callable, outer: Callable, inner_data: Any, outer_data: Any, *,
                 name: str | None = None, check_finite: bool = False):
        for what, fn in (("inner", inner), ("outer", outer)):
            if not callable(fn):
                raise TypeError(f"{what} must be callable {what}(w, lam, batch), got "
                                f"{type(fn).__name__}")
        self.n_inner = _size(inner_data, "inner_data")
        self.n_outer = _size(outer_data, "outer_data")
        self.inner, self.outer = inner, outer
        self.inner_data, self.outer_data = inner_data, outer_data
        self.name = name or getattr(inner, "__name__", "stochastic")
        self.full = BilevelProblem(Part(inner, 0), Part(outer, 1), data=(inner_data, outer_data),
                                   check_finite=check_finite, name=self.name)
        self.work = Work()

    def __repr__(self) -> str:
        return (f"StochasticProblem(name={self.name!r}, n_inner={self.n_inner}, "
                f"n_outer={self.n_outer})")

    # ------------------------------------------------------------------ batches
    def n_batches(self, which: str, batch_size: int) -> int:
        """Number of batches of the fixed partition of the ``which`` ("inner"/"outer") data
        into contiguous slices of ``batch_size`` samples (the last may be shorter)."""
        n = self.n_inner if which == "inner" else self.n_outer
        return -(-n // min(batch_size, n))

    def batch(self, which: str, k: int, batch_size: int) -> tuple[Any, int]:
        """(rows, size) of batch ``k`` of the ``which`` data: samples ``k·b .. (k+1)·b − 1``.

        A slice of the stored arrays (a view, no copy).
        """
        n = self.n_inner if which == "inner" else self.n_outer
        b = min(batch_size, n)
        rows = slice(k * b, min((k + 1) * b, n))
        data = self.inner_data if which == "inner" else self.outer_data
        return _rows(data, rows), rows.stop - rows.start

    def select(self, which: str, indices: Any) -> tuple[Any, int]:
        """(rows, size) of the samples ``indices`` (integer array) of the ``which`` data: any
        mini-batch, e.g. drawn with replacement; a gather (copy) of ``len(indices)`` rows.
        Pass the result to the oracles like a :meth:`batch`."""
        data = self.inner_data if which == "inner" else self.outer_data
        n = self.n_inner if which == "inner" else self.n_outer
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or not idx.size \
                or idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"indices must be a non-empty 1-D integer array in [0, {n}) for "
                             f"the {which} data, got {indices!r}")
        leaf = tree_leaves(data)[0]
        return _rows(data, namespace(leaf).asarray(idx)), int(idx.size)

    # ------------------------------------------------------------------ oracles
    def inner_grad(self, w: Any, lam: Any, batch: tuple[Any, int]) -> Any:
        """∇_w g_B(w, λ). Cost: one gradient per sample of B."""
        data, size = batch
        self.work.add(size)
        return self.full.inner_grad(w, lam, data=(data, None))

    def inner_products(self, w: Any, lam: Any, batch: tuple[Any, int],
                       v: Any) -> tuple[Any, Any, Any]:
        """(∇_w g_B, H_B v, M_Bᵀ v) at (w, λ) from one trace of ``(w, λ) ↦ ∇_w g_B`` and one
        reverse pass over it. Cost: one gradient and two products per sample of B."""
        data, size = batch
        self.work.add(size, 3)
        full = self.full
        full.check_point(w, lam)
        vjp, grad = traced_vjp(lambda wl: full.grad_map(wl[0], wl[1], (data, None)), (w, lam))
        full.counts.grad += 1
        full.counts.hvp += 1
        hv, mv = vjp(v)
        return grad, hv, mv

    def hvp(self, w: Any, lam: Any, batch: tuple[Any, int], v: Any) -> Any:
        """H_B v = ∇²_ww g_B · v. Cost: one gradient and one product per sample of B."""
        data, size = batch
        self.work.add(size, 2)
        return self.full.linearize(w, lam, data=(data, None)).hvp(v)

    def cross(self, w: Any, lam: Any, batch: tuple[Any, int], v: Any) -> Any:
        """M_Bᵀ v = ∂_λ⟨∇_w g_B(w, λ), v⟩, shape of λ. Cost: one gradient and one product per
        sample of B."""
        data, size = batch
        self.work.add(size, 2)
        return self.full.inner_mixed_vjp(w, lam, v, data=(data, None))

    def outer_grads(self, w: Any, lam: Any, batch: tuple[Any, int]) -> tuple[Any, Any]:
        """(∇_w f_B, ∇_λ f_B). Cost: one gradient per sample of B."""
        data, size = batch
        self.work.add(size)
        _, gw, gl = self.full.outer_value_and_grads(w, lam, data=(None, data))
        return gw, gl

    def zeros(self, like: Any, rows: int) -> Any:
        """A ``(rows, *like.shape)`` array of zeros in the namespace and dtype of ``like``."""
        xp = namespace(like)
        return xp.zeros((rows, *like.shape), dtype=like.dtype)
