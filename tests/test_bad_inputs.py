"""Bad and edge inputs across the library, each outcome classified (issue 13).

Every case is one of

``error``
    A clear error of the right type whose message names the argument (or flag);
``ok``
    A valid edge case, handled right (the number is checked against the truth);
``failed``
    A result whose diagnostics fail (``success=False``), never a wrong number with
    ``success=True``;
``cli``
    ``bilevel ...`` exits with status 2 and prints one line on stderr, no traceback.

Cases that the numerical half of issue 13 fixes on another branch are ``xfail(strict=False)``
with the reason "numerical half of issue 13 (other branch)"; gaps in core argument checks
outside this branch's files are ``xfail`` with their own reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import autograd.numpy as anp
import numpy as np
import pytest

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    Direct,
    FirstOrder,
    Forward,
    GradientDescent,
    GradientFlow,
    Historyless,
    HypergradError,
    Implicit,
    Momentum,
    Neumann,
    Reverse,
    hypergrad,
)
from bilevel.cli import main
from bilevel.hpo import MinimizeOptions, minimize, problems
from bilevel.meta import (
    ANIL,
    CML,
    IMAML,
    MAML,
    MLP,
    Evaluation,
    FailurePolicy,
    Omniglot,
    Reptile,
    Sinusoid,
    train,
)
from bilevel.optim import SGD, Adam
from bilevel.outer import Checkpointing, Monitoring, UsageError

NUMERICAL = ()  # the numerical half of issue 13: every case below now holds (no marks)
CORE = ()  # core argument checks: every case below now holds (no marks)

# ------------------------------------------------------------------ problems with known answers
# g = ½‖w − λ‖² + 0.05‖w‖²  ⇒  w* = λ/1.1;  f = ½‖w − 1‖²  ⇒  ∇F(λ) = (λ/1.1 − 1)/1.1
g = lambda w, lam: 0.5 * anp.sum((w - lam) ** 2) + 0.05 * anp.sum(w ** 2)  # noqa: E731
f = lambda w, lam: 0.5 * anp.sum((w - 1.0) ** 2)  # noqa: E731
P = BilevelProblem(g, f)
Z, ONE = np.zeros(3), np.ones(3)
GD = GradientDescent(0.5, 40)
NAN = np.array([np.nan, 0.0, 0.0])
LAM = r"\blam0?\b|λ"  # names λ (not the '<lambda>' of a problem's name)
STIFF = BilevelProblem(lambda w, lam: 5 * anp.sum((w - lam) ** 2), f)  # L = 10


def truth(lam):
    return (np.asarray(lam) / 1.1 - 1.0) / 1.1


def close_to_truth(lam, atol=1e-6):
    def check(res):
        assert res.success, res.message
        np.testing.assert_allclose(res.grad, truth(lam), atol=atol)
    return check


def first_order(res):
    assert res.success
    np.testing.assert_array_equal(res.grad, np.zeros(3))  # ∂_λ f = 0: FirstOrder's answer


def empty(res):
    assert res.success and res.grad.shape == (0,)


def minimized(res):
    assert res.success and res.history["value"][-1] < res.history["value"][0]


def skipped_all(res):
    assert not any(res.history["applied"]) and not any(res.history["success"])


def not_all_applied(res):
    """A diverging inner loop is caught: no run where every update was applied."""
    assert not all(res.history["applied"])


def FAILED_NAMING(pattern):  # noqa: N802 (a table column)
    def check(res):
        assert not res.success and re.search(pattern, res.message), res.message
    return ("ok", check)


def E(exc, pattern):  # noqa: N802 (a table column)
    return ("error", (exc, pattern))


def OK(check):  # noqa: N802
    return ("ok", check)


FAILED = ("failed", None)


def case(name, thunk, expect, marks=()):
    return pytest.param(thunk, expect, id=name, marks=marks)


m8 = MLP((1, 8, 1))
S = Sinusoid(n_shot=3, n_query=3)
QUIET = Monitoring(progress=False)


def mtrain(alg, **kw):
    kw.setdefault("steps", 2)
    kw.setdefault("meta_batch", 2)
    return train(alg, S, monitoring=QUIET, **kw)


CORE_CASES = [
    # BilevelProblem
    case("problem_inner_int", lambda: BilevelProblem(1, f), E(TypeError, "inner")),
    case("problem_outer_str", lambda: BilevelProblem(g, "f"), E(TypeError, "outer")),
    case("problem_init_int", lambda: BilevelProblem(g, f, init=3), E(TypeError, "init")),
    case("problem_oracles_unknown", lambda: BilevelProblem(g, f, oracles={"foo": len}),
         E(ValueError, "oracle")),
    case("problem_oracles_list", lambda: BilevelProblem(g, f, oracles=[1]),
         E(TypeError, "oracles"), CORE),
    case("problem_check_finite_str", lambda: BilevelProblem(g, f, check_finite="yes"),
         E((TypeError, ValueError), "check_finite"), CORE),
    # hypergrad arguments
    case("hg_problem_function", lambda: hypergrad(g, Z, Z, GD), E(TypeError, "problem")),
    case("hg_lam_none", lambda: hypergrad(P, None, Z, GD), E(TypeError, "lam")),
    case("hg_lam_str", lambda: hypergrad(P, "a", Z, GD), E(TypeError, "lam")),
    case("hg_lam_int", lambda: hypergrad(P, np.zeros(3, int), Z, GD), E(TypeError, "lam")),
    case("hg_lam_complex", lambda: hypergrad(P, np.zeros(3, complex), Z, GD),
         E(TypeError, "lam")),
    case("hg_w0_int", lambda: hypergrad(P, Z, np.zeros(3, int), GD), E(TypeError, "w")),
    case("hg_w0_scalar", lambda: hypergrad(P, np.float64(0), np.float64(0), GD),
         E(TypeError, "w")),
    case("hg_w0_shape", lambda: hypergrad(P, Z, np.zeros(4), GD), E(ValueError, "shape")),
    case("hg_dynamics_str", lambda: hypergrad(P, Z, Z, "gd"), E(TypeError, "dynamics")),
    case("hg_method_str", lambda: hypergrad(P, Z, Z, GD, "reverse"), E(TypeError, "method")),
    case("hg_on_failure", lambda: hypergrad(P, Z, Z, GD, on_failure="explode"),
         E(ValueError, "on_failure")),
    case("hg_strict_str", lambda: hypergrad(P, Z, Z, GD, strict="yes"),
         E((TypeError, ValueError), "strict"), CORE),
    case("hg_state_int", lambda: hypergrad(P, Z, Z, GD, state=3), E(TypeError, "state"), CORE),
    case("hg_objective_vector", lambda: hypergrad(BilevelProblem(lambda w, lam: (w - lam) ** 2,
                                                                f), Z, Z, GD),
         E(ValueError, "scalar")),
    case("hg_unbatched_objective_2d", lambda: hypergrad(P, np.zeros((2, 3)), np.zeros((2, 3)),
                                                         GD), E(ValueError, "shape")),
    case("hg_objective_raises", lambda: hypergrad(BilevelProblem(lambda w, lam: 1 / 0, f), Z, Z,
                                                  GD), E(ZeroDivisionError, "division")),
    case("hg_lam_nan", lambda: hypergrad(P, NAN, Z, GD, on_failure="raise"),
         E(HypergradError, "input lam contains NaN")),
    case("hg_lam_inf", lambda: hypergrad(P, np.array([np.inf, 0, 0]), Z, GD),
         FAILED_NAMING("input lam contains NaN or inf")),
    case("hg_w0_nan", lambda: hypergrad(P, Z, NAN, GD), FAILED_NAMING("input w0 contains NaN")),
    case("hg_objective_nan", lambda: hypergrad(BilevelProblem(lambda w, lam: anp.sum(w) * np.nan,
                                                              f), Z, Z, GD),
         FAILED_NAMING("non-finite inner value")),
    case("hg_np_asarray_cuts_trace", lambda: hypergrad(
        BilevelProblem(lambda w, lam: 0.5 * anp.sum((w - np.asarray(lam)) ** 2), f), Z, Z, GD),
        E(Exception, r"np\.|anp|bnp"), NUMERICAL),
    # valid edge cases
    case("hg_reverse", lambda: hypergrad(P, Z, Z, GD, Reverse()), OK(close_to_truth(Z))),
    case("hg_forward", lambda: hypergrad(P, ONE, Z, GD, Forward()), OK(close_to_truth(ONE))),
    case("hg_implicit_cg", lambda: hypergrad(P, ONE, Z, GD, Implicit(CG())),
         OK(close_to_truth(ONE))),
    case("hg_implicit_direct", lambda: hypergrad(P, ONE, Z, GD, Implicit(Direct())),
         OK(close_to_truth(ONE))),
    case("hg_implicit_neumann", lambda: hypergrad(P, ONE, Z, GD, Implicit(Neumann(0.5, 200))),
         OK(close_to_truth(ONE))),
    case("hg_historyless", lambda: hypergrad(P, ONE, Z, GradientDescent(0.5, 60), Historyless()),
         OK(close_to_truth(ONE, 1e-4))),
    case("hg_truncate_beyond_steps", lambda: hypergrad(P, ONE, Z, GD, Reverse(truncate=100)),
         OK(close_to_truth(ONE))),
    case("hg_checkpoints_beyond_steps", lambda: hypergrad(P, ONE, Z, GD,
                                                         Reverse(checkpoints=100)),
         OK(close_to_truth(ONE))),
    case("hg_momentum", lambda: hypergrad(P, ONE, Z, Momentum(0.3, 0.5, 80), Reverse()),
         OK(close_to_truth(ONE))),
    case("hg_first_order", lambda: hypergrad(P, Z, Z, GD, FirstOrder()), OK(first_order)),
    case("hg_lam_empty", lambda: hypergrad(P, np.zeros(0), np.zeros(0), GD), OK(empty)),
    case("hg_batched", lambda: hypergrad(
        BilevelProblem(lambda w, lam: 0.5 * anp.sum((w - lam) ** 2, -1)
                       + 0.05 * anp.sum(w ** 2, -1),
                       lambda w, lam: 0.5 * anp.sum((w - 1.0) ** 2, -1)),
        np.ones((2, 3)), np.zeros((2, 3)), GD), OK(close_to_truth(np.ones((2, 3))))),
    case("hg_adjoint_flow", lambda: hypergrad(P, ONE, Z, GradientFlow(40.0, 400, "rk4"),
                                              Adjoint("store")), OK(close_to_truth(ONE, 1e-5))),
    # failed diagnostics, never a silent wrong number
    case("hg_cg_one_iteration", lambda: hypergrad(
        BilevelProblem(lambda w, lam: 0.5 * anp.sum(anp.array([1.0, 10, 100]) * (w - lam) ** 2),
                       f), Z, Z, GradientDescent(0.009, 3000), Implicit(CG(1e-12, maxiter=1))),
        FAILED),
    case("hg_cg_zero_iterations", lambda: hypergrad(P, ONE, Z, GD, Implicit(CG(maxiter=0))),
         FAILED),
    case("hg_implicit_unconverged_inner", lambda: hypergrad(P, ONE, Z, GradientDescent(0.01, 2),
                                                           Implicit()), FAILED),
    case("hg_neumann_zero_terms", lambda: Neumann(maxiter=0),  # zero terms: a silent zero v
         E(ValueError, "maxiter must be an integer >= 1")),
    case("hg_neumann_diverging", lambda: hypergrad(STIFF, Z, Z, GradientDescent(0.05, 100),
                                                  Implicit(Neumann(alpha=0.205))),
         FAILED, NUMERICAL),
    case("hg_unstable_gradient_descent", lambda: hypergrad(STIFF, Z, Z, GradientDescent(0.25, 10),
                                                          Reverse()), FAILED, NUMERICAL),
    case("hg_unstable_euler_adjoint", lambda: hypergrad(
        BilevelProblem(lambda w, lam: 50 * anp.sum((w - lam) ** 2), f), Z, Z,
        GradientFlow(1.0, 10, "euler"), Adjoint("store")), FAILED),
    case("hg_historyless_three_steps", lambda: hypergrad(P, ONE, Z, GradientDescent(0.5, 3),
                                                        Historyless()), FAILED, NUMERICAL),
    # dynamics
    case("gd_lr_zero", lambda: GradientDescent(0, 10), E(ValueError, "lr")),
    case("gd_lr_negative", lambda: GradientDescent(-0.1, 10), E(ValueError, "lr")),
    case("gd_lr_nan", lambda: GradientDescent(np.nan, 10), E(ValueError, "lr")),
    case("gd_lr_inf", lambda: GradientDescent(np.inf, 10), E(ValueError, "lr")),
    case("gd_lr_str", lambda: GradientDescent("a", 10), E((TypeError, ValueError), "lr"),
         CORE),
    case("gd_steps_zero", lambda: GradientDescent(0.1, 0), E(ValueError, "steps")),
    case("gd_steps_negative", lambda: GradientDescent(0.1, -3), E(ValueError, "steps")),
    case("gd_steps_float", lambda: GradientDescent(0.1, 2.5), E(ValueError, "steps")),
    case("gd_steps_bool", lambda: GradientDescent(0.1, True), E(ValueError, "steps")),
    case("gd_steps_missing", lambda: GradientDescent(0.1), E(ValueError, "steps")),
    case("gd_lr_list_length", lambda: GradientDescent([0.1] * 5, 10), E(ValueError, "lr")),
    case("gd_lr_list_negative", lambda: GradientDescent([-0.01] * 50, 50), E(ValueError, "lr"),
         NUMERICAL),
    case("gd_lr_list_nan", lambda: GradientDescent([np.nan] * 5, 5), E(ValueError, "lr"),
         NUMERICAL),
    case("gd_batches_int", lambda: GradientDescent(0.1, 5, batches=3),
         E(TypeError, "batches"), CORE),
    case("momentum_beta_one", lambda: Momentum(0.1, 1.0, 5), E(ValueError, "beta")),
    case("momentum_beta_negative", lambda: Momentum(0.1, -0.5, 5), E(ValueError, "beta")),
    case("flow_horizon_zero", lambda: GradientFlow(0.0, 10), E(ValueError, "horizon")),
    case("flow_horizon_negative", lambda: GradientFlow(-1.0, 10), E(ValueError, "horizon")),
    case("flow_steps_zero", lambda: GradientFlow(1.0, 0), E(ValueError, "steps")),
    case("flow_scheme_unknown", lambda: GradientFlow(1.0, 10, "rk7"), E(ValueError, "scheme")),
    case("adjoint_needs_flow", lambda: hypergrad(P, Z, Z, GD, Adjoint()),
         E(TypeError, "GradientFlow")),
    # methods and solvers
    case("reverse_truncate_zero", lambda: Reverse(truncate=0), E(ValueError, "truncate")),
    case("reverse_truncate_negative", lambda: Reverse(truncate=-1), E(ValueError, "truncate")),
    case("reverse_checkpoints_zero", lambda: Reverse(checkpoints=0),
         E(ValueError, "checkpoints")),
    case("implicit_solver_str", lambda: Implicit("cg"), E(TypeError, "solver")),
    case("implicit_damping_negative", lambda: Implicit(CG(), damping=-1),
         E(ValueError, "damping")),
    case("implicit_inner_tol_negative", lambda: Implicit(inner_tol=-1),
         E(ValueError, "inner_tol")),
    case("cg_tol_negative", lambda: CG(tol=-1), E(ValueError, "tol")),
    case("cg_maxiter_float", lambda: CG(maxiter=2.5), E(ValueError, "maxiter")),
    case("neumann_alpha_zero", lambda: Neumann(alpha=0), E(ValueError, "alpha")),
    case("neumann_alpha_negative", lambda: Neumann(alpha=-1), E(ValueError, "alpha")),
    case("adjoint_trajectory_unknown", lambda: Adjoint("nope"), E(ValueError, "trajectory")),
    case("historyless_beta_negative", lambda: Historyless(beta=-1), E(ValueError, "beta")),
    case("historyless_tol_negative", lambda: Historyless(tol=-1), E(ValueError, "tol")),
]

HPO_CASES = [
    case("min_problem_function", lambda: minimize(g, Z, Z, dynamics=GD),
         E(TypeError, "problem")),
    case("min_steps_zero", lambda: minimize(P, Z, Z, dynamics=GD, steps=0),
         E(ValueError, "steps")),
    case("min_steps_float", lambda: minimize(P, Z, Z, dynamics=GD, steps=2.5),
         E(ValueError, "steps")),
    case("min_lam0_str", lambda: minimize(P, "abc", Z, dynamics=GD), E(TypeError, "lam0")),
    case("min_dynamics_str", lambda: minimize(P, Z, Z, dynamics="gd"),
         E(TypeError, "dynamics")),
    case("min_optimizer_int", lambda: minimize(P, Z, Z, dynamics=GD, optimizer=3),
         E(TypeError, "optimizer")),
    case("min_transform_unknown", lambda: minimize(P, Z, Z, dynamics=GD, transform="log"),
         E(ValueError, "transform")),
    case("min_bounds_with_transform", lambda: minimize(
        P, ONE, Z, dynamics=GD, transform="exp", options=MinimizeOptions(bounds=(0, 2))),
        E(ValueError, "bounds")),
    case("min_callback_int", lambda: minimize(P, Z, Z, dynamics=GD, callback=3),
         E(TypeError, "callback")),
    case("min_unknown_keyword", lambda: minimize(P, Z, Z, dynamics=GD, foo=1),
         E(TypeError, "foo")),
    case("min_lam0_nan", lambda: minimize(P, NAN, Z, dynamics=GD, steps=2, monitoring=QUIET),
         E(ValueError, "lam0 contains NaN")),
    case("min_lam0_int_list", lambda: minimize(P, [0, 0, 0], Z, dynamics=GD, steps=3,
                                               monitoring=QUIET), OK(minimized)),
    case("options_bounds_reversed", lambda: MinimizeOptions(bounds=(1, 0)),
         E(ValueError, "bounds")),
    case("options_bounds_str", lambda: MinimizeOptions(bounds="ab"), E(ValueError, "bounds")),
    case("options_on_failure", lambda: MinimizeOptions(on_failure="boom"),
         E(ValueError, "on_failure")),
    case("options_target_str", lambda: MinimizeOptions(target="low"),
         E((TypeError, ValueError), "target")),
    case("checkpointing_every_zero", lambda: Checkpointing("x.npz", every=0),
         E(ValueError, "every")),
    case("checkpointing_path_int", lambda: Checkpointing(3), E(TypeError, "path")),
    case("checkpointing_resume_str", lambda: Checkpointing("x", resume="yes"),
         E(ValueError, "resume")),
    case("monitoring_memory_unknown", lambda: Monitoring(memory="gpu"), E(ValueError, "memory")),
    case("monitoring_every_negative", lambda: Monitoring(memory_every=-1),
         E(ValueError, "memory_every")),
    case("adam_lr_negative", lambda: Adam(lr=-1), E(ValueError, "lr")),
    case("adam_b1_one", lambda: Adam(lr=0.1, b1=1.0), E(ValueError, "b1")),
    case("sgd_lr_zero", lambda: SGD(lr=0), E(ValueError, "lr")),
    case("ridge_length_mismatch", lambda: problems.ridge(np.ones((4, 2)), np.ones(5),
                                                         np.ones((4, 2)), np.ones(4)),
         E(ValueError, "y_train")),
]

META_CASES = [
    case("mlp_sizes_short", lambda: MLP((1,)), E(ValueError, "sizes")),
    case("mlp_width_zero", lambda: MLP((1, 0, 1)), E(ValueError, "sizes")),
    case("mlp_activation_unknown", lambda: MLP((1, 4, 1), activation="gelu2"),
         E(ValueError, "activation")),
    case("mlp_loss_unknown", lambda: MLP((1, 4, 1), loss="hinge"), E(ValueError, "loss")),
    case("maml_inner_lr_negative", lambda: MAML(m8, -1, 1), E(ValueError, "inner_lr")),
    case("maml_inner_lr_zero", lambda: MAML(m8, 0, 1), E(ValueError, "inner_lr")),
    case("maml_steps_zero", lambda: MAML(m8, 0.01, 0), E(ValueError, "steps")),
    case("maml_model_str", lambda: MAML("mlp", 0.01, 1), E(TypeError, "model")),
    case("imaml_reg_negative", lambda: IMAML(m8, reg=-1), E(ValueError, "reg")),
    case("anil_inner_lr_nan", lambda: ANIL(m8, float("nan"), 1), E(ValueError, "inner_lr")),
    case("reptile_steps_negative", lambda: Reptile(m8, 0.1, -1), E(ValueError, "steps")),
    case("cml_weight_negative", lambda: CML(MAML(m8, 0.01, 1), MLP((8, 4, 1)), weight=-1),
         E(ValueError, "weight")),
    case("sinusoid_n_shot_zero", lambda: Sinusoid(n_shot=0), E(ValueError, "n_shot")),
    case("sinusoid_n_query_negative", lambda: Sinusoid(n_query=-1), E(ValueError, "n_query")),
    case("sinusoid_noise_negative", lambda: Sinusoid(noise=-1.0), E(ValueError, "noise")),
    case("omniglot_missing_path", lambda: Omniglot("/nonexistent/omniglot"),
         E(FileNotFoundError, "does not exist")),
    case("train_algorithm_str", lambda: train("maml", S), E(TypeError, "algorithm")),
    case("train_sampler_int", lambda: train(MAML(m8, 0.01, 1), 3), E(TypeError, "sampler")),
    case("train_steps_zero", lambda: mtrain(MAML(m8, 0.01, 1), steps=0), E(ValueError, "steps")),
    case("train_meta_batch_zero", lambda: mtrain(MAML(m8, 0.01, 1), meta_batch=0),
         E(ValueError, "meta_batch")),
    case("train_meta_batch_float", lambda: mtrain(MAML(m8, 0.01, 1), meta_batch=2.5),
         E(ValueError, "meta_batch")),
    case("train_theta0_shape", lambda: mtrain(MAML(m8, 0.01, 1), theta0=np.zeros(3)),
         E(ValueError, "shape")),
    case("train_theta0_nan", lambda: mtrain(MAML(m8, 0.01, 1),
                                            theta0=np.full(m8.n_params, np.nan)),
         E(ValueError, "theta0 contains NaN")),
    case("train_theta0_nan_raise", lambda: mtrain(MAML(m8, 0.01, 1),
                                                  theta0=np.full(m8.n_params, np.nan),
                                                  failures=FailurePolicy("raise")),
         E(ValueError, "theta0 contains NaN")),
    case("policy_unknown", lambda: FailurePolicy(on_failure="ignore"),
         E(ValueError, "on_failure")),
    case("policy_warn_above_one", lambda: FailurePolicy(warn=2), E(ValueError, "warn")),
    case("evaluation_every_negative", lambda: Evaluation(every=-1), E(ValueError, "every")),
    case("evaluation_tasks_zero", lambda: Evaluation(tasks=0), E(ValueError, "tasks")),
    case("maml_huge_inner_lr", lambda: mtrain(MAML(m8, 1e6, 1), steps=3),
         OK(not_all_applied)),
]


def _outcome(thunk):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return "returned", thunk()
        except Exception as err:  # noqa: BLE001 (classified below)
            return "raised", err


@pytest.mark.parametrize("thunk, expect", CORE_CASES + HPO_CASES + META_CASES)
def test_bad_input(thunk, expect):
    kind, detail = expect
    how, value = _outcome(thunk)
    if kind == "error":
        exc, pattern = detail
        assert how == "raised", f"expected {exc}, got a return value {value!r:.200}"
        assert isinstance(value, exc), f"{type(value).__name__}: {value}"
        assert re.search(pattern, str(value)), f"{pattern!r} not in: {value}"
        return
    assert how == "returned", f"{type(value).__name__}: {value}"
    if kind == "failed":
        assert value.success is False or value.success is np.False_, (
            f"success=True with grad {getattr(value, 'grad', None)}")
        assert value.message
    else:
        detail(value)


# ------------------------------------------------------------------ command line
AFILE = "afile"  # a regular file in tmp_path, created by the fixture


def _cli(argv, tmp_path, capsys):
    argv = [a.replace("TMP", os.fspath(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


TRAIN = ["meta-train", "--steps", "2", "--meta-batch", "2", "--hidden", "4", "--no-progress",
         "--eval-every", "0", "--checkpoint-every", "1", "--out", "TMP/run"]

CLI_CASES = [
    (["meta-train", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["meta-train", "--meta-batch", "0"], "--meta-batch must be >= 1"),
    (["meta-train", "--inner-lr", "-1"], "--inner-lr must be > 0, got -1"),
    (["meta-train", "--inner-lr", "nan"], "--inner-lr must be a finite number"),
    (["meta-train", "--inner-steps", "0"], "--inner-steps must be >= 1"),
    (["meta-train", "--hidden", "0"], "--hidden must be >= 1"),
    (["meta-train", "--n-shot", "0"], "--n-shot must be >= 1"),
    (["meta-train", "--lr", "0"], "--lr must be > 0"),
    (["meta-train", "--reg", "-2"], "--reg must be >= 0"),
    (["meta-train", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["meta-train", "--eval-tasks", "0"], "--eval-tasks must be >= 1"),
    (["meta-train", "--steps", "abc"], "argument --steps: invalid int value"),
    (["meta-train", "--tasks", "mnist"], "--tasks must be 'sinusoid', 'alpine2d'"),
    (["meta-train", "--tasks", "omniglot:TMP/missing"], "does not exist"),
    (["meta-train", "--tasks", "omniglot:"], "--tasks omniglot:PATH needs"),
    (["meta-train", "--out", f"TMP/{AFILE}/run"], "is a file, not a folder"),
    (["meta-train", "--algorithm", "foo"], "unknown algorithm 'foo'"),
    (["meta-train", "--activation", "gelu"], "argument --activation: invalid choice"),
    (["meta-train", "--algorithm", "amaml", "--scheme", "rk9", "--out", "TMP/a"],
     "--algorithm amaml"),
    (["meta-train", "--algorithm", "cml", "--cml-base", "cml", "--out", "TMP/c"],
     "--cml-base must name another algorithm"),
    (["meta-eval", "TMP/nothing"], "is not a folder"),
    (["meta-eval", "TMP", "--tasks-per-eval", "0"], "--tasks-per-eval must be >= 1"),
    (["meta-eval", "TMP"], "no readable config.json"),
    (["bench", "meta", "--methods", "Foo", "--out", "TMP/b"], "--methods: unknown label"),
    (["bench", "speed", "--methods", "Foo", "--out", "TMP/b"], "--methods: unknown label"),
    (["bench", "accuracy", "--methods", "Foo", "--out", "TMP/b"], "--methods: unknown label"),
    (["bench", "memory", "--methods", "Foo", "--out", "TMP/b"], "--methods: unknown label"),
    (["bench", "memory", "--budget", "0"], "expected a positive number of seconds"),
    (["bench", "meta", "--quick", "--out", f"TMP/{AFILE}"], "is a file, not a folder"),
    (["demo", "--quick", "--out", f"TMP/{AFILE}/d"], "is a file, not a folder"),
    (["bench", "speed", "--quick", "--out", "TMP/b", "--docs", f"TMP/{AFILE}/x.rst"],
     "--docs"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    (["demo", "--backend", "tpu"], "invalid choice: 'tpu'"),
]


def _one_line(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


@pytest.mark.parametrize("argv, pattern", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_cli_user_error_is_one_line(argv, pattern, tmp_path, capsys):
    (tmp_path / AFILE).write_text("x")
    _one_line(*_cli(argv, tmp_path, capsys), pattern)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-step meta-train run (tanh, hidden 4) in TMP/run."""
    tmp = tmp_path_factory.mktemp("cli")
    code = main([a.replace("TMP", os.fspath(tmp)) for a in TRAIN])
    assert code == 0
    return tmp


def _copy_run(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("extra, pattern", [
    (["--activation", "relu"], "started with --activation tanh; this one has --activation relu"),
    (["--hidden", "16"], "started with --hidden 4; this one has --hidden 16"),
    (["--algorithm", "fomaml"], "started with --algorithm maml; this one has --algorithm fomaml"),
    (["--meta-batch", "3"], "--meta-batch 2"),
    (["--seed", "1"], "--seed 0"),
    (["--optimizer", "sgd"], "--optimizer adam"),
])
def test_cli_resume_under_other_flags_is_refused_before_writing(extra, pattern, trained,
                                                               tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _one_line(*_cli(TRAIN + extra, tmp_path, capsys), pattern)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


def test_cli_resume_without_config_json_uses_the_checkpoint_fingerprint(trained, tmp_path,
                                                                        capsys):
    run = _copy_run(trained, tmp_path)
    (run / "config.json").unlink()
    code, err = _cli(TRAIN + ["--activation", "relu"], tmp_path, capsys)
    _one_line(code, err, "model:")
    assert "--no-resume" in err and "resume=False" not in err


def test_cli_meta_eval_without_checkpoint(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    (run / "checkpoint.npz").unlink()
    (run / "checkpoint.npz.prev").unlink()
    _one_line(*_cli(["meta-eval", "TMP/run"], tmp_path, capsys), "has no checkpoint.npz")


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_cli_corrupt_checkpoint_without_previous_is_one_line(damage, trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    (run / "checkpoint.npz.prev").unlink()
    ck = run / "checkpoint.npz"
    data = ck.read_bytes()
    ck.write_bytes({"truncate": data[:200], "empty": b"", "garbage": b"not a zip"}[damage])
    code, err = _cli(TRAIN + ["--steps", "3"], tmp_path, capsys)
    _one_line(code, err, "checkpoint.npz")
    assert "unreadable" in err and "--no-resume" in err
    code, err = _cli(["meta-eval", "TMP/run"], tmp_path, capsys)
    _one_line(code, err, "unreadable")


def test_cli_meta_eval_on_mixed_folder(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "hidden": 16}))
    _one_line(*_cli(["meta-eval", "TMP/run"], tmp_path, capsys), "mixes two runs")


def test_cli_bench_resume_over_truncated_results(tmp_path, capsys):
    (tmp_path / "meta.json").write_text('{"benchmark": "meta", "config": {"qu')
    code, err = _cli(["bench", "meta", "--quick", "--no-progress", "--resume", "--out", "TMP",
                      "--methods", "Reptile"], tmp_path, capsys)
    _one_line(code, err, "meta.json")
    assert "unreadable" in err and "--resume" in err


def test_cli_bench_resume_for_another_benchmark(tmp_path, capsys):
    (tmp_path / "meta.json").write_text('{"benchmark": "speed", "config": {}, "rows": []}')
    code, err = _cli(["bench", "meta", "--quick", "--no-progress", "--resume", "--out", "TMP",
                      "--methods", "Reptile"], tmp_path, capsys)
    _one_line(code, err, "holds benchmark 'speed'")


def test_cli_errors_in_a_real_process(tmp_path):
    """The console entry point itself: exit status 2, one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")])}
    for argv, pattern in [(["meta-train", "--inner-lr", "-1"], "--inner-lr must be > 0"),
                          (["meta-eval", os.fspath(tmp_path)], "config.json")]:
        proc = subprocess.run([sys.executable, "-m", "bilevel.cli", *argv], env=env,
                              capture_output=True, text=True, timeout=120)
        _one_line(proc.returncode, proc.stderr, pattern)


def test_usage_error_is_a_value_error():
    err = UsageError("x must be > 0", cli="--x must be > 0")
    assert isinstance(err, ValueError) and err.for_cli() == "--x must be > 0"
