"""Where extraction runs. The run loop hands files to an :class:`Extractor` and gets futures
back, so the place (threads now, isolated worker processes later) can change alone."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from . import Extraction, extract_file


class Extractor(Protocol):
    workers: int

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]: ...

    def close(self, *, cancel: bool = False) -> None: ...


class ThreadExtractor:
    """Extraction on a few threads beside the network threads."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="extract")

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]:
        return self._pool.submit(extract_file, path, content_type, file_name)

    def close(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=True)
