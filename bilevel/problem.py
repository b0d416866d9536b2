"""The bilevel problem: inner and outer objectives, an optional init map, data.

A :class:`BilevelProblem` holds the inner objective ``g(w, λ, data)`` (training loss) and
the outer objective ``f(w, λ, data)`` (validation loss), an optional initialization map
``w0 = init(λ)`` and data. Solvers never see autodiff graphs: they call the derivative
oracles (``inner_grad``, ``inner_hvp``, ``inner_mixed_vjp``, ...) that
:class:`bilevel.oracles.DerivedOracles` derives from this definition; their table, costs
and the batch-axis convention are documented there. :func:`bilevel.oracle_checks.check_oracles`
compares them against references.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .backend import is_array, namespace, unbox
from .nonfinite import TRACE_ADVICE, NonFiniteError, TracingError, at_step, has_box
from .oracle_checks import OracleReport, check_oracles
from .oracles import ORACLE_NAMES, DerivedOracles, Linearization, OracleCounts
from .validation import boolean

__all__ = [
    "BilevelProblem",
    "Linearization",
    "NonFiniteError",
    "OracleCounts",
    "OracleReport",
    "ORACLE_NAMES",
    "TracingError",
    "at_step",
]


_TAKES_DATA: dict[Any, bool] = {}
""":func:`_accepts_data` by :func:`_signature_key` (a signature costs ~0.1 ms to read; the
meta-learning algorithms build a new ``partial`` objective on every meta-gradient)."""


def _signature_key(fn: Callable) -> Any:
    """What the call signature of ``fn`` depends on: a ``partial``'s function and the
    number and names of its bound arguments, a callable instance's class, a function
    itself; ``None`` when it is not hashable (no caching)."""
    if isinstance(fn, functools.partial):
        inner = _signature_key(fn.func)
        return None if inner is None else (inner, len(fn.args), tuple(sorted(fn.keywords)))
    if not isinstance(fn, (type, types.FunctionType, types.BuiltinFunctionType,
                           types.MethodType)) and not hasattr(fn, "__signature__"):
        return ("instance", type(fn))
    try:
        hash(fn)
    except TypeError:
        return None
    return fn


def _accepts_data(fn: Callable) -> bool:
    """Whether ``fn`` takes a third argument, the data (:func:`_reads_data`), cached."""
    key = _signature_key(fn)
    if key is None:
        return _reads_data(fn)
    found = _TAKES_DATA.get(key)
    if found is None:
        if len(_TAKES_DATA) >= 512:
            _TAKES_DATA.clear()
        found = _TAKES_DATA[key] = _reads_data(fn)
    return found


def _reads_data(fn: Callable) -> bool:
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


def _check_callables(inner: Any, outer: Any, init: Any, oracles: dict[str, Any]) -> None:
    for what, fn, form in (("inner", inner, "g(w, lam, data)"),
                           ("outer", outer, "f(w, lam, data)")):
        if not callable(fn):
            raise TypeError(f"{what} must be callable {form}, got {type(fn).__name__}")
    if init is not None and not callable(init):
        raise TypeError(f"init must be callable init(lam) -> w0, got {type(init).__name__}")
    unknown = set(oracles) - set(ORACLE_NAMES)
    if unknown:
        raise ValueError(
            f"unknown oracle name(s) {sorted(unknown)}; valid names are {list(ORACLE_NAMES)}"
        )
    for k, fn in oracles.items():
        if not callable(fn):
            raise TypeError(f"oracle {k!r} must be callable, got {type(fn).__name__}")


def _float_kind(x: Any) -> str:
    """NumPy's dtype kind letter of ``x`` ("f" for real floating), for any Array-API array."""
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind is None:
        if not hasattr(x, "dtype"):
            return "O"
        kind = "f" if namespace(x).isdtype(x.dtype, "real floating") else "?"
    return kind


class BilevelProblem(DerivedOracles):
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
        ``outer_grads(w, lam, data) -> (gw, glam)``, or instead
        ``outer_value_and_grads(w, lam, data) -> (f, gw, glam)`` when the value comes
        with the gradients' forward pass (it saves the evaluation of ``f``). Check them
        with :meth:`check_oracles`.
    check_finite : bool
        Raise :class:`NonFiniteError` when a value or derivative has NaN/inf (default).
    name : str, optional
        Shown in messages and benchmark tables.

    Notes
    -----
    The derivative oracles (``inner_grad``, ``inner_hvp``, ``inner_mixed_vjp``,
    ``inner_mixed_jvp``, ``inner_grad_jvp``, ``outer_grads``, ``linearize``, ``init_vjp``,
    ``init_jvp``) are inherited from :class:`bilevel.oracles.DerivedOracles`; they use
    only the public surface :meth:`check_point`, :meth:`resolve_data` and :meth:`evaluate`.

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
        if oracles is not None and not isinstance(oracles, Mapping):
            raise TypeError(
                f"oracles must be a dict of oracle name -> function (names: "
                f"{', '.join(ORACLE_NAMES)}), got {type(oracles).__name__}"
            )
        oracles = dict(oracles or {})
        _check_callables(inner, outer, init, oracles)
        check_finite = boolean("check_finite", check_finite)
        self.inner = inner
        self.outer = outer
        self.data = data
        self.init = init
        self.oracles = oracles
        self.check_finite = check_finite
        self.name = name or getattr(inner, "__name__", "problem")
        self.counts = OracleCounts()
        self._takes_data = {"inner": _accepts_data(inner), "outer": _accepts_data(outer)}

    def __repr__(self) -> str:
        user = f", oracles={sorted(self.oracles)}" if self.oracles else ""
        return f"BilevelProblem(name={self.name!r}, init={'yes' if self.init else 'no'}{user})"

    def reference(self) -> BilevelProblem:
        """The same objectives, init and data with autograd's oracles, unchecked for NaN/inf."""
        return BilevelProblem(
            self.inner, self.outer, data=self.data, init=self.init, check_finite=False
        )

    # ------------------------------------------------------------------ values
    def resolve_data(self, data: Any) -> Any:
        """``data`` if given, else the problem's own data."""
        return self.data if data is None else data

    def evaluate(self, which: str, w: Any, lam: Any, data: Any = None) -> Any:
        """g (``which="inner"``) or f (``"outer"``) at (w, λ), shape-checked, uncounted.

        Returns a scalar, or ``(B,)`` with a batch axis; traceable by autograd. Raises a
        ``ValueError`` naming the shapes when the objective fails or returns the wrong shape,
        and a :class:`TracingError` when it fails on traced values only (``float(x)`` or a
        NumPy function on a traced ``w`` or λ).
        """
        fn = self.inner if which == "inner" else self.outer
        data = self.resolve_data(data)
        wshape = tuple(w.shape)
        try:
            val = fn(w, lam, data) if self._takes_data[which] else fn(w, lam)
        except TypeError as err:
            if not has_box((w, lam, data)):
                raise
            raise TracingError(
                f"the {which} objective of problem {self.name!r} failed while autograd traced "
                f"it ({type(err).__name__}: {err}): it converted a traced value to a Python "
                f"float or passed it to a NumPy function. {TRACE_ADVICE}"
            ) from err
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"the {which} objective of problem {self.name!r} failed for w of shape {wshape} "
                f"and lam of shape {tuple(getattr(lam, 'shape', ()))}: {err}. Check that w and "
                "lam have the sizes the objective expects (w is (n,) or (B, n) with lam (B, m) "
                "for a batch of problems)."
                + (f" If it runs on plain arrays: {TRACE_ADVICE}" if has_box((w, lam)) else "")
            ) from err
        if getattr(getattr(unbox(val), "dtype", None), "kind", None) == "O":
            raise TracingError(
                f"the {which} objective of problem {self.name!r} returned an array of Python "
                "objects: a NumPy function turned traced values into an object array. "
                + TRACE_ADVICE
            )
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

    def inner_value(self, w: Any, lam: Any, data: Any = None) -> Any:
        """g(w, λ): a scalar, or ``(B,)`` with a batch axis."""
        self.check_inputs(w, lam)
        self.counts.value += 1
        return self.require_finite("inner value", self.evaluate("inner", w, lam, data))

    def outer_value(self, w: Any, lam: Any, data: Any = None) -> Any:
        """f(w, λ): a scalar, or ``(B,)`` with a batch axis."""
        self.check_inputs(w, lam)
        self.counts.value += 1
        return self.require_finite("outer value", self.evaluate("outer", w, lam, data))

    # ------------------------------------------------------------------ init map
    def initial_point(self, lam: Any) -> Any:
        """w0 = init(λ); raises when the problem has no ``init``."""
        if self.init is None:
            raise ValueError(
                "no starting point: pass w0=... or build the problem with init=lambda lam: w0"
            )
        return self.init(lam)

    # ------------------------------------------------------------------ validation
    def check_point(self, w: Any, lam: Any) -> None:
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
            if _float_kind(x) != "f":
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

        See :func:`bilevel.oracle_checks.check_oracles` (this method calls it).
        """
        return check_oracles(
            self, w, lam, reference=reference, eps=eps, seed=seed, rtol=rtol, data=data
        )
