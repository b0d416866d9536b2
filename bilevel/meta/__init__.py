"""Meta-learning on top of the hypergradient core: tasks, models, algorithms, training.

Task samplers (:mod:`bilevel.meta.tasks`) produce episodes with a leading task axis;
models (:mod:`bilevel.meta.models`) are pure functions of flat parameter vectors
evaluated on a whole meta-batch at once.
"""

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
    "Episode",
    "FewShotDataset",
    "Omniglot",
    "QuadraticTasks",
    "Sinusoid",
    "TaskSampler",
    "load_omniglot",
]
