"""Checks of a problem's derivative oracles against an independent reference.

:func:`check_oracles` draws random directions and compares each oracle's product with
autograd or with central finite differences; :class:`OracleReport` holds the relative
errors. ``BilevelProblem.check_oracles`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import device, namespace, to_numpy, unbox
from .oracles import DerivedOracles

__all__ = ["OracleReport", "check_oracles"]


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


def _vdot(a: Any, b: Any, batched: bool = False) -> Any:
    """⟨a, b⟩ summed over all axes, or per problem over the non-batch axes."""
    xp = namespace(a, b)
    prod = a * b
    if batched:
        return xp.sum(xp.reshape(prod, (prod.shape[0], -1)), axis=-1)
    return xp.sum(prod)


def _as_float(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(unbox(x)), dtype=float)


def _norm(x: Any) -> float:
    return float(np.linalg.norm(_as_float(x)))


def _rel_err(got: Any, want: Any, scale: float | None = None) -> float:
    """‖got − want‖ / max(‖want‖, scale): relative error, floored by a natural scale."""
    if isinstance(got, tuple):
        return max(_rel_err(g, w, scale) for g, w in zip(got, want, strict=True))
    g, w = _as_float(got), _as_float(want)
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), scale or 0.0, 1e-30))


@dataclass
class _Point:
    """The point, the random directions and the step of one :func:`check_oracles` call."""

    w: Any
    lam: Any
    data: Any
    v: Any
    u: Any
    e: Any
    eps: float

    @property
    def batched(self) -> bool:
        return len(self.w.shape) == 2

    def fd(self, fun: Callable, x: Any, d: Any) -> Any:
        """Central difference (fun(x + εd) − fun(x − εd)) / 2ε."""
        return (fun(x + self.eps * d) - fun(x - self.eps * d)) / (2 * self.eps)


def _checks(problem: DerivedOracles, ref: DerivedOracles, p: _Point) -> dict[str, tuple]:
    """Per oracle: (oracle in use, finite-difference reference, autograd reference, kind)."""
    w, lam, data, v, u, e = p.w, p.lam, p.data, p.v, p.u, p.e
    return {
        "inner_grad": (
            lambda: problem.inner_grad(w, lam, data),
            lambda: p.fd(lambda x: ref.evaluate("inner", x, lam, data), w, v),
            lambda: ref.grad_map(w, lam, data),
            "dir_w",
        ),
        "inner_hvp": (
            lambda: problem.inner_hvp(w, lam, v, data),
            lambda: p.fd(lambda x: ref.grad_map(x, lam, data), w, v),
            lambda: ref.inner_hvp(w, lam, v, data),
            None,
        ),
        "inner_mixed_vjp": (
            lambda: problem.inner_mixed_vjp(w, lam, u, data),
            lambda: p.fd(lambda lm: _vdot(ref.grad_map(w, lm, data), u, p.batched), lam, e),
            lambda: ref.inner_mixed_vjp(w, lam, u, data),
            "dir_lam",
        ),
        "inner_mixed_jvp": (
            lambda: problem.inner_mixed_jvp(w, lam, e, data),
            lambda: p.fd(lambda lm: ref.grad_map(w, lm, data), lam, e),
            lambda: ref.inner_mixed_jvp(w, lam, e, data),
            None,
        ),
        "outer_grads": (
            lambda: problem.outer_grads(w, lam, data),
            lambda: (
                p.fd(lambda x: ref.evaluate("outer", x, lam, data), w, v),
                p.fd(lambda lm: ref.evaluate("outer", w, lm, data), lam, e),
            ),
            lambda: ref.outer_grads(w, lam, data),
            "outer",
        ),
        "outer_value": (
            lambda: problem.outer_value_and_grads(w, lam, data)[0],
            lambda: ref.evaluate("outer", w, lam, data),
            lambda: ref.evaluate("outer", w, lam, data),
            None,
        ),
    }


def _directional(got: Any, kind: str | None, p: _Point) -> tuple[Any, float | None]:
    """Project an oracle's result on the directions finite differences measure.

    A directional derivative ⟨∇, d⟩ may vanish (e.g. at a stationary w); its natural scale
    is ‖∇‖·‖d‖ (Cauchy–Schwarz), returned as the error's denominator floor.
    """
    if kind == "dir_w":
        return _vdot(got, p.v, p.batched), _norm(got) * _norm(p.v)
    if kind == "dir_lam":
        return _vdot(got, p.e, p.batched), _norm(got) * _norm(p.e)
    if kind == "outer":
        scale = max(_norm(got[0]) * _norm(p.v), _norm(got[1]) * _norm(p.e))
        return (_vdot(got[0], p.v, p.batched), _vdot(got[1], p.e, p.batched)), scale
    return got, None


def check_oracles(
    problem: Any,
    w: Any,
    lam: Any,
    *,
    reference: str = "auto",
    eps: float = 1e-6,
    seed: int = 0,
    rtol: float = 1e-5,
    data: Any = None,
) -> OracleReport:
    """Compare a problem's oracles in use against an independent reference.

    For every oracle, a random direction is drawn and the oracle's product is compared
    with the reference: autograd (``reference="autograd"``) or central finite
    differences of ``g``/``f``/``∇g`` with step ``eps`` (``"fd"``). ``"auto"`` uses
    autograd for user-supplied oracles and finite differences for autograd's own.
    Cost: each oracle once and its reference once (two evaluations for differences).

    Returns
    -------
    OracleReport
        Relative error of each oracle; ``report.ok`` is True when all are below
        ``rtol``; ``report.raise_if_failed()`` raises an ``AssertionError`` listing them.
    """
    problem.check_inputs(w, lam)
    xp = namespace(w, lam)
    rng = np.random.default_rng(seed)

    def rand(like: Any) -> Any:
        return xp.asarray(rng.standard_normal(tuple(like.shape)), dtype=like.dtype,
                          device=device(like))

    point = _Point(w, lam, data, rand(w), rand(w), rand(lam), eps)
    errors, methods = {}, {}
    checks = _checks(problem, problem.reference(), point)
    user = set(problem.oracles)
    if "outer_value_and_grads" in user:  # checked as its value and its gradients
        user |= {"outer_grads", "outer_value"}
    else:
        del checks["outer_value"]
    for name, (mine, by_fd, by_ag, kind) in checks.items():
        got = mine()
        if reference == "fd" or (reference == "auto" and name not in user):
            methods[name] = "finite differences"
            got, scale = _directional(got, kind, point)
            errors[name] = _rel_err(got, by_fd(), scale)
        else:
            methods[name] = "autograd"
            errors[name] = _rel_err(got, by_ag())
    return OracleReport(errors=errors, references=methods, rtol=rtol, user=sorted(problem.oracles))
