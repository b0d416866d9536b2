"""The bilevel problem and its derivative oracles.

A :class:`BilevelProblem` holds the inner objective ``g(w, λ, data)`` (training loss) and
the outer objective ``f(w, λ, data)`` (validation loss), an optional initialization map
``w0 = init(λ)`` and data. Solvers never see autodiff graphs: they call the oracles below
(DESIGN principle 4).

============================  ======================================  ========================
oracle                        value                                   cost
============================  ======================================  ========================
``inner_grad(w, λ)``          ∇_w g                                   1 gradient
``inner_hvp(w, λ, v)``        H v = ∇²_ww g · v                       1 HVP (2–4 grads)
``inner_mixed_vjp(w, λ, u)``  Mᵀu = ∂_λ⟨∇_w g, u⟩                     1 HVP
``inner_mixed_jvp(w, λ, e)``  M e = ∂_ε ∇_w g(w, λ + εe)              1 JVP (fwd-over-rev)
``inner_grad_jvp(w,λ,z,e)``   H z + M e                               1 JVP
``outer_grads(w, λ)``         (∇_w f, ∇_λ f)                          1 gradient
``linearize(w, λ)``           ∇_w g and closures for many H u, Mᵀu    1 trace, then 1 HVP each
============================  ======================================  ========================

With a leading batch axis (``w`` of shape ``(B, n)`` and ``λ`` of shape ``(B, m)``) the
objectives return ``(B,)`` values; the values are summed for differentiation (the problems
are independent, so derivatives separate) and every oracle returns per-problem results.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from autograd.core import make_vjp
from autograd.differential_operators import make_jvp

from .backend import is_array, namespace, unbox

__all__ = [
    "BilevelProblem",
    "Linearization",
    "NonFiniteError",
    "OracleReport",
    "ORACLE_NAMES",
]

ORACLE_NAMES = (
    "inner_grad",
    "inner_hvp",
    "inner_mixed_vjp",
    "inner_mixed_jvp",
    "outer_grads",
)


class NonFiniteError(FloatingPointError):
    """An objective value or a derivative contained NaN or inf.

    Attributes
    ----------
    what : str
        Which quantity was not finite (e.g. ``"inner_grad"``).
    """

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what


def _all_finite(x: Any) -> bool:
    x = unbox(x)
    if type(x) is np.ndarray or isinstance(x, (float, int, np.generic)):
        return bool(np.isfinite(x).all())
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def _accepts_data(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3:
        return False
    # ``lambda w, lam, i=i: ...`` binds a loop variable, not data: a defaulted third
    # parameter receives data only when it is called ``data``.
    third = positional[2]
    return third.default is inspect.Parameter.empty or third.name == "data"


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

    Attributes
    ----------
    grad : array
        ∇_w g(w, λ) at the point.
    """

    def __init__(self, problem: BilevelProblem, w: Any, lam: Any, data: Any):
        problem._check_point(w, lam)
        self._problem = problem
        self.w, self.lam, self.data = w, lam, data
        user = problem.oracles
        self._user_hvp = user.get("inner_hvp")
        self._user_mixed = user.get("inner_mixed_vjp")
        self._vjp_w = None
        self._vjp_wl = None
        if self._user_hvp is None:
            self._vjp_w, self.grad = make_vjp(
                lambda w_: problem._grad_map(w_, lam, data), w
            )
            problem.counts.grad += 1
        else:
            self.grad = problem.inner_grad(w, lam, data=data)
        problem._require_finite("inner_grad", self.grad)

    def hvp(self, v: Any) -> Any:
        """H v at the linearization point: one HVP."""
        p = self._problem
        p.counts.hvp += 1
        if self._user_hvp is not None:
            out = self._user_hvp(self.w, self.lam, v, p._data(self.data))
            p._check_user("inner_hvp", out, self.w, "w")
        else:
            out = self._vjp_w(v)
        return p._require_finite("inner_hvp", out)

    def vjp(self, u: Any) -> tuple[Any, Any]:
        """(H u, Mᵀu) from one reverse pass over the traced gradient map."""
        p = self._problem
        if self._user_hvp is not None or self._user_mixed is not None:
            return self.hvp(u), self.mixed_vjp(u)
        hu, mu = self._pair(u)
        p._require_finite("inner_hvp", hu)
        p._require_finite("inner_mixed_vjp", mu)
        return hu, mu

    def _pair(self, u: Any) -> tuple[Any, Any]:
        """(H u, Mᵀu) from the lazily traced map (w, λ) ↦ ∇_w g, unchecked."""
        p = self._problem
        if self._vjp_wl is None:
            lam, data = self.lam, self.data
            self._vjp_wl, _ = make_vjp(
                lambda wl: p._grad_map(wl[0], wl[1], data), (self.w, lam)
            )
        p.counts.hvp += 1
        return self._vjp_wl(u)

    def mixed_vjp(self, u: Any) -> Any:
        """Mᵀu = ∂_λ⟨∇_w g, u⟩ at the linearization point: one HVP."""
        p = self._problem
        if self._user_mixed is not None:
            p.counts.hvp += 1
            out = self._user_mixed(self.w, self.lam, u, p._data(self.data))
            p._check_user("inner_mixed_vjp", out, self.lam, "lam")
            return p._require_finite("inner_mixed_vjp", out)
        return p._require_finite("inner_mixed_vjp", self._pair(u)[1])


class BilevelProblem:
    """A bilevel problem ``min_λ f(w*(λ), λ)`` with ``w*(λ) ≈ argmin_w g(w, λ)``.

    Parameters
    ----------
    inner : callable
        ``g(w, lam, data) -> scalar`` (or ``(B,)`` with a batch axis): the inner
        (training) objective. A two-argument ``g(w, lam)`` is accepted too.
    outer : callable
        ``f(w, lam, data) -> scalar`` (or ``(B,)``): the outer (validation) objective.
    data : object, optional
        Passed as the third argument of both objectives (any pytree of arrays).
    init : callable, optional
        ``init(lam) -> w0``: the starting point as a function of λ (MAML: ``w0 = θ``).
    oracles : dict, optional
        User-supplied derivatives replacing autograd's, any of
        ``inner_grad(w, lam, data)``, ``inner_hvp(w, lam, v, data)``,
        ``inner_mixed_vjp(w, lam, u, data)``, ``inner_mixed_jvp(w, lam, e, data)``,
        ``outer_grads(w, lam, data) -> (gw, glam)``. Check them with
        :meth:`check_oracles`.
    check_finite : bool
        Raise :class:`NonFiniteError` when a value or derivative has NaN/inf (default).
    name : str, optional
        Shown in messages and benchmark tables.

    Notes
    -----
    Memory: the problem stores no state beyond its callables; each oracle call holds one
    autodiff trace of ``g`` (activation memory ``Act``) while it runs.
    """

    def __init__(
        self,
        inner: Callable,
        outer: Callable,
        data: Any = None,
        init: Callable | None = None,
        oracles: dict[str, Callable] | None = None,
        check_finite: bool = True,
        name: str | None = None,
    ):
        if not callable(inner):
            raise TypeError(f"inner must be callable g(w, lam, data), got {type(inner).__name__}")
        if not callable(outer):
            raise TypeError(f"outer must be callable f(w, lam, data), got {type(outer).__name__}")
        if init is not None and not callable(init):
            raise TypeError(f"init must be callable init(lam) -> w0, got {type(init).__name__}")
        oracles = dict(oracles or {})
        unknown = set(oracles) - set(ORACLE_NAMES)
        if unknown:
            raise ValueError(
                f"unknown oracle name(s) {sorted(unknown)}; valid names are {list(ORACLE_NAMES)}"
            )
        for k, fn in oracles.items():
            if not callable(fn):
                raise TypeError(f"oracle {k!r} must be callable, got {type(fn).__name__}")
        self.inner = inner
        self.outer = outer
        self.data = data
        self.init = init
        self.oracles = oracles
        self.check_finite = check_finite
        self.name = name or getattr(inner, "__name__", "problem")
        self.counts = OracleCounts()
        self._inner_data = _accepts_data(inner)
        self._outer_data = _accepts_data(outer)

    def __repr__(self) -> str:
        user = f", oracles={sorted(self.oracles)}" if self.oracles else ""
        return f"BilevelProblem(name={self.name!r}, init={'yes' if self.init else 'no'}{user})"

    # ------------------------------------------------------------------ values
    def _data(self, data: Any) -> Any:
        return self.data if data is None else data

    def _require_finite(self, what: str, value: Any) -> Any:
        if self.check_finite:
            vals = value if isinstance(value, (tuple, list)) else (value,)
            for v in vals:
                scalar = isinstance(v, (float, np.generic))
                if v is not None and (scalar or is_array(v)) and not _all_finite(v):
                    raise NonFiniteError(
                        what,
                        f"{what} of problem {self.name!r} contains NaN or inf. Check the "
                        "objective for overflow (large exponents, log of 0) or lower the "
                        "inner step size.",
                    )
        return value

    def _check_point(self, w: Any, lam: Any) -> None:
        """:meth:`check_inputs`, with a fast path for float NumPy arrays (oracles call it often)."""
        if (
            type(w) is np.ndarray
            and type(lam) is np.ndarray
            and w.dtype.kind == "f"
            and lam.dtype.kind == "f"
            and (w.ndim == 1 or (w.ndim == 2 and lam.ndim >= 1 and lam.shape[0] == w.shape[0]))
        ):
            return
        self.check_inputs(w, lam)

    @staticmethod
    def _check_user(name: str, out: Any, like: Any, arg: str) -> Any:
        """A user oracle's result must have the shape of ``arg`` (``w`` or ``lam``)."""
        shape = getattr(unbox(out), "shape", None)
        if shape is None or tuple(shape) != tuple(like.shape):
            raise ValueError(
                f"user oracle {name!r} returned "
                + ("a non-array" if shape is None else f"shape {tuple(shape)}")
                + f"; expected an array of the shape of {arg}, {tuple(like.shape)}"
            )
        return out

    def _call(self, fn: Callable, takes_data: bool, w: Any, lam: Any, data: Any) -> Any:
        return fn(w, lam, data) if takes_data else fn(w, lam)

    def _checked_value(self, which: str, w: Any, lam: Any, data: Any) -> Any:
        fn, takes = (
            (self.inner, self._inner_data) if which == "inner" else (self.outer, self._outer_data)
        )
        wshape = tuple(w.shape)
        try:
            val = self._call(fn, takes, w, lam, self._data(data))
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"the {which} objective of problem {self.name!r} failed for w of shape {wshape} "
                f"and lam of shape {tuple(getattr(lam, 'shape', ()))}: {err}. Check that w and "
                "lam have the sizes the objective expects (w is (n,) or (B, n) with lam (B, m) "
                "for a batch of problems)."
            ) from err
        shape = tuple(getattr(val, "shape", ()))
        expected = () if len(wshape) == 1 else (wshape[0],)
        if shape != expected:
            what = "a scalar" if not expected else f"shape {expected} (one value per problem)"
            raise ValueError(
                f"the {which} objective must return {what} for w of shape {wshape}; it "
                f"returned shape {shape}. Reduce the loss with sum/mean over data axes (keep "
                "the leading batch axis when w is batched)."
            )
        return val

    def _sum(self, which: str, w: Any, lam: Any, data: Any) -> Any:
        val = self._checked_value(which, w, lam, data)
        return val if len(w.shape) == 1 else val.sum()

    def _grad_map(self, w: Any, lam: Any, data: Any) -> Any:
        """∇_w g(w, λ) as a traceable function (reverse pass inside the trace)."""
        vjp, _ = make_vjp(lambda w_: self._sum("inner", w_, lam, data), w)
        return vjp(_one_like(w))

    def inner_value(self, w: Any, lam: Any, data: Any = None) -> Any:
        """g(w, λ): a scalar, or ``(B,)`` with a batch axis."""
        self.check_inputs(w, lam)
        self.counts.value += 1
        return self._require_finite("inner value", self._checked_value("inner", w, lam, data))

    def outer_value(self, w: Any, lam: Any, data: Any = None) -> Any:
        """f(w, λ): a scalar, or ``(B,)`` with a batch axis."""
        self.check_inputs(w, lam)
        self.counts.value += 1
        return self._require_finite("outer value", self._checked_value("outer", w, lam, data))

    # ------------------------------------------------------------------ oracles
    def inner_grad(self, w: Any, lam: Any, data: Any = None) -> Any:
        """∇_w g(w, λ), shape of ``w``. Cost: one gradient."""
        self._check_point(w, lam)
        self.counts.grad += 1
        user = self.oracles.get("inner_grad")
        if user is not None:
            out = self._check_user("inner_grad", user(w, lam, self._data(data)), w, "w")
        else:
            out = self._grad_map(w, lam, data)
        return self._require_finite("inner_grad", out)

    def inner_hvp(self, w: Any, lam: Any, v: Any, data: Any = None) -> Any:
        """H v = ∇²_ww g(w, λ) v, shape of ``w``. Cost: one HVP (re-traces g)."""
        return Linearization(self, w, lam, data).hvp(v)

    def inner_mixed_vjp(self, w: Any, lam: Any, u: Any, data: Any = None) -> Any:
        """Mᵀu = ∂_λ⟨∇_w g(w, λ), u⟩, shape of ``λ``. Cost: one HVP."""
        user = self.oracles.get("inner_mixed_vjp")
        if user is not None:
            self._check_point(w, lam)
            self.counts.hvp += 1
            out = self._check_user("inner_mixed_vjp", user(w, lam, u, self._data(data)), lam, "lam")
            return self._require_finite("inner_mixed_vjp", out)
        self.counts.grad += 1
        return Linearization(self, w, lam, data).mixed_vjp(u)

    def inner_mixed_jvp(self, w: Any, lam: Any, e: Any, data: Any = None) -> Any:
        """M e = ∂_ε ∇_w g(w, λ + εe), shape of ``w``. Cost: one JVP (forward over reverse)."""
        user = self.oracles.get("inner_mixed_jvp")
        if user is not None:
            self._check_point(w, lam)
            self.counts.jvp += 1
            out = self._check_user("inner_mixed_jvp", user(w, lam, e, self._data(data)), w, "w")
            return self._require_finite("inner_mixed_jvp", out)
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
        self._check_point(w, lam)
        uh, um = self.oracles.get("inner_hvp"), self.oracles.get("inner_mixed_jvp")
        if uh is not None or um is not None:
            gw = self.inner_grad(w, lam, data=data)
            out = 0
            if z is not None:
                out = out + self.inner_hvp(w, lam, z, data=data)
            if e is not None:
                if um is not None:
                    self.counts.jvp += 1
                    me = um(w, lam, e, self._data(data))
                    out = out + self._check_user("inner_mixed_jvp", me, w, "w")
                else:
                    out = out + self._jvp_autograd(w, lam, None, e, data)[1]
            if isinstance(out, int):
                out = 0 * gw
            return gw, self._require_finite("inner_grad_jvp", out)
        return self._jvp_autograd(w, lam, z, e, data)

    def _jvp_autograd(self, w: Any, lam: Any, z: Any, e: Any, data: Any) -> tuple[Any, Any]:
        self.counts.jvp += 1
        if e is None:
            gw, t = make_jvp(lambda w_: self._grad_map(w_, lam, data))(w)(z)
        elif z is None:
            gw, t = make_jvp(lambda l_: self._grad_map(w, l_, data))(lam)(e)
        else:
            gw, t = make_jvp(lambda wl: self._grad_map(wl[0], wl[1], data))((w, lam))((z, e))
        if t is None or (np.isscalar(t) and t == 0):
            t = 0 * gw
        self._require_finite("inner_grad", gw)
        return gw, self._require_finite("inner_grad_jvp", t)

    def outer_grads(self, w: Any, lam: Any, data: Any = None) -> tuple[Any, Any]:
        """(∇_w f, ∇_λ f) at (w, λ). Cost: one gradient of f."""
        return self.outer_value_and_grads(w, lam, data)[1:]

    def outer_value_and_grads(self, w: Any, lam: Any, data: Any = None) -> tuple[Any, Any, Any]:
        """(f, ∇_w f, ∇_λ f) at (w, λ); f is per problem with a batch axis."""
        self._check_point(w, lam)
        self.counts.outer_grad += 1
        user = self.oracles.get("outer_grads")
        if user is not None:
            value = self._checked_value("outer", w, lam, data)
            grads = user(w, lam, self._data(data))
            if not isinstance(grads, (tuple, list)) or len(grads) != 2:
                raise ValueError(
                    "user oracle 'outer_grads' must return a pair (grad_w, grad_lam), got "
                    f"{type(grads).__name__}"
                )
            gw = self._check_user("outer_grads (w part)", grads[0], w, "w")
            gl = self._check_user("outer_grads (lam part)", grads[1], lam, "lam")
        else:
            holder = {}

            def fsum(wl):
                val = self._checked_value("outer", wl[0], wl[1], data)
                holder["v"] = val
                return val if len(w.shape) == 1 else val.sum()

            vjp, _ = make_vjp(fsum, (w, lam))
            gw, gl = vjp(_one_like(w))
            value = unbox(holder["v"])
        self._require_finite("outer value", value)
        self._require_finite("outer_grads (w part)", gw)
        self._require_finite("outer_grads (lam part)", gl)
        return value, gw, gl

    def linearize(self, w: Any, lam: Any, data: Any = None) -> Linearization:
        """Trace ∇_w g once at (w, λ); return closures for repeated H u and Mᵀu.

        Use this wherever many products are taken at one point (CG, Neumann): each product
        then costs one reverse pass over the stored trace instead of re-running ``g``.
        Memory: one trace of the gradient computation (O(Act)) while the object lives.
        """
        return Linearization(self, w, lam, data)

    # ------------------------------------------------------------------ init map
    def initial_point(self, lam: Any) -> Any:
        """w0 = init(λ); raises when the problem has no ``init``."""
        if self.init is None:
            raise ValueError(
                "no starting point: pass w0=... or build the problem with init=lambda lam: w0"
            )
        return self.init(lam)

    def init_vjp(self, lam: Any, a: Any) -> Any:
        """Cᵀa with C = ∂init/∂λ (MAML: Cᵀa = a). Zero shape-of-λ array when no init."""
        if self.init is None:
            return 0 * lam
        vjp, _ = make_vjp(self.init, lam)
        return vjp(a)

    def init_jvp(self, lam: Any, e: Any) -> Any:
        """C e with C = ∂init/∂λ: the tangent of w0 along λ-direction ``e``."""
        w0, t = make_jvp(self.init)(lam)(e)
        if t is None or (np.isscalar(t) and t == 0):
            t = 0 * w0
        return t

    # ------------------------------------------------------------------ validation
    def check_inputs(self, w: Any, lam: Any, name_w: str = "w", name_lam: str = "lam") -> None:
        """Validate shapes and dtypes of ``w`` and ``λ``; raise a clear error otherwise.

        ``w`` must be a floating array of shape ``(n,)`` or ``(B, n)``; with a batch axis
        ``λ`` must have the same leading axis ``B``.
        """
        namespace(w, lam, names=(name_w, name_lam))
        for nm, x in ((name_w, w), (name_lam, lam)):
            x = unbox(x)
            if not is_array(x):
                raise TypeError(f"{nm} must be an array, got {type(x).__name__}")
            kind = getattr(getattr(x, "dtype", None), "kind", None)
            if kind is None:
                kind = np.dtype(str(x.dtype)).kind if hasattr(x, "dtype") else "O"
            if kind != "f":
                raise TypeError(
                    f"{nm} must have a floating dtype (float32 or float64), got {x.dtype}; "
                    f"convert with {nm}.astype('float64')"
                )
        if len(w.shape) not in (1, 2):
            raise ValueError(
                f"{name_w} must be a flat vector (n,) or a batch (B, n); got shape "
                f"{tuple(w.shape)}. Flatten structured parameters with bilevel.tree.ravel."
            )
        if len(w.shape) == 2 and (len(lam.shape) == 0 or lam.shape[0] != w.shape[0]):
            raise ValueError(
                f"{name_w} has a batch axis of {w.shape[0]} problems (shape {tuple(w.shape)}) "
                f"so {name_lam} needs the same leading axis, shape ({w.shape[0]}, m); got "
                f"{tuple(lam.shape)}. Broadcast shared hyperparameters, e.g. "
                f"xp.broadcast_to(lam, ({w.shape[0]},) + lam.shape)."
            )

    def validate(self, w: Any, lam: Any) -> None:
        """Check inputs, evaluate g and f once and check their shapes and finiteness."""
        self.check_inputs(w, lam)
        self.inner_value(w, lam)
        self.outer_value(w, lam)

    def check_oracles(
        self,
        w: Any,
        lam: Any,
        *,
        reference: str = "auto",
        eps: float = 1e-6,
        seed: int = 0,
        rtol: float = 1e-5,
        data: Any = None,
    ) -> OracleReport:
        """Compare the oracles in use against an independent reference.

        For every oracle, a random direction is drawn and the oracle's product is compared
        with the reference: autograd (``reference="autograd"``) or central finite
        differences of ``g``/``f``/``∇g`` with step ``eps`` (``"fd"``). ``"auto"`` uses
        autograd for user-supplied oracles and finite differences for autograd's own.

        Returns
        -------
        OracleReport
            Relative error of each oracle; ``report.ok`` is True when all are below
            ``rtol``; ``report.raise_if_failed()`` raises an ``AssertionError`` listing them.
        """
        self.check_inputs(w, lam)
        xp = namespace(w, lam)
        rng = np.random.default_rng(seed)

        def rand(like):
            arr = rng.standard_normal(tuple(like.shape))
            return xp.asarray(arr, dtype=like.dtype)

        ref_problem = BilevelProblem(
            self.inner, self.outer, data=self.data, init=self.init, check_finite=False
        )
        errors, methods = {}, {}
        v, u, e = rand(w), rand(w), rand(lam)
        batched = len(w.shape) == 2

        def fd(fun, x, d):
            return (fun(x + eps * d) - fun(x - eps * d)) / (2 * eps)

        def use_fd(name):
            if reference == "fd":
                return True
            if reference == "autograd":
                return False
            return name not in self.oracles

        checks = {
            "inner_grad": (
                lambda: self.inner_grad(w, lam, data),
                lambda: fd(lambda x: ref_problem._checked_value("inner", x, lam, data), w, v),
                lambda: ref_problem._grad_map(w, lam, data),
                "dir_w",
            ),
            "inner_hvp": (
                lambda: self.inner_hvp(w, lam, v, data),
                lambda: fd(lambda x: ref_problem._grad_map(x, lam, data), w, v),
                lambda: ref_problem.inner_hvp(w, lam, v, data),
                None,
            ),
            "inner_mixed_vjp": (
                lambda: self.inner_mixed_vjp(w, lam, u, data),
                lambda: fd(
                    lambda lm: _vdot(ref_problem._grad_map(w, lm, data), u, batched), lam, e
                ),
                lambda: ref_problem.inner_mixed_vjp(w, lam, u, data),
                "dir_lam",
            ),
            "inner_mixed_jvp": (
                lambda: self.inner_mixed_jvp(w, lam, e, data),
                lambda: fd(lambda lm: ref_problem._grad_map(w, lm, data), lam, e),
                lambda: ref_problem.inner_mixed_jvp(w, lam, e, data),
                None,
            ),
            "outer_grads": (
                lambda: self.outer_grads(w, lam, data),
                lambda: (
                    fd(lambda x: ref_problem._checked_value("outer", x, lam, data), w, v),
                    fd(lambda lm: ref_problem._checked_value("outer", w, lm, data), lam, e),
                ),
                lambda: ref_problem.outer_grads(w, lam, data),
                "outer",
            ),
        }
        for name, (mine, by_fd, by_ag, kind) in checks.items():
            got = mine()
            scale = None
            if use_fd(name):
                want = by_fd()
                methods[name] = "finite differences"
                # A directional derivative ⟨∇, d⟩ may vanish (e.g. at a stationary w); its
                # natural scale is ‖∇‖·‖d‖ (Cauchy–Schwarz), used as the error's denominator.
                if kind == "dir_w":
                    got, scale = _vdot(got, v, batched), _norm(got) * _norm(v)
                elif kind == "dir_lam":
                    got, scale = _vdot(got, e, batched), _norm(got) * _norm(e)
                elif kind == "outer":
                    scale = max(_norm(got[0]) * _norm(v), _norm(got[1]) * _norm(e))
                    got = (_vdot(got[0], v, batched), _vdot(got[1], e, batched))
            else:
                want = by_ag()
                methods[name] = "autograd"
            errors[name] = _rel_err(got, want, scale)
        return OracleReport(errors=errors, references=methods, rtol=rtol,
                            user=sorted(self.oracles))


def _vdot(a: Any, b: Any, batched: bool = False) -> Any:
    """⟨a, b⟩ summed over all axes, or per problem over the non-batch axes."""
    xp = namespace(a, b)
    prod = a * b
    if batched:
        return xp.sum(xp.reshape(prod, (prod.shape[0], -1)), axis=-1)
    return xp.sum(prod)


def _norm(x: Any) -> float:
    return float(np.linalg.norm(np.asarray(_to_np(x), dtype=float)))


def _rel_err(got: Any, want: Any, scale: float | None = None) -> float:
    """‖got − want‖ / max(‖want‖, scale): relative error, floored by a natural scale."""
    if isinstance(got, tuple):
        return max(_rel_err(g, w, scale) for g, w in zip(got, want, strict=True))
    g = np.asarray(_to_np(got), dtype=float)
    w = np.asarray(_to_np(want), dtype=float)
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), scale or 0.0, 1e-30))


def _to_np(x: Any) -> Any:
    from .backend import to_numpy

    return to_numpy(unbox(x))


def _one_like(w: Any) -> Any:
    xp = namespace(w)
    return xp.asarray(1.0, dtype=unbox(w).dtype)


@dataclass
class OracleReport:
    """Relative errors of a problem's oracles against a reference (see ``check_oracles``)."""

    errors: dict[str, float]
    references: dict[str, str]
    rtol: float
    user: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(err <= self.rtol for err in self.errors.values())

    @property
    def failed(self) -> list[str]:
        return [k for k, err in self.errors.items() if err > self.rtol]

    def __str__(self) -> str:
        rows = ["oracle             source     reference            rel. error   status"]
        for k, err in self.errors.items():
            src = "user" if k in self.user else "autograd"
            status = "ok" if err <= self.rtol else f"FAIL (> {self.rtol:g})"
            rows.append(f"{k:<18} {src:<10} {self.references[k]:<20} {err:<12.3e} {status}")
        return "\n".join(rows)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError(
                f"oracle(s) {self.failed} disagree with their reference:\n{self}"
            )
