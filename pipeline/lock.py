"""One writer at a time per integration: a file lock in the integration's folder that the
kernel drops when the process dies, so a killed run never leaves a stale lock behind; and,
where several machines share a PostgreSQL database, the integration's claim in PostgreSQL
itself (:class:`IntegrationClaim`), which the server drops with the connection of a process
that died. The file lock keeps the processes of one machine apart, the claim the machines."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import LockedError
from .filestore import private_folder, storage_error, tighten

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

_CLAIM_NAMESPACE = b"pipeline integration claim\0"


def claim_key(integration_id: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of an integration: 64 bits
    of a hash, so two of even millions of integrations share a key with a negligible
    chance (which would only make them take turns)."""
    digest = hashlib.sha256(_CLAIM_NAMESPACE + integration_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class IntegrationClaim:
    """An integration claimed for writing in PostgreSQL: a session-level advisory lock held
    on a connection of its own for as long as the claim lasts. Every machine's runs,
    erasures and rebuilds of the integration take it, so two machines never write one
    integration at once; a process that dies loses its connection and with it the claim
    (as the kernel drops a file lock)."""

    def __init__(
        self,
        engine: Engine,
        integration_id: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.engine = engine
        self.integration_id = integration_id
        self.key = claim_key(integration_id)
        self.wait = wait
        self.timeout = timeout
        self._conn: Connection | None = None

    def __enter__(self) -> IntegrationClaim:
        conn = self.engine.connect()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                taken = conn.exec_driver_sql(
                    "SELECT pg_try_advisory_lock(%(key)s)", {"key": self.key}
                ).scalar()
                conn.commit()  # a session lock outlives the transaction; none stays open
                if taken:
                    break
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    raise LockedError(
                        f"integration {self.integration_id}: another pipeline process (on "
                        "this machine or another sharing the database) is writing it; wait "
                        "for it to finish (or pass --wait)"
                    )
                time.sleep(0.5)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": self.key})
            conn.commit()
        finally:
            # Closed, the session ends and PostgreSQL drops the lock whatever happened above
            # (the pool resets a returned connection; a broken one is discarded).
            conn.invalidate()
            conn.close()


class WriterLock:
    """The writer lock of one integration's folder, and its ``claim`` (on PostgreSQL) once
    the file lock is held: taken in that order, released in the other."""

    def __init__(
        self,
        data_dir: Path,
        *,
        wait: bool = False,
        timeout: float | None = None,
        claim: IntegrationClaim | None = None,
    ) -> None:
        self.path = data_dir / ".writer.lock"
        self.wait = wait
        self.timeout = timeout
        self.claim = claim
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        private_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise storage_error(exc, "cannot take the writer lock", self.path.parent) from exc
        tighten(self.path, 0o600)  # a lock file an older version made 0644
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    os.close(fd)
                    holder = self._holder()
                    raise LockedError(
                        f"another pipeline run{holder} is writing to {self.path.parent}; "
                        "wait for it to finish (or pass --wait)"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        if self.claim is not None:
            try:
                self.claim.__enter__()
            except BaseException:
                self._release_file()
                raise
        return self

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.claim is not None:
                self.claim.__exit__(exc_type, exc, tb)
        finally:
            self._release_file()

    def _release_file(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
