"""Task samplers for meta-learning: episodes of support and query sets.

``sampler.sample(n_tasks, rng) -> Episode`` with ``rng`` a :class:`numpy.random.Generator`;
every sampler has ``loss`` (``"mse"``/``"cross_entropy"``), ``n_shot``, ``n_query`` and
``backend``. Families: :class:`Sinusoid` (MAML regression), :class:`QuadraticTasks`
(closed forms), A-MAML's :class:`Alpine2D`, :class:`CosMixture` and :class:`CosMixture2D`
(:class:`FunctionFamily`), :class:`FewShotDataset` (any labelled arrays) and
:class:`Omniglot`.
"""

from .base import Episode, TaskSampler
from .fewshot import ClassSampler, FewShotDataset, partition
from .omniglot import Omniglot
from .synthetic import (
    Alpine2D,
    CosMixture,
    CosMixture2D,
    FunctionFamily,
    QuadraticTasks,
    Sinusoid,
)

__all__ = [
    "Alpine2D",
    "CosMixture",
    "CosMixture2D",
    "FunctionFamily",
    "ClassSampler",
    "Episode",
    "FewShotDataset",
    "Omniglot",
    "QuadraticTasks",
    "Sinusoid",
    "TaskSampler",
    "partition",
]
