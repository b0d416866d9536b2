"""Verify a hypergradient method on your own problem: :func:`check_hypergrad`.

``check_hypergrad`` runs one method and compares its ∇F(λ) with a reference — central
finite differences of the unrolled map, another method, a closed form — and raises an
``AssertionError`` that shows both vectors, the error and the method's diagnostics.
:func:`check_oracles` does the same for a problem's derivative oracles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api import HypergradResult, Method, hypergrad
from ..backend import is_array, namespace, to_numpy
from ..dynamics import Dynamics, run
from ..problem import BilevelProblem, OracleReport

__all__ = [
    "HypergradCheck",
    "check_hypergrad",
    "check_oracles",
    "finite_difference_hypergrad",
]

_FD_NAMES = ("finite-differences", "fd")


def _as_float64(x: Any) -> Any:
    xp = namespace(x)
    return xp.astype(x, xp.float64)


def finite_difference_hypergrad(
    problem: BilevelProblem,
    lam: Any,
    w0: Any = None,
    *,
    inner: Dynamics,
    eps: float = 1e-3,
) -> Any:
    """∇F_K(λ) of the unrolled map ``λ ↦ f(w_K(λ), λ)`` by extrapolated central differences.

    For each coordinate j, with ``D(h) = (F_K(λ + h e_j) − F_K(λ − h e_j)) / 2h`` and
    ``h = eps·(1 + |λ_j|)``, returns the Richardson extrapolation ``(4D(h/2) − D(h)) / 3``,
    whose truncation error is O(h⁴). ``w_K(λ)`` runs ``inner`` from ``w0`` (held fixed) or
    from ``problem.init(λ ± h e_j)``. The computation is done in float64 whatever the
    dtype of ``lam``. With a batch axis (``lam`` of shape ``(B, m)``) coordinate j of every
    problem is perturbed at once (the problems are independent).

    Cost: 4m runs of the inner dynamics (m = number of hyperparameters per problem), no
    derivatives beyond the inner gradients; memory O(n).
    """
    lam64 = _as_float64(lam)
    xp = namespace(lam64)
    fixed_w0 = None if w0 is None else _as_float64(w0)
    if fixed_w0 is None and problem.init is None:
        raise ValueError(
            "finite differences need a starting point: pass w0=... or give the problem an "
            "init map"
        )
    start_shape = (problem.initial_point(lam64) if fixed_w0 is None else fixed_w0).shape
    batched = len(start_shape) == 2
    shape = tuple(lam64.shape)
    per = shape[1:] if batched else shape
    m = int(np.prod(per)) if per else 1

    def F(lam_: Any) -> Any:
        start = problem.initial_point(lam_) if fixed_w0 is None else fixed_w0
        w = inner.weights(run(problem, inner, start, lam_))
        return problem.outer_value(w, lam_)

    grad = xp.zeros(shape, dtype=xp.float64)
    flat_lam = xp.reshape(lam64, (shape[0], m) if batched else (m,))
    for j in range(m):
        onehot = xp.asarray(np.arange(m) == j, dtype=xp.float64)
        step = eps * (1.0 + xp.abs(flat_lam[..., j]))
        step = xp.reshape(step, (-1, 1)) if batched else step
        direction = xp.reshape(onehot * step, shape)

        def central(scale: float, direction: Any = direction) -> Any:
            return (F(lam64 + scale * direction) - F(lam64 - scale * direction)) / (2 * scale)

        d = (4 * central(0.5) - central(1.0)) / 3
        h = step[..., 0] if batched else step
        col = xp.reshape(d / h, (-1, 1)) if batched else d / h
        grad = grad + xp.reshape(onehot * col, shape)
    return grad


@dataclass
class HypergradCheck:
    """Outcome of a passed :func:`check_hypergrad` (a failed one raises).

    Attributes
    ----------
    grad, reference : array
        The method's hypergradient and the reference, shape of ``lam``.
    rel_error : float
        ``max_b ‖grad_b − ref_b‖ / ‖ref_b‖`` over problems b (one problem without a batch).
    abs_error : float
        ``max_b ‖grad_b − ref_b‖``.
    result : HypergradResult
        The method's full result with its diagnostics.
    reference_name : str
        What the reference was.
    """

    grad: Any
    reference: Any
    rel_error: float
    abs_error: float
    result: HypergradResult
    reference_name: str


def _reference(
    reference: Any,
    problem: BilevelProblem,
    lam: Any,
    w0: Any,
    inner: Dynamics,
    eps: float,
) -> tuple[Any, str, HypergradResult | None]:
    if isinstance(reference, str):
        if reference.lower() not in _FD_NAMES:
            raise ValueError(
                f"reference must be 'finite-differences', a Method (e.g. Reverse()), a "
                f"callable lam -> array or an array; got the string {reference!r}"
            )
        ref = finite_difference_hypergrad(problem, lam, w0, inner=inner, eps=eps)
        return ref, f"central finite differences of the {inner.steps}-step unrolled map", None
    if isinstance(reference, Method):
        res = hypergrad(problem, lam, w0, dynamics=inner, method=reference)
        return res.grad, f"{reference!r} with {inner!r}", res
    if is_array(reference):
        return reference, "the given array", None
    if callable(reference):
        name = getattr(reference, "__name__", type(reference).__name__)
        return reference(lam), f"{name}(lam)", None
    raise TypeError(
        "reference must be 'finite-differences', a Method (e.g. Reverse()), a callable "
        f"lam -> array or an array; got {type(reference).__name__}"
    )


def _errors(grad: np.ndarray, ref: np.ndarray, batched: bool) -> tuple[np.ndarray, np.ndarray]:
    g = grad.reshape(grad.shape[0], -1) if batched else grad.reshape(1, -1)
    r = ref.reshape(g.shape)
    abs_err = np.linalg.norm(g - r, axis=1)
    rel_err = abs_err / np.maximum(np.linalg.norm(r, axis=1), np.finfo(float).tiny)
    return abs_err, rel_err


def _diagnostics(res: HypergradResult) -> str:
    skip = {"grad", "w", "v"}
    rows = []
    for key in sorted(res):
        if key in skip:
            continue
        val = res[key]
        if is_array(val) and np.size(to_numpy(val)) > 8:
            text = f"<array shape={tuple(val.shape)}>"
        else:
            text = str(to_numpy(val) if is_array(val) else val).replace("\n", "\n      ")
        rows.append(f"    {key}: {text}")
    return "\n".join(rows)


def _fmt(x: np.ndarray) -> str:
    return np.array2string(x, precision=8, max_line_width=96, threshold=60).replace(
        "\n", "\n      "
    )


def check_hypergrad(
    problem: BilevelProblem,
    lam: Any,
    w0: Any = None,
    *,
    inner: Dynamics,
    method: Method | None = None,
    reference: Any = "finite-differences",
    rtol: float | None = None,
    atol: float = 0.0,
    eps: float = 1e-3,
    require_success: bool = True,
) -> HypergradCheck:
    """Assert that ``method`` computes the same hypergradient as ``reference``.

    The check passes when, for every problem b (one without a batch axis),
    ``‖grad_b − ref_b‖ ≤ atol + rtol·‖ref_b‖`` (Euclidean norms over the hyperparameters),
    and — with ``require_success`` — the method's diagnostics report success.

    Parameters
    ----------
    problem, lam, w0, inner
        As for :func:`bilevel.hypergrad`.
    method : Method
        The method under test (default ``Reverse()``).
    reference : str, Method, callable or array
        ``"finite-differences"`` (default): :func:`finite_difference_hypergrad` of the
        unrolled K-step map (the quantity ``Reverse`` and ``Forward`` compute exactly, and
        that ``Implicit`` approaches when the inner solver has converged); a
        :class:`~bilevel.api.Method` run with the same ``inner``; a callable
        ``lam -> array`` (a closed form); or an array.
    rtol : float, optional
        Relative tolerance; default ``1e-6`` in float64 and ``1e-3`` in float32.
    atol : float
        Absolute tolerance on the norm of the difference.
    eps : float
        Relative step of the finite differences.
    require_success : bool
        Fail when ``result.success`` is False even if the vectors agree.

    Returns
    -------
    HypergradCheck
        The errors and the method's result.

    Raises
    ------
    AssertionError
        With both vectors, their difference, the relative and absolute errors, the
        method's diagnostics and — when the problem has user-supplied oracles — the
        :meth:`~bilevel.problem.BilevelProblem.check_oracles` report at the starting point.
    """
    from ..methods import Reverse

    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a BilevelProblem, got {type(problem).__name__}")
    if not isinstance(inner, Dynamics):
        raise TypeError(
            "inner must be a Dynamics object such as GradientDescent(lr=0.1, steps=100), "
            f"got {type(inner).__name__}"
        )
    method = Reverse() if method is None else method
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be a Method such as Reverse() or Implicit(CG()), got "
            f"{type(method).__name__}"
        )
    if rtol is None:
        rtol = 1e-3 if str(lam.dtype) == "float32" else 1e-6
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
    res = hypergrad(problem, lam, w0, dynamics=inner, method=method)
    ref, ref_name, ref_res = _reference(reference, problem, lam, w0, inner, eps)
    grad = np.asarray(to_numpy(res.grad), dtype=float)
    ref_np = np.asarray(to_numpy(ref), dtype=float)
    if ref_np.shape != grad.shape:
        raise ValueError(
            f"the reference has shape {ref_np.shape} but the hypergradient has shape "
            f"{grad.shape} (the shape of lam)"
        )
    w_shape = tuple((problem.initial_point(lam) if w0 is None else w0).shape)
    batched = len(w_shape) == 2
    abs_err, rel_err = _errors(grad, ref_np, batched)
    ref_norm = abs_err / np.maximum(rel_err, np.finfo(float).tiny)
    agree = bool(np.all(abs_err <= atol + rtol * ref_norm))
    ok = agree and (res.success or not require_success) and bool(np.all(np.isfinite(grad)))
    if ok:
        return HypergradCheck(
            grad=res.grad,
            reference=ref,
            rel_error=float(rel_err.max()),
            abs_error=float(abs_err.max()),
            result=res,
            reference_name=ref_name,
        )
    worst = int(np.argmax(rel_err))
    where = f" (worst of {len(rel_err)} problems: index {worst})" if batched else ""
    why = (
        "the values disagree"
        if not agree
        else "the method reported a failure (require_success=True)"
    )
    lines = [
        f"hypergradient check failed: {why}.",
        f"  method:    {method!r} with {inner!r}",
        f"  reference: {ref_name}",
        f"  relative error {rel_err[worst]:.3e}, absolute error {abs_err[worst]:.3e}{where}; "
        f"allowed: atol + rtol·‖ref‖ = {atol:g} + {rtol:g}·{ref_norm[worst]:.3e}",
        f"  method grad: {_fmt(grad[worst] if batched else grad)}",
        f"  reference:   {_fmt(ref_np[worst] if batched else ref_np)}",
        f"  difference:  {_fmt((grad - ref_np)[worst] if batched else grad - ref_np)}",
        "  method diagnostics:",
        _diagnostics(res),
    ]
    if ref_res is not None:
        lines += ["  reference method diagnostics:", _diagnostics(ref_res)]
    if problem.oracles:
        # at the starting point: near a stationary w_K the directional derivative of g is
        # tiny and its finite-difference check meaningless
        start = problem.initial_point(lam) if w0 is None else w0
        report = problem.check_oracles(start, lam)
        lines += [
            "  the problem's oracles at the starting point:",
            "    " + str(report).replace("\n", "\n    "),
        ]
    raise AssertionError("\n".join(lines))


def check_oracles(
    problem: BilevelProblem,
    w: Any,
    lam: Any,
    *,
    reference: str = "auto",
    rtol: float = 1e-5,
    eps: float = 1e-6,
    seed: int = 0,
) -> OracleReport:
    """Assert that the problem's derivative oracles match an independent reference.

    Thin wrapper of :meth:`bilevel.problem.BilevelProblem.check_oracles`: user-supplied
    oracles are compared with autograd, autograd's own with central finite differences
    (``reference="auto"``), along random directions. Raises ``AssertionError`` with the
    table of relative errors when any exceeds ``rtol``; returns the report otherwise.
    Cost: about two evaluations of each oracle.
    """
    report = problem.check_oracles(w, lam, reference=reference, rtol=rtol, eps=eps, seed=seed)
    report.raise_if_failed()
    return report

