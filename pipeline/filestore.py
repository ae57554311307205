"""Content-addressed file store: files are named by their sha256, never by a remote name.

A file is written to a temporary name in the store's ``tmp/`` folder and renamed into place
only once it is complete, so a killed process leaves no half file under a real name; the
next run sweeps ``tmp/``. Files are readable by the pipeline's user only (CVs are personal
data).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

_HEX = frozenset("0123456789abcdef")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


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

    def __init__(self, handle: BinaryIO, tmp_path: Path) -> None:
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
            folder.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
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
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            return _Writer(os.fdopen(fd, "wb"), tmp_path)
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
