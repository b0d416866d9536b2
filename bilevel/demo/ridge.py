"""Part 1 of the demo: every hypergradient method on per-feature diabetes ridge."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import backend as _backend
from ..bench import method_suite, quiet_hypergrad
from ..bench.report import (
    RowLog,
    figure,
    format_bytes,
    markdown_table,
    peak_memory,
    save_figure,
)
from ..outer.driver import progress_bar
from ..testing import ridge_hypergrads


# ------------------------------------------------------------------ part 1: ridge
def diabetes_split(seed: int = 0, n_train: int = 300) -> tuple[np.ndarray, ...]:
    """Standardized diabetes data split at random into ``(X, y, X_val, y_val)`` (float64).

    Features are standardized with the training mean and deviation, targets centred and
    scaled likewise (ridge has no intercept). Needs scikit-learn (the data ship with it).
    """
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as err:  # pragma: no cover - scikit-learn is in the bench extra
        raise ImportError(
            "the demo reads the diabetes data from scikit-learn: pip install "
            '"bilevel[bench]" (or scikit-learn)'
        ) from err
    X, y = load_diabetes(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(y))
    tr, va = idx[:n_train], idx[n_train:]
    mu, sd = X[tr].mean(0), X[tr].std(0)
    ym, ys = y[tr].mean(), y[tr].std()
    return (X[tr] - mu) / sd, (y[tr] - ym) / ys, (X[va] - mu) / sd, (y[va] - ym) / ys


def ridge_exact_hypergrad(
    X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """``∇F(λ) = −e^λ ⊙ w* ⊙ A⁻¹X_vᵀ(X_v w* − y_v)/N_v`` with ``A = XᵀX/N + diag e^λ``.

    Cost O(N d² + d³), memory O(d²) (dense solve; float64 NumPy).
    """
    return ridge_hypergrads(X, y, Xv, yv, lam, mean=True)["exact"]


def sync(backend: str) -> None:
    if backend == "cupy":
        _backend.module("cupy").cuda.Device().synchronize()


def ridge_rows(
    cfg: dict[str, Any], backend: str, seed: int, log: RowLog, progress: bool = True
) -> list[dict]:
    """Run every method on the diabetes ridge problem; one saved row per method."""
    from ..hpo.problems import ridge

    X, y, Xv, yv = diabetes_split(seed)
    lam_np = np.log(0.1) + 0.5 * np.random.default_rng([seed, 1]).standard_normal(X.shape[1])
    exact = ridge_exact_hypergrad(X, y, Xv, yv, lam_np)
    on = [_backend.to_backend(a, backend) for a in (X, y, Xv, yv, lam_np, np.zeros(X.shape[1]))]
    problem = ridge(*on[:4])
    lam, w0 = on[4], on[5]
    suite = method_suite(cfg["steps"], cfg["lr"], horizon=cfg["horizon"],
                         flow_steps=cfg["flow_steps"], scheme="heun")
    quiet_hypergrad(problem, lam, w0, *suite["Reverse"])  # warm-up: first traces, imports
    rows = []
    bar = progress_bar(suite.items(), desc="ridge: methods", progress=progress)
    for label, (inner, method) in bar:
        bar.set_postfix_str(label)

        def measure(inner: Any = inner, method: Any = method, label: str = label) -> dict:
            sync(backend)
            t0 = time.perf_counter()
            res = quiet_hypergrad(problem, lam, w0, inner, method)
            sync(backend)
            seconds = time.perf_counter() - t0
            _, peak = peak_memory(lambda: quiet_hypergrad(problem, lam, w0, inner, method),
                                  backend)
            grad = _backend.to_numpy(res.grad)
            with np.errstate(over="ignore", invalid="ignore"):  # a diverged method: the
                err = float(np.linalg.norm(grad - exact) / np.linalg.norm(exact))  # table says
            return dict(method=label, rel_error=err, seconds=seconds, n_hvp=int(res.n_hvp),
                        n_grad=int(res.n_grad), n_jvp=int(res.n_jvp), peak_bytes=int(peak),
                        success=bool(res.success), message=str(res.message))

        rows.append(log.compute([label], measure))
    return rows


def ridge_markdown(rows: list[dict], cfg: dict[str, Any]) -> str:
    head = (
        f"Hypergradient of per-feature ridge on the diabetes data (d = 10 penalties), "
        f"gradient descent K = {cfg['steps']} steps of {cfg['lr']}, gradient flow T = "
        f"{cfg['horizon']:g} in {cfg['flow_steps']} Heun steps; error relative to the exact "
        "∇F(λ) at the inner solution.\n\n"
    )
    table = markdown_table(rows, [
        ("method", "method", None),
        ("rel. error", "rel_error", lambda v: f"{v:.2e}"),
        ("time (s)", "seconds", lambda v: f"{v:.3f}"),
        ("HVPs", "n_hvp", str),
        ("gradients", "n_grad", str),
        ("JVPs", "n_jvp", str),
        ("peak memory", "peak_bytes", format_bytes),
        ("ok", "success", lambda v: "yes" if v else "**no**"),
    ])
    failed = [r for r in rows if not r["success"]]
    notes = "".join(f"\n* {r['method']}: {r['message']}" for r in failed)
    return head + table + (("\nReported failures:" + notes + "\n") if failed else "")


def ridge_plot(rows: list[dict], path: str) -> str:
    fig, axes = figure(1, 3, size=(5.0, 4.5))
    labels = [r["method"] for r in rows]
    y = np.arange(len(rows))
    err = [max(r["rel_error"], 1e-17) if np.isfinite(r["rel_error"]) else np.nan for r in rows]
    colors = ["tab:blue" if r["success"] else "tab:red" for r in rows]
    for ax, vals, title, log in (
        (axes[0, 0], err, "relative error vs exact ∇F\n(log axis: 1 tick = 10×)", True),
        (axes[0, 1], [r["seconds"] for r in rows], "time (s, linear axis)", False),
        (axes[0, 2], [r["peak_bytes"] / 1e3 for r in rows], "peak memory (kB, linear axis)",
         False),
    ):
        ax.barh(y, vals, color=colors)
        ax.set_title(title)
        if ax is axes[0, 0]:
            for yi, v in zip(y, vals, strict=True):
                if not np.isfinite(v):  # a non-finite error has no bar: say so
                    ax.text(0.02, yi, "not finite", transform=ax.get_yaxis_transform(),
                            va="center", fontsize=8, color="tab:red")
        if log:
            ax.set_xscale("log")
        ax.set_yticks(y)
        ax.set_yticklabels(labels if ax is axes[0, 0] else [""] * len(rows), fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first method on top, same rows in every panel
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("diabetes per-feature ridge: every method (red = reported failure)")
    return save_figure(fig, path)
