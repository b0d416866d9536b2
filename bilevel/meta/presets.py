"""Each paper's protocol as a named preset of ``bilevel meta-train``.

A :class:`Preset` is the set of ``meta-train`` options that reproduces one paper's
experiment (its hyperparameters, as published or as its released code runs them) and a
sentence on what differs here. ``bilevel meta-train --preset maml-sinusoid`` applies it;
options given explicitly on the command line win over the preset's.

=====================  ================================================================
preset                 paper
=====================  ================================================================
``maml-sinusoid``      Finn, Abbeel & Levine, ICML 2017, §5.1 (MAML, sinusoid regression)
``imaml-omniglot``     Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019 (iMAML-GD)
``amaml-sinusoid``     Li, Wang, Narayan, Kirby & Zhe, AISTATS 2023 (A-MAML)
``amaml-alpine``       the same, on its synthetic family Alpine2D
``rm-metal-omniglot``  Yang, Ma & Yu, AAAI 2025 (memory-reduced meta-learning)
``cml-omniglot``       Shin, Han & Kim, UAI 2024 (cooperative meta-learning over MAML)
=====================  ================================================================

See :doc:`/reproduction` for the runs of these presets at this machine's budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .tasks import Alpine2D, CosMixture, CosMixture2D, FunctionFamily

__all__ = ["FAMILIES", "PRESETS", "Preset", "apply_preset", "family_sampler", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One paper's protocol as ``meta-train`` options.

    Attributes
    ----------
    name
        The name given to ``--preset``.
    paper
        The paper (authors, venue) whose protocol this is.
    options
        ``meta-train`` options by their argparse names (``inner_lr``, ``meta_batch``, ...).
    differs
        What differs from the paper, in one or two sentences.
    data
        ``"sinusoid"``, ``"omniglot"`` (then ``--tasks omniglot:PATH`` gives the images) or
        the name of a synthetic family of :data:`FAMILIES` (``"alpine2d"``, ...).
    """

    name: str
    paper: str
    options: Mapping[str, Any] = field(default_factory=dict)
    differs: str = ""
    data: str = "sinusoid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


_PRESETS = (
    Preset(
        "maml-sinusoid",
        "Finn, Abbeel & Levine, Model-agnostic meta-learning, ICML 2017",
        dict(algorithm="maml", tasks="sinusoid", activation="relu", hidden=40, n_shot=10,
             n_query=10, inner_lr=0.01, inner_steps=1, meta_batch=25, optimizer="adam",
             lr=1e-3, steps=70000),
        "Same network (ReLU 1-40-40-1), task distribution, step sizes and meta-batch. The "
        "weights start from PyTorch's nn.Linear initialization (the MLP's ReLU default; "
        "MAML's TensorFlow code draws std-0.01 weights and zero biases, which puts every "
        "first-layer kink at x = 0 and trains slower: MLP(init_std=0.01) in Python). The "
        "paper's 70 000 iterations take hours here (the reproduction report runs 3000) "
        "and it tests after 1 and 10 inner steps.",
    ),
    Preset(
        "imaml-omniglot",
        "Rajeswaran, Finn, Kakade & Levine, Meta-learning with implicit gradients, "
        "NeurIPS 2019",
        dict(algorithm="imaml", ways=5, n_shot=1, n_query=5, hidden=64, reg=2.0,
             inner_lr=0.1, inner_steps=16, damping=1.0, meta_batch=32, optimizer="adam",
             lr=1e-3, steps=20000),
        "iMAML-GD with 5 fixed CG steps (λ = 2, 16 inner steps, meta-batch 32, Adam 1e-3). "
        "The paper's network uses strided convolutions without pooling and adapts without "
        "the proximal term at test time; here Conv4 with max-pooling, the same proximal "
        "adaptation at test time, 5 query images per class, and the shipped background "
        "archives split by alphabet.",
        data="omniglot",
    ),
    Preset(
        "amaml-sinusoid",
        "Li, Wang, Narayan, Kirby & Zhe, Meta-learning with adjoint methods, AISTATS 2023",
        dict(algorithm="amaml", tasks="sinusoid", activation="tanh", hidden=40, n_shot=10,
             n_query=10, inner_lr=0.005, inner_steps=20, scheme="rk4", reg=0.0,
             meta_batch=25, optimizer="adam", lr=1e-3, steps=3000),
        "The paper's continuous adjoint (RK4 forward on a stored grid, explicit-Euler "
        "adjoint backwards) on MAML's sinusoids (the paper's own families: amaml-alpine). "
        "The paper's loss is 0.5·MSE, so its step size is twice the library's for the same "
        "flow; horizon = inner_lr × inner_steps. Tasks whose Euler adjoint is unstable "
        "get the exact discrete adjoint (the paper's code has no such check).",
    ),
    Preset(
        "amaml-alpine",
        "Li, Wang, Narayan, Kirby & Zhe, Meta-learning with adjoint methods, AISTATS 2023",
        dict(algorithm="amaml", tasks="alpine2d", activation="tanh", hidden=32,
             n_shot=100, n_query=100, inner_lr=0.005, inner_steps=200, scheme="rk4",
             reg=2.0, meta_batch=5, optimizer="sgd", lr=0.005, steps=5000),
        "The released code's Alpine2D run: 100 training and 100 test functions, 100 "
        "support and 100 query points, 200 RK4 steps, proximal strength 1 and SGD 0.01 "
        "on its 0.5·MSE (here h = 0.005, r = 2, SGD 0.005 on the MSE: the same updates). "
        "Its test protocol fine-tunes every weight with Adam 1e-3 (weight decay 1e-6) "
        "and reports RMSE against epochs: bilevel.meta.finetune.finetune_curve on "
        "Alpine2D(split='test').test_episode(rng).",
        data="alpine2d",
    ),
    Preset(
        "rm-metal-omniglot",
        "Yang, Ma & Yu, Memory-reduced meta-learning with guaranteed convergence, AAAI 2025",
        dict(algorithm="memory-reduced", ways=5, n_shot=1, n_query=15, hidden=64,
             inner_lr=0.1, inner_steps=20, meta_batch=32, optimizer="adam", lr=1e-3,
             steps=20000),
        "20 head steps of 0.1 from a fixed head initialization, 20 CG steps accepted, no "
        "damping. The paper adapts at test time with step 0.05; here test-time "
        "adaptation uses the training inner loop (0.1); the query size, meta-batch and "
        "outer step are the library's choices.",
        data="omniglot",
    ),
    Preset(
        "cml-omniglot",
        "Shin, Han & Kim, Cooperative meta-learning with gradient augmentation, UAI 2024",
        dict(algorithm="cml", cml_base="maml", cml_weight=1.0, ways=5, n_shot=1,
             n_query=15, hidden=64, inner_lr=0.4, inner_steps=1, meta_batch=32,
             optimizer="adam", lr=1e-3, steps=60000),
        "CML over MAML (co-learner weight 1). The paper's co-learner is a convolutional "
        "block on the last feature map before pooling; the command line uses an MLP on the "
        "pooled features (in Python, CML(MAML(model, 0.4, 1), "
        "ConvCoLearner.for_model(model)) is the paper's).",
        data="omniglot",
    ),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESETS})
"""The presets by name."""

FAMILIES: Mapping[str, type[FunctionFamily]] = MappingProxyType(
    {"alpine2d": Alpine2D, "cosmixture": CosMixture, "cosmixture2d": CosMixture2D})
"""A-MAML's synthetic families by their ``--tasks`` name."""


def family_sampler(name: str, n_shot: int, n_query: int, split: str = "train",
                   backend: str | None = None) -> FunctionFamily:
    """The task sampler of the synthetic family ``name`` of :data:`FAMILIES`.

    ``split`` ``"train"`` gives the 100 training functions; ``"val"`` and ``"test"`` the
    100 test functions (the released code has no validation functions).
    """
    try:
        family = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown synthetic family {name!r}; choose one of: "
                         f"{', '.join(FAMILIES)}") from None
    return family(n_shot=n_shot, n_query=n_query,
                  split="train" if split == "train" else "test", backend=backend)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (a ``ValueError`` listing the names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None


def apply_preset(args: Any, defaults: Mapping[str, Any]) -> Any:
    """Set the preset's options on ``args`` where the option still has its default.

    ``args`` is the parsed ``meta-train`` namespace (changed in place and returned);
    ``defaults`` are the parser's defaults, so an option given on the command line with a
    value other than its default is kept. An Omniglot preset needs ``--tasks
    omniglot:PATH``.
    """
    preset = get_preset(args.preset)
    for key, value in preset.options.items():
        if key not in defaults or getattr(args, key) == defaults[key]:
            setattr(args, key, value)
    if preset.data == "omniglot" and not str(args.tasks).startswith("omniglot:"):
        raise ValueError(
            f"preset {preset.name!r} trains on Omniglot: pass --tasks omniglot:PATH with the "
            "folder or archive of the images (e.g. the shipped images_background_small*.zip)"
        )
    return args
