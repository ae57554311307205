"""One writer at a time per data directory: an advisory lock the kernel drops when the
process dies, so a killed run never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from .errors import LockedError
from .filestore import private_folder, storage_error, tighten


class WriterLock:
    def __init__(self, data_dir: Path, *, wait: bool = False, timeout: float | None = None) -> None:
        self.path = data_dir / ".writer.lock"
        self.wait = wait
        self.timeout = timeout
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
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
