"""Every object the library builds pickles with the standard library and, unpickled,
computes the same result bit for bit (so it can be sent to another process: Dask, a
``concurrent.futures`` process pool; see docs/distributed.rst)."""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import bilevel.meta  # noqa: F401  (registers the meta-learning algorithms)
from bilevel import CG, BilevelProblem, GradientDescent, Implicit, hypergrad, registry
from bilevel.api import HypergradResult
from bilevel.hpo import problems
from bilevel.meta import Episode, FewShotDataset, Omniglot, QuadraticTasks, Sinusoid
from bilevel.meta.algorithms import MAML
from bilevel.meta.conv_models import ConvCoLearner
from bilevel.meta.models import MLP, Conv4, QuadraticModel
from bilevel.methods.base import HypergradError
from bilevel.nonfinite import NonFiniteError
from bilevel.ode import ODEDivergenceError
from bilevel.outer import Monitoring
from bilevel.stochastic import solve
from bilevel.stochastic.quadratic import quadratic
from bilevel.testing import ridge_oracles, ridge_problem, strategies

RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((12, 3)), RNG.standard_normal(12)
LABELS = (Y > 0).astype(int)


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def same(a, b):
    """Equal bit for bit, through nested results."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, np.ndarray) or np.isscalar(a):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ registered classes
CANDIDATE_ARGS = ({}, {"lr": 0.1, "steps": 4}, {"lr": 0.1, "beta": 0.5, "steps": 4},
                  {"horizon": 0.4, "steps": 4}, {"steps": 4})


def instance(kind, name):
    """One instance of the class registered as ``name``: its defaults, or common options."""
    cls = registry.lookup(kind, name)
    if kind == "algorithm":
        model = MLP((1, 6, 1), activation="tanh")
        if name == "cml":
            return cls(MAML(model, inner_lr=0.05, steps=2), MLP((6, 4, 1), activation="tanh"))
        return cls(model)
    for kwargs in CANDIDATE_ARGS:
        try:
            return cls(**kwargs)
        except (TypeError, ValueError):
            continue
    pytest.fail(f"add a constructor of {kind} {name!r} to tests/test_pickle.py: "
                f"{inspect.signature(cls)}")


def ridge():
    return ridge_problem(X, Y, X[:6], Y[:6], mean=True)


def _dynamics_for(method):
    if registry.spelling(getattr(method, "name", "")) == "adjoint":
        return registry.lookup("dynamics", "gradient-flow")(horizon=0.4, steps=4)
    return GradientDescent(0.1, 4)


def compute(kind, obj):
    """What the object computes on a small input."""
    if kind == "method":
        return hypergrad(ridge(), np.zeros(3), np.zeros(3), dynamics=_dynamics_for(obj),
                         method=obj, on_failure="ignore")
    if kind == "solver":
        A = X.T @ X + np.eye(3)
        return obj(lambda v: v @ A, np.ones(3))
    if kind == "dynamics":
        return hypergrad(ridge(), np.zeros(3), np.zeros(3), dynamics=obj,
                         method=Implicit(CG(maxiter=5)), on_failure="ignore")
    if kind == "optimizer":
        params = np.ones(3)
        return obj.update(np.arange(3.0), obj.init(params), params)
    episode = Sinusoid(n_shot=3, n_query=3).sample(3, np.random.default_rng(1))
    theta = obj.init(np.random.default_rng(2))
    return obj.meta_gradient(theta, episode)


def _result_arrays(out):
    """The arrays of a result (dicts, SolveResult, MetaStep ...) in a comparable form."""
    if isinstance(out, HypergradResult):
        return {k: v for k, v in out.items() if k in ("grad", "w", "value", "success")}
    if isinstance(out, tuple):
        return tuple(_result_arrays(o) for o in out)
    if hasattr(out, "__dataclass_fields__"):
        return {k: getattr(out, k) for k in out.__dataclass_fields__
                if isinstance(getattr(out, k), (np.ndarray, float, bool))}
    return out


KINDS = ("method", "solver", "dynamics", "optimizer", "algorithm")
REGISTERED = [(kind, name) for kind in KINDS for name in registry.names(kind)]


@pytest.mark.parametrize(("kind", "name"), REGISTERED)
def test_registered_classes_roundtrip(kind, name):
    obj = instance(kind, name)
    copy = roundtrip(obj)
    assert type(copy) is type(obj) and repr(copy) == repr(obj)
    same(_result_arrays(compute(kind, obj)), _result_arrays(compute(kind, copy)))


def test_every_kind_is_covered():
    """Every registry kind is round-tripped here (``stochastic`` by its own test below)."""
    assert {k for k, _ in REGISTERED} == set(KINDS)
    assert set(registry._REGISTRY) <= {*KINDS, "stochastic"}
    assert len(REGISTERED) >= 20


@pytest.mark.parametrize("name", registry.names("stochastic"))
def test_stochastic_methods_and_problem_roundtrip(name):
    """A stochastic method and its problem unpickled run the same seeded steps bit for bit."""
    fam = quadratic(n_inner=64, n_outer=32, dim_inner=5, dim_outer=3, seed=1)
    method = registry.lookup("stochastic", name)()
    quiet = Monitoring(progress=False, memory=None)
    runs = [solve(p, m, fam.lam0, fam.w0, steps=6, eval_every=3, monitoring=quiet)
            for p, m in ((fam.problem, method), roundtrip((fam.problem, method)))]
    assert repr(roundtrip(method)) == repr(method)
    np.testing.assert_array_equal(runs[0].lam, runs[1].lam)


# ------------------------------------------------------------------ models and samplers
MODELS = {
    "MLP": (MLP((1, 6, 1), activation="tanh"), np.linspace(-1, 1, 8).reshape(1, 8, 1)),
    "Conv4": (Conv4(hidden=4, image_size=8, ways=3),
              RNG.standard_normal((1, 2, 1, 8, 8)).astype(np.float32)),
    "ConvCoLearner": (ConvCoLearner(channels=4, side=2, hidden=4, ways=3),
                      RNG.standard_normal((1, 2, 4, 2, 2)).astype(np.float32)),
    "QuadraticModel": (QuadraticModel(dim=3), RNG.standard_normal((1, 3, 3))),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_roundtrip(name):
    model, x = MODELS[name]
    copy = roundtrip(model)
    theta = model.init(np.random.default_rng(0))[None]
    np.testing.assert_array_equal(copy.apply(theta, x), model.apply(theta, x))
    np.testing.assert_array_equal(copy.init(np.random.default_rng(0)),
                                  model.init(np.random.default_rng(0)))


SAMPLERS = {
    "Sinusoid": lambda: Sinusoid(n_shot=2, n_query=3, noise=0.1),
    "QuadraticTasks": lambda: QuadraticTasks(dim=3),
    "FewShotDataset": lambda: FewShotDataset(RNG.standard_normal((60, 4)),
                                             np.repeat(np.arange(12), 5), ways=3, n_shot=1,
                                             n_query=2, split="all"),
}


ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = next((p for p in [Path(os.environ.get("BILEVEL_OMNIGLOT") or ROOT / "missing"),
                             ROOT.parent / "shared" / "data" / "omniglot"]
                 if p.exists() and any(p.glob("*.zip"))), None)


@pytest.mark.parametrize("name", [*SAMPLERS, "Omniglot"])
def test_task_samplers_roundtrip(name):
    if name == "Omniglot" and OMNIGLOT is None:
        pytest.skip("no Omniglot archives ($BILEVEL_OMNIGLOT or ../shared/data/omniglot)")
    sampler = (Omniglot(OMNIGLOT, ways=3, n_shot=1, n_query=2) if name == "Omniglot"
               else SAMPLERS[name]())
    copy = roundtrip(sampler)
    a, b = (s.sample(3, np.random.default_rng(4)) for s in (sampler, copy))
    assert isinstance(b, Episode)
    for field in ("x_support", "y_support", "x_query", "y_query"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ------------------------------------------------------------------ problems
HPO_PROBLEMS = {
    "ridge": lambda: problems.ridge(X, Y, X[:6], Y[:6]),
    "logistic": lambda: problems.logistic(X, LABELS, X[:6], LABELS[:6], per_feature=True),
    "hyper_cleaning": lambda: problems.hyper_cleaning(X, LABELS, X[:6], LABELS[:6]),
    "optimizer_tuning": lambda: problems.optimizer_tuning(X, Y, X[:6], Y[:6], steps=3),
    "ridge_problem with oracles": lambda: ridge_problem(
        X, Y, X[:6], Y[:6], oracles=ridge_oracles(X, Y, X[:6], Y[:6])),
}


def _inputs(problem, dynamics):
    n = {"logistic": 4, "hyper_cleaning": 8}.get(problem.name.split("_per")[0], 3)
    m = {"hyper_cleaning": 12, "optimizer_tuning": 2}.get(problem.name, 3)
    return np.full(m, -0.5), np.zeros(n), dynamics or GradientDescent(0.1, 4)


@pytest.mark.parametrize("name", list(HPO_PROBLEMS))
def test_problems_roundtrip(name):
    built = HPO_PROBLEMS[name]()
    problem, dynamics = built if isinstance(built, tuple) else (built, None)
    copy = roundtrip(problem)
    assert isinstance(copy, BilevelProblem) and copy.name == problem.name
    lam, w0, dyn = _inputs(problem, dynamics)
    a, b = (hypergrad(p, lam, w0, dynamics=roundtrip(dyn), on_failure="ignore")
            for p in (problem, copy))
    np.testing.assert_array_equal(a.grad, b.grad)
    np.testing.assert_array_equal(a.value, b.value)


@pytest.mark.parametrize("strategy", ["quadratic_problems", "ridge_problems",
                                      "gradient_flow_problems", "imaml_tasks", "mlp_problems"])
def test_generated_problems_roundtrip(strategy):
    @settings(max_examples=1, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(getattr(strategies, strategy)())
    def check(gen):
        copy = roundtrip(gen)
        a, b = (hypergrad(g.problem, g.lam, g.w0, dynamics=g.dynamics, on_failure="ignore")
                for g in (gen, copy))
        np.testing.assert_array_equal(a.grad, b.grad)

    check()


# ------------------------------------------------------------------ errors from workers
def test_errors_roundtrip():
    err = roundtrip(NonFiniteError("inner_grad", "NaN in the inner gradient"))
    assert err.what == "inner_grad" and str(err) == "NaN in the inner gradient"
    err = roundtrip(HypergradError("failed", HypergradResult(success=False)))
    assert str(err) == "failed" and err.result.success is False
    err = roundtrip(ODEDivergenceError("diverged", 3, np.ones(2)))
    assert err.step == 3 and str(err) == "diverged"
