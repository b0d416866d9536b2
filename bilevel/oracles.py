"""Derivative oracles of a bilevel problem: autograd derivation, linearizations, counts.

Solvers never see autodiff graphs: they call the oracles below, derived here with autograd
from the problem's objectives or taken from the user's ``oracles=`` dictionary.

============================  ======================================  ========================
oracle                        value                                   cost
============================  ======================================  ========================
``inner_grad(w, λ)``          ∇_w g                                   1 gradient
``inner_hvp(w, λ, v)``        H v = ∇²_ww g · v                       1 HVP (2–4 grads)
``inner_mixed_vjp(w, λ, u)``  Mᵀu = ∂_λ⟨∇_w g, u⟩                     1 HVP
``inner_mixed_jvp(w, λ, e)``  M e = ∂_ε ∇_w g(w, λ + εe)              1 JVP (fwd-over-rev)
``inner_grad_jvp(w,λ,z,e)``   H z + M e                               1 JVP
``outer_grads(w, λ)``         (∇_w f, ∇_λ f)                          1 gradient
``outer_value_and_grads``     (f, ∇_w f, ∇_λ f)                       1 gradient
``linearize(w, λ)``           ∇_w g and closures for many H u, Mᵀu    1 trace, then 1 HVP each
============================  ======================================  ========================

With a leading batch axis (``w`` of shape ``(B, n)`` and ``λ`` of shape ``(B, m)``) the
objectives return ``(B,)`` values; the values are summed for differentiation (the problems
are independent, so derivatives separate) and every oracle returns per-problem results.

``inner_grad`` is an autograd primitive whose derivatives are the oracles themselves
(VJP ``(H u, Mᵀu)``, JVP ``H z + M e``): differentiating a map that calls it (an inner
step, see :class:`bilevel.dynamics.Dynamics`) uses user-supplied oracles where given and
counts its products in :class:`OracleCounts`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from autograd.core import defjvp_argnums, defvjp_argnums, make_vjp
from autograd.differential_operators import make_jvp
from autograd.tracer import isbox, primitive

from .backend import device, is_array, namespace, unbox
from .nonfinite import (
    TRACE_ADVICE,
    NonFiniteError,
    TracingError,
    all_finite,
    defer_check,
    has_box,
    nonfinite_message,
    traced_vjp,
)

__all__ = [
    "ORACLE_NAMES",
    "DerivedOracles",
    "Linearization",
    "OracleCounts",
    "TRACE_ADVICE",
    "TracingError",
    "check_user_output",
    "has_box",
    "traced_vjp",
]

ORACLE_NAMES = (
    "inner_grad",
    "inner_hvp",
    "inner_mixed_vjp",
    "inner_mixed_jvp",
    "outer_grads",
    "outer_value_and_grads",
)
"""Names of the oracles a user may supply. ``outer_value_and_grads(w, λ, data) -> (f, ∇_w f,
∇_λ f)`` replaces ``outer_grads`` when the value comes with the gradients' forward pass
(the value is otherwise one more evaluation of ``f``)."""


def check_user_output(name: str, out: Any, like: Any, arg: str) -> Any:
    """A user oracle's result must have the shape of ``arg`` (``w`` or ``lam``)."""
    shape = getattr(unbox(out), "shape", None)
    if shape is None or tuple(shape) != tuple(like.shape):
        raise ValueError(
            f"user oracle {name!r} returned "
            + ("a non-array" if shape is None else f"shape {tuple(shape)}")
            + f"; expected an array of the shape of {arg}, {tuple(like.shape)}"
        )
    return out


def one_like(w: Any) -> Any:
    """The scalar 1 in the dtype and namespace of ``w`` (the seed of a reverse pass)."""
    return namespace(w).asarray(1.0, dtype=unbox(w).dtype, device=device(w))


def _zero_if_none(t: Any, like: Any) -> Any:
    return 0 * like if t is None or (np.isscalar(t) and t == 0) else t


@dataclass
class OracleCounts:
    """Work done through the oracles: gradients, HVPs (incl. mixed VJPs), JVPs, traces."""

    grad: int = 0
    hvp: int = 0
    jvp: int = 0
    outer_grad: int = 0
    value: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Linearization:
    """Closures for repeated second-order products at one point ``(w, λ)``.

    The inner gradient map ``w ↦ ∇_w g(w, λ)`` is traced once; every call of :meth:`hvp`
    then costs one reverse pass over that trace (no re-tracing of ``g``). The mixed map
    ``(w, λ) ↦ ∇_w g`` is traced lazily on the first :meth:`mixed_vjp` or :meth:`vjp`.
    With ``trace=False`` nothing is traced (and ``grad`` is None) until a product is asked;
    both products then come from the ``(w, λ)`` trace (for callers that hold ∇_w g already).

    Attributes
    ----------
    grad : array or None
        ∇_w g(w, λ) at the point (None when built with ``trace=False``).
    """

    def __init__(
        self, problem: DerivedOracles, w: Any, lam: Any, data: Any = None, trace: bool = True
    ):
        problem.check_point(w, lam)
        self._problem = problem
        self.w, self.lam, self.data = w, lam, data
        self._user_hvp = problem.oracles.get("inner_hvp")
        self._user_mixed = problem.oracles.get("inner_mixed_vjp")
        self._vjp_w = None
        self._vjp_wl = None
        self.grad = None
        if not trace:
            return
        if self._user_hvp is None:
            self._vjp_w, self.grad = make_vjp(lambda w_: problem.grad_map(w_, lam, data), w)
            problem.counts.grad += 1
        else:
            self.grad = problem.inner_grad(w, lam, data=data)
        problem.require_finite("inner_grad", self.grad)

    def _user_data(self) -> Any:
        return self._problem.resolve_data(self.data)

    def hvp(self, v: Any) -> Any:
        """H v at the linearization point: one HVP."""
        p = self._problem
        if self._user_hvp is not None:
            p.counts.hvp += 1
            out = self._user_hvp(self.w, self.lam, v, self._user_data())
            check_user_output("inner_hvp", out, self.w, "w")
        elif self._vjp_w is None:
            out = self._pair(v)[0]
        else:
            p.counts.hvp += 1
            out = self._vjp_w(v)
        return p.require_finite("inner_hvp", out)

    def vjp(self, u: Any) -> tuple[Any, Any]:
        """(H u, Mᵀu) from one reverse pass over the traced gradient map."""
        p = self._problem
        if self._user_hvp is not None or self._user_mixed is not None:
            return self.hvp(u), self.mixed_vjp(u)
        hu, mu = self._pair(u)
        p.require_finite("inner_hvp", hu)
        p.require_finite("inner_mixed_vjp", mu)
        return hu, mu

    def _pair(self, u: Any) -> tuple[Any, Any]:
        """(H u, Mᵀu) from the lazily traced map (w, λ) ↦ ∇_w g, unchecked."""
        p = self._problem
        if self._vjp_wl is None:
            data = self.data
            point = (self.w, self.lam)
            self._vjp_wl, _ = traced_vjp(lambda wl: p.grad_map(wl[0], wl[1], data), point)
        p.counts.hvp += 1
        return self._vjp_wl(u)

    def mixed_vjp(self, u: Any) -> Any:
        """Mᵀu = ∂_λ⟨∇_w g, u⟩ at the linearization point: one HVP."""
        p = self._problem
        if self._user_mixed is not None:
            p.counts.hvp += 1
            out = self._user_mixed(self.w, self.lam, u, self._user_data())
            check_user_output("inner_mixed_vjp", out, self.lam, "lam")
            return p.require_finite("inner_mixed_vjp", out)
        return p.require_finite("inner_mixed_vjp", self._pair(u)[1])


# ---------------------------------------------------------------------- inner_grad primitive
@primitive
def _inner_grad(problem: DerivedOracles, w: Any, lam: Any, data: Any) -> Any:
    """∇_w g(w, λ) as an autograd primitive whose derivatives are the problem's oracles."""
    return problem.inner_grad(w, lam, data=data)


def _inner_grad_vjp(argnums: tuple, ans: Any, args: tuple, kwargs: dict) -> Callable:
    problem, w, lam, data = args
    lin = Linearization(problem, w, lam, data, trace=False)
    if argnums == (1,):
        return lambda u: (lin.hvp(u),)
    if argnums == (2,):
        return lambda u: (lin.mixed_vjp(u),)
    return lin.vjp


def _inner_grad_jvp(argnums: tuple, tangents: tuple, ans: Any, args: tuple, kwargs: dict) -> Any:
    problem, w, lam, data = args
    tan = dict(zip(argnums, tangents, strict=True))
    return problem.inner_grad_jvp(w, lam, tan.get(1), tan.get(2), data=data)[1]


defvjp_argnums(_inner_grad, _inner_grad_vjp)
defjvp_argnums(_inner_grad, _inner_grad_jvp)


# ---------------------------------------------------------------------- the oracles
class DerivedOracles:
    """The derivative oracles of a problem definition (mixin of ``BilevelProblem``).

    The definition provides the attributes ``oracles`` (user-supplied derivatives by name),
    ``counts`` (:class:`OracleCounts`), ``check_finite``, ``name`` and ``init``, and the
    methods ``check_point(w, lam)`` (validate a point), ``resolve_data(data)`` (the
    problem's data when ``data`` is None) and ``evaluate(which, w, lam, data)`` (``g`` or
    ``f`` with shape checks, uncounted). Everything else is derived here.
    """

    oracles: dict[str, Callable]
    counts: OracleCounts
    check_finite: bool
    name: str
    init: Callable | None

    # ------------------------------------------------------------------ checks
    def require_finite(self, what: str, value: Any) -> Any:
        """Return ``value``; raise :class:`NonFiniteError` naming ``what`` if it has NaN/inf.

        ``value`` may be a tuple of arrays. No-op when the problem has ``check_finite=False``.
        Cost: one reduction per array, and one host read per array, except for device
        arrays inside :class:`~bilevel.nonfinite.deferred_checks` (the methods' loops),
        whose flags stay on the device and are read once at the end of the loop.
        """
        if self.check_finite:
            vals = value if isinstance(value, (tuple, list)) else (value,)
            for v in vals:
                if v is None or not (isinstance(v, (float, np.generic)) or is_array(v)):
                    continue
                if not defer_check(what, self.name, v) and not all_finite(v):
                    raise NonFiniteError(what, nonfinite_message(what, self.name))
        return value

    def _user(self, name: str, like: Any, arg: str, *args: Any) -> Any:
        """Call the user oracle ``name(*args, data)`` and check its shape against ``like``."""
        *head, data = args
        out = self.oracles[name](*head, self.resolve_data(data))
        return check_user_output(name, out, like, arg)

    # ------------------------------------------------------------------ gradient map
    def grad_map(self, w: Any, lam: Any, data: Any = None) -> Any:
        """∇_w g(w, λ) by autograd, traceable (differentiate it for H and M): uncounted.

        With a batch axis the per-problem values of ``g`` are summed before differentiation.
        """

        def g_sum(w_: Any) -> Any:
            val = self.evaluate("inner", w_, lam, data)
            return val if len(w_.shape) == 1 else val.sum()

        vjp, _ = traced_vjp(g_sum, w)
        if vjp is None:
            raise TracingError(
                f"the inner objective of problem {self.name!r} does not depend on w through "
                f"traced operations, so its gradient would be exactly zero. {TRACE_ADVICE}"
            )
        return vjp(one_like(w))

    def untraced_lam(self, w: Any, lam: Any, data: Any = None) -> list[str]:
        """Which of ∇_w g, f and the init map change with λ but not through traced operations.

        A map whose value moves when λ does, while autograd's trace of it holds no λ (a
        NumPy call, ``float()`` or an unboxing on λ), has a derivative that is silently
        zero. Cost: one traced and one plain evaluation of each map (one gradient of g
        for ∇_w g) along a fixed random direction of λ; no reverse pass.
        """
        xp = namespace(lam)
        rng = np.random.default_rng(0)
        shift = xp.asarray(rng.standard_normal(tuple(lam.shape)), dtype=unbox(lam).dtype,
                           device=device(lam))
        moved = lam + 1e-3 * (1.0 + xp.abs(lam)) * shift
        probes = {"the inner gradient ∇_w g": lambda l_: self.grad_map(w, l_, data),
                  "the outer objective f": lambda l_: self.evaluate("outer", w, l_, data)}
        if self.init is not None:
            probes["the init map"] = self.init
        cut = []
        with warnings.catch_warnings():  # autograd warns "Output seems independent of input"
            warnings.simplefilter("ignore")
            for name, probe in probes.items():
                vjp, value = traced_vjp(probe, lam)
                if vjp is None and not bool(xp.all(probe(moved) == value)):
                    cut.append(name)
        return cut

    # ------------------------------------------------------------------ oracles
    def inner_grad(self, w: Any, lam: Any, data: Any = None) -> Any:
        """∇_w g(w, λ), shape of ``w``. Cost: one gradient.

        Differentiable by autograd through the oracles: its VJP is ``(H u, Mᵀu)`` (one HVP),
        its JVP ``H z + M e`` (one JVP).
        """
        if (isbox(w) or isbox(lam)) and not has_box(data):
            return _inner_grad(self, w, lam, data)
        self.check_point(w, lam)
        self.counts.grad += 1
        if "inner_grad" in self.oracles:
            out = self._user("inner_grad", w, "w", w, lam, data)
        else:
            out = self.grad_map(w, lam, data)
        return self.require_finite("inner_grad", out)

    def inner_hvp(self, w: Any, lam: Any, v: Any, data: Any = None) -> Any:
        """H v = ∇²_ww g(w, λ) v, shape of ``w``. Cost: one HVP (re-traces g)."""
        return Linearization(self, w, lam, data).hvp(v)

    def inner_mixed_vjp(self, w: Any, lam: Any, u: Any, data: Any = None) -> Any:
        """Mᵀu = ∂_λ⟨∇_w g(w, λ), u⟩, shape of ``λ``. Cost: one HVP."""
        if "inner_mixed_vjp" in self.oracles:
            self.check_point(w, lam)
            self.counts.hvp += 1
            out = self._user("inner_mixed_vjp", lam, "lam", w, lam, u, data)
            return self.require_finite("inner_mixed_vjp", out)
        self.counts.grad += 1
        return Linearization(self, w, lam, data).mixed_vjp(u)

    def inner_mixed_jvp(self, w: Any, lam: Any, e: Any, data: Any = None) -> Any:
        """M e = ∂_ε ∇_w g(w, λ + εe), shape of ``w``. Cost: one JVP (forward over reverse)."""
        if "inner_mixed_jvp" in self.oracles:
            self.check_point(w, lam)
            self.counts.jvp += 1
            out = self._user("inner_mixed_jvp", w, "w", w, lam, e, data)
            return self.require_finite("inner_mixed_jvp", out)
        return self.inner_grad_jvp(w, lam, None, e, data=data)[1]

    def inner_grad_jvp(
        self, w: Any, lam: Any, z: Any | None, e: Any | None, data: Any = None
    ) -> tuple[Any, Any]:
        """(∇_w g, H z + M e): value and tangent of the gradient map along (z, e).

        ``z`` or ``e`` may be ``None`` (zero tangent). Cost: one JVP, forward-mode
        differentiation of the reverse-mode gradient (needs JVP rules of every primitive
        used in ``g``, as autograd.numpy and ``bilevel.numpy`` provide). With user oracles
        ``inner_hvp``/``inner_mixed_jvp`` it is assembled from them instead.
        """
        self.check_point(w, lam)
        if "inner_hvp" not in self.oracles and "inner_mixed_jvp" not in self.oracles:
            return self._jvp_autograd(w, lam, z, e, data)
        gw = self.inner_grad(w, lam, data=data)
        out = 0 * gw
        if z is not None:
            out = out + self.inner_hvp(w, lam, z, data=data)
        if e is not None and "inner_mixed_jvp" in self.oracles:
            self.counts.jvp += 1
            out = out + self._user("inner_mixed_jvp", w, "w", w, lam, e, data)
        elif e is not None:
            out = out + self._jvp_autograd(w, lam, None, e, data)[1]
        return gw, self.require_finite("inner_grad_jvp", out)

    def _jvp_autograd(self, w: Any, lam: Any, z: Any, e: Any, data: Any) -> tuple[Any, Any]:
        self.counts.jvp += 1
        if e is None:
            gw, t = make_jvp(lambda w_: self.grad_map(w_, lam, data))(w)(z)
        elif z is None:
            gw, t = make_jvp(lambda l_: self.grad_map(w, l_, data))(lam)(e)
        else:
            gw, t = make_jvp(lambda wl: self.grad_map(wl[0], wl[1], data))((w, lam))((z, e))
        self.require_finite("inner_grad", gw)
        return gw, self.require_finite("inner_grad_jvp", _zero_if_none(t, gw))

    def outer_grads(self, w: Any, lam: Any, data: Any = None) -> tuple[Any, Any]:
        """(∇_w f, ∇_λ f) at (w, λ). Cost: one gradient of f."""
        return self.outer_value_and_grads(w, lam, data)[1:]

    def outer_value_and_grads(self, w: Any, lam: Any, data: Any = None) -> tuple[Any, Any, Any]:
        """(f, ∇_w f, ∇_λ f) at (w, λ); f is per problem with a batch axis."""
        self.check_point(w, lam)
        self.counts.outer_grad += 1
        if "outer_value_and_grads" in self.oracles:
            value, gw, gl = self._user_outer_value_and_grads(w, lam, data)
        elif "outer_grads" in self.oracles:
            value, gw, gl = self._user_outer_grads(w, lam, data)
        else:
            holder = {}

            def f_sum(wl: tuple[Any, Any]) -> Any:
                holder["v"] = val = self.evaluate("outer", wl[0], wl[1], data)
                return val if len(w.shape) == 1 else val.sum()

            vjp, _ = make_vjp(f_sum, (w, lam))
            gw, gl = vjp(one_like(w))
            value = unbox(holder["v"])
        self.require_finite("outer value", value)
        self.require_finite("outer_grads (w part)", gw)
        self.require_finite("outer_grads (lam part)", gl)
        return value, gw, gl

    def _user_outer_value_and_grads(self, w: Any, lam: Any, data: Any) -> tuple[Any, Any, Any]:
        out = self.oracles["outer_value_and_grads"](w, lam, self.resolve_data(data))
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ValueError("user oracle 'outer_value_and_grads' must return a triple "
                             f"(f, grad_w, grad_lam), got {type(out).__name__}")
        value, gw, gl = out
        want = tuple(w.shape[:1]) if len(w.shape) == 2 else ()
        if tuple(getattr(value, "shape", ())) != want:
            raise ValueError(
                "user oracle 'outer_value_and_grads' returned a value of shape "
                f"{tuple(getattr(value, 'shape', ()))}; expected {want} (f per problem)")
        return (value, check_user_output("outer_value_and_grads (w part)", gw, w, "w"),
                check_user_output("outer_value_and_grads (lam part)", gl, lam, "lam"))

    def _user_outer_grads(self, w: Any, lam: Any, data: Any) -> tuple[Any, Any, Any]:
        value = self.evaluate("outer", w, lam, data)
        grads = self.oracles["outer_grads"](w, lam, self.resolve_data(data))
        if not isinstance(grads, (tuple, list)) or len(grads) != 2:
            raise ValueError(
                "user oracle 'outer_grads' must return a pair (grad_w, grad_lam), got "
                f"{type(grads).__name__}"
            )
        gw = check_user_output("outer_grads (w part)", grads[0], w, "w")
        gl = check_user_output("outer_grads (lam part)", grads[1], lam, "lam")
        return value, gw, gl

    def linearize(self, w: Any, lam: Any, data: Any = None, trace: bool = True) -> Linearization:
        """Trace ∇_w g once at (w, λ); return closures for repeated H u and Mᵀu.

        Use this wherever many products are taken at one point (CG, Neumann): each product
        then costs one reverse pass over the stored trace instead of re-running ``g``.
        With ``trace=False`` nothing is computed until the first product, and
        :meth:`Linearization.vjp` then costs one trace of ``(w, λ) ↦ ∇_w g`` and one reverse
        pass (no separate gradient; ``grad`` is None). Memory: one trace of the gradient
        computation (O(Act)) while the object lives.
        """
        return Linearization(self, w, lam, data, trace=trace)

    # ------------------------------------------------------------------ init map
    def init_vjp(self, lam: Any, a: Any) -> Any:
        """Cᵀa with C = ∂init/∂λ (MAML: Cᵀa = a). Zero shape-of-λ array when no init."""
        if self.init is None:
            return 0 * lam
        vjp, _ = make_vjp(self.init, lam)
        return vjp(a)

    def init_jvp(self, lam: Any, e: Any) -> Any:
        """C e with C = ∂init/∂λ: the tangent of w0 along λ-direction ``e``."""
        w0, t = make_jvp(self.init)(lam)(e)
        return _zero_if_none(t, w0)
