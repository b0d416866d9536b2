"""N-way few-shot classification episodes from any labelled arrays.

A task draws ``ways`` classes of one split, relabels them ``0 … ways−1`` in a random
order, and draws ``n_shot + n_query`` distinct examples of each class: the first
``n_shot`` go to the support set, the rest to the query set, so the two never overlap.
Classes are split into disjoint train/validation/test sets once, by a deterministic
shuffle (``split_seed``), so no class seen in meta-training appears at meta-test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bilevel import backend as _backend

from .base import Episode, TaskSampler, check_count

__all__ = ["FewShotDataset", "ClassSampler", "partition"]

SPLITS = ("train", "val", "test", "all")


def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    try:
        f = tuple(float(v) for v in fractions)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"fractions must be three numbers (train, val, test), got {fractions!r}"
        ) from err
    if len(f) != 3 or min(f) < 0 or not np.isclose(sum(f), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {fractions!r}"
        )
    return f  # type: ignore[return-value]


def partition(n_units: int, split: str, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Indices of the units (classes, characters, alphabets) that belong to ``split``.

    The units ``0 … n_units−1`` are shuffled by ``numpy.random.default_rng(seed)`` and cut at
    ``round(n_units·(f_train, f_train + f_val))``; ``"all"`` keeps every unit. The three
    splits are disjoint and cover all units. Returns sorted indices.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return np.arange(n_units)
    f = _check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n_units)
    cut1 = int(round(n_units * f[0]))
    cut2 = int(round(n_units * (f[0] + f[1])))
    part = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}[split]
    return np.sort(part)


class ClassSampler(TaskSampler):
    """Episode sampling shared by :class:`FewShotDataset` and the Omniglot loader.

    Subclasses call :meth:`_set_classes` with, for each class of the split, the indices of
    its examples, and implement :meth:`_gather` to turn example indices into inputs.
    Sampling is vectorized over tasks: O(T·(C + ways·m)) random keys for C classes of at
    most m examples, plus the gathered inputs.
    """

    loss = "cross_entropy"

    def _configure(self, ways: int, n_shot: int, n_query: int, split: str) -> None:
        self.ways = check_count("ways", ways, 2)
        self.n_shot = check_count("n_shot", n_shot)
        self.n_query = check_count("n_query", n_query)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split

    def _set_classes(self, members: list[np.ndarray]) -> None:
        """Register the example indices of each class (class ``c`` ↦ ``members[c]``)."""
        need = self.n_shot + self.n_query
        counts = np.array([len(m) for m in members], dtype=np.int64)
        if len(members) < self.ways:
            raise ValueError(
                f"the {self.split!r} split has {len(members)} classes, fewer than ways="
                f"{self.ways}; use fewer ways or other split fractions"
            )
        small = np.flatnonzero(counts < need)
        if small.size:
            raise ValueError(
                f"n_shot + n_query = {need} examples per class are needed, but "
                f"{small.size} classes of the {self.split!r} split have fewer (smallest: "
                f"{counts.min()}); lower n_shot or n_query"
            )
        table = np.zeros((len(members), counts.max()), dtype=np.int64)
        for c, m in enumerate(members):
            table[c, : len(m)] = m
        self._table, self._counts = table, counts

    @property
    def n_classes(self) -> int:
        """Number of classes in this sampler's split."""
        return int(self._counts.size)

    def _gather(self, classes: np.ndarray, examples: np.ndarray) -> np.ndarray:
        """Inputs ``(T, ways, n, ...)`` of the examples ``(T, ways, n)`` of ``classes``."""
        return self._x[examples]

    def _sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        c, ways, need = self.n_classes, self.ways, self.n_shot + self.n_query
        classes = np.argsort(rng.random((n_tasks, c)), axis=1)[:, :ways]
        counts = self._counts[classes]
        keys = rng.random((n_tasks, ways, self._table.shape[1]))
        keys[np.arange(self._table.shape[1]) >= counts[..., None]] = np.inf
        picks = np.argsort(keys, axis=-1)[..., :need]
        examples = self._table[classes[..., None], picks]
        x = self._gather(classes, examples).astype(self.dtype, copy=False)
        tail = x.shape[3:]
        s = self.n_shot
        x_s = x[:, :, :s].reshape((n_tasks, ways * s) + tail)
        x_q = x[:, :, s:].reshape((n_tasks, ways * self.n_query) + tail)
        y_s = np.broadcast_to(np.repeat(np.arange(ways), s), (n_tasks, ways * s)).copy()
        y_q = np.broadcast_to(
            np.repeat(np.arange(ways), self.n_query), (n_tasks, ways * self.n_query)
        ).copy()
        info = {"classes": self._class_ids[classes], "examples": examples}
        return Episode(x_s, y_s, x_q, y_q, info)


class FewShotDataset(ClassSampler):
    """``ways``-way ``n_shot``-shot classification tasks from labelled arrays ``(X, y)``.

    Parameters
    ----------
    X : array, shape ``(N, ...)``
        Inputs (NumPy or CuPy; kept on the host and moved per episode).
    y : array of int, shape ``(N,)``
        Class labels.
    ways, n_shot, n_query
        Classes per task, support and query examples per class.
    split
        ``"train"``, ``"val"``, ``"test"`` (disjoint class sets) or ``"all"``.
    fractions, split_seed
        Class fractions of the three splits and the seed of their shuffle.
    backend
        ``"numpy"`` or ``"cupy"`` for the episodes (default: the current backend).
    dtype
        Float dtype of the inputs (default: ``X``'s dtype if floating, else float32).

    Episodes: ``x_support (T, ways·n_shot, ...)``, ``y_support (T, ways·n_shot)`` int labels
    (class-major order: ``n_shot`` examples of label 0, then label 1, …), likewise the
    query; ``info["classes"] (T, ways)`` holds the original labels of task labels
    ``0 … ways−1`` and ``info["examples"] (T, ways, n_shot + n_query)`` the row indices.
    """

    def __init__(
        self,
        X: Any,
        y: Any,
        ways: int = 5,
        n_shot: int = 1,
        n_query: int = 15,
        split: str = "train",
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        backend: str | None = None,
        dtype: Any = None,
    ):
        self._configure(ways, n_shot, n_query, split)
        x = np.asarray(_backend.to_numpy(X))
        labels = np.asarray(_backend.to_numpy(y))
        if x.ndim < 1 or labels.ndim != 1 or x.shape[0] != labels.shape[0]:
            raise ValueError(
                f"X must have shape (N, ...) and y shape (N,), got X {x.shape} and y {labels.shape}"
            )
        if labels.dtype.kind not in "iub":
            raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}")
        if dtype is None:
            dtype = x.dtype if x.dtype.kind == "f" else np.float32
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
        self._x = x
        all_ids, inverse = np.unique(labels, return_inverse=True)
        keep = partition(all_ids.size, split, fractions, split_seed)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(all_ids.size + 1))
        self._class_ids = all_ids[keep]
        self._set_classes([order[bounds[c] : bounds[c + 1]] for c in keep])
        self._set_backend(backend)
