"""The rows of ``bilevel bench peers`` written in JAX, compiled with ``jax.jit`` (float64, CPU).

Each builder takes the NumPy inputs of one workload of :mod:`bilevel.bench.peers` and
returns a function of no arguments computing the same hypergradient as bilevel, as a NumPy
array; the inner loops are ``lax.scan`` and ``lax.fori_loop`` (compiled once, on the
warm-up call), tasks are ``vmap``-ed. Only imported when JAX is installed; importing it
turns on 64-bit floats (``jax_enable_x64``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cleaning", "maml", "ridge"]

jax.config.update("jax_enable_x64", True)


def _done(fn: Callable[[], Any]) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(jax.block_until_ready(fn()))


def maml(d: dict) -> Callable[[], np.ndarray]:
    """Second-order MAML on a ReLU MLP (MSE), tasks vmapped, inner loop a ``lax.scan``."""
    data = tuple(jnp.asarray(d[k]) for k in ("x_support", "y_support", "x_query", "y_query"))
    theta = [jnp.asarray(a) for pair in d["layers"] for a in pair]
    lr, K = d["lr"], d["steps"]

    def loss(params: list, x: Any, y: Any) -> Any:
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i + 2 < len(params):
                h = jax.nn.relu(h)
        return jnp.mean((h - y) ** 2)

    def task(params: list, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
        def step(w: list, _: Any) -> tuple[list, None]:
            g = jax.grad(loss)(w, xs, ys)
            return [p - lr * gi for p, gi in zip(w, g, strict=True)], None

        w, _ = jax.lax.scan(step, params, None, length=K)
        return loss(w, xq, yq)

    def meta(params: list) -> Any:
        return jnp.mean(jax.vmap(task, in_axes=(None, 0, 0, 0, 0))(params, *data))

    grad = jax.jit(jax.grad(meta))
    return _done(lambda: jnp.concatenate([g.reshape(-1) for g in grad(theta)]))


def cleaning(d: dict) -> Callable[[], np.ndarray]:
    """Hyper-cleaning: reverse mode through a ``lax.scan`` of ``steps`` gradient steps."""
    X, y, Xv, yv = (jnp.asarray(d[k]) for k in ("X", "y", "X_val", "y_val"))
    w0, lam0, lr, K, l2 = jnp.asarray(d["w0"]), jnp.asarray(d["lam"]), d["lr"], d["steps"], d["l2"]
    shape = (X.shape[1], d["classes"])

    def ce(logits: Any, labels: Any) -> Any:
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]

    def outer(lam: Any) -> Any:
        weight = jax.nn.sigmoid(lam)

        def g(w: Any) -> Any:
            return jnp.mean(weight * ce(X @ w.reshape(shape), y)) + 0.5 * l2 * jnp.sum(w * w)

        def step(w: Any, _: Any) -> tuple[Any, None]:
            return w - lr * jax.grad(g)(w), None

        w, _ = jax.lax.scan(step, w0, None, length=K)
        return jnp.mean(ce(Xv @ w.reshape(shape), yv))

    grad = jax.jit(jax.grad(outer))
    return _done(lambda: grad(lam0))


def ridge(d: dict) -> Callable[[], np.ndarray]:
    """Ridge with per-feature log-penalties: IFT with ``iters`` CG steps on jvp-of-grad HVPs."""
    X, y, Xv, yv = (jnp.asarray(d[k]) for k in ("X", "y", "X_val", "y_val"))
    w_star, lam0, iters = jnp.asarray(d["w"]), jnp.asarray(d["lam"]), d["iters"]
    N, Nv = X.shape[0], Xv.shape[0]

    def g(w: Any, lam: Any) -> Any:
        return 0.5 / N * jnp.sum((X @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w * w)

    def hypergrad(w: Any, lam: Any) -> Any:
        b = jax.grad(lambda w_: 0.5 / Nv * jnp.sum((Xv @ w_ - yv) ** 2))(w)
        gw = jax.grad(g)

        def hvp(v: Any) -> Any:
            return jax.jvp(lambda w_: gw(w_, lam), (w,), (v,))[1]

        def body(_: int, s: tuple) -> tuple:
            x, r, p, rr = s
            Ap = hvp(p)
            alpha = rr / (p @ Ap)
            x, r = x + alpha * p, r - alpha * Ap
            rr_new = r @ r
            return x, r, r + (rr_new / rr) * p, rr_new

        v = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(b), b, b, b @ b))[0]
        _, mixed = jax.vjp(lambda lam_: gw(w, lam_), lam)
        return -mixed(v)[0]

    fn = jax.jit(hypergrad)
    return _done(lambda: fn(w_star, lam0))
