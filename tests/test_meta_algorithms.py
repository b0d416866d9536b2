"""Meta-learning algorithms: meta-gradients against finite differences, closed forms (V8,
V9, V10), Reverse directly, first-order references, CML reductions (V12) and batch
linearity (V14). Float64, tiny models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from autograd.core import make_vjp

from bilevel import (
    CG,
    Adjoint,
    BilevelProblem,
    GradientDescent,
    HypergradWarning,
    Reverse,
    hypergrad,
)
from bilevel.dynamics import run
from bilevel.meta import Episode, QuadraticTasks, Sinusoid
from bilevel.meta.algorithms import (
    AMAML,
    ANIL,
    CML,
    IMAML,
    MAML,
    MemoryReduced,
    Pretrain,
    Reptile,
)
from bilevel.meta.models import MLP, QuadraticModel

pytest.importorskip("bilevel.methods.adjoint")


@pytest.fixture(scope="module")
def model():
    return MLP((1, 3, 1), activation="tanh")


@pytest.fixture(scope="module")
def colearner():
    return MLP((3, 2, 1), activation="tanh")


@pytest.fixture(scope="module")
def episode():
    return Sinusoid(n_shot=4, n_query=4).sample(3, np.random.default_rng(0))


def theta_of(alg, seed=1):
    return alg.init(np.random.default_rng(seed))


def meta_objective(alg, params, ep):
    """(1/T) Σ_i f_i(w_K(λ_i), λ_i): the function whose gradient the algorithm returns."""
    problem, lam, w0 = alg.problem(params, ep.x_support, ep.y_support, ep.x_query, ep.y_query)
    w0 = problem.initial_point(lam) if w0 is None else w0
    w = alg.dynamics.weights(run(problem, alg.dynamics, w0, lam))
    return float(np.mean(problem.outer_value(w, lam)))


def fd_grad(fun, x, eps=1e-6):
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = eps
        g[j] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return g


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def configured(model, colearner):
    return {
        "maml": MAML(model, 0.05, 3),
        "anil": ANIL(model, 0.3, 3),
        "amaml": AMAML(model, horizon=0.2, steps=4, scheme="rk4", reg=0.5, method=Adjoint()),
        "amaml_euler": AMAML(model, horizon=0.2, steps=4, scheme="euler", method=Adjoint()),
        "cml": CML(MAML(model, 0.05, 2), colearner, weight=0.7),
        "cml_anil": CML(ANIL(model, 0.3, 2), colearner, weight=0.4),
    }


@pytest.mark.parametrize("name", ["maml", "anil", "amaml", "amaml_euler", "cml", "cml_anil"])
def test_unrolled_meta_gradient_matches_finite_differences(name, model, colearner, episode):
    alg = configured(model, colearner)[name]
    params = theta_of(alg)
    grad, info = alg.meta_gradient(params, episode)
    assert info["success"], info["message"]
    assert grad.shape == params.shape
    want = fd_grad(lambda p: meta_objective(alg, p, episode), params)
    assert rel(grad, want) < 1e-6
    assert info["loss"] == pytest.approx(meta_objective(alg, params, episode), rel=1e-12)


def converged_head_objective(alg, params, ep):
    """Query loss at the exact ridge head on the backbone features (V13)."""
    model = alg.model
    bb = params[model.split["backbone"]]
    fs = model.features(np.broadcast_to(bb, (ep.x_support.shape[0], bb.size)), ep.x_support)
    fq = model.features(np.broadcast_to(bb, (ep.x_query.shape[0], bb.size)), ep.x_query)
    losses = []
    for i in range(fs.shape[0]):
        a = np.concatenate([fs[i], np.ones((fs.shape[1], 1))], axis=1)
        n = a.shape[0]
        head = np.linalg.solve(2 / n * a.T @ a + alg.head_reg * np.eye(a.shape[1]),
                               2 / n * a.T @ ep.y_support[i])
        aq = np.concatenate([fq[i], np.ones((fq.shape[1], 1))], axis=1)
        losses.append(np.mean((aq @ head - ep.y_query[i]) ** 2))
    return float(np.mean(losses))


def test_memory_reduced_matches_exact_head_solve(model):
    ep = Sinusoid(n_shot=8, n_query=5).sample(2, np.random.default_rng(3))
    alg = MemoryReduced(model, inner_lr=0.3, steps=300, head_reg=1.0)
    params = theta_of(alg, seed=4)
    grad, info = alg.meta_gradient(params, ep)
    assert info["success"], info["message"]
    head = model.split["head"]
    assert np.all(grad[head] == 0.0)  # the head initialization is not meta-learned
    want = fd_grad(lambda p: converged_head_objective(alg, p, ep), params)
    assert rel(grad, want) < 1e-5
    assert info["inner_residual"] < 1e-8


def test_memory_reduced_cg_path_needs_no_tape_through_steps(model, episode):
    """The inner iterations use the cached-feature oracle: one HVP trace per CG step only."""
    short, long = MemoryReduced(model, 0.3, 2), MemoryReduced(model, 0.3, 40)
    params = theta_of(short)
    _, a = short.meta_gradient(params, episode)
    _, b = long.meta_gradient(params, episode)
    assert b["n_hvp"] == pytest.approx(a["n_hvp"], abs=2)  # HVPs do not grow with steps


def test_imaml_meta_gradient_matches_finite_differences_at_convergence(model):
    ep = Sinusoid(n_shot=6, n_query=4).sample(2, np.random.default_rng(5))
    alg = IMAML(model, reg=5.0, inner_lr=0.03, steps=300, damping=0.0, solver=CG(tol=1e-12))
    params = theta_of(alg, seed=2)
    grad, info = alg.meta_gradient(params, ep)
    assert info["success"], info["message"]
    assert info["inner_residual"] < 1e-8
    for d in np.random.default_rng(0).standard_normal((2, params.size)):
        eps = 1e-6
        want = (meta_objective(alg, params + eps * d, ep)
                - meta_objective(alg, params - eps * d, ep)) / (2 * eps)
        assert grad @ d == pytest.approx(want, rel=1e-5)


def quadratic_setup(T=3, dim=4, seed=0):
    ep = QuadraticTasks(dim=dim, query_shift=1.0).sample(T, np.random.default_rng(seed))
    model = QuadraticModel(dim)
    return ep, model, model.init(np.random.default_rng(seed + 1))


def test_imaml_closed_form_quadratic_v8():
    ep, model, theta = quadratic_setup()
    reg = 1.5
    alg = IMAML(model, reg=reg, inner_lr=0.25, steps=200, damping=0.0)
    grad, info = alg.meta_gradient(theta, ep)
    assert info["success"], info["message"]
    P, a, Q, b = (ep.info[k] for k in ("P", "a", "Q", "b"))
    eye = np.eye(theta.size)
    want = []
    for i in range(P.shape[0]):
        S = P[i] + reg * eye
        phi = np.linalg.solve(S, P[i] @ a[i] + reg * theta)
        want.append(np.linalg.solve(eye + P[i] / reg, Q[i] @ (phi - b[i])))
    assert rel(grad, np.mean(want, axis=0)) < 1e-9


def test_imaml_hessian_free_inner_solver_closed_form_quadratic():
    """iMAML-HF: Newton-CG reaches the proximal minimizer of a quadratic in one step."""
    from bilevel.dynamics import NewtonCG

    ep, model, theta = quadratic_setup()
    reg = 1.5
    hf = NewtonCG(steps=2, cg_iters=4)
    alg = IMAML(model, reg=reg, damping=0.0, solver=CG(tol=1e-12), dynamics=hf,
                inner_tol=1e-9)
    assert alg.dynamics is hf
    grad, info = alg.meta_gradient(theta, ep)
    assert info["success"] and info["inner_residual"] < 1e-9, info["message"]
    P, a, Q, b = (ep.info[k] for k in ("P", "a", "Q", "b"))
    eye = np.eye(theta.size)
    want = []
    for i in range(P.shape[0]):
        phi = np.linalg.solve(P[i] + reg * eye, P[i] @ a[i] + reg * theta)
        want.append(np.linalg.solve(eye + P[i] / reg, Q[i] @ (phi - b[i])))
    assert rel(grad, np.mean(want, axis=0)) < 1e-9
    with pytest.raises(NotImplementedError, match="Implicit"):
        hf.step_vjp(None, (theta,), None, 0, (theta,))


def test_newton_cg_line_search_descends_on_a_nonconvex_network():
    from bilevel.dynamics import NewtonCG

    model = MLP((1, 12, 12, 1), activation="tanh")
    theta = model.init(np.random.default_rng(3))
    ep = Sinusoid(n_shot=10, n_query=10).sample(4, np.random.default_rng(0))
    problem, lam, _ = IMAML(model).problem(theta, ep.x_support, ep.y_support)
    w = problem.initial_point(lam)
    values = [problem.inner_value(w, lam)]
    for k in range(6):
        (w,) = NewtonCG(steps=1, cg_iters=10).step(problem, (w,), lam, k)
        values.append(problem.inner_value(w, lam))
    values = np.array(values)
    assert np.all(np.diff(values, axis=0) <= 1e-12)  # monotone per task
    assert np.all(values[-1] < 0.8 * values[0])


def amaml_closed_form(ep, theta, r, T):
    """A-MAML's meta-gradient of the exact flow on quadratic tasks (matrix exponentials)."""
    P, a, Q, b = (ep.info[k] for k in ("P", "a", "Q", "b"))
    eye = np.eye(theta.size)
    want = []
    for i in range(P.shape[0]):
        S = P[i] + r * eye
        E = scipy.linalg.expm(-S * T)
        Sinv = np.linalg.inv(S)
        u = E @ theta + (eye - E) @ Sinv @ (P[i] @ a[i] + r * theta)
        du = E + r * Sinv @ (eye - E)
        want.append(du.T @ (Q[i] @ (u - b[i]) + r * (u - theta)) - r * (u - theta))
    return np.mean(want, axis=0)


def test_amaml_closed_form_quadratic_v9():
    ep, model, theta = quadratic_setup(seed=3)
    r, T = 0.7, 1.3
    alg = AMAML(model, horizon=T, steps=60, scheme="rk4", reg=r, method=Adjoint())
    grad, info = alg.meta_gradient(theta, ep)
    assert info["success"], info["message"]
    assert rel(grad, amaml_closed_form(ep, theta, r, T)) < 1e-7


def test_amaml_default_is_the_papers_continuous_adjoint_first_order_in_h():
    """RK4 forward, explicit-Euler adjoint with H at the later state: error O(h)."""
    ep, model, theta = quadratic_setup(seed=3)
    r, T = 0.7, 1.3
    assert AMAML(model).method == Adjoint.paper()
    want = amaml_closed_form(ep, theta, r, T)
    errors = []
    for K in (30, 60, 120):
        grad, info = AMAML(model, horizon=T, steps=K, reg=r).meta_gradient(theta, ep)
        assert info["success"], info["message"]
        assert info.result["discrete"] is False and info.result["trajectory"] == "store"
        errors.append(rel(grad, want))
    assert errors[0] < 0.05
    assert 1.8 < errors[0] / errors[1] < 2.2 and 1.8 < errors[1] / errors[2] < 2.2


def test_maml_closed_form_quadratic_and_one_step_v10(model, episode):
    ep, qmodel, theta = quadratic_setup(seed=7)
    lr, K = 0.2, 5
    grad, _ = MAML(qmodel, lr, K).meta_gradient(theta, ep)
    P, Q, b = ep.info["P"], ep.info["Q"], ep.info["b"]
    phi = QuadraticTasks.adapted(theta, ep, lr, K)
    eye = np.eye(theta.size)
    want = [np.linalg.matrix_power(eye - lr * P[i], K) @ Q[i] @ (phi[i] - b[i])
            for i in range(P.shape[0])]
    assert rel(grad, np.mean(want, axis=0)) < 1e-12
    # V10 on an MLP: (I − α∇²L̂(θ)) ∇L(φ) with an explicit Hessian
    alpha = 0.05
    th = theta_of(MAML(model, alpha, 1))
    g1, _ = MAML(model, alpha, 1).meta_gradient(th, episode)
    per_task = []
    for i in range(episode.x_support.shape[0]):
        sl = slice(i, i + 1)

        def support(t, sl=sl):
            return model.loss(model.apply(t[None], episode.x_support[sl]),
                              episode.y_support[sl])[0]

        def query(t, sl=sl):
            return model.loss(model.apply(t[None], episode.x_query[sl]),
                              episode.y_query[sl])[0]

        gs = make_vjp(support, th)[0](1.0)
        hess = np.stack([make_vjp(lambda t, e=e: np.sum(make_vjp(support, t)[0](1.0) * e),
                                  th)[0](1.0) for e in np.eye(th.size)])
        phi = th - alpha * gs
        per_task.append((np.eye(th.size) - alpha * hess) @ make_vjp(query, phi)[0](1.0))
    assert rel(g1, np.mean(per_task, axis=0)) < 1e-10


def test_maml_equals_reverse_directly(model, episode):
    alg = MAML(model, 0.05, 4, fast_oracles=False)  # autograd, as the direct call below
    theta = theta_of(alg)
    grad, _ = alg.meta_gradient(theta, episode)
    T = episode.x_support.shape[0]

    def g(w, lam, ep):
        return model.loss(model.apply(w, ep.x_support), ep.y_support)

    def f(w, lam, ep):
        return model.loss(model.apply(w, ep.x_query), ep.y_query)

    problem = BilevelProblem(g, f, data=episode, init=lambda lam: lam)
    lam = np.tile(theta, (T, 1))
    res = hypergrad(problem, lam, dynamics=GradientDescent(0.05, 4), method=Reverse())
    np.testing.assert_array_equal(grad, res.grad.mean(axis=0))
    # the default analytic oracles give the same meta-gradient to rounding
    fast, _ = MAML(model, 0.05, 4).meta_gradient(theta, episode)
    assert rel(fast, grad) < 1e-13
    # a user-chosen method: checkpointed reverse gives the same gradient to rounding
    ck, _ = MAML(model, 0.05, 4, method=Reverse(checkpoints=1)).meta_gradient(theta, episode)
    assert rel(ck, grad) < 1e-13


def test_fomaml_differs_from_maml_and_matches_first_order_reference(model, episode):
    lr, K = 0.1, 3
    fo = MAML(model, lr, K, first_order=True)
    theta = theta_of(fo)
    g_fo, info = fo.meta_gradient(theta, episode)
    g_so, _ = MAML(model, lr, K).meta_gradient(theta, episode)
    assert info["n_hvp"] == 0
    assert rel(g_fo, g_so) > 1e-3
    adapted = fo.adapt(theta, episode.x_support, episode.y_support)
    ref = []
    for i in range(adapted.shape[0]):
        sl = slice(i, i + 1)

        def query(t, sl=sl):
            return model.loss(model.apply(t[None], episode.x_query[sl]),
                              episode.y_query[sl])[0]

        ref.append(make_vjp(query, adapted[i])[0](1.0))
    assert rel(g_fo, np.mean(ref, axis=0)) < 1e-13


def test_reptile_direction_and_sgd_update(model, episode):
    alg = Reptile(model, inner_lr=0.05, steps=3)
    theta = theta_of(alg)
    grad, _ = alg.meta_gradient(theta, episode)
    adapted = alg.adapt(theta, episode.x_support, episode.y_support)
    np.testing.assert_allclose(grad, theta - adapted.mean(axis=0), rtol=0, atol=1e-15)
    from bilevel.optim import SGD

    eps = 0.3
    updates, _ = SGD(eps).update(grad, SGD(eps).init(theta), theta)
    np.testing.assert_allclose(theta + updates, theta + eps * (adapted.mean(0) - theta),
                               atol=1e-15)


def test_pretrain_gradient_matches_finite_differences(model, episode):
    alg = Pretrain(model)
    theta = theta_of(alg)
    grad, _ = alg.meta_gradient(theta, episode)

    def joint(t):
        tt = np.broadcast_to(t, (3, t.size))
        return float(np.mean(0.5 * (model.loss(model.apply(tt, episode.x_support),
                                               episode.y_support)
                                    + model.loss(model.apply(tt, episode.x_query),
                                                 episode.y_query))))

    assert rel(grad, fd_grad(joint, theta)) < 1e-7


@pytest.mark.parametrize("base_name", ["maml", "anil", "maml_fo"])
def test_cml_weight_zero_reduces_to_base_v12(base_name, model, colearner, episode):
    # autograd oracles on the base too, so that the comparison below is bitwise
    base = {"maml": MAML(model, 0.05, 2, fast_oracles=False),
            "anil": ANIL(model, 0.2, 2, fast_oracles=False),
            "maml_fo": MAML(model, 0.05, 2, first_order=True, fast_oracles=False)}[base_name]
    cml = CML(base, colearner, weight=0.0)
    params = theta_of(cml)
    n = model.n_params
    g_cml, _ = cml.meta_gradient(params, episode)
    g_base, _ = base.meta_gradient(params[:n], episode)
    np.testing.assert_array_equal(g_cml[:n], g_base)
    np.testing.assert_array_equal(g_cml[n:], 0.0)
    # a non-zero weight changes the backbone gradient and trains ψ
    g_w, _ = CML(base, colearner, weight=1.0).meta_gradient(params, episode)
    assert np.any(g_w[n:] != 0) and rel(g_w[:n], g_base) > 1e-6


def test_cml_colearner_absent_at_test_time_v12(model, colearner, episode):
    base = MAML(model, 0.05, 2)
    cml = CML(base, colearner, weight=1.0)
    params = theta_of(cml)
    n = model.n_params
    adapted = cml.adapt(params, episode.x_support, episode.y_support)
    assert adapted.shape == (3, n)
    np.testing.assert_array_equal(adapted, base.adapt(params[:n], episode.x_support,
                                                      episode.y_support))
    other = params.copy()
    other[n:] += 1.0  # a different co-learner: predictions do not change
    np.testing.assert_array_equal(cml.evaluate(params, episode)["loss"],
                                  cml.evaluate(other, episode)["loss"])
    np.testing.assert_array_equal(cml.evaluate(params, episode)["loss"],
                                  base.evaluate(params[:n], episode)["loss"])


def _task(ep, i):
    sl = slice(i, i + 1)
    return Episode(ep.x_support[sl], ep.y_support[sl], ep.x_query[sl], ep.y_query[sl])


@pytest.mark.parametrize(
    "name", ["maml", "fomaml", "anil", "reptile", "imaml", "amaml", "memory_reduced", "cml"]
)
def test_vectorized_meta_batch_equals_task_loop_v14(name, model, colearner, episode):
    alg = {
        "maml": MAML(model, 0.05, 2),
        "fomaml": MAML(model, 0.05, 2, first_order=True),
        "anil": ANIL(model, 0.2, 2),
        "reptile": Reptile(model, 0.05, 2),
        "imaml": IMAML(model, reg=5.0, inner_lr=0.05, steps=5),
        "amaml": AMAML(model, horizon=0.1, steps=3, reg=0.3),
        "memory_reduced": MemoryReduced(model, 0.2, 5, damping=0.1),
        "cml": CML(MAML(model, 0.05, 2), colearner, 0.5),
    }[name]
    params = theta_of(alg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypergradWarning)
        grad, _ = alg.meta_gradient(params, episode)
        loop = [alg.meta_gradient(params, _task(episode, i))[0] for i in range(3)]
    assert rel(grad, np.mean(loop, axis=0)) < 1e-12


def test_meta_gradient_step_decreases_meta_objective(model, episode):
    """Sign convention (V14): a small step along −∇ lowers the meta-objective."""
    for alg in (MAML(model, 0.05, 2), AMAML(model, 0.1, 3, reg=0.5), ANIL(model, 0.2, 2)):
        params = theta_of(alg)
        grad, _ = alg.meta_gradient(params, episode)
        before = meta_objective(alg, params, episode)
        assert meta_objective(alg, params - 1e-3 * grad, episode) < before


def test_classification_evaluate_reports_accuracy():
    model = MLP((4, 5, 3), loss="cross_entropy")
    rng = np.random.default_rng(0)
    ep = Episode(rng.standard_normal((2, 6, 4)), rng.integers(0, 3, (2, 6)),
                 rng.standard_normal((2, 3, 4)), rng.integers(0, 3, (2, 3)))
    alg = ANIL(model, 0.5, 2)
    out = alg.evaluate(alg.init(rng), ep)
    assert out["loss"].shape == (2,) and out["accuracy"].shape == (2,)
    assert np.all((out["accuracy"] >= 0) & (out["accuracy"] <= 1))


def test_bad_arguments_raise_clear_errors(model, colearner):
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(model, -1.0, 2)
    with pytest.raises(ValueError, match="steps"):
        MAML(model, 0.1, 0)
    with pytest.raises(ValueError, match="reg"):
        IMAML(model, reg=0.0)
    with pytest.raises(TypeError, match="base"):
        CML(Reptile(model), colearner)
    with pytest.raises(TypeError, match="model"):
        MAML(object())
    alg = MAML(model)
    ep = Sinusoid(n_shot=2, n_query=2).sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="params"):
        alg.meta_gradient(np.zeros(3), ep)


# ------------------------------------------------------------------ specifications
def test_registry_names_every_algorithm_in_every_spelling(model):
    from bilevel.meta.algorithms import FOMAML
    from bilevel.registry import lookup, names

    want = {"maml": MAML, "fomaml": FOMAML, "anil": ANIL, "imaml": IMAML, "amaml": AMAML,
            "A-MAML": AMAML, "reptile": Reptile, "memory-reduced": MemoryReduced,
            "memory_reduced": MemoryReduced, "MemoryReduced": MemoryReduced,
            "pretrain": Pretrain, "cml": CML}
    for name, cls in want.items():
        assert lookup("algorithm", name) is cls, name
    assert {"maml", "fomaml", "memory-reduced", "cml"} <= set(names("algorithm"))


def test_fomaml_is_maml_first_order_through_the_core_method(model, episode):
    from bilevel.meta.algorithms import FOMAML
    from bilevel.methods import FirstOrder

    fo = FOMAML(model, 0.1, 3)
    assert fo.first_order and isinstance(fo.method, FirstOrder)
    theta = theta_of(fo)
    g1, info = fo.meta_gradient(theta, episode)
    g2, _ = MAML(model, 0.1, 3, first_order=True).meta_gradient(theta, episode)
    np.testing.assert_array_equal(g1, g2)
    assert info["method"] == "FirstOrder()" and info["n_hvp"] == 0
    with pytest.raises(ValueError, match="first_order"):
        MAML(model, 0.1, 3, first_order=True, method=Reverse())


def test_meta_step_reads_as_attributes_and_as_a_mapping(model, episode):
    from bilevel.meta.algorithms import MetaStep

    alg = IMAML(model, reg=5.0, inner_lr=0.05, steps=5)
    grad, step = alg.meta_gradient(theta_of(alg), episode)
    assert isinstance(step, MetaStep)
    assert step["loss"] == step.loss and step.get("success") is step.success
    assert step["grad"] is grad and step.result.grad.shape == (3, grad.size)
    assert step["inner_residual"] == step.diagnostics["inner_residual"]
    assert step.get("nonexistent", 7) == 7 and "nonexistent" not in step
    with pytest.raises(KeyError):
        step["nonexistent"]
    keys = set(dict(step))
    assert {"loss", "success", "message", "task_success", "success_fraction", "n_grad",
            "n_hvp", "n_jvp", "method", "inner_residual"} <= keys
    assert step["task_success"].shape == (3,) and step["success_fraction"] == 1.0


def test_meta_gradient_reports_failures_without_warning():
    """Failures are read from the result (on_failure="ignore"), never warned about."""
    ep, qmodel, theta = quadratic_setup()
    alg = MAML(qmodel, 1e200, 4)  # the inner loop overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            grad, info = alg.meta_gradient(theta, ep)
    assert not info["success"] and info["success_fraction"] == 0.0
    assert "non-finite" in info["message"] and np.isnan(info["loss"])
    assert np.all(np.isnan(grad))


@pytest.mark.parametrize("name", ["maml", "anil", "amaml", "cml", "cml_anil"])
def test_algorithms_pickle_and_compare(name, model, colearner, episode):
    import pickle

    alg = configured(model, colearner)[name]
    copy = pickle.loads(pickle.dumps(alg))
    params = theta_of(alg)
    np.testing.assert_array_equal(copy.meta_gradient(params, episode)[0],
                                  alg.meta_gradient(params, episode)[0])
    assert repr(copy) == repr(alg) and "model" not in repr(alg)


def test_cml_is_a_transformation_of_the_base_specification(model, colearner):
    from bilevel.meta.algorithms import cooperative

    base = MemoryReduced(model, 0.2, 3)
    spec = cooperative(base.specification(), model, colearner, 0.5)
    assert spec.n_params == model.n_params + colearner.n_params
    assert spec.init is None and spec.dynamics.steps == 3
    assert CML(base, colearner, 0.5).n_params == spec.n_params


def test_task_data_is_the_episode_type():
    from bilevel.meta.algorithms import TaskData

    assert TaskData is Episode
    x = np.zeros((2, 3, 1))
    assert Episode(x, x).x_query is None
    with pytest.raises(ValueError, match="both x_query and y_query"):
        Episode(x, x, x)


def test_former_hooks_warn_and_read_the_specification(model, episode):
    alg = IMAML(model, reg=5.0, inner_lr=0.05, steps=5)
    with pytest.warns(DeprecationWarning, match=r"specification\(\)\.inner"):
        inner = alg.inner_objective
    assert inner is not None and callable(inner)
    with pytest.raises(AttributeError, match="nothing"):
        _ = alg.nothing


# ------------------------------------------------------------------ defaults that train
@pytest.mark.slow  # about a minute: 7 algorithms x 300 meta-iterations
def test_every_algorithm_trains_with_its_defaults_on_sinusoids():
    """300 iterations, every update applied, held-out MSE below the random-init baseline."""
    from bilevel.meta import evaluate, train
    from bilevel.optim import Adam
    from bilevel.outer import Monitoring

    sampler = Sinusoid(n_shot=10, n_query=10)
    model = MLP((1, 20, 20, 1), activation="tanh")
    theta0 = model.init(np.random.default_rng([0, 1]))
    # AMAML's default recomputes with the exact discrete adjoint the tasks whose
    # continuous adjoint fails its backward step condition (h·λ_max(H) > 2), so no task is
    # dropped (tests/test_fidelity.py checks the fallback)
    algorithms = [MemoryReduced(model), IMAML(model), AMAML(model), ANIL(model),
                  Reptile(model), MAML(model),
                  CML(MAML(model), MLP((20, 20, 1), activation="tanh"))]
    for alg in algorithms:
        res = train(alg, sampler, steps=300, meta_batch=5, optimizer=Adam(1e-2),
                    monitoring=Monitoring(progress=False))
        base = alg.base if isinstance(alg, CML) else alg
        meta = evaluate(alg, res.theta, sampler, 100, seed=99, batch=50)["loss"]
        random_init = evaluate(base, theta0, sampler, 100, seed=99, batch=50)["loss"]
        assert all(res.history["applied"]), type(alg).__name__
        assert all(f == 1.0 for f in res.history["success_fraction"]), type(alg).__name__
        assert meta < random_init, (type(alg).__name__, meta, random_init)


def test_imaml_fixed_budget_drops_no_task_and_reports_residuals():
    model = MLP((1, 12, 12, 1), activation="tanh")
    theta = model.init(np.random.default_rng(3))
    ep = Sinusoid(n_shot=10, n_query=10).sample(10, np.random.default_rng(0))
    for solver in (CG(maxiter=5), CG.fixed(5)):
        grad, info = IMAML(model, solver=solver).meta_gradient(theta, ep)
        assert info["task_success"].all() and info["success"], info["message"]
        assert info.result["linear_iterations"] == 5
        residual = info.result["linear_residual"]
        assert residual.shape == (10,) and np.all(residual > 0)
    # tolerance-based and "drop": the unconverged tasks are left out
    _, info = IMAML(model, solver=CG(maxiter=5), on_unconverged="drop").meta_gradient(theta, ep)
    assert not info["task_success"].all()


def test_cg_fixed_budget_runs_exactly_j_steps_and_accepts():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    A = A @ A.T + 0.01 * np.eye(6)
    b = rng.standard_normal((3, 6))
    sol = CG.fixed(3)(lambda v: v @ A, b)
    assert sol.converged and sol.iterations == 3 and sol.relative_residual > 1e-6
    assert "fixed budget" in sol.message
    assert CG(tol=None, maxiter=3) == CG.fixed(3)
    with pytest.raises(ValueError, match="maxiter"):
        CG(tol=None)
    capped = CG(tol=1e-12, maxiter=3)(lambda v: v @ A, b)
    assert not capped.converged and "CG.fixed(3)" in capped.message


def test_cml_with_the_papers_conv_colearner_matches_finite_differences():
    from bilevel.meta.models import Conv4, ConvCoLearner

    model = Conv4(in_channels=1, hidden=3, ways=2, image_size=8, dtype="float64")
    rng = np.random.default_rng(0)
    ep = Episode(rng.standard_normal((2, 4, 1, 8, 8)), rng.integers(0, 2, (2, 4)),
                 rng.standard_normal((2, 4, 1, 8, 8)), rng.integers(0, 2, (2, 4)))
    alg = CML(MAML(model, 0.1, 1), ConvCoLearner.for_model(model, hidden=2), weight=0.5)
    params = theta_of(alg)
    grad, info = alg.meta_gradient(params, ep)
    assert info["success"], info["message"]
    for d in rng.standard_normal((2, params.size)):
        eps = 1e-6
        want = (meta_objective(alg, params + eps * d, ep)
                - meta_objective(alg, params - eps * d, ep)) / (2 * eps)
        assert grad @ d == pytest.approx(want, rel=1e-6)
