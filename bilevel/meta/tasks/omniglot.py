"""Omniglot few-shot classification episodes (MAML protocol)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..omniglot import load_omniglot
from .fewshot import ClassSampler, partition

__all__ = ["Omniglot"]

SPLIT_BY = ("character", "alphabet")


class Omniglot(ClassSampler):
    """``ways``-way ``n_shot``-shot Omniglot tasks read from local archives or folders.

    Classes are characters, each seen at the rotations 0°, 90°, 180° and 270° as four
    distinct classes (``rotations=True``, as in MAML; Santoro et al. 2016). All rotations
    of one character belong to the same split, and the splits are disjoint: the units
    (characters, or whole alphabets with ``split_by="alphabet"``) are shuffled by
    ``split_seed`` and cut by ``fractions`` (see :func:`bilevel.meta.tasks.partition`).

    Parameters
    ----------
    path
        Zip archive, or directory with archives and/or extracted folders
        (:func:`bilevel.meta.omniglot.load_omniglot`).
    ways, n_shot, n_query
        Classes per task, support and query images per class (at most 20 in total: each
        character has 20 drawings).
    split
        ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    rotations
        Add the 90°, 180°, 270° rotations as extra classes.
    split_by, fractions, split_seed
        Unit and proportions of the class split, and its shuffle seed.
    image_size
        Image side (28).
    backend, dtype
        Backend of the episodes and float dtype of the images (float32).

    Episodes: ``x_* (T, ways·n, 1, s, s)`` (NCHW with a task axis, strokes 1 on a 0
    background), ``y_* (T, ways·n)`` int labels in class-major order;
    ``info["classes"] (T, ways)`` is the global class id ``4·character + quarter_turns``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        ways: int = 5,
        n_shot: int = 1,
        n_query: int = 15,
        split: str = "train",
        rotations: bool = True,
        split_by: str = "character",
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        image_size: int = 28,
        backend: str | None = None,
        dtype: Any = "float32",
    ):
        self._configure(ways, n_shot, n_query, split)
        if split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
        data = load_omniglot(path, image_size)
        self.path, self.image_size, self.rotations = path, image_size, bool(rotations)
        alphabet_of = np.array([data.alphabets.index(a) for a, _ in data.characters])
        if split_by == "character":
            chars = partition(len(data.characters), split, fractions, split_seed)
        else:
            alphabets = partition(len(data.alphabets), split, fractions, split_seed)
            chars = np.flatnonzero(np.isin(alphabet_of, alphabets))
        self.characters = tuple(data.characters[c] for c in chars)
        self.alphabets = tuple(sorted({a for a, _ in self.characters}))
        turns = np.arange(4) if self.rotations else np.zeros(1, dtype=np.int64)
        self._char = np.repeat(chars, turns.size)
        self._turns = np.tile(turns, chars.size)
        self._class_ids = 4 * self._char + self._turns
        self._x = data.images
        per_char = data.members()
        self._set_classes([per_char[c] for c in self._char])
        self._set_backend(backend)

    def _gather(self, classes: np.ndarray, examples: np.ndarray) -> np.ndarray:
        """Images ``(T, ways, n, 1, s, s)``, each rotated by its class's quarter turns."""
        x = self._x[examples]
        turns = self._turns[classes]
        for k in (1, 2, 3):
            mask = turns == k
            if mask.any():
                x[mask] = np.rot90(x[mask], k, axes=(-2, -1))
        return x[:, :, :, None]
