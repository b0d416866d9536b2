"""The rows of ``bilevel bench peers`` written in PyTorch eager mode (float64, CPU).

Each builder takes the NumPy inputs of one workload of :mod:`bilevel.bench.peers` and
returns a function of no arguments computing the same hypergradient as bilevel, as a NumPy
array. The code is what a PyTorch user writes: parameters as separate tensors, the inner
loop differentiated with ``torch.autograd.grad(..., create_graph=True)`` (MAML,
hyper-cleaning, Conv4), and for ridge one traced gradient with ``retain_graph=True``
products inside conjugate gradients. Only imported when PyTorch is installed. Builders set one
intra-op thread (:data:`THREADS`): on a loaded two-core machine PyTorch's thread pool
spin-waits and made the small MAML rows 10–100× slower than single-threaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["THREADS", "cleaning", "conv4", "maml", "ridge"]

THREADS = 1


def _t(a: Any) -> Any:
    torch.set_num_threads(THREADS)
    return torch.as_tensor(np.asarray(a))


def maml(d: dict) -> Callable[[], np.ndarray]:
    """Second-order MAML on a batched ReLU MLP (MSE); meta-gradient of the mean query loss."""
    xs, ys, xq, yq = (_t(d[k]) for k in ("x_support", "y_support", "x_query", "y_query"))
    layers = [(_t(W), _t(b)) for W, b in d["layers"]]
    T, lr, K = xs.shape[0], d["lr"], d["steps"]

    def loss(params: list, x: Any, y: Any) -> Any:
        h = x
        for i in range(0, len(params), 2):
            h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i])
            if i + 2 < len(params):
                h = torch.relu(h)
        return ((h - y) ** 2).mean(dim=(1, 2))

    def run() -> np.ndarray:
        theta = [p.clone().requires_grad_(True) for pair in layers for p in pair]
        w = [p.unsqueeze(0).expand(T, *p.shape) for p in theta]
        for _ in range(K):
            grads = torch.autograd.grad(loss(w, xs, ys).sum(), w, create_graph=True)
            w = [p - lr * g for p, g in zip(w, grads, strict=True)]
        meta = torch.autograd.grad(loss(w, xq, yq).mean(), theta)
        return np.concatenate([g.detach().numpy().reshape(-1) for g in meta])

    return run


def conv4(d: dict) -> Callable[[], np.ndarray]:
    """Second-order MAML on Conv4 (cross-entropy), looping over the tasks of the meta-batch.

    What a learn2learn or higher user writes: the parameters as separate leaf tensors in
    the order of ``d["params"]`` (``(name, array)`` pairs: ``conv{b}``, ``gamma{b}``,
    ``beta{b}`` per block, ``w_head``, ``b_head``); per task, ``steps`` inner steps
    ``w ← w − lr ∇ L_support(w)`` with ``create_graph=True``, then the query loss divided
    by the number of tasks and ``backward()`` (so one task's graph is alive at a time, the
    gradients accumulating in ``.grad``). A block is ``F.conv2d`` (padding 1, no bias) →
    ``F.batch_norm(training=True)`` without running statistics (each task's batch
    statistics, biased variance, ``eps``) → 2×2 max-pool where ``d["pools"]`` says →
    ReLU; the head is linear on the flattened features. Returns the flat meta-gradient in
    the order of ``d["params"]``.
    """
    torch.set_num_threads(THREADS)
    F = torch.nn.functional
    names = [name for name, _ in d["params"]]
    leaves = [_t(a) for _, a in d["params"]]
    xs, ys, xq, yq = (_t(d[k]) for k in ("x_support", "y_support", "x_query", "y_query"))
    lr, K, eps, pools = d["lr"], d["steps"], d["eps"], d["pools"]

    def loss(w: dict, x: Any, y: Any) -> Any:
        h = x
        for blk, pool in enumerate(pools):
            h = F.conv2d(h, w[f"conv{blk}"], padding=1)
            h = F.batch_norm(h, None, None, w[f"gamma{blk}"], w[f"beta{blk}"], training=True,
                             eps=eps)
            h = F.relu(F.max_pool2d(h, 2) if pool else h)
        return F.cross_entropy(h.flatten(1) @ w["w_head"] + w["b_head"], y)

    def run() -> np.ndarray:
        theta = [p.clone().requires_grad_(True) for p in leaves]
        T = xs.shape[0]
        for t in range(T):
            w = theta
            for _ in range(K):
                grads = torch.autograd.grad(loss(dict(zip(names, w, strict=True)), xs[t],
                                                 ys[t]), w, create_graph=True)
                w = [p - lr * g for p, g in zip(w, grads, strict=True)]
            (loss(dict(zip(names, w, strict=True)), xq[t], yq[t]) / T).backward()
        return np.concatenate([p.grad.numpy().reshape(-1) for p in theta])

    return run


def cleaning(d: dict) -> Callable[[], np.ndarray]:
    """Hyper-cleaning: reverse mode through ``steps`` gradient steps; ∇_λ of the val. loss."""
    X, y, Xv, yv = (_t(d[k]) for k in ("X", "y", "X_val", "y_val"))
    w0, lam0, lr, K, l2 = _t(d["w0"]), _t(d["lam"]), d["lr"], d["steps"], d["l2"]
    shape = (X.shape[1], d["classes"])
    ce = torch.nn.functional.cross_entropy

    def run() -> np.ndarray:
        lam = lam0.clone().requires_grad_(True)
        weight = torch.sigmoid(lam)
        w = w0.clone().requires_grad_(True)
        for _ in range(K):
            W = w.reshape(shape)
            g = (weight * ce(X @ W, y, reduction="none")).mean() + 0.5 * l2 * (w * w).sum()
            (gw,) = torch.autograd.grad(g, w, create_graph=True)
            w = w - lr * gw
        f = ce(Xv @ w.reshape(shape), yv)
        return torch.autograd.grad(f, lam)[0].numpy()

    return run


def ridge(d: dict) -> Callable[[], np.ndarray]:
    """Ridge with per-feature log-penalties: the IFT hypergradient with ``iters`` CG steps."""
    X, y, Xv, yv = (_t(d[k]) for k in ("X", "y", "X_val", "y_val"))
    w_star, lam0, iters = _t(d["w"]), _t(d["lam"]), d["iters"]
    N, Nv = X.shape[0], Xv.shape[0]

    def run() -> np.ndarray:
        w = w_star.clone().requires_grad_(True)
        lam = lam0.clone().requires_grad_(True)
        f = 0.5 / Nv * ((Xv @ w - yv) ** 2).sum()
        (b,) = torch.autograd.grad(f, w)
        g = 0.5 / N * ((X @ w - y) ** 2).sum() + 0.5 * (torch.exp(lam) * w * w).sum()
        (gw,) = torch.autograd.grad(g, w, create_graph=True)

        def hvp(v: Any) -> Any:
            return torch.autograd.grad(gw, w, v, retain_graph=True)[0]

        v = _cg(hvp, b, iters)
        return -torch.autograd.grad(gw, lam, v)[0].numpy()

    return run


def _cg(matvec: Callable[[Any], Any], b: Any, iters: int) -> Any:
    """``iters`` steps of conjugate gradients on ``A x = b`` from ``x = 0``."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(iters):
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new
    return x
