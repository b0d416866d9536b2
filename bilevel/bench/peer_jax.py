"""The rows of ``bilevel bench peers`` written in JAX, compiled with ``jax.jit`` (float64, CPU).

Each builder takes the NumPy inputs of one workload of :mod:`bilevel.bench.peers` and
returns a function of no arguments computing the same hypergradient as bilevel, as a NumPy
array; the inner loops are ``lax.scan`` and ``lax.fori_loop`` (compiled once, on the
warm-up call), tasks are ``vmap``-ed (Conv4: unrolled, see :func:`conv4`). Only imported
when JAX is installed; importing it turns on 64-bit floats (``jax_enable_x64``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cleaning", "conv4", "maml", "ridge"]

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
        T = data[0].shape[0]
        return sum(task(params, *(a[t] for a in data)) for t in range(T)) / T

    grad = jax.jit(jax.grad(meta))
    return _done(lambda: jnp.concatenate([g.reshape(-1) for g in grad(theta)]))


def conv4(d: dict) -> Callable[[], np.ndarray]:
    """Second-order MAML on Conv4 (cross-entropy), tasks and inner steps unrolled in ``jit``.

    The inputs of :func:`bilevel.bench.peer_torch.conv4` (dtype kept: float32 stays
    float32); a block is ``lax.conv_general_dilated`` (padding 1, no bias) → each task's
    batch statistics over (images, height, width) with the biased variance, scale and
    shift → 2×2 max-pool where ``d["pools"]`` says → ReLU. The tasks and the inner steps
    are Python loops traced into one program: with ``vmap`` over the tasks the per-task
    weights make grouped convolutions, and inside ``lax.map``/``lax.scan`` the
    convolutions lose their fast path; both were 8–10× slower on XLA:CPU (64 channels,
    28×28, 8 tasks: 14–18 s against 1.8 s per meta-gradient). Compiling takes 10 s and
    more, growing with tasks × steps.
    """
    names = [name for name, _ in d["params"]]
    theta = {name: jnp.asarray(a) for name, a in d["params"]}
    data = tuple(jnp.asarray(d[k]) for k in ("x_support", "y_support", "x_query", "y_query"))
    lr, K, eps, pools = d["lr"], d["steps"], d["eps"], d["pools"]

    def block(h: Any, w: dict, blk: int, pool: bool) -> Any:
        h = jax.lax.conv_general_dilated(h, w[f"conv{blk}"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        c = h - jnp.mean(h, axis=(0, 2, 3), keepdims=True)
        r = jax.lax.rsqrt(jnp.mean(c * c, axis=(0, 2, 3), keepdims=True) + eps)
        h = c * r * w[f"gamma{blk}"][:, None, None] + w[f"beta{blk}"][:, None, None]
        if pool:
            n, ch, hh, ww = h.shape
            h = h[:, :, :hh // 2 * 2, :ww // 2 * 2].reshape(n, ch, hh // 2, 2, ww // 2, 2)
            h = jnp.max(h, axis=(3, 5))
        return jax.nn.relu(h)

    def loss(w: dict, x: Any, y: Any) -> Any:
        h = x
        for blk, pool in enumerate(pools):
            h = block(h, w, blk, pool)
        logp = jax.nn.log_softmax(h.reshape(h.shape[0], -1) @ w["w_head"] + w["b_head"])
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def task(params: dict, xs: Any, ys: Any, xq: Any, yq: Any) -> Any:
        w = params
        for _ in range(K):
            g = jax.grad(loss)(w, xs, ys)
            w = {k: w[k] - lr * g[k] for k in w}
        return loss(w, xq, yq)

    def meta(params: dict) -> Any:
        T = data[0].shape[0]
        return sum(task(params, *(a[t] for a in data)) for t in range(T)) / T

    grad = jax.jit(jax.grad(meta))

    def run() -> Any:
        g = grad(theta)
        return jnp.concatenate([g[name].reshape(-1) for name in names])

    return _done(run)


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
