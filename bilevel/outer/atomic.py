"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Every file the library writes to be read back (outer-loop checkpoints, benchmark row logs)
goes through :func:`atomic_write`, so a crash or a kill during the write leaves the
previous file intact and no half-written one; the temporary file is removed on failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *,
                 suffix: str = "") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    The folder of ``path`` is created when missing. The data are flushed and ``fsync``-ed
    before ``os.replace``, which is atomic on POSIX and Windows within one file system.

    Parameters
    ----------
    path : path
        The file to write.
    mode : {"wb", "w"}
        Binary or text.
    suffix : str
        Suffix of the temporary file's name (e.g. ``".npz"``).

    Examples
    --------
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_write(target, "w") as fh:
    ...     _ = fh.write("done")
    >>> open(target).read()
    'done'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
