"""Meta-learning on top of the hypergradient core: tasks, models, algorithms, training.

Task samplers (:mod:`bilevel.meta.tasks`) produce episodes with a leading task axis;
models (:mod:`bilevel.meta.models`) are pure functions of flat parameter vectors
evaluated on a whole meta-batch at once; algorithms (:mod:`bilevel.meta.algorithms`)
configure the hypergradient core (MAML is ``Reverse`` through gradient descent, iMAML is
``Implicit`` on a proximal inner problem, ...); :mod:`bilevel.meta.train` runs the outer
loop. The algorithm, optimizer and training modules are re-exported when present; an
error inside one of them is raised, not hidden.
"""

from importlib.util import find_spec

from .models import MLP, Conv4, Model, QuadraticModel
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
    "Model",
    "Omniglot",
    "QuadraticModel",
    "QuadraticTasks",
    "Sinusoid",
    "TaskSampler",
    "load_omniglot",
]

if find_spec(f"{__name__}.algorithms") is not None:
    from . import algorithms as _algorithms
    from .algorithms import *  # noqa: F403

    __all__ += list(_algorithms.__all__)
if find_spec(f"{__name__}.optim") is not None:
    from . import optim as _optim
    from .optim import *  # noqa: F403

    __all__ += list(_optim.__all__)
if find_spec(f"{__name__}.train") is not None:
    from . import train as _train
    from .train import *  # noqa: F403

    __all__ += list(_train.__all__)
