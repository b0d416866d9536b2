"""Small test problems shared by several test modules (ridge V7 and a tanh MLP).

The ridge problem and its closed form are those of :mod:`bilevel.testing`."""

import autograd.numpy as anp
import numpy as np

from bilevel import GradientDescent, GradientFlow, Momentum
from bilevel.dynamics import minibatch_indices
from bilevel.testing import ridge_hypergrads, ridge_problem

SIZES = [(3, 4), (4, 1)]
N_MLP = sum(a * b + b for a, b in SIZES)


def mlp(w, X):
    """Tanh MLP 3→4→1 with flat parameters (n,) or a batch (B, n)."""
    i, h = 0, X
    for layer, (a, b) in enumerate(SIZES):
        W = anp.reshape(w[..., i : i + a * b], w.shape[:-1] + (a, b))
        i += a * b
        bias = w[..., i : i + b]
        i += b
        h = anp.matmul(h, W) + bias[..., None, :]
        if layer < len(SIZES) - 1:
            h = anp.tanh(h)
    return h[..., 0]


def ridge_data(seed=0, n=4, rows=12):
    """Well-conditioned ridge data (cond(A) ≤ ~6) and log-penalties λ: (X, y, Xv, yv, λ)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((rows, n)))[0]
    V = np.linalg.qr(rng.standard_normal((n, n)))[0]
    X = (U * np.linspace(1.0, 1.8, n)) @ V
    y = rng.standard_normal(rows)
    Xv, yv = rng.standard_normal((6, n)), rng.standard_normal(6)
    return X, y, Xv, yv, rng.uniform(-0.5, 0.5, n)


def ridge_exact(seed, lam, n=4, rows=12):
    """V7 closed form ∇F(λ) = −e^λ ⊙ w* ⊙ A⁻¹X_vᵀr_v on ``ridge_data(seed)``."""
    X, y, Xv, yv, _ = ridge_data(seed, n, rows)
    return ridge_hypergrads(X, y, Xv, yv, lam)["exact"]


def ridge(seed=0, n=4, rows=12):
    """(problem, λ, w*, exact ∇F, A, 1/λ_max(A)) for per-feature ridge (V7)."""
    X, y, Xv, yv, lam = ridge_data(seed, n, rows)
    closed = ridge_hypergrads(X, y, Xv, yv, lam)
    A = closed["hessian"]
    problem = ridge_problem(X, y, Xv, yv)
    return problem, lam, closed["w_star"], closed["exact"], A, 1.0 / np.linalg.eigvalsh(A)[-1]


def relerr(a, b):
    """‖a − b‖ / ‖b‖."""
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


def spd(n, rng, lo=1.0, hi=4.0):
    """A random symmetric positive-definite matrix with eigenvalues evenly in [lo, hi]."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(lo, hi, n)) @ q.T


def fd_gradient(fun, lam):
    """Central finite differences of a scalar function, step 1e-6·(1 + |λ_j|)."""
    out = np.zeros_like(lam)
    for j in range(lam.size):
        e = np.zeros_like(lam)
        eps = 1e-6 * (1 + abs(lam.flat[j]))
        e.flat[j] = eps
        out.flat[j] = (fun(lam + e) - fun(lam - e)) / (2 * eps)
    return out


def rel(a, b):
    """‖a − b‖ / ‖b‖ guarded against ‖b‖ = 0."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300)


def dyn_for(kind, K, problem, seed):
    """Inner dynamics by name: gd, schedule, momentum(-schedule), batches, or an RK scheme."""
    lrs = 0.1 + 0.1 * np.random.default_rng(seed).random(K)
    if kind == "gd":
        return GradientDescent(0.15, K)
    if kind == "schedule":
        return GradientDescent(lrs, K)
    if kind == "momentum":
        return Momentum(0.05, 0.8, K)
    if kind == "momentum-schedule":
        return Momentum(0.5 * lrs, 0.6, K)
    if kind == "batches":
        idx = minibatch_indices(10, 4, seed)

        def batch(k):
            i = idx(k)
            return dict(problem.data, X=problem.data["X"][i], y=problem.data["y"][i])

        return GradientDescent(lrs, K, batches=batch)
    return GradientFlow(0.15 * K, K, scheme=kind)
