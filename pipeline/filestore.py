"""Content-addressed file store: files are named by their sha256, never by a remote name.

A file is written to a temporary name in the store's ``tmp/`` folder and renamed into place
only once it is complete, so a killed process leaves no half file under a real name; the
next run sweeps ``tmp/``. Files are readable by the pipeline's user only (CVs are personal
data).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from .errors import DataDirectoryError, DiskFullError, StorageError

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
# What every file and folder the process creates gets at most: private to the pipeline's
# user whatever umask the shell or cron gave (CVs and e-mail addresses are personal data).
PRIVATE_UMASK = 0o077

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_NOT_A_FOLDER = frozenset({errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def private_umask() -> None:
    """Make every file and folder this process (and the children it starts later) creates
    private: SQLite's WAL and SHM files, Whoosh's segments and the exports included."""
    os.umask(PRIVATE_UMASK)


def storage_error(exc: OSError, what: str, path: Path | str) -> StorageError:
    """One line for an OS error on the pipeline's storage, naming what and where."""
    where = str(path)
    if exc.errno in _FULL:
        return DiskFullError(f"{what}: no space left on the device holding {where}", path=where)
    if exc.errno in _UNWRITABLE:
        return DataDirectoryError(
            f"{what}: {where} is not writable ({os.strerror(exc.errno or 0)})", path=where
        )
    if exc.errno in _NOT_A_FOLDER:
        return DataDirectoryError(f"{what}: {where} is not a folder", path=where)
    return StorageError(f"{what}: {where}: {exc.strerror or exc}", path=where)


def tighten(path: Path, mode: int) -> None:
    """Give an existing file or folder ``mode`` if it grants more; warn when it is not ours
    to change (another user's folder), since the pipeline can still work in it."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            os.chmod(path, current & mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot make %s private (%s): other local users may read it", path, exc)


def private_folder(path: Path) -> None:
    """Create ``path`` (and its parents) as private folders, or tighten it if it exists."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
    except OSError as exc:
        raise storage_error(exc, "cannot create the data folder", path) from exc
    if not path.is_dir():
        raise DataDirectoryError(f"{path} is not a folder", path=str(path))
    tighten(path, _DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist, or tighten it if it does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
    except OSError as exc:
        raise storage_error(exc, "cannot create", path) from exc
    os.close(fd)
    tighten(path, _FILE_MODE)


class FileStore(Protocol):
    """What the pipeline needs of a place to keep files; a local folder is one."""

    def path(self, sha256: str) -> Path: ...
    def exists(self, sha256: str, size: int | None = None) -> bool: ...
    def open(self) -> _Writer: ...
    def commit(self, writer: _Writer) -> str: ...
    def discard(self, writer: _Writer) -> None: ...
    def delete(self, sha256: str) -> bool: ...
    def hashes(self) -> Iterator[str]: ...


class _Writer:
    """Accumulates a file under a temporary name, hashing as it goes."""

    def __init__(self, handle: BinaryIO | _Translated, tmp_path: Path) -> None:
        self._handle = handle
        self.tmp_path = tmp_path
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._handle.close()


class _Translated:
    """A file handle whose write errors say what and where (a full disk mid-download)."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path

    def write(self, chunk: bytes) -> int:
        try:
            return self._handle.write(chunk)
        except OSError as exc:
            raise storage_error(exc, "cannot store a file", self._path.parent) from exc

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError as exc:
            raise storage_error(exc, "cannot store a file", self._path.parent) from exc


class SpaceReserve:
    """A file of zeros kept in the data directory, given back when the disk is full so that
    a run can still write its own end (``failed``, not ``running``) and the operator reads
    what happened. Made again at the next run's start, when there is room."""

    NAME = ".space-reserve"
    SIZE = 512 * 1024  # a run's end is a few pages of the database and its WAL

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.NAME

    def ensure(self) -> None:
        try:
            if self.path.stat().st_size >= self.SIZE:
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, _FILE_MODE)
            try:
                os.posix_fallocate(fd, 0, self.SIZE)  # blocks really taken, not a sparse file
            finally:
                os.close(fd)
        except OSError as exc:
            # No room for it (or no fallocate here): the run goes on without a reserve.
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.debug("no space reserve in %s: %s", self.path.parent, exc)

    def release(self) -> bool:
        """Give the space back; whether there was any to give."""
        try:
            self.path.unlink()
        except OSError:
            return False
        log.warning("the disk is full: released %s to record the run's end", self.path)
        return True


class LocalFileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        # Folders known to exist: a download costs a file creation, not three mkdir calls.
        self._ensured = False
        self._folders: set[str] = set()  # hash-prefix folders known to exist
        self._names = itertools.count()
        self._prefix = f"dl-{os.getpid()}-{secrets.token_hex(4)}-"

    def ensure(self) -> None:
        if self._ensured:
            return
        for folder in (self.root, self._tmp):
            private_folder(folder)
        self._ensured = True

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not _HEX.issuperset(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str, size: int | None = None) -> bool:
        try:
            stat = self.path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def open(self) -> _Writer:
        """A new file under a temporary name; :meth:`commit` or :meth:`discard` it."""
        self.ensure()
        # A name no other writer uses (process, random tag, counter), created exclusively
        # and private from the first byte.
        tmp_path = self._tmp / f"{self._prefix}{next(self._names)}.part"
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except OSError as exc:
            raise storage_error(exc, "cannot store a file", self._tmp) from exc
        try:
            return _Writer(_Translated(os.fdopen(fd, "wb"), tmp_path), tmp_path)
        except BaseException:
            os.close(fd)
            tmp_path.unlink(missing_ok=True)
            raise

    def commit(self, writer: _Writer) -> str:
        """Move a complete file to its hash name; return the hash."""
        try:
            # No fsync: a killed process loses nothing the page cache holds, and a file torn
            # by a power cut is caught by its size (``exists(sha, size)``) and fetched again.
            writer.close()
            sha256 = writer.sha256
            final = self.path(sha256)
            folder = final.parent.name
            if folder not in self._folders:
                final.parent.mkdir(exist_ok=True, mode=_DIR_MODE)
                self._folders.add(folder)
            os.replace(writer.tmp_path, final)  # atomic; identical content may replace itself
        except OSError as exc:
            self.discard(writer)
            raise storage_error(exc, "cannot store a file", self.root) from exc
        except BaseException:
            self.discard(writer)
            raise
        return sha256

    def discard(self, writer: _Writer) -> None:
        """Remove an unfinished file: nothing is stored."""
        with contextlib.suppress(OSError):
            writer.close()
        writer.tmp_path.unlink(missing_ok=True)

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def hashes(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and len(folder.name) == 2:
                for entry in sorted(folder.iterdir()):
                    if entry.is_file() and len(entry.name) == 64:
                        yield entry.name

    def sweep_temporary(self) -> int:
        """Remove what a killed run left in ``tmp/``; call only while holding the run lock."""
        if not self._tmp.is_dir():
            return 0
        removed = 0
        for entry in self._tmp.iterdir():
            entry.unlink(missing_ok=True)
            removed += 1
        return removed
