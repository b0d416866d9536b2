"""Episodes and the sampler protocol shared by every task family.

An :class:`Episode` is a meta-batch of ``T`` tasks, each with a support set (used by the
inner adaptation, ``L̂_i``) and a query set (used by the outer objective, ``L_i``).
Every array carries the task axis first, so models and solvers process the whole
meta-batch in one vectorized call.

A sampler is any object with ``sample(n_tasks, rng) -> Episode`` and the attributes
``loss`` (``"mse"`` or ``"cross_entropy"``), ``n_shot``, ``n_query`` and ``backend``;
``rng`` is a :class:`numpy.random.Generator` owned by the caller, so the trainer controls
reproducibility and can checkpoint ``rng.bit_generator.state``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bilevel import backend as _backend
from bilevel.validation import integer

__all__ = ["Episode", "TaskSampler", "check_rng", "check_count"]

LOSSES = ("mse", "cross_entropy")


def check_rng(rng: Any) -> np.random.Generator:
    """Return ``rng`` if it is a :class:`numpy.random.Generator`, else raise ``TypeError``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), got "
            f"{type(rng).__name__}"
        )
    return rng


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int at least ``minimum``, or a ``ValueError`` naming ``name``."""
    return integer(minimum)(name, value)


def _same_points(part: str, x: tuple[int, ...] | None, y: tuple[int, ...] | None) -> None:
    if x is not None and x[1] != y[1]:
        raise ValueError(
            f"x_{part} {x} and y_{part} {y} must have the same number of points on axis 1"
        )


@dataclass
class Episode:
    """A meta-batch of ``T`` few-shot tasks.

    Attributes
    ----------
    x_support : array, shape ``(T, S, ...)``
        Support inputs of each task.
    y_support : array, shape ``(T, S)`` or ``(T, S, d)``
        Support targets: integer class labels ``(T, S)`` for classification, float
        targets ``(T, S, d)`` for regression.
    x_query : array, shape ``(T, Q, ...)``, optional
        Query inputs (``None`` where only the support sets are known, e.g. test-time
        adaptation).
    y_query : array, shape ``(T, Q)`` or ``(T, Q, d)``, optional
        Query targets.
    info : dict
        Task parameters (arrays with the task axis first, on the episode's backend) and
        bookkeeping, e.g. ``amplitude``/``phase`` (sinusoids), ``P, a, Q, b`` (quadratic
        tasks), ``classes`` (few-shot classification), ``split``, and per-batch caches of
        the algorithms (``support_features``).
    """

    x_support: Any
    y_support: Any
    x_query: Any = None
    y_query: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.x_query is None) != (self.y_query is None):
            raise ValueError("Episode needs both x_query and y_query, or neither")
        shapes = {
            name: tuple(getattr(self, name).shape)
            for name in ("x_support", "y_support", "x_query", "y_query")
            if getattr(self, name) is not None
        }
        t = {s[0] if s else None for s in shapes.values()}
        if len(t) != 1 or None in t:
            raise ValueError(
                "Episode arrays must share the leading task axis T; got shapes "
                + ", ".join(f"{k}={v}" for k, v in shapes.items())
            )
        for part in ("support", "query"):
            _same_points(part, shapes.get(f"x_{part}"), shapes.get(f"y_{part}"))

    @property
    def n_tasks(self) -> int:
        """The meta-batch size ``T``."""
        return int(self.x_support.shape[0])

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``: where the arrays live."""
        return _backend.name_of(self.x_support)

    def task(self, i: int) -> Episode:
        """Task ``i`` alone, as an episode with ``T = 1`` (views, no copy).

        Info arrays whose leading axis is ``T`` are sliced too; other entries are kept.
        """
        t = self.n_tasks
        if not -t <= i < t:
            raise IndexError(f"task index {i} out of range for an episode of {t} tasks")
        i = i % t
        sl = slice(i, i + 1)

        def cut(v: Any) -> Any:
            if _backend.is_array(v) and v.ndim and v.shape[0] == t:
                return v[sl]
            return v

        return Episode(
            *(None if a is None else a[sl]
              for a in (self.x_support, self.y_support, self.x_query, self.y_query)),
            {k: cut(v) for k, v in self.info.items()},
        )

    def to_backend(self, name: str) -> Episode:
        """A copy of the episode with every array moved to backend ``name``."""
        moved = _backend.to_backend(
            [self.x_support, self.y_support, self.x_query, self.y_query, self.info], name
        )
        return Episode(*moved)


class TaskSampler(ABC):
    """Base class of episode samplers (the sampler protocol, with shared validation).

    Subclasses set ``loss``, ``n_shot``, ``n_query``, ``backend`` and implement
    :meth:`_sample`, which returns NumPy arrays; :meth:`sample` validates its arguments
    and moves the episode to ``backend``.
    """

    loss: str = "mse"
    n_shot: int
    n_query: int
    backend: str = "numpy"

    def _set_backend(self, backend: str | None) -> None:
        name = _backend.current() if backend is None else backend
        if name not in ("numpy", "cupy"):
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")
        self.backend = name

    def sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        """Draw a meta-batch of ``n_tasks`` independent tasks.

        Parameters
        ----------
        n_tasks
            Meta-batch size ``T``.
        rng
            Random generator; the episode is a deterministic function of its state.

        Returns
        -------
        Episode
            Arrays with leading axis ``T`` on this sampler's backend.
        """
        n_tasks = check_count("n_tasks", n_tasks)
        check_rng(rng)
        episode = self._sample(n_tasks, rng)
        if self.backend != "numpy":
            episode = episode.to_backend(self.backend)
        return episode

    @abstractmethod
    def _sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        """Draw ``n_tasks`` tasks as NumPy arrays (the backend move is done by ``sample``)."""
