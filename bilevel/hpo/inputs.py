"""Argument checks shared by the problem factories of :mod:`bilevel.hpo.problems`.

Each raises with a message naming the argument and the expected shape or dtype.
"""

from __future__ import annotations

from typing import Any

from ..backend import is_array, namespace

__all__ = ["matrix", "pair", "same_features", "vector"]


def matrix(name: str, X: Any) -> Any:
    """``X`` when it is a 2-D floating array ``(samples, features)``."""
    if not is_array(X) or len(X.shape) != 2:
        shape = tuple(getattr(X, "shape", ())) if is_array(X) else type(X).__name__
        raise ValueError(f"{name} must be a 2-D float array (samples, features), got {shape}")
    if not namespace(X).isdtype(X.dtype, "real floating"):
        raise TypeError(f"{name} must have a floating dtype, got {X.dtype}")
    return X


def vector(name: str, y: Any, n: int, kind: str) -> Any:
    """``y`` when it is 1-D of length ``n`` with a floating (``kind="f"``) or integer dtype."""
    if not is_array(y) or tuple(y.shape) != (n,):
        shape = tuple(getattr(y, "shape", ())) if is_array(y) else type(y).__name__
        raise ValueError(f"{name} must be a 1-D array of length {n} (one per sample), got {shape}")
    want = {"f": "floating", "i": "integer"}[kind]
    if namespace(y).isdtype(y.dtype, "integral") != (kind == "i"):
        raise TypeError(f"{name} must have an {want} dtype, got {y.dtype}")
    return y


def pair(names: tuple[str, str], X: Any, y: Any, kind: str) -> tuple[Any, Any]:
    """``(X, y)`` checked as a data matrix and its per-sample labels or targets."""
    X = matrix(names[0], X)
    return X, vector(names[1], y, X.shape[0], kind)


def same_features(X: Any, Xv: Any) -> None:
    """Raise unless training and validation data have the same number of features."""
    if X.shape[1] != Xv.shape[1]:
        raise ValueError(
            f"X_val has {Xv.shape[1]} features but X_train has {X.shape[1]}; they must match"
        )
