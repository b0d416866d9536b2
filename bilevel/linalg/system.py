"""The linear system ``(A + δI) x = b`` that every solver takes, and the solver base class.

A solver is a frozen dataclass of its options; calling it solves one system or a batch::

    solver(matvec, b, x0=None, damping=0.0) -> SolveResult

``matvec`` maps an array of the shape of ``b`` to an array of the same shape. ``b`` is a
vector ``(n,)`` or a batch ``(B, n)`` of independent problems; a batched ``matvec`` acts on
each row with that problem's matrix, and every reduction (dot products, norms, convergence
tests) runs along the last axis. The helpers here check the system once, apply the damped
operator, and hold the per-problem arithmetic the solvers share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from bilevel.backend import device, namespace
from bilevel.linalg.result import SolveResult
from bilevel.validation import Validated, nonnegative

__all__ = [
    "LinearSolver",
    "Matvec",
    "check_system",
    "column",
    "damped_operator",
    "dot",
    "start",
    "zero_solution",
]

Array = Any
Matvec = Callable[[Array], Array]


class LinearSolver(Validated):
    """Base of the solvers: ``solver(matvec, b, x0=None, damping=0.0) -> SolveResult``.

    Subclasses are frozen dataclasses whose fields are the solver's options (checked once,
    at construction) and register themselves under the kind ``"solver"`` by ``name``.
    """

    name: ClassVar[str]

    def __call__(
        self, matvec: Matvec, b: Array, x0: Array | None = None, damping: float = 0.0
    ) -> SolveResult:
        """Solve ``(A + δI) x = b`` with ``A v = matvec(v)``, ``δ = damping``, from ``x0``."""
        raise NotImplementedError


def check_system(b: Array, x0: Array | None, damping: float) -> tuple[Any, float]:
    """The namespace of ``b`` and ``x0`` and the checked ``damping``; errors say what is wrong."""
    xp = namespace(b, x0, names=("b", "x0"))
    if not hasattr(b, "shape") or not hasattr(b, "dtype"):
        raise TypeError(f"b must be an array of shape (n,) or (B, n), got {type(b).__name__}")
    if b.ndim not in (1, 2) or b.shape[-1] == 0:
        raise ValueError(f"b must have shape (n,) or (B, n) with n >= 1, got shape {b.shape}")
    if not xp.isdtype(b.dtype, "real floating"):
        raise TypeError(f"b must have a real floating dtype (float32 or float64), got {b.dtype}")
    if x0 is not None and tuple(x0.shape) != tuple(b.shape):
        raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
    return xp, nonnegative("damping", damping)


def damped_operator(matvec: Matvec, b: Array, damping: float) -> Callable[[Array], Array]:
    """``v ↦ (A + δI) v``, checking that ``matvec`` returns arrays of the shape of ``b``."""
    if not callable(matvec):
        raise TypeError(f"matvec must be callable (v -> A v), got {type(matvec).__name__}")
    shape = tuple(b.shape)

    def apply(v: Array) -> Array:
        out = matvec(v)
        if tuple(getattr(out, "shape", ())) != shape:
            raise ValueError(
                f"matvec must return an array of the shape of b {shape}, "
                f"got {tuple(getattr(out, 'shape', ()))}"
            )
        return out + damping * v if damping else out

    return apply


def dot(xp: Any, u: Array, v: Array) -> Array:
    """Per-problem inner product ``Σᵢ uᵢvᵢ`` along the last axis: shape ``()`` or ``(B,)``."""
    return xp.sum(u * v, axis=-1)


def column(a: Array) -> Array:
    """Per-problem scalar broadcast against vectors: ``()`` stays, ``(B,)`` -> ``(B, 1)``."""
    return a[..., None] if a.ndim else a


def start(xp: Any, b: Array, b_norm: Array, x0: Array | None) -> Array:
    """The first iterate: ``x0`` (zero where ``b = 0``, whose solution is zero), else zero."""
    if x0 is None:
        return xp.zeros_like(b)
    return xp.where(column(b_norm > 0), xp.asarray(x0, dtype=b.dtype), xp.zeros_like(b))


def zero_solution(xp: Any, b: Array, b_norm: Array, label: str) -> SolveResult:
    """``b = 0`` for every problem: ``x = 0`` solves it exactly, with no matvec."""
    return SolveResult.of(
        xp.zeros_like(b),
        xp.ones(b_norm.shape, dtype=xp.bool, device=device(b)),
        iterations=0,
        residual_norm=xp.zeros_like(b_norm),
        b_norm=b_norm,
        residual_history=[0.0],
        message=f"{label}: b = 0, returned x = 0 (exact)",
        n_matvec=0,
    )
