"""Command-line usage errors: a one-line argument parser and checks worded in flags.

The ``bilevel`` commands promise one line on stderr and exit status 2 for every error a
user can fix. :class:`Parser` is an :class:`argparse.ArgumentParser` whose errors are that
one line (``bilevel meta-train: error: ... (see --help)``); :func:`check_flags` validates
parsed values against a table and raises :class:`~bilevel.outer.errors.UsageError` worded
in flags (``--inner-lr must be > 0, got -1``); :func:`output_folder` refuses an output
folder that cannot be created (a path under a regular file).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .errors import UsageError

__all__ = ["Parser", "at_least", "check_flags", "output_folder", "positive"]

Check = Callable[[str, Any], None]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr with exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _number(flag: str, value: Any) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")
    return value


def at_least(minimum: float) -> Check:
    """Check: a finite number ``≥ minimum``."""
    def check(flag: str, value: Any) -> None:
        if _number(flag, value) < minimum:
            raise UsageError(f"{flag} must be >= {minimum:g}, got {value:g}")
    return check


def positive(flag: str, value: Any) -> None:
    """Check: a finite number ``> 0``."""
    if not _number(flag, value) > 0:
        raise UsageError(f"{flag} must be > 0, got {value:g}")


def check_flags(args: argparse.Namespace, table: dict[str, Check]) -> None:
    """Check every parsed value named in ``table`` (``dest -> check``; None values skipped).

    Raises
    ------
    UsageError
        The first value that fails, worded ``--flag must be ..., got value``.
    """
    for dest, check in table.items():
        value = getattr(args, dest)
        if value is not None:
            check("--" + dest.replace("_", "-"), value)


def output_folder(path: str, flag: str = "--out") -> str:
    """``path`` as an output folder that exists or can be created.

    Raises
    ------
    UsageError
        When ``path`` or a folder above it is a regular file, or is not writable.
    """
    head = os.path.abspath(path)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise UsageError(f"{flag} {path!r}: {head!r} is a file, not a folder; pass another {flag}")
    if not os.access(head, os.W_OK):
        raise UsageError(f"{flag} {path!r}: {head!r} is not writable; pass another {flag}")
    return path
