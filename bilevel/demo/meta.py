"""Part 3 of the demo: MAML and iMAML meta-trained on sinusoids."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..bench.report import (
    figure,
    markdown_table,
    save_figure,
)


# ------------------------------------------------------------------ part 3: meta-learning
def meta_curves(
    cfg: dict[str, Any], backend: str, seed: int, out: str, resume: bool, progress: bool = True
) -> dict[str, dict]:
    """Meta-train MAML and iMAML on sinusoid tasks; histories and held-out evaluations."""
    from ..linalg import CG
    from ..meta import IMAML, MAML, MLP, Evaluation, Sinusoid, train
    from ..optim import Adam
    from ..outer import Checkpointing, Monitoring

    model = MLP((1, 40, 40, 1), activation="tanh")
    algorithms = {  # short label -> algorithm (its full repr is kept in meta.json)
        "MAML (1 step, reverse mode)": MAML(model, inner_lr=0.01, steps=1),
        "iMAML (20 steps, implicit CG)": IMAML(model, reg=2.0, inner_lr=0.01, steps=20,
                                               damping=22.0, solver=CG(tol=1e-4, maxiter=20)),
    }
    curves = {}
    for name, alg in algorithms.items():
        sampler = Sinusoid(backend=backend)
        # iMAML's rare failing tasks are dropped and counted (success_fraction)
        res = train(alg, sampler, steps=cfg["meta_iterations"], meta_batch=cfg["meta_batch"],
                    optimizer=Adam(3e-3), seed=seed,
                    evaluation=Evaluation(cfg["eval_every"], cfg["eval_tasks"]),
                    checkpointing=Checkpointing(checkpoint_path(out, name),
                                                every=max(1, cfg["eval_every"]),
                                                resume=resume),
                    monitoring=Monitoring(progress=None if progress else False,
                                          memory=None))
        hist = res.history
        curves[name] = {
            "algorithm": name,
            "specification": repr(alg),
            "history": hist,
            "evaluations": res.evaluations,
            "seconds_per_iteration": float(np.mean(hist["time"])),
            # share of tasks whose meta-gradient passed its diagnostics (failing tasks of a
            # meta-batch are dropped from the average, see bilevel.meta.train)
            "success_rate": float(np.nanmean(hist["success_fraction"])),
            "final_loss": res.evaluations["loss"][-1] if res.evaluations["loss"] else None,
            "final_loss_ci": (res.evaluations["loss_ci"][-1]
                              if res.evaluations["loss_ci"] else None),
        }
    return curves


def checkpoint_path(out: str, label: str) -> str:
    """``meta-MAML.npz`` for the label ``"MAML (...)"``: the name before the first space."""
    return os.path.join(out, f"meta-{label.split()[0]}.npz")


def meta_markdown(curves: dict[str, dict], cfg: dict[str, Any]) -> str:
    rows = [dict(name=k, **v) for k, v in curves.items()]
    head = (
        f"Sinusoid regression, 1-40-40-1 tanh MLP, {cfg['meta_iterations']} meta-iterations "
        f"of {cfg['meta_batch']} tasks (Adam 3e-3); held-out loss after adaptation on "
        f"{cfg['eval_tasks']} tasks (± 95% interval).\n\n"
    )
    return head + markdown_table(rows, [
        ("algorithm", "algorithm", None),
        ("held-out loss", "final_loss", lambda v: f"{v:.3f}"),
        ("± 95%", "final_loss_ci", lambda v: f"{v:.3f}"),
        ("s / meta-iteration", "seconds_per_iteration", lambda v: f"{v:.4f}"),
        ("task meta-gradients ok", "success_rate", lambda v: f"{100 * v:.0f}%"),
    ])


def meta_plot(curves: dict[str, dict], path: str) -> str:
    fig, axes = figure(1, 1, size=(6.5, 4.5))
    ax = axes[0, 0]
    for name, c in curves.items():
        h, ev = c["history"], c["evaluations"]
        loss = np.asarray(h["loss"], dtype=float)
        w = max(1, loss.size // 30)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        line, = ax.plot(np.asarray(h["iteration"])[w - 1:], smooth, alpha=0.5,
                        label=f"{name}: meta-train loss")
        if ev["iteration"]:
            ax.errorbar(ev["iteration"], ev["loss"], yerr=ev["loss_ci"], marker="o",
                        color=line.get_color(), label=f"{name}: held-out loss (95% CI)")
    ax.set_xlabel("meta-iteration")
    ax.set_yscale("log")
    ax.set_ylabel("post-adaptation query MSE (log axis)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("sinusoid regression: MAML vs iMAML")
    return save_figure(fig, path)
