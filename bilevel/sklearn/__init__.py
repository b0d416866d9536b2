"""scikit-learn estimators whose regularization is tuned by hypergradient.

Each estimator chooses its penalties by minimizing a K-fold validation loss with the exact
hypergradient of every fold (implicit differentiation at the inner solution of a fast
solver), and is an ordinary scikit-learn estimator (``fit``/``predict``/``score``,
``get_params``/``set_params``, usable in ``Pipeline``, ``clone``, ``cross_val_score``)::

    from bilevel.sklearn import HypergradRidge
    model = HypergradRidge(per_feature=True, cv=5).fit(X, y)
    model.alpha_, model.hypergradient_["norm"], model.history_["value"]

See :doc:`/sklearn`. Needs scikit-learn (≥ 1.6) and scipy.
"""

from .logistic import HypergradLogisticRegression
from .ridge import HypergradRidge
from .sparse import HypergradElasticNet, HypergradLasso

__all__ = [
    "HypergradElasticNet",
    "HypergradLasso",
    "HypergradLogisticRegression",
    "HypergradRidge",
]
