"""Optimality conditions ``F(w*, λ) = 0`` that define the inner solution implicitly.

Implicit differentiation needs only a map ``F`` with ``F(w*(λ), λ) = 0`` and an invertible
Jacobian ``J = ∂_w F``; the implicit function theorem then gives ``dw*/dλ = −J⁻¹ ∂_λ F`` and::

    ∇F(λ) = ∇_λ f − (∂_λ F)ᵀ v,      Jᵀ v = ∇_w f

(:class:`bilevel.methods.Implicit`, ``condition=``). The conditions here:

=========================  ===============================  ======================  =========
condition                  ``F(w, λ)``                      ``J``                   solver
=========================  ===============================  ======================  =========
:class:`Stationarity`      ``∇_w g(w, λ)`` (the default)    ``H``, symmetric        CG
:class:`Root`              ``fun(w, λ, data)``               any                     GMRES
:class:`FixedPoint`        ``w − T(w, λ, data)``             ``I − ∂_w T``           GMRES
:class:`ProximalGradient`  ``w − prox(w − η∇h)``             non-symmetric           GMRES
=========================  ===============================  ======================  =========

A condition only evaluates ``F`` and builds a :class:`ConditionLinearization` at a point:
``residual`` (``F`` there), ``transpose_matvec(u) = Jᵀu`` and ``mixed_vjp(u) = (∂_λ F)ᵀu``,
one reverse pass each over a trace of ``F`` taken once. The fixed point is the root of
``w − T`` (one code path, as in JAXopt's ``custom_fixed_point``). ``symmetric`` tells the
method which solver fits: CG for a symmetric positive definite ``J``, GMRES otherwise.

With a leading batch axis (``w`` of shape ``(B, n)``, ``λ`` of shape ``(B, m)``) ``F`` maps
each problem's row to a row: ``F`` returns ``(B, n)``.

References
----------
M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-López, F. Pedregosa,
J.-P. Vert, "Efficient and modular implicit differentiation", NeurIPS 2022.
Q. Bertrand, Q. Klopfenstein, M. Blondel, S. Vaiter, A. Gramfort, J. Salmon, "Implicit
differentiation of Lasso-type models for hyperparameter optimization", ICML 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from autograd.core import make_vjp

from . import numpy as bnp
from .backend import namespace, unbox
from .nonfinite import TRACE_ADVICE, TracingError, traced_vjp
from .oracles import Linearization, one_like
from .problem import BilevelProblem
from .validation import Validated, boolean, function, option, positive

__all__ = [
    "BlockOperator",
    "Condition",
    "ConditionLinearization",
    "FixedPoint",
    "ProximalGradient",
    "Root",
    "Stationarity",
    "soft_threshold",
]


class ConditionLinearization(Protocol):
    """Products with the Jacobians of ``F`` at one point ``(w, λ)``."""

    residual: Any  # F(w, λ), shape of w

    def transpose_matvec(self, u: Any) -> Any:
        """``(∂_w F)ᵀ u``, shape of ``w``."""

    def mixed_vjp(self, u: Any) -> Any:
        """``(∂_λ F)ᵀ u``, shape of ``λ``."""


class Condition:
    """Base class: an optimality condition ``F(w, λ) = 0`` of the inner problem.

    Subclasses implement :meth:`linearize` (and :meth:`residual` when ``F`` alone is
    cheaper). ``symmetric`` says whether ``∂_w F`` is symmetric positive definite at a
    solution, so that conjugate gradients apply; ``symbol`` names ``F`` in messages.
    """

    name: ClassVar[str] = "condition"
    symmetric: ClassVar[bool] = False
    symbol: ClassVar[str] = "F"

    def linearize(self, problem: BilevelProblem, w: Any, lam: Any,
                  data: Any = None) -> ConditionLinearization:
        """Trace ``F`` once at ``(w, λ)``; products with its Jacobians then cost a pass each."""
        raise NotImplementedError(f"{type(self).__name__} must implement linearize")

    def residual(self, problem: BilevelProblem, w: Any, lam: Any, data: Any = None) -> Any:
        """``F(w, λ)``, shape of ``w``."""
        return self.linearize(problem, w, lam, data).residual

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BlockOperator:
    """A matvec ``u ↦ Jᵀu`` that can also map a stack of vectors ``(k, n)`` in one call.

    ``block(U)`` evaluates the problem on a batch of ``k`` copies of the point (the batch
    convention of :class:`~bilevel.problem.BilevelProblem`) and returns the ``k`` products:
    :class:`~bilevel.linalg.Direct` materialises ``J`` with a few such calls instead of
    ``n`` matvecs, and falls back to matvecs when the objective has no batch axis.
    """

    def __init__(self, apply: Callable[[Any], Any], block: Callable[[Any], Any]) -> None:
        self._apply, self.block = apply, block

    def __call__(self, u: Any) -> Any:
        return self._apply(u)


def _copies(x: Any, k: int) -> Any:
    """``k`` copies of ``x`` along a new leading axis (a broadcast view)."""
    return namespace(x).broadcast_to(x, (k,) + tuple(x.shape))


class _Stationary:
    """:class:`ConditionLinearization` of ``∇_w g``: the problem's own linearization."""

    def __init__(self, lin: Linearization, problem: BilevelProblem, data: Any) -> None:
        self.residual = lin.grad
        self.transpose_matvec = lin.hvp  # H is symmetric: Hᵀu = H u
        if len(lin.w.shape) == 1:
            self.transpose_matvec = BlockOperator(lin.hvp, lambda U: problem.inner_hvp(
                _copies(lin.w, U.shape[0]), _copies(lin.lam, U.shape[0]), U, data))
        self.mixed_vjp = lin.mixed_vjp


@dataclass(frozen=True, repr=False)
class Stationarity(Condition):
    """``F = ∇_w g``: the inner solution is a stationary point of ``g`` (the default).

    ``J = H = ∇²_ww g`` (symmetric, positive definite at a strict minimum), ``∂_λ F = M``;
    the products are the problem's oracles (:meth:`BilevelProblem.linearize`), user-supplied
    ones included. Cost of :meth:`linearize`: one gradient (the trace); one HVP a product.
    """

    name: ClassVar[str] = "stationarity"
    symmetric: ClassVar[bool] = True
    symbol: ClassVar[str] = "∇_w g"

    def linearize(self, problem: BilevelProblem, w: Any, lam: Any,
                  data: Any = None) -> ConditionLinearization:
        return _Stationary(problem.linearize(w, lam, data), problem, data)

    def residual(self, problem: BilevelProblem, w: Any, lam: Any, data: Any = None) -> Any:
        return problem.inner_grad(w, lam, data=data)


class _Traced:
    """:class:`ConditionLinearization` of a map ``F(w, λ, data)`` traced by autograd.

    ``w ↦ F`` is traced at construction (its value is ``residual``); ``λ ↦ F`` lazily, on
    the first :meth:`mixed_vjp`. Products count as HVPs in the problem's counts.
    """

    def __init__(self, fun: Callable, problem: BilevelProblem, w: Any, lam: Any,
                 data: Any) -> None:
        problem.check_point(w, lam)
        self._fun, self._problem, self.w, self.lam = fun, problem, w, lam
        self._data = problem.resolve_data(data)
        self._vjp_w, self.residual = traced_vjp(lambda w_: fun(w_, lam, self._data), w)
        self._vjp_lam = None
        problem.counts.grad += 1
        shape = tuple(getattr(unbox(self.residual), "shape", ()))
        if shape != tuple(w.shape):
            raise ValueError(
                f"the optimality condition must return an array of the shape of w "
                f"{tuple(w.shape)}, got {shape}"
            )
        if self._vjp_w is None:
            raise TracingError(
                "the optimality condition F(w, lam, data) does not depend on w through traced "
                f"operations, so ∂_w F = 0 is singular. {TRACE_ADVICE}"
            )
        problem.require_finite("optimality residual F(w, λ)", self.residual)
        if len(w.shape) == 1:
            self.transpose_matvec = BlockOperator(self.transpose_matvec, self._block)

    def transpose_matvec(self, u: Any) -> Any:
        """``(∂_w F)ᵀ u``: one reverse pass over the trace of ``w ↦ F``."""
        self._problem.counts.hvp += 1
        return self._problem.require_finite("(∂_w F)ᵀ u", self._vjp_w(u))

    def _block(self, U: Any) -> Any:
        """``(∂_w F)ᵀ uᵢ`` for the rows of ``U``: ``F`` traced on ``k`` copies of the point."""
        k = U.shape[0]
        lam = _copies(self.lam, k)
        vjp, _ = traced_vjp(lambda W: self._fun(W, lam, self._data), _copies(self.w, k))
        self._problem.counts.hvp += 1
        return vjp(U)

    def mixed_vjp(self, u: Any) -> Any:
        """``(∂_λ F)ᵀ u``: one reverse pass (the first one traces ``λ ↦ F``)."""
        if self._vjp_lam is None:
            self._vjp_lam, _ = traced_vjp(lambda l_: self._fun(self.w, l_, self._data),
                                          self.lam)
        self._problem.counts.hvp += 1
        if self._vjp_lam is None:  # F does not depend on λ
            return 0 * self.lam
        return self._problem.require_finite("(∂_λ F)ᵀ u", self._vjp_lam(u))


class _Mapped(Condition):
    """A condition given by a traceable map: :meth:`function` ``(w, λ, data) -> F``."""

    def function(self, w: Any, lam: Any, data: Any) -> Any:
        """``F(w, λ, data)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement function")

    def linearize(self, problem: BilevelProblem, w: Any, lam: Any,
                  data: Any = None) -> ConditionLinearization:
        return _Traced(self.function, problem, w, lam, data)


@dataclass(frozen=True, repr=False)
class Root(Validated, _Mapped):
    """``F = fun(w, λ, data)``: the inner solution is a root of a user map (``custom_root``).

    Parameters
    ----------
    fun : callable
        ``fun(w, lam, data) -> array`` of the shape of ``w``, written with
        ``autograd.numpy`` or :mod:`bilevel.numpy` (it is differentiated by autograd).
        ``data`` is the problem's data.
    symmetric : bool
        Declare ``∂_w F`` symmetric positive definite at a solution (CG is then chosen);
        default ``False`` (GMRES).

    Notes
    -----
    Cost of :meth:`linearize`: one traced evaluation of ``F``; each product ``Jᵀu`` one
    reverse pass over it; ``(∂_λ F)ᵀ u`` one more trace and pass.
    """

    name: ClassVar[str] = "root"
    fun: Callable = option(None, check=function)
    symmetric: bool = option(False, check=boolean, kw_only=True)

    def function(self, w: Any, lam: Any, data: Any) -> Any:
        return self.fun(w, lam, data)

    def __repr__(self) -> str:
        sym = ", symmetric=True" if self.symmetric else ""
        return f"{type(self).__name__}({getattr(self.fun, '__name__', 'fun')}{sym})"


@dataclass(frozen=True, repr=False)
class FixedPoint(Root):
    """``F = w − T(w, λ, data)``: the inner solution is a fixed point ``w* = T(w*, λ)``.

    ``J = I − ∂_w T``, invertible when ``T`` is a contraction near ``w*``; the hypergradient
    does not depend on which ``T`` with the same fixed points is used. ``fun`` is ``T``
    (``custom_fixed_point`` of JAXopt).
    """

    name: ClassVar[str] = "fixed-point"

    def function(self, w: Any, lam: Any, data: Any) -> Any:
        return w - self.fun(w, lam, data)


def soft_threshold(z: Any, t: Any) -> Any:
    """``S_t(z) = sign(z)·max(|z| − t, 0)``, the proximal map of ``t‖·‖₁``; differentiable.

    Derivatives (autograd): ``∂S/∂z = 1{|z| > t}`` (the support indicator), ``∂S/∂t =
    −sign(z)·1{|z| > t}``.
    """
    return bnp.where(bnp.abs(z) > t, z - t * bnp.sign(z), 0 * z)


def _smooth_grad(smooth: Callable, w: Any, lam: Any, data: Any) -> Any:
    """``∇_w h(w, λ)`` by autograd, itself traceable (higher-order differentiation)."""

    def total(w_: Any) -> Any:
        value = smooth(w_, lam, data)
        return value if len(w_.shape) == 1 else bnp.sum(value)

    vjp, _ = make_vjp(total, w)
    return vjp(one_like(w))


@dataclass(frozen=True, repr=False)
class ProximalGradient(Validated, _Mapped):
    """The proximal-gradient fixed point of ``h(w, λ) + ‖c(λ) ⊙ w‖₁`` (Lasso, elastic net).

    ``T(w, λ) = S_{η c(λ)}(w − η ∇_w h(w, λ))`` with the soft threshold
    :func:`soft_threshold`, so ``F = w − T``. Differentiated by autograd: ``∂_w T =
    D (I − η ∇²h)`` with ``D = diag(1{|zᵢ| > η cᵢ})`` the support indicator, so on the
    support ``S`` the system reduces to ``∇²_{SS} h`` and off it ``J = I``: the
    support-restricted formula of Bertrand et al. (2020).

    Parameters
    ----------
    smooth : callable
        ``h(w, lam, data) -> scalar`` (or ``(B,)``), the smooth part (e.g. the mean squared
        error plus an ℓ2 term), traceable by autograd twice.
    l1 : callable
        ``c(lam, data) -> array`` broadcastable to ``w`` (scalar for the Lasso), the ℓ1
        weights, ``≥ 0``.
    step : float
        ``η > 0``. The fixed points, hence the hypergradient, do not depend on ``η``; it
        scales the Jacobian (``η ≈ 1/L`` with ``L`` the Lipschitz constant of ``∇h`` keeps
        it well conditioned).

    Examples
    --------
    The Lasso ``(1/2N)‖Xw − y‖² + e^λ‖w‖₁`` (sklearn's scaling)::

        ProximalGradient(smooth=lambda w, lam, d: 0.5 * bnp.mean((d[0] @ w - d[1]) ** 2),
                         l1=lambda lam, d: bnp.exp(lam[0]))
    """

    name: ClassVar[str] = "proximal-gradient"
    smooth: Callable = option(None, check=function)
    l1: Callable = option(None, check=function)
    step: float = option(1.0, check=positive)

    def function(self, w: Any, lam: Any, data: Any) -> Any:
        return w - self.prox_step(w, lam, data)

    def prox_step(self, w: Any, lam: Any, data: Any) -> Any:
        """``T(w, λ) = S_{η c(λ)}(w − η ∇_w h(w, λ))``."""
        z = w - self.step * _smooth_grad(self.smooth, w, lam, data)
        return soft_threshold(z, self.step * self.l1(lam, data))

    def __repr__(self) -> str:
        name = getattr(self.smooth, "__name__", "h")
        return f"ProximalGradient(smooth={name}, l1={getattr(self.l1, '__name__', 'c')}, " \
               f"step={self.step:g})"
