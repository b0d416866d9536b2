"""Closed-form hypergradients of the generated problems (NumPy, float64, one problem).

These are the reference answers carried by the strategies of
:mod:`bilevel.testing.strategies`, and the ridge closed form used across the tests and
benchmarks. Every function takes dense matrices of one problem; a batch is handled by
calling it once per problem. All
matrices are small (n ≤ a few tens), so eigendecompositions are used freely: cost
O(n³ + K n²) time and O(n²) memory per call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "STABILITY_POLYNOMIALS",
    "divided_power_differences",
    "proximal_quadratic_hypergrads",
    "quadratic_hypergrads",
    "ridge_hypergrads",
]

#: Stability polynomial p(z) of each explicit Runge–Kutta scheme: one step of the scheme on
#: the linear ODE ``u' = A u + c`` is ``u ← p(hA) u + (p(hA) − I) A⁻¹ c``.
STABILITY_POLYNOMIALS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "euler": lambda z: 1 + z,
    "heun": lambda z: 1 + z + z**2 / 2,
    "rk4": lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24,
}


def _sym_fun(S: np.ndarray, fun: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fun(S)`` for a symmetric matrix S through its eigendecomposition."""
    s, U = np.linalg.eigh(S)
    return (U * fun(s)) @ U.T


def quadratic_hypergrads(
    H: np.ndarray,
    B: np.ndarray,
    c: np.ndarray,
    C: np.ndarray,
    d: np.ndarray,
    gamma: float,
    lam: np.ndarray,
    w0: np.ndarray,
    lr: float,
    steps: int,
) -> dict[str, np.ndarray]:
    """Exact and K-step unrolled hypergradients of the linear-quadratic problem (V2).

    ``g(w, λ) = ½wᵀHw − wᵀ(Bλ + c)``, ``f(w, λ) = ½‖Cw − d‖² + ½γ‖λ‖²``, gradient descent
    with step α from the constant ``w0``. With ``R = I − αH``::

        w* = H⁻¹(Bλ + c),                  ∇F   = BᵀH⁻¹Cᵀ(Cw* − d) + γλ
        w_K = R^K w0 + (I − R^K) w*,       ∇F_K = Bᵀ(I − R^K)H⁻¹Cᵀ(Cw_K − d) + γλ

    Returns
    -------
    dict
        ``exact``, ``unrolled``, ``w_star``, ``w_unrolled``.
    """
    Hinv = np.linalg.inv(H)
    w_star = Hinv @ (B @ lam + c)
    RK = _sym_fun(np.eye(len(H)) - lr * H, lambda r: r**steps)
    w_K = RK @ w0 + (np.eye(len(H)) - RK) @ w_star
    exact = B.T @ Hinv @ C.T @ (C @ w_star - d) + gamma * lam
    unrolled = B.T @ (np.eye(len(H)) - RK) @ Hinv @ C.T @ (C @ w_K - d) + gamma * lam
    return {"exact": exact, "unrolled": unrolled, "w_star": w_star, "w_unrolled": w_K}


def divided_power_differences(r: np.ndarray, steps: int) -> np.ndarray:
    """Γ with ``Γ_pq = (r_p^K − r_q^K)/(r_p − r_q) = Σ_{i<K} r_p^i r_q^{K−1−i}``.

    The Fréchet derivative of ``R ↦ R^K`` at ``R = U diag(r) Uᵀ`` in direction E is
    ``U (Γ ∘ UᵀEU) Uᵀ`` (Daleckii–Krein). The sum form is exact also for equal ``r_p = r_q``
    (it gives ``K r^{K−1}``). Cost O(K n²).
    """
    gamma = np.zeros((len(r), len(r)))
    for i in range(steps):
        gamma += np.outer(r**i, r ** (steps - 1 - i))
    return gamma


def _ridge_scaled(X: np.ndarray, y: np.ndarray, mean: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)/√N`` when the loss is a mean: ``(1/2N)‖Xw − y‖² = ½‖Xw/√N − y/√N‖²``."""
    c = 1.0 / np.sqrt(len(y)) if mean else 1.0
    return c * np.asarray(X, dtype=float), c * np.asarray(y, dtype=float)


def ridge_hypergrads(
    X: np.ndarray,
    y: np.ndarray,
    Xv: np.ndarray,
    yv: np.ndarray,
    lam: np.ndarray,
    w0: np.ndarray | None = None,
    lr: float | None = None,
    steps: int | None = None,
    *,
    mean: bool = False,
    log_penalty: bool = True,
) -> dict[str, np.ndarray]:
    """Exact and K-step unrolled hypergradients of ridge with per-feature penalties (V7).

    ``g(w, λ) = ½‖Xw − y‖² + ½Σ_j ρ_j w_j²``, ``f(w) = ½‖X_v w − y_v‖²`` with ``ρ = e^λ``
    (``log_penalty``) or ``ρ = λ``; with ``mean`` the two squared norms are divided by the
    numbers of rows (the problem of :func:`bilevel.hpo.problems.ridge`). A ``λ`` of one
    entry is one penalty shared by every feature. With ``A = XᵀX + diag ρ``,
    ``w* = A⁻¹Xᵀy``, ``r_v = X_v w* − y_v``::

        ∇F = −ρ' ⊙ w* ⊙ (A⁻¹X_vᵀ r_v)                       (ρ' = dρ/dλ)

    Gradient descent with step α from ``w0`` gives ``w_K = w* + R^K(w0 − w*)``, ``R = I − αA``,
    and ``dw_K/dρ_j = (I − R^K) dw*/dρ_j − α D(R^K)[e_j e_jᵀ](w0 − w*)`` with
    ``dw*/dρ_j = −w*_j A⁻¹e_j`` and D(R^K) from :func:`divided_power_differences`;
    ``∇F_K = (dw_K/dλ)ᵀ X_vᵀ(X_v w_K − y_v)``. Cost O(n³ + K n²).

    Returns
    -------
    dict
        ``exact``, ``w_star``, ``hessian`` (A) and, when ``steps`` is given (with ``w0`` and
        ``lr``), ``unrolled`` and ``w_unrolled``.
    """
    X, y = _ridge_scaled(X, y, mean)
    Xv, yv = _ridge_scaled(Xv, yv, mean)
    n = X.shape[1]
    lam = np.asarray(lam, dtype=float)
    lam_n = np.broadcast_to(lam, (n,))
    rho = np.exp(lam_n) if log_penalty else lam_n
    drho = rho if log_penalty else np.ones(n)
    A = X.T @ X + np.diag(rho)
    Ainv = np.linalg.inv(A)
    w_star = Ainv @ (X.T @ y)
    out = {"w_star": w_star, "hessian": A}
    out["exact"] = -drho * w_star * (Ainv @ (Xv.T @ (Xv @ w_star - yv)))
    if steps is not None:
        out.update(_ridge_unrolled(A, Ainv, w_star, drho, Xv, yv, np.asarray(w0), lr, steps))
    if lam.size == 1 and n > 1:  # one shared penalty: the sum over features
        out["exact"] = out["exact"].sum(keepdims=True).reshape(lam.shape)
        if "unrolled" in out:
            out["unrolled"] = out["unrolled"].sum(keepdims=True).reshape(lam.shape)
    return out


def _ridge_unrolled(
    A: np.ndarray,
    Ainv: np.ndarray,
    w_star: np.ndarray,
    drho: np.ndarray,
    Xv: np.ndarray,
    yv: np.ndarray,
    w0: np.ndarray,
    lr: float,
    steps: int,
) -> dict[str, np.ndarray]:
    """``unrolled`` and ``w_unrolled`` of :func:`ridge_hypergrads`."""
    n = len(A)
    r, U = np.linalg.eigh(np.eye(n) - lr * A)
    RK = (U * r**steps) @ U.T
    w_K = w_star + RK @ (w0 - w_star)
    gamma = divided_power_differences(r, steps)
    dw_star = -Ainv * w_star  # column j: dw*/dρ_j = −w*_j A⁻¹ e_j
    delta = U.T @ (w0 - w_star)
    Z = np.empty((n, n))
    for j in range(n):
        uj = U[j]  # Uᵀ e_j
        dRK = U @ ((gamma * np.outer(uj, uj)) @ delta)
        Z[:, j] = drho[j] * ((np.eye(n) - RK) @ dw_star[:, j] - lr * dRK)
    return {"unrolled": Z.T @ (Xv.T @ (Xv @ w_K - yv)), "w_unrolled": w_K}


def proximal_quadratic_hypergrads(
    P: np.ndarray,
    a: np.ndarray,
    Q: np.ndarray,
    b: np.ndarray,
    prox: float,
    theta: np.ndarray,
    transition: Callable[[np.ndarray], np.ndarray],
    steps: int,
    horizon: float | None = None,
) -> dict[str, np.ndarray]:
    """Hypergradients of the proximal quadratic task, λ = θ = w0 (V8, V9).

    ``g(w, θ) = ½(w − a)ᵀP(w − a) + (r/2)‖w − θ‖²``, ``f(w) = ½(w − b)ᵀQ(w − b)``,
    ``S = P + rI``, ``w* = S⁻¹(Pa + rθ)``. A linear one-step map with transition
    ``R = ρ(S)`` (gradient descent: ``ρ(s) = 1 − αs``; a Runge–Kutta scheme on the gradient
    flow: ``ρ(s) = p(−hs)``) has the fixed point w*, so::

        w_K = R^K θ + (I − R^K) w*,       dw_K/dθ = R^K + rS⁻¹(I − R^K)
        ∇F_K = (dw_K/dθ) Q(w_K − b),      ∇F = rS⁻¹Q(w* − b) = (I + P/r)⁻¹Q(w* − b)

    and for the gradient flow up to time T (``horizon``) the same with ``R^K = e^{−ST}``.

    Parameters
    ----------
    transition : callable
        ``ρ`` applied to the eigenvalues of S.

    Returns
    -------
    dict
        ``exact``, ``unrolled``, ``w_star``, ``w_unrolled`` and, with ``horizon``, ``flow``
        and ``w_flow``.
    """
    n = len(a)
    S = P + prox * np.eye(n)
    s, U = np.linalg.eigh(S)
    w_star = np.linalg.solve(S, P @ a + prox * theta)
    gw_star = Q @ (w_star - b)
    out = {"w_star": w_star, "exact": prox * np.linalg.solve(S, gw_star)}

    def through(RK: np.ndarray, key: str, wkey: str) -> None:
        w_K = RK @ theta + (np.eye(n) - RK) @ w_star
        J = RK + prox * np.linalg.solve(S, np.eye(n) - RK)
        out[key] = J.T @ (Q @ (w_K - b))
        out[wkey] = w_K

    through((U * transition(s) ** steps) @ U.T, "unrolled", "w_unrolled")
    if horizon is not None:
        through((U * np.exp(-s * horizon)) @ U.T, "flow", "w_flow")
    return out
