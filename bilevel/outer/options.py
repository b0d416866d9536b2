"""Option objects shared by the outer loops, and the mapping of old keyword arguments.

:class:`Checkpointing` and :class:`Monitoring` are small frozen dataclasses validated once
(:mod:`bilevel.validation`) and passed to :func:`bilevel.hpo.minimize` and
:func:`bilevel.meta.train`. :func:`legacy_keywords` turns the flat keyword arguments of
earlier versions (``checkpoint=``, ``progress=``, ...) into these objects with a
``DeprecationWarning`` that shows the new spelling.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from typing import Any

from ..validation import Validated, integer, one_of, option, optional
from .memory import MODES

__all__ = ["Checkpointing", "Monitoring", "legacy_keywords"]


def flag(name: str, value: Any) -> bool:
    """Check: a bool (NumPy bools accepted)."""
    if value not in (True, False):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return os.fspath(value)
    except TypeError as err:
        raise TypeError(f"{name} must be a path or None, got {type(value).__name__}") from err


@dataclass(frozen=True)
class Checkpointing(Validated):
    """Where and how often the outer loop writes its checkpoint, and whether it resumes.

    Parameters
    ----------
    path : path, optional
        ``.npz`` file (see :mod:`bilevel.outer.checkpoint`), written atomically every
        ``every`` steps, at the end and when the loop stops early. None: no checkpoint.
    every : int
        Steps between writes (≥ 1).
    resume : bool
        When ``path`` exists, continue from it: finished steps are not redone, and the run
        gives bit-identical results to an uninterrupted one. A checkpoint written under
        another configuration is refused with a message saying how to start afresh.
    """

    path: str | None = option(None, check=_path)
    every: int = option(1, check=integer(1))
    resume: bool = option(True, check=flag)


@dataclass(frozen=True)
class Monitoring(Validated):
    """Progress bar and memory measurement of an outer loop.

    Parameters
    ----------
    progress : bool, optional
        tqdm progress bar, drawn only when stderr is a terminal (None or True); False: never.
    memory : {"auto", "peak", "tracemalloc", "pool", "rss", None}
        Meter of the ``peak_memory`` history column (:mod:`bilevel.outer.memory`):
        ``"peak"`` is exact (tracemalloc on NumPy, slowing it several-fold; the CuPy pool on
        CuPy), ``"auto"`` free (process peak RSS on NumPy, the pool on CuPy), None off.
    memory_every : int
        Measure every ``memory_every`` steps (0: never); unmeasured steps record NaN.
    """

    progress: bool | None = option(None, check=optional(flag))
    memory: str | None = option("auto", check=one_of(MODES))
    memory_every: int = option(1, check=integer(0))

    def meter(self, step: int) -> str | None:
        """The meter for outer step ``step`` (None when this step is not measured)."""
        if self.memory is None or not self.memory_every or step % self.memory_every:
            return None
        return self.memory


def legacy_keywords(where: str, legacy: dict[str, Any], table: dict[str, tuple[str, str]],
                    current: dict[str, Any]) -> dict[str, Any]:
    """Fold old keyword arguments into option objects, warning ``DeprecationWarning``.

    Parameters
    ----------
    where : str
        Name of the function, for messages.
    legacy : dict
        The old keyword arguments received (``**kwargs``).
    table : dict
        ``old name -> (argument, field)``: the value goes to ``field`` of the option
        object passed as ``argument``; a field ``""`` means the argument was renamed.
    current : dict
        ``argument -> value`` as passed (option objects already defaulted).

    Returns
    -------
    dict
        ``current`` updated with the old keywords' values.
    """
    out = dict(current)
    for old, value in legacy.items():
        if old not in table:
            raise TypeError(f"{where}() got an unexpected keyword argument {old!r}")
        arg, name = table[old]
        if not name:
            if out[arg] is not None:
                raise TypeError(f"{where}() got both {arg}= and its old name {old}=; pass {arg}=")
            out[arg] = value
            new = f"{arg}=..."
        else:
            out[arg] = replace(out[arg], **{name: value})
            new = f"{arg}={type(out[arg]).__name__}({name}=...)"
        warnings.warn(f"{where}({old}=...) is deprecated; pass {new}", DeprecationWarning,
                      stacklevel=3)
    return out
