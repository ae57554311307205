"""Where extraction runs. The run loop hands files to an :class:`Extractor` and gets futures
back, so the place can change alone.

:class:`ProcessExtractor` is the default: each document is parsed in a worker process (one per
core) with a wall-clock limit and a memory limit. A parser that hangs or loops is killed when
its time is up and the attachment ends ``failed`` with "timeout" (Tesseract, its child, dies
with it); one that eats memory hits the address-space limit and ends ``failed`` with "memory
limit"; a worker that crashes is replaced. Either names the parser that gave up (the run
engine makes the third such end on the same bytes ``unreadable``). The run goes on either
way. Workers come from a forkserver with the parsers already imported, because the parent
has threads and forking a threaded process is unsafe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import resource
import threading
from concurrent.futures import Future
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from .. import child
from ..config import DEFAULT_EXTRACT_MEMORY_MB, DEFAULT_EXTRACT_TIMEOUT
from ..states import AttachmentState
from . import Extraction, extract_file, identify, ocr

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = DEFAULT_EXTRACT_TIMEOUT
DEFAULT_MEMORY_MB = DEFAULT_EXTRACT_MEMORY_MB


class Extractor(Protocol):
    workers: int

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]: ...

    def prestart(self) -> None: ...

    def close(self, *, cancel: bool = False) -> None: ...


def _worker_main(conn: Connection, memory_bytes: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """A worker process: parse what arrives until told to stop."""
    child.ignore_stop_signals()  # the parent kills a worker when the run stops
    # OCR stops taking pages before the parent's clock kills the worker: the pages read are
    # kept and the rest named, rather than a timeout with nothing.
    ocr.TIME_BUDGET = max(timeout * 0.75, 1.0)
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    logging.disable(logging.WARNING)  # pypdf warns on every odd file; the parent logs outcomes
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        path, content_type, file_name = job
        try:
            result = extract_file(Path(path), content_type, file_name)
        except MemoryError:
            result = Extraction(AttachmentState.FAILED, None, error="memory limit")
        conn.send(result)


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pipeline.extract.warm"])
        _CONTEXT = context
    return _CONTEXT


_BOOT_LOCK = threading.Lock()


def _ensure_forkserver() -> None:
    """Start the forkserver (and multiprocessing's resource tracker) if it is not running.

    multiprocessing hands both the parent's own environment: it is scrubbed of the API key
    while they start, and every worker forked later inherits the forkserver's. Ctrl-C and
    SIGTERM are blocked in this thread meanwhile: the mask is inherited, so the forkserver
    cannot die of one with a traceback while it imports the parsers (a second of warm-up),
    before its first line ignores them."""
    _context()
    with _BOOT_LOCK, child.scrubbed_environ():
        # The tracker first: starting it unblocks both signals in the calling thread
        # (multiprocessing blocks them around its start, then unblocks rather than restores).
        resource_tracker.ensure_running()
        with child.stop_signals_blocked():
            forkserver.ensure_running()


class _Slot:
    """One worker process and the thread in the parent that feeds it and keeps its time."""

    def __init__(self, owner: ProcessExtractor, number: int) -> None:
        self.owner = owner
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"extract-{number}", daemon=True)

    def start_worker(self) -> None:
        _ensure_forkserver()
        parent, theirs = _context().Pipe()
        process = _context().Process(  # type: ignore[attr-defined]  # typeshed: BaseContext has none
            target=_worker_main,
            args=(theirs, self.owner.memory_bytes, self.owner.timeout),
            daemon=True,
        )
        process.start()
        theirs.close()
        self.process, self.conn = process, parent

    def kill_worker(self) -> None:
        # Called from this slot's thread (timeout) and from close() on a Ctrl-C, maybe both.
        with self.lock:
            process, conn = self.process, self.conn
            self.process, self.conn = None, None
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=5)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def run(self) -> None:
        while True:
            job = self.owner.jobs.get()
            if job is None:
                break
            future, path, content_type, file_name = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.parse(path, content_type, file_name))
            except BaseException as exc:
                future.set_exception(exc)
        conn, process = self.conn, self.process
        if conn is not None and process is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(timeout=5)
        self.kill_worker()

    def parse(self, path: str, content_type: str | None, file_name: str | None) -> Extraction:
        try:
            return self._parse(path, content_type, file_name)
        except (OSError, EOFError, AttributeError):
            # The worker was killed under us by close(cancel=True): the run is stopping.
            self.kill_worker()
            return Extraction(AttachmentState.FAILED, None, error="cancelled")

    def _parse(self, path: str, content_type: str | None, file_name: str | None) -> Extraction:
        if self.process is None or not self.process.is_alive():
            self.kill_worker()
            self.start_worker()
        conn, process = self.conn, self.process
        assert conn is not None and process is not None
        conn.send((path, content_type, file_name))
        if not conn.poll(self.owner.timeout):
            log.warning(
                "parser gave no answer in %.1f s on %s: worker killed",
                self.owner.timeout,
                Path(path).name,
            )
            self.kill_worker()
            return _gave_up(path, content_type, file_name, "timeout")
        try:
            return conn.recv()
        except (EOFError, OSError):
            code = process.exitcode
            self.kill_worker()
            # Killed by the kernel for memory, or crashed in C code.
            error = "memory limit" if code in (-9, None) else f"parser crashed (exit {code})"
            return _gave_up(path, content_type, file_name, error)


def _gave_up(path: str, content_type: str | None, file_name: str | None, error: str) -> Extraction:
    """A parse that never answered, with the parser that gave up on record (so that its
    upgrade reopens the file)."""
    try:
        known = identify(Path(path), content_type, file_name)
    except Exception:  # naming the parser is a courtesy: the outcome is the timeout
        log.debug("could not name the parser of %s", Path(path).name, exc_info=True)
        return Extraction(AttachmentState.FAILED, None, error=error)
    return Extraction(
        AttachmentState.FAILED,
        known.detected_type,
        known.parser,
        known.parser_version,
        error=error,
    )


class ProcessExtractor:
    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        memory_mb: int = DEFAULT_MEMORY_MB,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        self.memory_bytes = memory_mb * 1024 * 1024
        self.jobs: queue.SimpleQueue[tuple[Future[Extraction], str, str | None, str | None] | None]
        self.jobs = queue.SimpleQueue()
        self._prestarted = False
        self._slots = [_Slot(self, n) for n in range(self.workers)]
        for slot in self._slots:
            slot.thread.start()

    def prestart(self) -> None:
        """Boot the forkserver now, in the background: its warm-up (the parsers and the
        language model, about a second of CPU) then overlaps with the first downloads instead
        of holding up the first extraction."""
        if self._prestarted:
            return
        self._prestarted = True

        def boot() -> None:
            with contextlib.suppress(Exception):
                _ensure_forkserver()

        threading.Thread(target=boot, name="forkserver-boot", daemon=True).start()

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]:
        future: Future[Extraction] = Future()
        self.jobs.put((future, str(path), content_type, file_name))
        return future

    def close(self, *, cancel: bool = False) -> None:
        if cancel:
            # Drop what waits; kill what runs (a Ctrl-C must not wait for a long parse).
            while True:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            for slot in self._slots:
                slot.kill_worker()
        for _ in self._slots:
            self.jobs.put(None)
        if not cancel:
            for slot in self._slots:
                slot.thread.join()
