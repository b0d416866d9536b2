"""Independent hyperparameter work on workers: restarts, grids and K-fold cross-validation.

:func:`minimize_many` runs :func:`~bilevel.hpo.minimize` from several starting points (random
restarts: :func:`random_starts`; a grid: :func:`grid_starts`) and :func:`cross_validate`
takes the K-fold hypergradient, one fold per task. Both accept ``executor=`` (``None``: in
this process, one after the other; ``"local"``, a ``dask.distributed.Client``, a
``concurrent.futures`` executor: see :mod:`bilevel.outer.executor`), send the problem and
the data to the workers once, and combine the results in a fixed order, so every executor
gives the sequential result bit for bit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..api import hypergrad
from ..backend import namespace, to_numpy
from ..methods.base import HypergradError, HypergradResult, HypergradWarning
from ..outer import Checkpointing
from ..outer.executor import open_executor
from ..problem import BilevelProblem
from ..validation import integer
from .minimize import HPOResult, minimize

__all__ = ["CrossValidation", "Restarts", "cross_validate", "fold_indices", "grid_starts",
           "minimize_many", "random_starts"]


# ------------------------------------------------------------------ starting points
def random_starts(low: Any, high: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` starting points drawn uniformly in the box ``[low, high]`` (random restarts).

    ``low`` and ``high`` are numbers or arrays of the shape of λ; returns ``(n, *shape)``
    drawn by ``numpy.random.default_rng(seed)``.
    """
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if not np.all(low < high):
        raise ValueError(f"random_starts needs low < high, got low={low}, high={high}")
    n = integer(1)("n", n)
    return np.random.default_rng(seed).uniform(low, high, size=(n,) + np.broadcast(low, high).shape)


def grid_starts(*axes: Sequence[float]) -> np.ndarray:
    """The points of the grid ``axes[0] × axes[1] × …``, one per row ``(∏ len(axis), m)``,
    in lexicographic order (the last axis varies fastest)."""
    if not axes:
        raise ValueError("grid_starts needs at least one axis of values")
    mesh = np.meshgrid(*(np.asarray(a, dtype=float) for a in axes), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


# ------------------------------------------------------------------ restarts
@dataclass
class Restarts:
    """The runs of :func:`minimize_many`, in the order of the starting points.

    Attributes
    ----------
    results : list of HPOResult
        One :func:`~bilevel.hpo.minimize` result per starting point.
    best : int or None
        Index of the run with the lowest ``best_value`` (the first on ties; ``None`` when
        no run reached a finite value).
    """

    results: list[HPOResult]
    best: int | None

    @property
    def best_result(self) -> HPOResult | None:
        """The best run's result."""
        return None if self.best is None else self.results[self.best]

    @property
    def best_lam(self) -> Any:
        """The λ of lowest outer value over all runs."""
        return None if self.best is None else self.results[self.best].best_lam

    @property
    def best_value(self) -> float:
        """The lowest outer value over all runs (NaN when none is finite)."""
        return float("nan") if self.best is None else float(self.results[self.best].best_value)


def _per_run(checkpointing: Checkpointing | None, i: int) -> Checkpointing | None:
    """Run ``i``'s checkpoint file: ``name-i.ext`` beside the given ``name.ext``."""
    if checkpointing is None or checkpointing.path is None:
        return checkpointing
    root, ext = os.path.splitext(os.fspath(checkpointing.path))
    return replace(checkpointing, path=f"{root}-{i}{ext}")


@dataclass(frozen=True)
class _Search:
    """What every run of :func:`minimize_many` shares (sent to the workers once)."""

    problem: BilevelProblem
    starts: np.ndarray
    w0: Any
    options: dict

    def run(self, i: int) -> HPOResult:
        options = dict(self.options)
        if "checkpointing" in options:
            options["checkpointing"] = _per_run(options["checkpointing"], i)
        return minimize(self.problem, self.starts[i], self.w0, **options)


def _minimize_one(i: int, *, search: _Search) -> HPOResult:
    return search.run(i)


def _best(results: list[HPOResult]) -> int | None:
    values = np.array([float(r.best_value) for r in results])
    finite = np.isfinite(values)
    return int(np.flatnonzero(finite)[np.argmin(values[finite])]) if finite.any() else None


def minimize_many(problem: BilevelProblem, starts: Any, w0: Any = None, *, executor: Any = None,
                  **options: Any) -> Restarts:
    """:func:`~bilevel.hpo.minimize` from every starting point in ``starts``, each on a worker.

    Parameters
    ----------
    problem : BilevelProblem
        The problem (picklable: the problems of :mod:`bilevel.hpo.problems` are).
    starts : array ``(k, *shape of λ)``
        Starting points, e.g. :func:`random_starts` or :func:`grid_starts`.
    w0 : array, optional
        Inner starting point of every run.
    executor : optional
        Where the runs go (:mod:`bilevel.outer.executor`; ``None``: here, in order).
    **options
        Keyword arguments of :func:`~bilevel.hpo.minimize` (``dynamics``, ``method``,
        ``steps``, ``transform``, ``seed`` ...), the same for every run; a
        ``checkpointing`` file ``name.ext`` becomes ``name-i.ext`` for run ``i``.

    Returns
    -------
    Restarts
        All results in the order of ``starts``, and the best. The results equal those of
        ``[minimize(problem, s, w0, **options) for s in starts]`` bit for bit.

    Notes
    -----
    Cost: ``k`` runs of :func:`~bilevel.hpo.minimize`, ``k / workers`` in sequence;
    the problem and its data are sent to each worker once.
    """
    starts = np.asarray(to_numpy(starts), dtype=float)
    if starts.ndim < 2 or starts.shape[0] < 1:
        raise ValueError(f"starts must hold one starting point per row, shape (k, m); got "
                         f"shape {starts.shape}")
    with open_executor(executor) as runner:
        search = runner.put(_Search(problem, starts, w0, options))
        results = runner.map(_minimize_one, range(starts.shape[0]), search=search)
    return Restarts(results=list(results), best=_best(results))


# ------------------------------------------------------------------ cross-validation
def fold_indices(n: int, folds: int = 5,
                 seed: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` row indices of the ``folds`` folds of ``n`` rows.

    The rows (shuffled by ``numpy.random.default_rng(seed)`` unless ``seed`` is None) are
    cut into ``folds`` consecutive blocks of near-equal size; fold ``k`` validates on block
    ``k`` and trains on the others. Indices are sorted.
    """
    n, folds = integer(2)("n", n), integer(2)("folds", folds)
    if folds > n:
        raise ValueError(f"folds must be at most the number of rows {n}, got {folds}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    blocks = np.array_split(order, folds)
    return [(np.sort(np.concatenate(blocks[:k] + blocks[k + 1:])), np.sort(block))
            for k, block in enumerate(blocks)]


class CrossValidation(HypergradResult):
    """Result of :func:`cross_validate`: the fold mean, and each fold's result.

    Attributes
    ----------
    value : float
        ``(1/K) Σ_k f_k``, the outer objective averaged over the folds.
    grad : array
        ``(1/K) Σ_k ∇_λ f_k``, summed in fold order.
    folds : list of HypergradResult
        Each fold's :func:`bilevel.hypergrad` result.
    success : bool
        Every fold's diagnostics passed.
    message : str
        ``"ok"``, or the first failing fold's message.
    """


@dataclass(frozen=True)
class _Folds:
    """What every fold of :func:`cross_validate` shares (sent to the workers once)."""

    build: Callable[..., BilevelProblem]
    X: Any
    y: Any
    indices: list
    lam: Any
    w0: Any
    dynamics: Any
    method: Any

    def fold(self, k: int) -> HypergradResult:
        train, val = self.indices[k]
        xp = namespace(self.X)
        tr, va = xp.asarray(train), xp.asarray(val)
        problem = self.build(self.X[tr], self.y[tr], self.X[va], self.y[va])
        return hypergrad(problem, self.lam, self.w0, dynamics=self.dynamics,
                         method=self.method, on_failure="ignore")


def _fold_one(k: int, *, folds: _Folds) -> HypergradResult:
    return folds.fold(k)


def _fold_mean(results: list[HypergradResult], key: str) -> Any:
    total = results[0][key]
    for res in results[1:]:
        total = total + res[key]
    return total / len(results)


def cross_validate(build: Callable[..., BilevelProblem], X: Any, y: Any, lam: Any,
                   w0: Any = None, *, folds: int = 5, seed: int | None = None,
                   dynamics: Any = None, method: Any = None, executor: Any = None,
                   on_failure: str = "warn") -> CrossValidation:
    """K-fold cross-validated outer objective and its hypergradient, one fold per task.

    ::

        F_CV(λ) = (1/K) Σ_k f(w_k(λ), λ; fold k)      ∇F_CV = (1/K) Σ_k ∇_λ f_k

    where fold ``k`` trains on all rows but block ``k`` of :func:`fold_indices` and
    validates on block ``k``.

    Parameters
    ----------
    build : callable
        ``build(X_train, y_train, X_val, y_val) -> BilevelProblem``, e.g.
        :func:`bilevel.hpo.problems.ridge` (picklable: a module-level function).
    X, y : arrays ``(N, ...)``, ``(N, ...)``
        All the data; the folds cut their rows.
    lam, w0
        Hyperparameters and inner starting point (the same for every fold).
    folds, seed
        Number of folds ``K`` and the shuffle of the rows (``None``: in order).
    dynamics, method
        As in :func:`bilevel.hypergrad`.
    executor : optional
        Where the folds run (:mod:`bilevel.outer.executor`; ``None``: here, in order).
    on_failure : {"warn", "raise", "ignore"}
        What a fold whose diagnostics failed does (as in :func:`bilevel.hypergrad`).

    Returns
    -------
    CrossValidation
        ``value``, ``grad`` (fold means, summed in fold order: the same for every
        executor), ``folds``, ``success``, ``message``.

    Notes
    -----
    Cost: ``K`` hypergradients on ``(K−1)/K`` of the rows, ``K / workers`` in sequence;
    ``X`` and ``y`` are sent to each worker once.
    """
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_failure must be 'warn', 'raise' or 'ignore', got {on_failure!r}")
    indices = fold_indices(int(X.shape[0]), folds, seed)
    with open_executor(executor) as runner:
        shared = runner.put(_Folds(build, X, y, indices, lam, w0, dynamics, method))
        results = list(runner.map(_fold_one, range(len(indices)), folds=shared))
    failed = [r for r in results if not r.success]
    out = CrossValidation(value=_fold_mean(results, "value"), grad=_fold_mean(results, "grad"),
                          folds=results, success=not failed,
                          message=str(failed[0].message) if failed else "ok")
    if failed and on_failure == "raise":
        raise HypergradError(f"cross_validate: fold {results.index(failed[0])} failed: "
                             f"{out.message}", out)
    if failed and on_failure == "warn":
        warnings.warn(f"cross_validate: {len(failed)} of {len(results)} folds failed their "
                      f"diagnostics: {out.message}", HypergradWarning, stacklevel=2)
    return out
