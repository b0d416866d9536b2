"""Hyperparameter optimization on top of :func:`bilevel.hypergrad`.

:func:`minimize` is the outer loop (warm starts, transforms of λ; history, checkpoint/resume
and progress come from the shared driver :mod:`bilevel.outer`); :mod:`bilevel.hpo.problems`
builds the standard problems (per-feature ridge,
regularized logistic regression, data hyper-cleaning, step-size and momentum tuning)::

    from bilevel import GradientDescent, Implicit, CG
    from bilevel.hpo import minimize, problems
    prob = problems.ridge(X_train, y_train, X_val, y_val)
    res = minimize(prob, lam0, w0, dynamics=GradientDescent(0.1, 100),
                   method=Implicit(CG()), steps=200)
    res.lam, res.history["value"]
"""

from . import problems
from .checkpoint import load_checkpoint, save_checkpoint
from .minimize import SGD, Adam, HPOResult, MinimizeOptions, minimize
from .parallel import (
    CrossValidation,
    Restarts,
    cross_validate,
    fold_indices,
    grid_starts,
    minimize_many,
    random_starts,
)
from .problems import (
    TunedGradientDescent,
    TunedMomentum,
    hyper_cleaning,
    logistic,
    optimizer_tuning,
    ridge,
)
from .transforms import Bounded, Exp, Identity, Sigmoid, Transform, get_transform
from .tuned_dynamics import DerivedDynamics, TunedAdam, TunedSchedule

__all__ = [
    "SGD",
    "Adam",
    "Bounded",
    "Exp",
    "HPOResult",
    "Identity",
    "MinimizeOptions",
    "Sigmoid",
    "Transform",
    "TunedGradientDescent",
    "TunedMomentum",
    "get_transform",
    "hyper_cleaning",
    "load_checkpoint",
    "logistic",
    "minimize",
    "optimizer_tuning",
    "problems",
    "ridge",
    "save_checkpoint",
    "CrossValidation",
    "Restarts",
    "cross_validate",
    "fold_indices",
    "grid_starts",
    "minimize_many",
    "random_starts",
    "DerivedDynamics",
    "TunedAdam",
    "TunedSchedule",
]
