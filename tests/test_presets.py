"""The papers' protocols as presets of ``bilevel meta-train``: each runs a few iterations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bilevel.meta import IMAML, MAML, MemoryReduced
from bilevel.meta.cli import build, meta_train_main
from bilevel.meta.presets import PRESETS, apply_preset, family_sampler, get_preset

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT.parent / "shared" / "data" / "omniglot",
              ROOT / "shared" / "data" / "omniglot", Path("/work/shared/data/omniglot")]
OMNIGLOT = next((p for p in CANDIDATES if any(p.glob("*.zip"))), None)

SHORT = ["--steps", "2", "--meta-batch", "2", "--eval-every", "0", "--no-progress",
         "--checkpoint-every", "100", "--inner-steps", "2", "--hidden", "8"]


def test_every_preset_names_its_paper_and_what_differs():
    assert set(PRESETS) == {"maml-sinusoid", "imaml-omniglot", "amaml-sinusoid",
                            "amaml-alpine", "rm-metal-omniglot", "cml-omniglot"}
    for preset in PRESETS.values():
        assert preset.paper and len(preset.differs) > 40 and preset.options["steps"] > 0
    with pytest.raises(ValueError, match="maml-sinusoid"):
        get_preset("maml")


def parsed(argv):
    from bilevel.meta.cli import _parser

    return _parser("bilevel meta-train").parse_args(argv)


def test_preset_sets_the_papers_options_and_explicit_options_win():
    args = parsed(["--preset", "maml-sinusoid", "--meta-batch", "4"])
    alg, model = build(args)
    assert isinstance(alg, MAML) and alg.inner_lr == 0.01 and alg.steps == 1
    assert model.activation == "relu" and model.sizes[1] == 40
    assert model.initialization == "uniform" and model.init_std is None
    assert args.meta_batch == 4 and args.lr == 1e-3 and args.steps == 70000


def test_omniglot_preset_needs_the_images():
    args = argparse.Namespace(preset="imaml-omniglot", tasks="sinusoid")
    with pytest.raises(ValueError, match="omniglot:PATH"):
        apply_preset(args, {"tasks": "sinusoid"})


@pytest.mark.slow  # seconds
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_runs_a_few_iterations(name, tmp_path):
    argv = ["--preset", name, "--out", str(tmp_path / name)] + SHORT
    if get_preset(name).data == "omniglot":
        if OMNIGLOT is None:
            pytest.skip("Omniglot archives not found")
        argv += ["--tasks", f"omniglot:{OMNIGLOT}", "--n-query", "2"]
    assert meta_train_main(argv) == 0
    history = json.loads((tmp_path / name / "history.json").read_text())["history"]
    assert len(history["loss"]) == 2 and all(history["applied"])
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["preset"] == name and config["steps"] == 2


def test_imaml_and_rm_metal_presets_build_the_papers_solvers():
    if OMNIGLOT is None:
        pytest.skip("Omniglot archives not found")
    tasks = ["--tasks", f"omniglot:{OMNIGLOT}"]
    alg, _ = build(parsed(["--preset", "imaml-omniglot"] + tasks))
    assert isinstance(alg, IMAML) and alg.reg == 2.0 and alg.steps == 16
    assert alg.solver.fixed_budget and alg.solver.maxiter == 5
    alg, _ = build(parsed(["--preset", "rm-metal-omniglot"] + tasks))
    assert isinstance(alg, MemoryReduced) and alg.inner_lr == 0.1 and alg.steps == 20
    assert alg.solver.fixed_budget and alg.solver.maxiter == 20 and alg.damping == 0.0


def test_amaml_alpine_preset_runs_in_python_with_the_papers_test_protocol():
    """The preset's options on its family: a few iterations, then A-MAML's test protocol."""
    import numpy as np

    from bilevel.meta import AMAML, MLP, train
    from bilevel.meta.finetune import finetune_curve
    from bilevel.optim import get_optimizer
    from bilevel.outer import Monitoring

    preset = get_preset("amaml-alpine")
    opt = dict(preset.options)
    assert opt["tasks"] == preset.data == "alpine2d" and opt["inner_steps"] == 200
    tasks = family_sampler(preset.data, n_shot=10, n_query=10)
    test_tasks = family_sampler(preset.data, n_shot=10, n_query=10, split="test")
    assert tasks.split == "train" and test_tasks.split == "test"
    model = MLP((tasks.dim, 8, 8, 1), activation=opt["activation"])
    alg = AMAML(model, horizon=opt["inner_lr"] * 4, steps=4, reg=opt["reg"])
    res = train(alg, tasks, steps=2, meta_batch=2, monitoring=Monitoring(progress=False),
                optimizer=get_optimizer(opt["optimizer"], opt["lr"]))
    assert all(res.history["applied"])
    ep = test_tasks.test_episode(np.random.default_rng(0), points=5)
    curve = finetune_curve(model, res.theta, ep, epochs=(0, 3))
    assert ep.n_tasks == 100 and np.isfinite(curve["rmse"]).all()
    with pytest.raises(ValueError, match="alpine2d"):
        family_sampler("alpine", 2, 2)
