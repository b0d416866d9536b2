"""Meta-learning on top of the hypergradient core: tasks, models, algorithms, training.

Task samplers (:mod:`bilevel.meta.tasks`) produce episodes with a leading task axis;
models (:mod:`bilevel.meta.models`) are pure functions of flat parameter vectors
evaluated on a whole meta-batch at once; algorithms (:mod:`bilevel.meta.algorithms`)
are specifications of the hypergradient core (MAML is ``Reverse`` through gradient
descent, iMAML is ``Implicit`` on a proximal inner problem, ...);
:mod:`bilevel.meta.train` runs the outer loop. Outer optimizers (Adam, SGD) live in
:mod:`bilevel.optim`, shared with the hyperparameter-optimization layer.
"""

from .models import MLP, Conv4, ConvCoLearner, Model, QuadraticModel
from .omniglot import load_omniglot
from .tasks import (
    Episode,
    FewShotDataset,
    Omniglot,
    QuadraticTasks,
    Sinusoid,
    TaskSampler,
)

__all__ = [
    "Conv4",
    "Episode",
    "FewShotDataset",
    "MLP",
    "ConvCoLearner",
    "Model",
    "Omniglot",
    "QuadraticModel",
    "QuadraticTasks",
    "Sinusoid",
    "TaskSampler",
    "load_omniglot",
]

from . import algorithms as _algorithms
from . import train as _train
from .algorithms import *  # noqa: F403
from .train import *  # noqa: F403

__all__ += list(_algorithms.__all__) + list(_train.__all__)
