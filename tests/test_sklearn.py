"""scikit-learn estimators tuned by hypergradient (bilevel.sklearn)."""

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import KFold, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from bilevel.sklearn import (  # noqa: E402
    HypergradElasticNet,
    HypergradLasso,
    HypergradLogisticRegression,
    HypergradRidge,
)

# small searches: check_estimator fits each estimator about a hundred times
CHECKED = [
    HypergradRidge(alphas=3, max_iter=2, cv=3),
    HypergradRidge(per_feature=True, alphas=3, max_iter=2, cv=3),
    HypergradLogisticRegression(alphas=2, max_iter=1, cv=2),
    HypergradLasso(alphas=3, max_iter=2, cv=3),
    HypergradElasticNet(l1_ratio=(0.5,), alphas=2, max_iter=1, cv=2),
]


@parametrize_with_checks(CHECKED)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check(estimator)


def _cv_loss(loss_at, X, y, splits):
    return np.mean([loss_at(X[tr], y[tr], X[va], y[va]) for tr, va in splits])


def _fd(F, u, eps=1e-5):
    out = np.zeros_like(u)
    for i in range(len(u)):
        e = np.zeros_like(u)
        e[i] = eps
        out[i] = (F(u + e) - F(u - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("per_feature", [False, True])
def test_ridge_hypergradient_equals_fd_of_the_cv_loss_by_sklearn_ridge(per_feature):
    """∇_{log α} of the K-fold loss, against central differences of the same loss computed
    with scikit-learn's Ridge (per-feature penalties by column scaling)."""
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:150, :6], y[:150]
    cv = KFold(3)
    est = HypergradRidge(per_feature=per_feature, alphas=[0.01, 0.1], max_iter=0, cv=cv)
    est.fit(X, y)

    def ridge_loss(u):
        alpha = np.broadcast_to(np.exp(u), (X.shape[1],))

        def loss(Xt, yt, Xv, yv):
            scale = np.sqrt(alpha)
            model = Ridge(alpha=1.0).fit(Xt / scale, yt)
            return 0.5 * np.mean((model.predict(Xv / scale) - yv) ** 2) / yt.var()

        return _cv_loss(loss, X, y, list(cv.split(X)))

    u = np.log(np.atleast_1d(est.alpha_))[: 6 if per_feature else 1]
    assert est.hypergradient_["value"] == pytest.approx(ridge_loss(u), rel=1e-9)
    np.testing.assert_allclose(est.hypergradient_["grad"], _fd(ridge_loss, u), rtol=1e-5,
                               atol=1e-9)
    assert est.hypergradient_["success"] and est.hypergradient_["inner_residual"] < 1e-10


def test_logistic_hypergradient_equals_fd_of_the_cv_loss_by_sklearn_logistic():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X[:200, :5])
    y = y[:200]
    cv = KFold(2)
    est = HypergradLogisticRegression(alphas=[1.0, 3.0], max_iter=0, cv=cv).fit(X, y)

    def logistic_loss(u):
        def loss(Xt, yt, Xv, yv):
            model = LogisticRegression(C=float(np.exp(-u[0])), tol=1e-12, max_iter=10_000)
            return log_loss(yv, model.fit(Xt, yt).predict_proba(Xv))

        return _cv_loss(loss, X, y, list(cv.split(X)))

    u = np.log(np.atleast_1d(est.alpha_))
    assert est.hypergradient_["value"] == pytest.approx(logistic_loss(u), rel=1e-6)
    np.testing.assert_allclose(est.hypergradient_["grad"], _fd(logistic_loss, u, 1e-4),
                               rtol=1e-4)


@pytest.mark.parametrize("l2", [False, True])
def test_lasso_and_elastic_net_hypergradient_equal_fd_of_the_cv_loss(l2):
    """Through the proximal-gradient fixed point, against central differences of the K-fold
    loss computed with scikit-learn's ElasticNet (support constant over the step)."""
    from sklearn.linear_model import ElasticNet

    X, y = load_diabetes(return_X_y=True)
    X, y = X[:200], y[:200]
    cv = KFold(3)
    if l2:
        est = HypergradElasticNet(l1_ratio=(0.7,), alphas=[0.05, 0.2], max_iter=0, cv=cv)
    else:
        est = HypergradLasso(alphas=[0.05, 0.2], max_iter=0, cv=cv)
    est.fit(X, y)

    def enet_loss(u):
        l1, l2_ = np.exp(u[0]), (np.exp(u[1]) if len(u) > 1 else 0.0)

        def loss(Xt, yt, Xv, yv):
            model = ElasticNet(alpha=l1 + l2_, l1_ratio=l1 / (l1 + l2_), tol=1e-14,
                               max_iter=1_000_000).fit(Xt, yt)
            return 0.5 * np.mean((model.predict(Xv) - yv) ** 2) / yt.var()

        return _cv_loss(loss, X, y, list(cv.split(X)))

    a, r = est.alpha_, est.l1_ratio_
    u = np.log([a * r, a * (1 - r)]) if l2 else np.log([a])
    assert est.hypergradient_["value"] == pytest.approx(enet_loss(u), rel=1e-8)
    np.testing.assert_allclose(est.hypergradient_["grad"], _fd(enet_loss, u, 1e-6), rtol=1e-4)
    assert est.hypergradient_["success"]


def test_tuned_ridge_and_logistic_beat_the_untuned_start_on_bundled_data():
    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    tuned = HypergradRidge(per_feature=False).fit(Xtr, ytr)
    assert tuned.score(Xte, yte) > Ridge(alpha=1.0).fit(Xtr, ytr).score(Xte, yte)
    assert tuned.n_iter_ >= 1 and tuned.hypergradient_["norm"] < 1e-3
    assert tuned.history_["value"].min() == pytest.approx(tuned.hypergradient_["value"])

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0, stratify=y)
    start = make_pipeline(StandardScaler(), LogisticRegression(C=100.0)).fit(Xtr, ytr)
    tuned = make_pipeline(StandardScaler(), HypergradLogisticRegression()).fit(Xtr, ytr)
    assert log_loss(yte, tuned.predict_proba(Xte)) < log_loss(yte, start.predict_proba(Xte))
    assert tuned.score(Xte, yte) >= start.score(Xte, yte)


def test_clone_pipeline_and_cross_val_score():
    X, y = load_diabetes(return_X_y=True)
    est = HypergradRidge(per_feature=True, alphas=3, max_iter=5, cv=3)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "coef_")
    scores = cross_val_score(make_pipeline(StandardScaler(), est), X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.3)
    est.set_params(per_feature=False, cv=4).fit(X, y)
    assert np.ndim(est.alpha_) == 0 and est.coef_.shape == (10,)

    Xc, yc = load_breast_cancer(return_X_y=True)
    clf = make_pipeline(StandardScaler(), HypergradLogisticRegression(alphas=3, max_iter=3))
    assert np.mean(cross_val_score(clf, Xc, yc, cv=3)) > 0.9


def test_multiclass_one_vs_rest_and_bad_parameters():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    est = HypergradLogisticRegression(alphas=3, max_iter=3).fit(X, y)
    assert est.alpha_.shape == (3, 1) and len(est.hypergradient_) == 3
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)
    assert est.score(X, y) > 0.9
    with pytest.raises(ValueError, match="alpha_range"):
        HypergradRidge(alpha_range=(1.0, 0.1)).fit(X, y)
    with pytest.raises(ValueError, match="alphas"):
        HypergradRidge(alphas=0).fit(X, y)


@pytest.mark.slow  # integration run (seconds)
def test_bench_sklearn_quick_table(tmp_path):
    from bilevel.bench import sklearn as bench

    result = bench.run(quick=True, problems=("diabetes",))
    names = {row["estimator"] for row in result["rows"]}
    assert {"HypergradRidge (per feature)", "RidgeCV (LOO)", "LassoCV"} <= names
    assert all(0.2 < row["score"] < 0.7 for row in result["rows"])
    assert "| diabetes | HypergradLasso |" in bench.to_markdown(result)
    assert bench.plot(result, str(tmp_path / "sklearn.png")).endswith("sklearn.png")
