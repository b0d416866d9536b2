"""What a meta-training run shows: its results table and its learning curve."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_curve", "results_table"]


def results_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A plain-text table: name, query loss ± CI, accuracy ± CI, number of tasks."""
    lines = [f"{'model':<28} {'query loss':>20} {'accuracy':>18} {'tasks':>6}"]
    for name, r in rows:
        acc = (f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_ci']:.2f}"
               if np.isfinite(r.get("accuracy", np.nan)) else "—")
        lines.append(f"{name:<28} {r['loss']:>11.4f} ± {r['loss_ci']:<6.4f} {acc:>18} "
                     f"{r['n_tasks']:>6}")
    return "\n".join(lines)


def plot_curve(history: dict, evaluations: dict, path: str, title: str = "") -> str:
    """Learning curve PNG: meta-loss per iteration and held-out post-adaptation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    it, loss = np.asarray(history["iteration"]), np.asarray(history["loss"], dtype=float)
    if loss.size:
        w = max(1, loss.size // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(it[w - 1:], smooth, label="meta-train loss (smoothed)")
    if evaluations.get("iteration"):
        ax.errorbar(evaluations["iteration"], evaluations["loss"], yerr=evaluations["loss_ci"],
                    marker="o", label="held-out loss (95% CI)")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("post-adaptation query loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
