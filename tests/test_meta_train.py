"""Meta-training: outer optimizers, exact kill-and-resume, checkpoints, short sinusoid runs
that beat the random-init and joint-training baselines, and the CLI."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from bilevel import Adjoint, HypergradWarning
from bilevel.linalg import CG
from bilevel.meta import Sinusoid
from bilevel.meta.algorithms import (
    AMAML,
    ANIL,
    CML,
    IMAML,
    MAML,
    MemoryReduced,
    MetaAlgorithm,
    Pretrain,
    Reptile,
)
from bilevel.meta.models import MLP
from bilevel.meta.train import (
    Evaluation,
    FailurePolicy,
    MetaTrainingError,
    MetaTrainingWarning,
    evaluate,
    load_checkpoint,
    train,
)
from bilevel.optim import SGD, Adam, get_optimizer
from bilevel.outer import Checkpointing, Monitoring

QUIET = Monitoring(progress=False)

pytest.importorskip("bilevel.methods.adjoint")


# ------------------------------------------------------------------ optimizers
def test_adam_matches_its_formula():
    rng = np.random.default_rng(0)
    theta, opt = rng.standard_normal(4), Adam(lr=0.1, b1=0.8, b2=0.9, eps=1e-3)
    state = opt.init(theta)
    m = v = np.zeros(4)
    for t in range(1, 4):
        g = rng.standard_normal(4)
        updates, state = opt.update(g, state, theta)
        m, v = 0.8 * m + 0.2 * g, 0.9 * v + 0.1 * g * g
        want = -0.1 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-3)
        np.testing.assert_allclose(updates, want, rtol=1e-14)
        theta = theta + updates
    assert state["count"] == 3


def test_sgd_momentum_and_errors():
    opt = SGD(lr=0.5, momentum=0.5)
    theta = np.ones(2)
    state = opt.init(theta)
    u1, state = opt.update(np.ones(2), state, theta)
    u2, state = opt.update(np.ones(2), state, theta)
    np.testing.assert_allclose(u1, -0.5)
    np.testing.assert_allclose(u2, -0.75)
    with pytest.raises(ValueError, match="lr"):
        SGD(lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=1.0)
    with pytest.raises(ValueError, match="shape"):
        Adam().update(np.ones(3), Adam().init(theta), theta)
    with pytest.raises(ValueError, match="optimizer"):
        get_optimizer("rmsprop", 0.1)


# ------------------------------------------------------------------ training loop
@pytest.fixture(scope="module")
def small():
    return Sinusoid(n_shot=5, n_query=5), MLP((1, 8, 1), activation="tanh")


def test_kill_and_resume_is_bit_identical(small, tmp_path):
    sampler, model = small
    alg = MAML(model, 0.02, 2)
    kw = dict(steps=9, meta_batch=3, optimizer=Adam(1e-2), seed=4, monitoring=QUIET,
              evaluation=Evaluation(every=4, tasks=6))
    full = train(alg, sampler, **kw)
    ck = tmp_path / "run" / "ck.npz"

    def kill(it, params, history):
        if it == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(alg, sampler, checkpointing=Checkpointing(ck, every=2), callback=kill, **kw)
    assert load_checkpoint(ck)["iteration"] == 6
    resumed = train(alg, sampler, checkpointing=Checkpointing(ck, every=2), **kw)
    assert resumed.start_iteration == 6
    np.testing.assert_array_equal(resumed.theta, full.theta)
    assert resumed.history["loss"] == full.history["loss"]
    assert resumed.evaluations["loss"] == full.evaluations["loss"]
    assert not [f for f in os.listdir(ck.parent) if f.startswith(".ckpt-")]  # no temp left
    # a finished run resumes to the same parameters without further work
    again = train(alg, sampler, checkpointing=Checkpointing(ck), **kw)
    np.testing.assert_array_equal(again.theta, full.theta)
    # a different configuration refuses to resume
    with pytest.raises(MetaTrainingError, match="different run"):
        train(alg, sampler, checkpointing=Checkpointing(ck), **{**kw, "seed": 5})


def test_checkpoint_holds_state(small, tmp_path):
    sampler, model = small
    ck = tmp_path / "ck.npz"
    res = train(Reptile(model, 0.02, 2), sampler, steps=3, meta_batch=2, seed=1,
                optimizer=Adam(1e-2), monitoring=QUIET, checkpointing=Checkpointing(ck, every=1))
    c = load_checkpoint(ck)
    np.testing.assert_array_equal(c["params"], res.theta)
    assert c["iteration"] == 3 and c["opt_state"]["count"] == 3
    assert set(c["opt_state"]) == {"count", "mu", "nu"}
    assert c["rng_state"]["bit_generator"] == "PCG64"
    assert len(c["history"]["loss"]) == 3
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


def test_history_and_memory_measurement(small):
    sampler, model = small
    res = train(MAML(model, 0.02, 2), sampler, steps=4, meta_batch=2,
                monitoring=Monitoring(progress=False, memory="peak", memory_every=2))
    h = res.history
    assert h["iteration"] == [0, 1, 2, 3]
    assert all(np.isfinite(h["loss"])) and all(t > 0 for t in h["time"])
    assert np.isfinite(h["peak_memory"][0]) and np.isfinite(h["peak_memory"][2])
    assert np.isnan(h["peak_memory"][1]) and h["peak_memory"][0] > 0
    assert all(h["success"]) and h["n_hvp"][0] > 0


def test_failed_diagnostics_skip_or_raise(small):
    sampler, model = small
    # a 1-iteration CG cannot converge: the step is skipped (default) or raises
    alg = IMAML(model, reg=1.0, inner_lr=0.02, steps=2, solver=CG(tol=1e-14, maxiter=1),
                on_unconverged="drop")
    theta0 = alg.init(np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        res = train(alg, sampler, theta0=theta0, steps=2, meta_batch=2, monitoring=QUIET)
        np.testing.assert_array_equal(res.theta, theta0)
        assert res.history["success"] == [False, False]
        with pytest.raises(MetaTrainingError, match="iteration 0"):
            train(alg, sampler, theta0=theta0, steps=2, meta_batch=2, monitoring=QUIET,
                  failures=FailurePolicy(on_failure="raise"))
    with pytest.raises(ValueError, match="on_failure"):
        train(alg, sampler, steps=1, failures=FailurePolicy(on_failure="ignore"))
    with pytest.raises(ValueError, match="steps"):
        train(alg, sampler, steps=0)


def test_evaluate_confidence_interval(small):
    sampler, model = small
    alg = MAML(model, 0.02, 1)
    theta = alg.init(np.random.default_rng(0))
    ev = evaluate(alg, theta, sampler, 12, seed=3, batch=5)
    assert ev["n_tasks"] == 12 and ev["loss_ci"] > 0 and np.isnan(ev["accuracy"])
    from bilevel.meta.train import held_out_episodes

    losses = np.concatenate([alg.evaluate(theta, e)["loss"]
                             for e in held_out_episodes(sampler, 12, seed=3, batch=5)])
    assert ev["loss"] == pytest.approx(losses.mean(), rel=1e-14)
    assert ev["loss_ci"] == pytest.approx(1.96 * losses.std(ddof=1) / np.sqrt(12), rel=1e-12)


# ------------------------------------------------------------------ beats the baselines
STEPS, BATCH = 120, 5


@pytest.fixture(scope="module")
def sinusoid_setup():
    sampler = Sinusoid(n_shot=10, n_query=10)
    model = MLP((1, 20, 20, 1), activation="tanh")
    pre = train(Pretrain(model), sampler, steps=STEPS, meta_batch=BATCH,
                optimizer=Adam(1e-2), monitoring=QUIET).theta
    theta0 = model.init(np.random.default_rng(123))
    return sampler, model, pre, theta0


def make(name, model):
    colearner = MLP((20, 10, 1), activation="tanh")
    return {
        "maml": lambda: MAML(model, 0.05, 3),
        "fomaml": lambda: MAML(model, 0.05, 3, first_order=True),
        "anil": lambda: ANIL(model, 0.02, 5),
        "reptile": lambda: Reptile(model, 0.01, 5),
        "imaml": lambda: IMAML(model),
        "amaml": lambda: AMAML(model, horizon=0.05, steps=5, scheme="euler", method=Adjoint()),
        "memory_reduced": lambda: MemoryReduced(model, 0.02, 5, head_reg=0.1),
        "cml": lambda: CML(MAML(model, 0.05, 3), colearner, 1.0),
    }[name]()


@pytest.mark.slow  # integration run (seconds)
@pytest.mark.parametrize(
    "name", ["maml", "fomaml", "anil", "reptile", "imaml", "amaml", "memory_reduced", "cml"]
)
def test_short_sinusoid_run_beats_baselines(name, sinusoid_setup):
    sampler, model, pre, theta0 = sinusoid_setup
    alg = make(name, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        res = train(alg, sampler, steps=STEPS, meta_batch=BATCH, optimizer=Adam(1e-2),
                    monitoring=QUIET)
    base = alg.base if isinstance(alg, CML) else alg
    kw = dict(seed=99, batch=25)
    meta = evaluate(alg, res.theta, sampler, 50, **kw)["loss"]
    random_init = evaluate(base, theta0, sampler, 50, **kw)["loss"]
    pretrained = evaluate(base, pre, sampler, 50, **kw)["loss"]
    assert meta < random_init and meta < pretrained, (meta, random_init, pretrained)
    # iMAML's default damping keeps H + (reg + δ)I positive definite in almost every task;
    # the trainer drops the rare failing tasks (on_failure="drop")
    assert np.mean(res.history["success_fraction"]) > 0.9
    assert np.mean(res.history["applied"]) > 0.9


# ------------------------------------------------------------------ CLI
def test_cli_train_then_eval(tmp_path, capsys):
    from bilevel.meta.cli import meta_eval_main, meta_train_main

    out = tmp_path / "run"
    argv = ["--algorithm", "anil", "--steps", "6", "--meta-batch", "3", "--hidden", "6",
            "--inner-lr", "0.02", "--inner-steps", "2", "--eval-every", "3", "--eval-tasks",
            "6", "--out", str(out), "--no-progress", "--lr", "0.01", "--checkpoint-every", "2"]
    assert meta_train_main(argv) == 0
    text = capsys.readouterr().out
    assert "query loss" in text and "anil" in text
    for f in ("config.json", "checkpoint.npz", "history.json", "curve.png"):
        assert (out / f).exists()
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads((out / "history.json").read_text())["history"]["loss"]) == 6
    assert meta_eval_main([str(out), "--tasks-per-eval", "10", "--pretrain-steps", "3"]) == 0
    table = capsys.readouterr().out
    assert "random init" in table and "pretrained" in table
    with pytest.raises(SystemExit):
        meta_eval_main([str(tmp_path / "nothing")])


# ------------------------------------------------------------------ examples
def _example(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_meta_sinusoid_quick(capsys):
    _example("meta_sinusoid").main(["--quick", "--memory"])
    out = capsys.readouterr().out
    assert "MemoryReduced" in out and "peak host memory" in out


def test_example_meta_omniglot_without_data_exits_cleanly(tmp_path, capsys):
    assert _example("meta_omniglot").main([str(tmp_path / "absent")]) == 2
    assert "Omniglot not available" in capsys.readouterr().err


# ------------------------------------------------------------------ per-task failure policy
class _Scripted(MetaAlgorithm):
    """Meta-gradient ``θ − c_i`` per task with scripted per-task success flags."""

    def __init__(self, flags):
        super().__init__(MLP((1, 2, 1)))
        self.flags, self.calls = [np.asarray(f, dtype=bool) for f in flags], 0

    def meta_gradient(self, params, episode, drop_failed=True):
        mask = self.flags[min(self.calls, len(self.flags) - 1)]
        self.calls += 1
        per_task = params[None, :] - np.arange(mask.size, dtype=float)[:, None]
        use = mask if drop_failed and mask.any() else np.ones_like(mask)
        info = {"loss": 1.0, "success": bool(mask.all()), "message": "scripted",
                "task_success": mask, "success_fraction": float(mask.mean())}
        return per_task[use].mean(axis=0), info

    def adapt(self, params, x_support, y_support):
        return np.broadcast_to(params, (x_support.shape[0], params.size))


@pytest.mark.parametrize("policy, applied", [("drop", [True, True, False]),
                                             ("skip", [True, False, False]),
                                             ("apply", [True, True, True])])
def test_failure_policies_record_success_fraction_and_applied(policy, applied):
    flags = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    alg = _Scripted(flags)
    theta0 = np.zeros(alg.n_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaTrainingWarning)
        res = train(alg, Sinusoid(), theta0, steps=3, meta_batch=4, optimizer=SGD(1.0),
                    monitoring=QUIET, failures=FailurePolicy(on_failure=policy))
    h = res.history
    assert h["success_fraction"] == [1.0, 0.5, 0.0]
    assert h["success"] == [True, False, False]
    assert h["applied"] == applied
    # SGD(1): θ ← θ − mean_i(θ − c_i) = mean of the used c_i
    expected = {"drop": 1.0, "skip": 1.5, "apply": 1.5}[policy]
    np.testing.assert_allclose(res.theta, expected)


def test_raise_policy_and_failure_rate_warning():
    alg = _Scripted([[1, 1], [0, 1]])
    with pytest.raises(MetaTrainingError, match="diagnostics failed at iteration 1"):
        train(alg, Sinusoid(), np.zeros(alg.n_params), steps=3, meta_batch=2,
              monitoring=QUIET, failures=FailurePolicy(on_failure="raise"))
    alg = _Scripted([[0, 0, 0, 1]])
    with pytest.warns(MetaTrainingWarning, match="75% of the tasks failed") as rec:
        train(alg, Sinusoid(), np.zeros(alg.n_params), steps=6, meta_batch=4,
              monitoring=QUIET, failures=FailurePolicy(window=3))
    assert len([w for w in rec if issubclass(w.category, MetaTrainingWarning)]) == 1
    with pytest.raises(ValueError, match="on_failure"):
        train(alg, Sinusoid(), steps=1, failures=FailurePolicy(on_failure="ignore"),
              monitoring=QUIET)


def test_imaml_drops_failing_tasks_exactly():
    """Masked meta-gradient == meta-gradient of the sub-batch of the tasks that passed."""
    from bilevel.meta import Episode

    model = MLP((1, 12, 12, 1), activation="tanh")
    theta = model.init(np.random.default_rng(3))
    ep = Sinusoid(n_shot=10, n_query=10).sample(6, np.random.default_rng(0))
    # no damping: H + reg·I is indefinite in some tasks of this tanh net -> CG breakdown
    alg = IMAML(model, reg=3.0, inner_lr=0.01, steps=5, damping=0.0,
                solver=CG(tol=1e-10, maxiter=200), on_unconverged="drop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        res = alg.hypergradient(theta, ep)
        grad, info = alg.meta_gradient(theta, ep)
        grad_all, _ = alg.meta_gradient(theta, ep, drop_failed=False)
    mask = info["task_success"]
    assert mask.shape == (6,) and 0 < mask.sum() < 6, res.message
    assert info["success_fraction"] == pytest.approx(mask.mean())
    assert not info["success"] and "breakdown" in info["message"]
    np.testing.assert_array_equal(mask, res.linear_solve.converged_mask)
    np.testing.assert_allclose(grad, res.grad[mask].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(grad_all, res.grad.mean(axis=0), rtol=1e-12)
    sub = Episode(ep.x_support[mask], ep.y_support[mask], ep.x_query[mask], ep.y_query[mask])
    grad_sub, info_sub = alg.meta_gradient(theta, sub)
    assert info_sub["success"], info_sub["message"]
    np.testing.assert_allclose(grad, grad_sub, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ old spellings and files
def test_old_keywords_warn_and_still_work(small, tmp_path):
    sampler, model = small
    alg = MAML(model, 0.02, 1)
    kw = dict(steps=3, meta_batch=2, optimizer=Adam(1e-2), seed=2)
    with pytest.warns(DeprecationWarning) as rec:
        old = train(alg, sampler, progress=False, eval_every=3, eval_tasks=4,
                    checkpoint=tmp_path / "ck.npz", checkpoint_every=1, memory_every=0,
                    on_failure="skip", failure_window=5, failure_warn=0.9, **kw)
    text = " ".join(str(w.message) for w in rec)
    for new in ("monitoring=Monitoring(progress=...)", "evaluation=Evaluation(every=...)",
                "checkpointing=Checkpointing(path=...)", "failures=FailurePolicy(window=...)"):
        assert new in text
    new = train(alg, sampler, monitoring=QUIET, evaluation=Evaluation(every=3, tasks=4),
                failures=FailurePolicy(on_failure="skip"), **kw)
    np.testing.assert_array_equal(old.theta, new.theta)
    assert old.evaluations["loss"] == new.evaluations["loss"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'eval_evry'"):
        train(alg, sampler, eval_evry=3, **kw)


def test_resume_reads_the_old_meta_checkpoint_format(small, tmp_path):
    """A checkpoint of the earlier ``bilevel.meta.checkpoint/1`` format resumes exactly."""
    sampler, model = small
    alg = MAML(model, 0.02, 1)
    kw = dict(meta_batch=2, optimizer=Adam(1e-2), seed=6, monitoring=QUIET)
    full = train(alg, sampler, steps=5, **kw)
    ck = tmp_path / "ck.npz"
    train(alg, sampler, steps=2, checkpointing=Checkpointing(ck), **kw)
    c = load_checkpoint(ck)
    meta = {"format": "bilevel.meta.checkpoint/1", "iteration": c["iteration"],
            "opt_scalars": {"count": c["opt_state"]["count"]}, "rng": c["rng_state"],
            "history": c["history"], "evaluations": c["evaluations"], "config": c["config"]}
    np.savez(ck, params=c["params"], meta=np.array(json.dumps(meta)),
             **{f"opt/{k}": c["opt_state"][k] for k in ("mu", "nu")})
    resumed = train(alg, sampler, steps=5, checkpointing=Checkpointing(ck), **kw)
    assert resumed.start_iteration == 2
    np.testing.assert_array_equal(resumed.theta, full.theta)
    assert resumed.history["loss"] == full.history["loss"]


# ------------------------------------------------------------------ issue 13
@pytest.mark.parametrize("change", ["activation", "width", "algorithm", "tasks", "theta0"])
def test_resume_under_a_changed_run_is_refused_naming_the_field(small, tmp_path, change):
    from bilevel.outer import ResumeError

    sampler, model = small
    ck = tmp_path / "ck.npz"
    kw = dict(steps=2, meta_batch=2, seed=0, monitoring=QUIET)
    train(MAML(model, 0.02, 1), sampler, checkpointing=Checkpointing(ck), **kw)
    before = ck.read_bytes()
    other = {
        "activation": (MAML(MLP((1, 8, 1), activation="relu"), 0.02, 1), sampler, None, "model"),
        "width": (MAML(MLP((1, 16, 1), activation="tanh"), 0.02, 1), sampler, None, "model"),
        "algorithm": (MAML(model, 0.05, 1), sampler, None, "algorithm"),
        "tasks": (MAML(model, 0.02, 1), Sinusoid(n_shot=2, n_query=5), None, "tasks"),
        "theta0": (MAML(model, 0.02, 1), sampler, np.zeros(model.n_params), "theta0"),
    }[change]
    alg, tasks, theta0, field = other
    with pytest.raises(ResumeError, match=f"{field}: ") as err:
        train(alg, tasks, theta0=theta0, checkpointing=Checkpointing(ck), **{**kw, "steps": 4})
    assert isinstance(err.value, MetaTrainingError) and field in err.value.fields
    assert ck.read_bytes() == before  # refused before anything was written


class _PoisonedSinusoid(Sinusoid):
    """Sinusoid tasks with a NaN query target at the given iterations."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at, self.calls = set(at), 0

    def sample(self, n_tasks, rng):
        episode = super().sample(n_tasks, rng)
        self.calls += 1
        if self.calls - 1 in self.at:
            episode.y_query[0, 0] = np.nan
        return episode


@pytest.mark.parametrize("policy", ["drop", "skip"])
def test_nan_data_point_goes_through_the_failure_policy(small, policy):
    _, model = small
    res = train(MAML(model, 0.02, 1), _PoisonedSinusoid({2}, n_shot=3, n_query=3), steps=5,
                meta_batch=2, monitoring=QUIET, failures=FailurePolicy(policy))
    assert res.history["applied"] == [True, True, False, True, True]
    assert res.history["success"][2] is False and np.all(np.isfinite(res.theta))


def test_nan_data_point_with_raise_policy(small):
    _, model = small
    with pytest.raises(MetaTrainingError, match="iteration 1"):
        train(MAML(model, 0.02, 1), _PoisonedSinusoid({1}, n_shot=3, n_query=3), steps=3,
              meta_batch=2, monitoring=QUIET, failures=FailurePolicy("raise"))
