"""The meta-algorithm protocol and the algorithms given by a :class:`Specification`.

A meta-algorithm offers ``init``, ``meta_gradient``, ``adapt`` and ``evaluate``
(:class:`MetaAlgorithm`). A :class:`Specified` algorithm only says which
:class:`~bilevel.meta.algorithms.specification.Specification` of the core it is; the
meta-gradient, the test-time adaptation and the batched problem follow from it.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...api import HypergradResult, hypergrad
from ...backend import is_array, to_numpy
from ...problem import BilevelProblem
from ...validation import boolean, integer, option
from ..tasks import Episode
from .specification import Specification, batched_problem, unroll
from .step import MetaStep, join_results, mean_tasks

__all__ = ["AUTO_BYTES", "CHUNKS", "MetaAlgorithm", "Specified", "chunk_size", "head_model",
           "meta_model", "micro_batches", "specified", "split_part"]

PROTOCOL = ("init", "apply", "loss", "n_params")
OLD_HOOKS = {"inner_objective": "inner", "outer_objective": "outer", "init_map": "init",
             "adapted": "adapted"}


#: Default micro-batching of the meta-gradients: sized by :data:`AUTO_BYTES`.
CHUNKS = "auto"
#: Input bytes (support and query sets) per micro-batch under ``chunks="auto"``.
AUTO_BYTES = 256 * 1024


def _nbytes(x: Any) -> int:
    if x is None:
        return 0
    return math.prod(tuple(x.shape)) * int(getattr(x, "itemsize", 8))


def chunk_size(episode: Episode, chunks: int | str | None = CHUNKS) -> int:
    """Tasks per micro-batch: ``chunks`` itself, all ``T`` for ``None``, and for ``"auto"``
    as many tasks as fit :data:`AUTO_BYTES` of inputs (at least one).

    Activations grow with the inputs, so ``"auto"`` bounds the peak memory whatever ``T``
    (a 5-way 1-shot task of 15 queries of 28×28 float32 images, 251 kB, runs alone) while
    small tasks (sinusoids) still run in one batch.
    """
    T = episode.n_tasks
    if chunks is None:
        return T
    if chunks == "auto":
        arrays = (episode.x_support, episode.y_support, episode.x_query, episode.y_query)
        per_task = max(1, sum(_nbytes(a) for a in arrays) // max(T, 1))
        return max(1, AUTO_BYTES // per_task)
    return integer(1)("chunks", chunks)


def micro_batches(episode: Episode, chunks: int | str | None = CHUNKS) -> Iterator[Episode]:
    """The episode's tasks in consecutive micro-batches of :func:`chunk_size` tasks (views).

    One micro-batch is the episode itself. Info arrays whose leading axis is ``T`` are
    cut too; other entries are kept.
    """
    T = episode.n_tasks
    size = chunk_size(episode, chunks)
    if size >= T:
        yield episode
        return
    for start in range(0, T, size):
        part = slice(start, min(start + size, T))
        arrays = (None if a is None else a[part] for a in
                  (episode.x_support, episode.y_support, episode.x_query, episode.y_query))
        info = {k: v[part] if is_array(v) and len(v.shape) and int(v.shape[0]) == T else v
                for k, v in episode.info.items()}
        yield Episode(*arrays, info)


def meta_model(name: str, model: Any) -> Any:
    """Check: a model of the :mod:`bilevel.meta.models` protocol (``init``, ``apply``, ...)."""
    for attr in PROTOCOL:
        if not hasattr(model, attr):
            raise TypeError(
                f"{name} must follow the bilevel.meta model protocol (init, apply, loss, "
                f"n_params, ...); {type(model).__name__} has no {attr!r}"
            )
    return model


def specified(name: str, value: Any) -> Any:
    """Check: a meta-algorithm given by a specification (MAML, ANIL, iMAML, ...)."""
    if not isinstance(value, Specified):
        raise TypeError(
            f"{name} must be a hypergradient-configured algorithm (MAML, ANIL, IMAML, AMAML, "
            f"MemoryReduced), got {type(value).__name__}"
        )
    return value


def head_model(name: str, model: Any) -> Any:
    """Check: a protocol model with ``split["backbone"]`` and ``split["head"]``."""
    meta_model(name, model)
    split_part(model, "backbone")
    split_part(model, "head")
    return model


def split_part(model: Any, part: str) -> slice:
    """The slice ``model.split[part]`` of ``θ``, or a clear error when the model has none."""
    split = getattr(model, "split", None)
    if not isinstance(split, dict) or part not in split:
        raise ValueError(
            f"this algorithm needs a model with a {part!r} entry in model.split (a dict "
            f"name -> slice of θ); {type(model).__name__} has split={split!r}"
        )
    return split[part]


class MetaAlgorithm(abc.ABC):
    """Base class: a meta-learning algorithm over a model.

    * ``init(rng, backend)`` → initial meta-parameters;
    * ``meta_gradient(params, episode, drop_failed=True, chunks=CHUNKS)`` →
      ``(grad, step)``: the meta-gradient (shape of ``params``) and a
      :class:`~bilevel.meta.algorithms.MetaStep` (``step["loss"]``, ``step["success"]``,
      ``step["task_success"]``, work counts, ...); with ``drop_failed`` the
      meta-gradient averages only the tasks that passed; ``chunks`` tasks are
      differentiated at a time (``None``: the whole meta-batch; ``"auto"``:
      :func:`chunk_size`), with the same result;
    * ``adapt(params, x_support, y_support)`` → adapted model parameters ``(T, n)``;
    * ``evaluate(params, episode)`` → per-task post-adaptation query ``loss`` and
      ``accuracy`` (NumPy arrays of shape ``(T,)``).
    """

    name = "meta"
    model: Any

    def __init__(self, model: Any):
        self.model = meta_model("model", model)

    @property
    def n_params(self) -> int:
        """Length of the meta-parameter vector."""
        return int(self.model.n_params)

    def init(self, rng: np.random.Generator, backend: str | None = None) -> Any:
        """Initial meta-parameters (the model's initialization)."""
        return self.model.init(rng, backend)

    def model_params(self, params: Any) -> Any:
        """The model's ``θ`` inside the meta-parameters (their first ``model.n_params``)."""
        return params[: int(self.model.n_params)]

    @abc.abstractmethod
    def meta_gradient(self, params: Any, episode: Any, drop_failed: bool = True,
                      chunks: int | str | None = CHUNKS) -> tuple[Any, Any]:
        """Meta-gradient of the mean query loss over the episode's tasks, and diagnostics."""

    @abc.abstractmethod
    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """Task-adapted model parameters ``(T, n)`` from the support sets (test time)."""

    def evaluate(self, params: Any, episode: Any) -> dict[str, np.ndarray]:
        """Post-adaptation query loss and accuracy per task (NumPy arrays ``(T,)``).

        Adapts on the support set with :meth:`adapt` and evaluates the model on the query
        set. ``accuracy`` is present for classification models (``model.loss_name ==
        "cross_entropy"``) only.
        """
        theta_t = self.adapt(params, episode.x_support, episode.y_support)
        pred = self.model.apply(theta_t, episode.x_query)
        out = {"loss": to_numpy(self.model.loss(pred, episode.y_query)).astype(float)}
        if getattr(self.model, "loss_name", None) == "cross_entropy":
            out["accuracy"] = to_numpy(self.model.accuracy(pred, episode.y_query)).astype(float)
        return out


@dataclass(frozen=True)
class Specified(MetaAlgorithm):
    """A meta-algorithm defined by :meth:`specification`; the core does the rest.

    ``fast_oracles`` (keyword only, default ``True``): use the built-in models' analytic
    derivative oracles where they exist (:mod:`bilevel.meta.model_oracles`; equal to
    autograd's to rounding, several times faster); ``False`` traces with autograd.
    ``check_finite`` (keyword only, default ``True``): the batched problem checks every
    oracle's result for NaN/inf (``BilevelProblem(check_finite=...)``). On a GPU the checks
    stay on the device and are read once per loop; ``False`` skips them (a NaN then shows
    only in the meta-gradient and the loss).

    The meta-gradient is ``λ'(θ)ᵀ (1/|S|) Σ_{i∈S} ∇_{λ_i} f_i`` from one batched
    :func:`bilevel.hypergrad` call with the specification's dynamics and method; ``S`` are
    the tasks that passed their diagnostics when ``drop_failed`` and the method reports
    per-task flags (``problem_success`` of :class:`bilevel.Implicit`), else all tasks.
    """

    fast_oracles: bool = option(True, check=boolean, kw_only=True)
    check_finite: bool = option(True, check=boolean, kw_only=True)

    @abc.abstractmethod
    def specification(self) -> Specification:
        """The algorithm as a specification of the core."""

    def _spec(self) -> Specification:
        """:meth:`specification` with this algorithm's choice of oracles."""
        spec = self.specification()
        if spec.fast_oracles == self.fast_oracles:
            return spec
        return replace(spec, fast_oracles=self.fast_oracles)

    def __getattr__(self, name: str) -> Any:
        """The hooks of the former base class, read from the specification (deprecated)."""
        field = OLD_HOOKS.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(f"{type(self).__name__}.{name} is deprecated: use "
                      f".specification().{field}", DeprecationWarning, stacklevel=2)
        return getattr(self.specification(), field)

    def _complete(self, **defaults: Any) -> None:
        """Fill the options left ``None`` with ``defaults``; check the specification builds.

        For the ``__post_init__`` of frozen dataclass algorithms: the defaults that depend
        on other options (``Implicit(solver, damping)``) are stored, so the ``repr`` and
        the attributes show what runs.
        """
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        self.specification()

    @property
    def n_params(self) -> int:
        """Length of the meta-parameter vector."""
        return int(self.specification().n_params)

    @property
    def dynamics(self) -> Any:
        """The inner dynamics of the specification."""
        return self.specification().dynamics

    def problem(self, params: Any, x_support: Any, y_support: Any, x_query: Any = None,
                y_query: Any = None) -> tuple[BilevelProblem, Any, Any]:
        """The batched bilevel problem of a meta-batch: ``(problem, λ, w₀)``."""
        return self._problem(self._spec(), params, x_support, y_support, x_query,
                             y_query)

    def _problem(self, spec: Specification, params: Any,
                 *arrays: Any) -> tuple[BilevelProblem, Any, Any]:
        problem, lam, w0 = batched_problem(spec, params, Episode(*arrays), type(self).__name__)
        problem.check_finite = self.check_finite
        return problem, lam, w0

    def _hypergradient(self, spec: Specification, params: Any, episode: Any) -> HypergradResult:
        problem, lam, w0 = self._problem(spec, params, episode.x_support, episode.y_support,
                                         episode.x_query, episode.y_query)
        return hypergrad(problem, lam, w0, dynamics=spec.dynamics, method=spec.method,
                         on_failure="ignore")

    def hypergradient(self, params: Any, episode: Any) -> HypergradResult:
        """The batched :class:`bilevel.HypergradResult` of a meta-batch (per-task λ-grads).

        Failures are reported in the result (``success``, ``message``,
        ``problem_success``), not warned about.
        """
        return self._hypergradient(self._spec(), params, episode)

    def meta_gradient(self, params: Any, episode: Any, drop_failed: bool = True,
                      chunks: int | str | None = CHUNKS) -> tuple[Any, MetaStep]:
        """Meta-gradient ``λ'(θ)ᵀ (1/|S|) Σ_{i∈S} ∇_{λ_i} f_i`` and its :class:`MetaStep`.

        The meta-batch runs in micro-batches of ``chunks`` tasks (``None``: all at once;
        ``"auto"``: sized by the inputs, :func:`chunk_size`), so the peak memory is one
        micro-batch's plus ``O(T·(m + n))`` for the per-task results, whatever the
        meta-batch size ``T``. The per-task gradients are summed in
        task order (:func:`~bilevel.meta.algorithms.step.sum_tasks`): the meta-gradient
        is the same bit for bit for every ``chunks`` (a micro-batch that fails as a whole
        fails only its own tasks).
        """
        spec = self._spec()
        results, sizes = [], []
        parts = list(micro_batches(episode, chunks))
        for part in parts:
            res = self._hypergradient(spec, params, part)
            # a micro-batch's deferred diagnostics would keep its problem alive until the
            # join (memory growing with T): computed now when there are several
            results.append(res.settle() if len(parts) > 1 else res)
            sizes.append(part.n_tasks)
        step = MetaStep.of(join_results(results, sizes))
        mask = step.task_success if drop_failed else None
        grad = spec.lam.pullback(mean_tasks(step.result.grad, mask), params)
        return grad, replace(step, grad=grad)

    def adapt(self, params: Any, x_support: Any, y_support: Any) -> Any:
        """Test-time adaptation: the inner dynamics on the inner objective, ``(T, n)``."""
        spec = self._spec()
        problem, lam, w0 = self._problem(spec, params, x_support, y_support)
        return spec.adapted(unroll(spec, problem, lam, w0), lam)
