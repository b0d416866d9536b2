"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Every file the library writes (outer-loop checkpoints, benchmark row logs, reports) goes
through :func:`atomic_write`, so a crash or a kill during the write leaves the previous file
intact and no half-written one. The temporary file is ``.<name>.<pid>.tmp`` beside the
target: it is removed when the write fails, and a temporary file left by a killed process
(whose process id no longer runs) is removed by the next write of the same file. Files get
the permissions of an ordinary ``open`` (``0o666`` less the user's umask). With
``keep_previous=True`` the file being replaced is kept as ``<name>.prev``, so a checkpoint
damaged on disk later still has a good predecessor to fall back on.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["atomic_write", "previous", "stale_temporaries"]


def previous(path: str | os.PathLike) -> str:
    """The name of the previous version of ``path`` kept by ``keep_previous``."""
    return os.fspath(path) + ".prev"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # os.kill would end a process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Temporary files of ``path`` left by processes that no longer run."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stale = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        pid = tmp[len(os.path.join(folder, f".{name}.")):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(tmp)
    return stale


def _remove(paths: list[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, suffix: str = "",
                 keep_previous: bool = False) -> Iterator[IO]:
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
        Kept for compatibility (the temporary file's name is ``.<name>.<pid>.tmp``).
    keep_previous : bool
        Keep the file being replaced as ``<path>.prev`` (a hard link or a copy, so ``path``
        exists at every moment).

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
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    _remove(stale_temporaries(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and os.path.exists(path):
            _keep(path)
        os.replace(tmp, path)
    except BaseException:
        _remove([tmp])
        raise


def _keep(path: str) -> None:
    """Link (or copy) ``path`` to ``path.prev`` atomically."""
    link = previous(path) + f".{os.getpid()}.tmp"
    _remove([link])
    try:
        os.link(path, link)
    except OSError:
        shutil.copyfile(path, link)
    os.replace(link, previous(path))
