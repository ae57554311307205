"""What went wrong, as one line and one exit code: the translation of any exception that
reaches a front end (or ends a run) into a :class:`~pipeline.errors.PipelineError`.

The pipeline's own errors pass through as they are, whatever their class: their
``transient`` marker (:func:`pipeline.errors.is_transient`) decides the exit code, so a new
subclass needs nothing here. What the standard library or a driver raises without our
wrapping (a disk that fills, a read-only directory, a corrupt SQLite file, a bug) becomes a
plain :class:`~pipeline.errors.PipelineError` naming what and where: terminal, for the
operator to fix (the error classes of its own live in :mod:`pipeline.errors` alone).
"""

from __future__ import annotations

import errno
import sys

from .errors import PipelineError, is_transient

# What each exit code means (INTERFACE.md): 1 may pass by itself, 2 needs the operator.
EXIT_TRANSIENT = 1
EXIT_TERMINAL = 2
# Ctrl-C's and SIGTERM's own statuses (128 + the signal), as shells report them.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

_OS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
}


class RunStopped(KeyboardInterrupt):
    """A run told to stop as Ctrl-C stops it (SIGTERM, the run budget): what finished is
    kept, the run is recorded ``interrupted``, and the command exits with ``exit_code``.
    A KeyboardInterrupt, so that every stage's Ctrl-C path (cancel, do not wait) applies."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


def exit_code(exc: BaseException) -> int:
    """The one mapping from an error to the command's exit status."""
    return EXIT_TRANSIENT if is_transient(exc) else EXIT_TERMINAL


def as_pipeline_error(exc: BaseException, *, database: str | None = None) -> PipelineError:
    """``exc`` as one of ours, its message one line naming what and where."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, OSError):
        return PipelineError(_os_message(exc))
    database_error = _database_message(exc, database)
    if database_error is not None:
        return PipelineError(database_error)
    text = _one_line(str(exc))
    return PipelineError(f"unexpected {type(exc).__name__}" + (f": {text}" if text else ""))


def _os_message(exc: OSError) -> str:
    cause = _OS_CAUSES.get(exc.errno or 0) or _one_line(exc.strerror or str(exc))
    where = [str(name) for name in (exc.filename, exc.filename2) if name]
    return cause + (f": {' -> '.join(where)}" if where else "")


def _database_message(exc: BaseException, database: str | None) -> str | None:
    # A search's read path runs sqlite3 without SQLAlchemy (not imported here for --help).
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        return _database_line(str(exc), database)
    try:
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    if not isinstance(exc, SQLAlchemyError):
        return None
    # The driver's own words ("database disk image is malformed", "attempt to write a
    # readonly database"), not the statement SQLAlchemy appends.
    cause = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    return _database_line(cause, database)


def _database_line(cause: str, database: str | None) -> str:
    where = f" ({_safe_url(database)})" if database else ""
    return f"database error{where}: {_one_line(cause)}"


def _safe_url(url: str) -> str:
    try:
        from .database import _safe_url as without_password

        return without_password(url)
    except Exception:  # not a URL SQLAlchemy can read: at least no user or password
        return url.split("@")[-1]


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:300]


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINAL",
    "EXIT_TERMINATED",
    "EXIT_TRANSIENT",
    "RunStopped",
    "as_pipeline_error",
    "exit_code",
]
