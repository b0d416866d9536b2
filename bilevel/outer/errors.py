"""Errors a user can fix, as one typed hierarchy.

Every error that a user's input causes (an argument out of range, a missing or corrupt
file, a checkpoint written by another run) derives from :class:`UsageError`, a
``ValueError``. The command line (:mod:`bilevel.cli`) prints a :class:`UsageError` as one
line on stderr with exit status 2; anything else is a bug and keeps its traceback. The
messages say what to do; :meth:`UsageError.for_cli` swaps the Python spelling of the
remedy for the command line's.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointWarning", "MissingFileError", "ResumeError",
           "UsageError"]


class UsageError(ValueError):
    """An error the user can fix; the message names the argument and says what to do.

    Parameters
    ----------
    message : str
        The message for Python callers.
    cli : str, optional
        The same message worded in command-line flags (default: ``message``).
    """

    def __init__(self, message: str, cli: str | None = None):
        super().__init__(message)
        self.cli = cli

    def for_cli(self) -> str:
        """The message worded for the command line."""
        return self.cli or str(self)


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class ResumeError(UsageError):
    """A checkpoint cannot be resumed by this run (written under another configuration).

    Attributes
    ----------
    fields : tuple of str
        The configuration fields that differ.
    """

    def __init__(self, message: str, cli: str | None = None, fields: tuple[str, ...] = ()):
        super().__init__(message, cli)
        self.fields = tuple(fields)


class CheckpointError(UsageError):
    """A checkpoint or results file is unreadable (truncated, corrupt, empty, not ours)."""


class CheckpointWarning(UserWarning):
    """The newest checkpoint was unreadable and the previous one (``<name>.prev``) was used."""
