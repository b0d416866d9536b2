"""Benchmark of :mod:`bilevel.numpy` against autograd.numpy: per-primitive overhead and MLP ratios.

``run`` returns plain numbers (no printing): for each primitive the time ratio
bnp / autograd.numpy of a forward call and of a gradient on a small array (where the
per-call overhead dominates), and for tanh MLPs of about 2k, 50k and 1M parameters the
ratios gradient-time / loss-time and HVP-time / gradient-time (HVP by forward-over-reverse),
plus the bnp / autograd.numpy gradient-time ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import grad, make_jvp

import bilevel.numpy as bnp
from bilevel import backend as _backend

__all__ = ["run"]

# name -> (bnp function, autograd.numpy function) of one small array
_PRIMITIVES: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "add": (lambda x: bnp.add(x, x), lambda x: anp.add(x, x)),
    "multiply": (lambda x: bnp.multiply(x, 2.0), lambda x: anp.multiply(x, 2.0)),
    "divide": (lambda x: bnp.divide(x, 3.0), lambda x: anp.divide(x, 3.0)),
    "power": (lambda x: bnp.power(x, 2.0), lambda x: anp.power(x, 2.0)),
    "exp": (bnp.exp, anp.exp),
    "log": (lambda x: bnp.log(x * x + 1.0), lambda x: anp.log(x * x + 1.0)),
    "tanh": (bnp.tanh, anp.tanh),
    "sqrt": (lambda x: bnp.sqrt(x * x + 1.0), lambda x: anp.sqrt(x * x + 1.0)),
    "maximum": (lambda x: bnp.maximum(x, 0.0), lambda x: anp.maximum(x, 0.0)),
    "where": (lambda x: bnp.where(x > 0, x, 0.0), lambda x: anp.where(x > 0, x, 0.0)),
    "sum": (lambda x: bnp.sum(x, axis=0), lambda x: anp.sum(x, axis=0)),
    "mean": (lambda x: bnp.mean(x, axis=1), lambda x: anp.mean(x, axis=1)),
    "max": (lambda x: bnp.max(x, axis=1), lambda x: anp.max(x, axis=1)),
    "matmul": (lambda x: bnp.matmul(x, x.T), lambda x: anp.matmul(x, x.T)),
    "reshape": (lambda x: bnp.reshape(x, (-1,)), lambda x: anp.reshape(x, (-1,))),
    "transpose": (bnp.transpose, anp.transpose),
    "getitem": (lambda x: bnp.getitem(x, (slice(1, None), slice(None))), lambda x: x[1:, :]),
    "concatenate": (lambda x: bnp.concatenate([x, x]), lambda x: anp.concatenate([x, x])),
}


def _timeit(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn()`` over ``repeats`` batches (each batch long enough to time)."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(2e-3 / once))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times))


def _mlp(sizes: tuple[int, ...], lib: Any) -> tuple[Callable[[Any, Any, Any], Any], int]:
    """tanh MLP loss ``mean((f_w(X) - Y)²)`` of a flat parameter vector, and its size."""
    shapes = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        shapes += [(a, b), (b,)]
    n = int(sum(np.prod(s) for s in shapes))

    def loss(w: Any, x: Any, y: Any) -> Any:
        h, k = x, 0
        for i in range(0, len(shapes), 2):
            (a, b), _ = shapes[i], shapes[i + 1]
            wm = lib.reshape(w[k : k + a * b], (a, b))
            k += a * b
            h = lib.matmul(h, wm) + w[k : k + b]
            k += b
            if i + 2 < len(shapes):
                h = lib.tanh(h)
        return lib.mean((h - y) ** 2)

    return loss, n


_MLP_SIZES = {"2k": (16, 64, 16, 1), "50k": (64, 200, 160, 1), "1M": (256, 1000, 768, 1)}


def _time_mlp(
    loss: Callable[..., Any], args: tuple, v: Any, repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Loss, gradient and forward-over-reverse HVP times of ``loss(w, x, y)`` at ``args``."""
    w, xb, yb = args
    g = grad(loss)
    t_loss = _timeit(lambda: loss(w, xb, yb), repeats, sync)
    t_grad = _timeit(lambda: g(w, xb, yb), repeats, sync)
    t_hvp = _timeit(lambda: make_jvp(lambda u: g(u, xb, yb))(w)(v), repeats, sync)
    return {
        "loss_s": t_loss,
        "grad_s": t_grad,
        "hvp_s": t_hvp,
        "grad_over_loss": t_grad / t_loss,
        "hvp_over_grad": t_hvp / t_grad,
    }


def run(quick: bool, backend: str = "numpy") -> dict:
    """Time bnp against autograd.numpy.

    Parameters
    ----------
    quick
        Fewer repeats and no 1M-parameter MLP (seconds instead of about a minute).
    backend
        ``"numpy"`` (ratios against autograd.numpy) or ``"cupy"`` (bnp only: the MLP
        ratios; autograd.numpy cannot run there, so its entries are ``None``).

    Returns
    -------
    dict
        ``{"primitives": {name: {"forward_ratio", "grad_ratio"}}, "mlp": {label:
        {"params", "loss_s", "grad_s", "hvp_s", "grad_over_loss", "hvp_over_grad",
        "grad_ratio_vs_autograd"}}, "backend": ...}``. Ratios below 1 mean bnp is faster.
    """
    xp = _backend.module(backend)
    sync = (lambda: xp.cuda.Device().synchronize()) if backend == "cupy" else (lambda: None)
    repeats = 5 if quick else 15
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"backend": backend, "quick": quick, "primitives": {}, "mlp": {}}

    x_np = rng.standard_normal((8, 8))
    x = xp.asarray(x_np)
    for name, (f_b, f_a) in _PRIMITIVES.items():
        entry: dict[str, float | None] = {}
        tb = _timeit(lambda f=f_b: f(x), repeats, sync)
        gb = _timeit(lambda f=f_b: grad(lambda v: bnp.sum(f(v)))(x), repeats, sync)
        if backend == "numpy":
            ta = _timeit(lambda f=f_a: f(x_np), repeats, sync)
            ga = _timeit(lambda f=f_a: grad(lambda v: anp.sum(f(v)))(x_np), repeats, sync)
            entry = {"forward_ratio": tb / ta, "grad_ratio": gb / ga}
        else:
            entry = {"forward_s": tb, "grad_s": gb, "forward_ratio": None, "grad_ratio": None}
        out["primitives"][name] = entry

    for label, sizes in _MLP_SIZES.items():
        if quick and label == "1M":
            continue
        batch = 32
        loss_b, n = _mlp(sizes, bnp)
        loss_a, _ = _mlp(sizes, anp)
        w_np = rng.standard_normal(n) / np.sqrt(sizes[1])
        xb_np, yb_np = rng.standard_normal((batch, sizes[0])), rng.standard_normal((batch, 1))
        w, xb, yb, v = (xp.asarray(a) for a in (w_np, xb_np, yb_np, rng.standard_normal(n)))
        entry = {"params": n, **_time_mlp(loss_b, (w, xb, yb), v, repeats, sync)}
        entry["grad_ratio_vs_autograd"] = None
        if backend == "numpy":
            ref = _time_mlp(loss_a, (w_np, xb_np, yb_np), v, repeats, sync)
            entry.update(
                {
                    "grad_ratio_vs_autograd": entry["grad_s"] / ref["grad_s"],
                    "hvp_ratio_vs_autograd": entry["hvp_s"] / ref["hvp_s"],
                    "autograd_grad_over_loss": ref["grad_over_loss"],
                    "autograd_hvp_over_grad": ref["hvp_over_grad"],
                }
            )
        out["mlp"][label] = entry
    return out
