"""Checks of :func:`bilevel.hypergrad`'s inputs: NaN/inf naming, validation once per signature.

:func:`bad_inputs` names the inputs (``lam``, ``w0``, entries of the data tree) that hold
NaN or inf, for the message of a failed result. :func:`validate_once` runs
:meth:`BilevelProblem.validate` (an evaluation of ``g`` and ``f`` with shape and
finiteness checks) once per *signature* (the objectives and the shapes, dtypes and array
types of the inputs) and afterwards only checks that the inputs are finite: the fixed
per-call cost of a hypergradient stays a few sums, not two objective evaluations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import namespace, unbox
from .nonfinite import NonFiniteError, all_finite, has_box
from .problem import BilevelProblem

__all__ = ["bad_inputs", "validate_once"]


_VALIDATED: OrderedDict[tuple, tuple] = OrderedDict()
"""Signatures whose objectives passed :meth:`BilevelProblem.validate`, most recent last; each
value holds the objectives, so the ids in its key stay theirs."""
_VALIDATED_MAX = 32


def validate_once(problem: BilevelProblem, lam: Any, w0: Any) -> None:
    """:meth:`BilevelProblem.validate` once per signature, then only the inputs' finiteness.

    The signature (:func:`_signature`) is the pair of objectives and the shapes, dtypes and
    array types of ``w0``, λ and every data entry: once ``g`` and ``f`` have returned finite
    values of the right shape for it, a later call with the same signature checks only that
    ``w0``, λ and the data are finite (one sum and one host read per array, no temporary
    arrays, no evaluation of ``g`` or ``f``). A NaN that appears later still fails the
    result, at the step that produced it. The table holds up to :data:`_VALIDATED_MAX`
    pairs of objectives (and what they reference).
    """
    problem.check_inputs(w0, lam)
    key = _signature(problem, lam, w0)
    if key is None:
        problem.validate(w0, lam)
        return
    if key in _VALIDATED:
        _VALIDATED.move_to_end(key)
        if problem.check_finite and bad_inputs(problem, lam, w0, _finite_sum):
            raise NonFiniteError("input", "an input contains NaN or inf")
        return
    problem.validate(w0, lam)
    _VALIDATED[key] = (problem.inner, problem.outer)
    if len(_VALIDATED) > _VALIDATED_MAX:
        _VALIDATED.popitem(last=False)


def _signature(problem: BilevelProblem, lam: Any, w0: Any) -> tuple | None:
    """What :meth:`BilevelProblem.validate` depends on besides values; ``None`` when it cannot
    be told (traced inputs, data that is not a tree of arrays)."""
    if has_box((lam, w0)):
        return None
    leaves = _leaf_signatures(problem.data, 0)
    if leaves is None:
        return None
    return (_callable_key(problem.inner), _callable_key(problem.outer), problem.check_finite,
            _array_signature(lam), _array_signature(w0), leaves)


def _array_signature(x: Any) -> tuple:
    if type(x) is np.ndarray:  # NumPy's dtypes hash (its str() costs microseconds)
        return np.ndarray, x.shape, x.dtype
    return type(x), tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))


def _leaf_signatures(data: Any, depth: int) -> tuple | None:
    """Types, shapes and dtypes of a data tree's leaves; ``None`` for anything else."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return (data,)
    children = _children(data, "")
    if children is None:
        return _array_signature(data) if hasattr(data, "shape") and not has_box(data) else None
    if depth > 8:
        return None
    out = [type(data)]
    for label, value in children:
        leaf = _leaf_signatures(value, depth + 1)
        if leaf is None:
            return None
        out.append((label, leaf))
    return tuple(out)


def _callable_key(fn: Any) -> Any:
    """A hashable stand-in of an objective: its ``id``, or for a :func:`functools.partial`
    (rebuilt on every call by the meta-learning algorithms) its function and arguments."""
    if isinstance(fn, functools.partial):
        args = tuple(a if isinstance(a, (str, int, float, bool)) else id(a) for a in fn.args)
        kw = tuple(sorted((k, v if isinstance(v, (str, int, float, bool)) else id(v))
                          for k, v in fn.keywords.items()))
        return _callable_key(fn.func), args, kw
    return id(fn)


def bad_inputs(problem: BilevelProblem, lam: Any, w0: Any,
                finite: Callable[[Any], bool] = all_finite) -> list[str]:
    """Names of the inputs holding NaN or inf: ``lam``, ``w0``, ``data[...]`` entries."""
    pairs = (("lam", lam),) if w0 is lam else (("lam", lam), ("w0", w0))  # w0 = init(λ) = λ
    bad = [name for name, x in pairs if not finite(x)]
    if w0 is lam and bad:
        bad.append("w0")
    return bad + _bad_data(problem.data, "data", finite)


def _bad_data(data: Any, name: str, finite: Callable[[Any], bool] = all_finite) -> list[str]:
    """Entries of a data pytree (arrays in dicts, tuples, lists, dataclasses) with NaN or inf."""
    children = _children(data, name)
    if children is not None:
        return [bad for label, value in children for bad in _bad_data(value, label, finite)]
    kind = getattr(getattr(unbox(data), "dtype", None), "kind", None)
    return [name] if kind in ("f", "c") and not finite(data) else []


def _finite_sum(x: Any) -> bool:
    """Whether ``x`` is finite, from its sum (no temporary of the size of ``x``); the full
    test only when the sum is not finite (a NaN or inf, or an overflow of finite values)."""
    x = unbox(x)
    if getattr(getattr(x, "dtype", None), "kind", None) not in ("f", "c"):
        return all_finite(x)
    xp = np if type(x) is np.ndarray else namespace(x)
    return bool(xp.isfinite(xp.sum(x))) or all_finite(x)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _children(data: Any, name: str) -> list[tuple[str, Any]] | None:
    """``(label, value)`` of the entries of a container, ``None`` for a leaf."""
    if isinstance(data, dict):
        return [(f"{name}[{k!r}]", v) for k, v in data.items()]
    fields = getattr(data, "_fields", None)  # a named tuple
    if fields is None and dataclasses.is_dataclass(data) and not isinstance(data, type):
        fields = _field_names(type(data))  # e.g. a meta-learning Episode
    if fields is not None:
        return [(f"{name}.{k}", getattr(data, k)) for k in fields]
    if isinstance(data, (tuple, list)):
        return [(f"{name}[{i}]", v) for i, v in enumerate(data)]
    return None
