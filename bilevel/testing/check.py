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

from ..api import HypergradResult, Method, hypergrad, resolve_dynamics
from ..backend import is_array, to_numpy
from ..dynamics import Dynamics
from ..methods import Reverse
from ..problem import BilevelProblem, OracleReport
from .finite_differences import finite_difference_hypergrad

__all__ = [
    "HypergradCheck",
    "check_hypergrad",
    "check_oracles",
    "finite_difference_hypergrad",
]

_FD_NAMES = ("finite-differences", "fd")


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
    dynamics: Dynamics,
    eps: float,
) -> tuple[Any, str, HypergradResult | None]:
    """The reference hypergradient, a description of it and its result (for a Method)."""
    if isinstance(reference, str):
        if reference.lower() not in _FD_NAMES:
            raise ValueError(
                f"reference must be 'finite-differences', a Method (e.g. Reverse()), a "
                f"callable lam -> array or an array; got the string {reference!r}"
            )
        ref = finite_difference_hypergrad(problem, lam, w0, dynamics=dynamics, eps=eps)
        return ref, f"central finite differences of the {dynamics.steps}-step unrolled map", None
    if isinstance(reference, Method):
        res = hypergrad(problem, lam, w0, dynamics=dynamics, method=reference)
        return res.grad, f"{reference!r} with {dynamics!r}", res
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


def _check_arguments(problem: Any, dynamics: Any, method: Any) -> Method:
    """Type checks of :func:`check_hypergrad`; returns the method (default ``Reverse()``)."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a BilevelProblem, got {type(problem).__name__}")
    if not isinstance(dynamics, Dynamics):
        raise TypeError(
            "dynamics must be a Dynamics object such as GradientDescent(lr=0.1, steps=100), "
            f"got {type(dynamics).__name__}"
        )
    method = Reverse() if method is None else method
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be a Method such as Reverse() or Implicit(CG()), got "
            f"{type(method).__name__}"
        )
    return method


@dataclass
class _Comparison:
    """The method's and the reference's vectors (NumPy) and their per-problem errors."""

    grad: np.ndarray
    reference: np.ndarray
    abs_err: np.ndarray
    rel_err: np.ndarray
    ref_norm: np.ndarray
    batched: bool

    def agree(self, rtol: float, atol: float) -> bool:
        """``‖grad_b − ref_b‖ ≤ atol + rtol·‖ref_b‖`` for every problem b."""
        return bool(np.all(self.abs_err <= atol + rtol * self.ref_norm))

    def row(self, x: np.ndarray, b: int) -> np.ndarray:
        return x[b] if self.batched else x


def _compare(grad: Any, ref: Any, batched: bool) -> _Comparison:
    g = np.asarray(to_numpy(grad), dtype=float)
    r = np.asarray(to_numpy(ref), dtype=float)
    if r.shape != g.shape:
        raise ValueError(
            f"the reference has shape {r.shape} but the hypergradient has shape "
            f"{g.shape} (the shape of lam)"
        )
    abs_err, rel_err = _errors(g, r, batched)
    ref_norm = abs_err / np.maximum(rel_err, np.finfo(float).tiny)
    return _Comparison(g, r, abs_err, rel_err, ref_norm, batched)


def _failure_message(
    why: str,
    cmp: _Comparison,
    rtol: float,
    atol: float,
    describe: tuple[str, str],
    results: tuple[HypergradResult, HypergradResult | None],
    oracle_report: Any,
) -> str:
    """The text of a failed check: vectors, errors, diagnostics and the oracle report."""
    worst = int(np.argmax(cmp.rel_err))
    where = f" (worst of {len(cmp.rel_err)} problems: index {worst})" if cmp.batched else ""
    res, ref_res = results
    lines = [
        f"hypergradient check failed: {why}.",
        f"  method:    {describe[0]}",
        f"  reference: {describe[1]}",
        f"  relative error {cmp.rel_err[worst]:.3e}, absolute error "
        f"{cmp.abs_err[worst]:.3e}{where}; allowed: atol + rtol·‖ref‖ = {atol:g} + "
        f"{rtol:g}·{cmp.ref_norm[worst]:.3e}",
        f"  method grad: {_fmt(cmp.row(cmp.grad, worst))}",
        f"  reference:   {_fmt(cmp.row(cmp.reference, worst))}",
        f"  difference:  {_fmt(cmp.row(cmp.grad - cmp.reference, worst))}",
        "  method diagnostics:",
        _diagnostics(res),
    ]
    if ref_res is not None:
        lines += ["  reference method diagnostics:", _diagnostics(ref_res)]
    if oracle_report is not None:
        lines += [
            "  the problem's oracles at the starting point:",
            "    " + str(oracle_report).replace("\n", "\n    "),
        ]
    return "\n".join(lines)


def check_hypergrad(
    problem: BilevelProblem,
    lam: Any,
    w0: Any = None,
    *,
    dynamics: Dynamics | None = None,
    method: Method | None = None,
    reference: Any = "finite-differences",
    rtol: float | None = None,
    atol: float = 0.0,
    eps: float = 1e-3,
    require_success: bool = True,
    inner: Dynamics | None = None,
) -> HypergradCheck:
    """Assert that ``method`` computes the same hypergradient as ``reference``.

    The check passes when, for every problem b (one without a batch axis),
    ``‖grad_b − ref_b‖ ≤ atol + rtol·‖ref_b‖`` (Euclidean norms over the hyperparameters),
    and — with ``require_success`` — the method's diagnostics report success.

    Parameters
    ----------
    problem, lam, w0, dynamics
        As for :func:`bilevel.hypergrad` (``inner=`` is the deprecated name of
        ``dynamics=`` and warns).
    method : Method
        The method under test (default ``Reverse()``).
    reference : str, Method, callable or array
        ``"finite-differences"`` (default): :func:`finite_difference_hypergrad` of the
        unrolled K-step map (the quantity ``Reverse`` and ``Forward`` compute exactly, and
        that ``Implicit`` approaches when the inner solver has converged); a
        :class:`~bilevel.api.Method` run with the same ``dynamics``; a callable
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
    dynamics = resolve_dynamics(dynamics, inner, "check_hypergrad")
    method = _check_arguments(problem, dynamics, method)
    if rtol is None:
        rtol = 1e-3 if str(lam.dtype) == "float32" else 1e-6
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
    res = hypergrad(problem, lam, w0, dynamics=dynamics, method=method)
    ref, ref_name, ref_res = _reference(reference, problem, lam, w0, dynamics, eps)
    start = problem.initial_point(lam) if w0 is None else w0
    cmp = _compare(res.grad, ref, batched=len(tuple(start.shape)) == 2)
    agree = cmp.agree(rtol, atol)
    if agree and (res.success or not require_success) and np.all(np.isfinite(cmp.grad)):
        return HypergradCheck(
            grad=res.grad,
            reference=ref,
            rel_error=float(cmp.rel_err.max()),
            abs_error=float(cmp.abs_err.max()),
            result=res,
            reference_name=ref_name,
        )
    why = "the values disagree" if not agree else (
        "the method reported a failure (require_success=True)"
    )
    # at the starting point: near a stationary w_K the directional derivative of g is tiny
    # and its finite-difference check meaningless
    report = problem.check_oracles(start, lam) if problem.oracles else None
    raise AssertionError(_failure_message(
        why, cmp, rtol, atol, (f"{method!r} with {dynamics!r}", ref_name), (res, ref_res), report
    ))


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

