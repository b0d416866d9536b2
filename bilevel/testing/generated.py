"""The :class:`GeneratedProblem` record and the random matrices the strategies draw.

A generated problem is a :class:`~bilevel.problem.BilevelProblem` together with a point λ,
a starting point, a suggested inner solver (``dynamics``) and the reference hypergradients
that the theory gives for it, so a test reads::

    gen = data.draw(quadratic_problems())
    res = hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics, method=Reverse())
    np.testing.assert_allclose(res.grad, gen.references["unrolled"], rtol=1e-8)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend as _backend
from ..dynamics import Dynamics
from ..problem import BilevelProblem

__all__ = ["GeneratedProblem", "random_orthogonal", "random_spd", "spectrum"]


@dataclass
class GeneratedProblem:
    """A bilevel problem with known answers.

    Attributes
    ----------
    problem : BilevelProblem
        The objectives, written with :mod:`bilevel.numpy` (run on NumPy and CuPy).
    lam : array
        Hyperparameters λ, ``(m,)`` or ``(B, m)``, on the requested backend and dtype.
    w0 : array or None
        Starting point ``(n,)`` or ``(B, n)``; ``None`` when the problem has an ``init``
        map (``w0 = init(λ)``).
    dynamics : Dynamics
        The inner solver the ``"unrolled"`` (and ``"flow"``) references are computed for.
        (Formerly ``inner``; that attribute still reads it, with a ``DeprecationWarning``.)
    references : dict[str, array]
        Reference answers, shape of ``lam``: ``"exact"`` (∇F(λ) at the exact inner
        solution, implicit function theorem), ``"unrolled"`` (∇F_K(λ), the exact derivative
        of the K-step inner solver ``dynamics``), ``"flow"`` (gradient flow in continuous
        time), and the matching inner points ``"w_star"``, ``"w_unrolled"``, ``"w_flow"``
        (shape of ``w``). Each strategy documents which keys it provides.
    info : dict
        Sizes and conditioning: ``n``, ``m``, ``batch``, ``condition_number`` (of the
        inner Hessian), ``contraction`` (the rate q of the inner solver; ``q**steps``
        bounds the gap between ``"unrolled"`` and ``"exact"`` up to a factor),
        ``steps``, ``lr``, ``dtype``, ``backend``, ``kind``.
    """

    problem: BilevelProblem
    lam: Any
    w0: Any
    dynamics: Dynamics
    references: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def inner(self) -> Dynamics:
        """Deprecated name of :attr:`dynamics` (``inner`` names the inner objective)."""
        warnings.warn(
            "GeneratedProblem.inner is deprecated: the inner solver is GeneratedProblem.dynamics",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.dynamics

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={self.info[k]}" for k in ("n", "m", "batch") if k in self.info)
        kappa = self.info.get("condition_number")
        extra = f", condition_number={kappa:.3g}" if kappa is not None else ""
        return (
            f"GeneratedProblem({self.info.get('kind', 'problem')}: {sizes}{extra}, "
            f"dynamics={self.dynamics!r}, references={sorted(self.references)})"
        )


def spectrum(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """``n`` eigenvalues log-uniform in ``[low, high]``, both ends included when ``n ≥ 2``.

    Pinning the ends makes the condition number exactly ``high / low``.
    """
    if n == 1:
        return np.array([low])
    inner = np.exp(rng.uniform(np.log(low), np.log(high), size=n - 2))
    return np.concatenate([[low], inner, [high]])


def random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Haar-random orthogonal ``n × n`` matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def random_spd(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """A symmetric positive definite matrix with eigenvalues in ``[low, high]``."""
    U = random_orthogonal(rng, n)
    return (U * spectrum(rng, n, low, high)) @ U.T


def stack(per_problem: Sequence[dict[str, np.ndarray]], batch: int | None) -> dict:
    """Stack per-problem arrays along a leading batch axis (or unwrap a single problem)."""
    if batch is None:
        return dict(per_problem[0])
    return {k: np.stack([p[k] for p in per_problem]) for k in per_problem[0]}


def to_target(tree: Any, backend: str, dtype: Any) -> Any:
    """Every array of a dict/list/tuple as an array of ``backend`` and ``dtype``."""
    if isinstance(tree, dict):
        return {k: to_target(v, backend, dtype) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_target(v, backend, dtype) for v in tree)
    if isinstance(tree, np.ndarray):
        return _backend.asarray(tree, backend=backend, dtype=dtype)
    return tree


def check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy floating dtype (float32 or float64), or a clear error."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from err
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dt}")
    return dt
