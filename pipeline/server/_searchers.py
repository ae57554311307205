"""Searches in worker processes, so that more than one core answers them.

One ``serve`` process runs its requests under one interpreter lock: ten clients searching at
once queued for one core's worth of Python (docs/serving.md, benchmarks/README.md). Here each
search (and ``similar``) goes to one of N search worker processes (one per core by default),
each a :class:`pipeline.child.ChildProxy` child that keeps its integrations' Apps, and with
them their open indexes, from one search to the next (an index is reopened when its files
change, as in the server itself), and answers with the finished JSON bytes, so that the
server process only parses the request, checks the token and writes the answer. Sessions,
the seen webhook ids and the run coalescing stay where they are, in the server process.

- A worker does one search at a time; the searches waiting for one are held here (not in a
  thread each), at most ``queue`` of them: one more is refused at once with
  :class:`~pipeline.errors.SearchBusyError` (the route's 429 with Retry-After) rather than
  queued without bound.
- A worker that dies (killed, out of memory) fails the search it had in hand with
  :class:`~pipeline.errors.SearchWorkerError` (503, never a hung request) and is replaced; a
  worker found dead while idle is replaced before it is given a search. A search is not
  given to a second worker: a query that kills one would kill the next.
- A search that takes past ``SEARCH_TIMEOUT_SECONDS`` (the search package caps a query's
  time far below that) kills its worker: 503, and the worker is replaced.
- Workers are fresh interpreters (``child.start``), without the API key or the webhook secret
  in their environment (both are kept secrets, see ``pipeline.config.Secret``), ignoring
  SIGINT and SIGTERM (the server stops them), and killed by the kernel if the server dies
  (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import json
import logging
import os
import signal
import threading
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from .. import child
from ..app import App, SearchRequest
from ..config import DataSettings
from ..errors import PipelineError, QueryError, SearchBusyError, SearchWorkerError
from ..json_answers import people_json, results_json

log = logging.getLogger(__name__)

# Searches that may wait for a worker, per worker, unless ``--search-queue`` says otherwise.
QUEUE_PER_WORKER = 16
# What Retry-After says when the queue is full: a search takes milliseconds, so one second
# is plenty for the queue to have room again.
RETRY_AFTER_SECONDS = 1
# A belt beside the search package's own time cap: a search still going after this long
# has wedged its worker, which is killed.
SEARCH_TIMEOUT_SECONDS = 60.0


def default_workers() -> int:
    """One search worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SearchJob:
    """One search or ``similar`` for one integration; ``as_json``: answer with the API's
    JSON bytes, else with the App's result objects (for the page's templates)."""

    integration_id: str
    request: SearchRequest | None = None  # a search
    by_candidate: bool = False
    similar_to: str | None = None  # a similar: the attachment id
    type: str | None = None
    limit: int = 10
    as_json: bool = True


def json_bytes(payload: Any) -> bytes:
    """As Starlette's JSONResponse renders it, so that the API's answer is byte for byte
    what it was when the server process built it."""
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def answer(app: App, job: SearchJob) -> Any:
    """What ``job`` asks of ``app``: its JSON bytes, or the result objects."""
    integration_id = job.integration_id
    if job.similar_to is not None:
        # The App is this integration's: an attachment of another one is "not there".
        if app.reader.attachment_candidate(job.similar_to) is None:
            raise QueryError(f"no attachment {job.similar_to}")
        results = app.similar(job.similar_to, type=job.type, limit=job.limit)
        return json_bytes(results_json(results, integration_id)) if job.as_json else results
    assert job.request is not None
    if job.by_candidate:
        page = app.search_by_candidate(job.request)
        return json_bytes(people_json(page, integration_id)) if job.as_json else page
    found = app.search(job.request)
    return json_bytes(results_json(found, integration_id)) if job.as_json else found


# -- in the worker ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # The socket's end-of-file tells an idle worker that the server is gone; the kernel's
    # SIGKILL also stops one in the middle of a search.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def serve_searches(fd: int) -> None:
    """The worker's entry point: answer each search the server sends, one at a time, with
    the App of its integration (kept open between searches); None means stop."""
    conn, data = child.accept(fd)
    _die_with_parent()
    if os.getppid() == 1:  # the server died before the line above took effect
        os._exit(0)
    send = child.locked_sender(conn)
    child.forward_logs(send, logging.WARNING)
    # The search stage (Whoosh, numpy) imported now, while no search waits for it.
    importlib.import_module("pipeline.search")
    apps: dict[str, App] = {}

    def handle(job: SearchJob) -> object:
        app = apps.get(job.integration_id)
        if app is None:
            app = apps[job.integration_id] = App(data, integration_id=job.integration_id)
        return answer(app, job)

    def failed(job: SearchJob, exc: Exception) -> BaseException:
        if not isinstance(exc, PipelineError):  # a bug: the server answers 500
            log.error("a search failed: %s: %s", type(exc).__name__, exc)
        if not isinstance(exc, QueryError):
            # Whatever broke (a damaged index, the database), the next search of this
            # integration opens it afresh; an unknown integration is not kept either.
            broken = apps.pop(job.integration_id, None)
            if broken is not None:
                with contextlib.suppress(Exception):
                    broken.close()
        return exc

    child.serve_calls(conn, handle, failed, send)
    for app in apps.values():
        with contextlib.suppress(Exception):
            app.close()
    conn.close()


# -- in the server ------------------------------------------------------------------------------


def _lost(_request: object, reason: str) -> BaseException:
    return SearchWorkerError(f"the search could not be answered: {reason}")


@dataclass
class _Worker:
    number: int
    proxy: child.ChildProxy
    job: Future[Any] | None = None  # the search it has in hand

    @property
    def dead(self) -> bool:
        return self.proxy.exit_code(timeout=0) is not None


@dataclass
class _Waiting:
    job: SearchJob
    future: Future[Any] = field(default_factory=Future)


class SearchPool:
    """N search worker processes and the searches waiting for them (see the module)."""

    def __init__(self, data: DataSettings, workers: int, queue: int | None = None) -> None:
        if workers < 1:
            raise ValueError("a search pool needs at least one worker")
        self.data = data
        self.size = workers
        self.queue = QUEUE_PER_WORKER * workers if queue is None else max(0, queue)
        # Re-entered: a call that fails at once (its worker is gone) is answered, and the
        # next waiting search given out, on the thread that gave it.
        self._lock = threading.RLock()
        self._waiting: deque[_Waiting] = deque()
        self._closing = False
        self.restarts = 0  # workers found dead and replaced
        self._workers = [self._start(number) for number in range(workers)]
        self._idle = list(self._workers)

    def _start(self, number: int) -> _Worker:
        proxy = child.ChildProxy(
            serve_searches,
            self.data,
            label=f"search worker {number}",
            failure=_lost,
            on_event=lambda event: child.log_event(event, "search worker: "),
        )
        log.info("search worker %d started (pid %d)", number, proxy.pid)
        return _Worker(number, proxy)

    def _replace(self, worker: _Worker) -> _Worker:
        """A new worker in the dead one's place (called with the lock held)."""
        log.warning(
            "search worker %d (pid %d) ended (exit %s): starting another",
            worker.number, worker.proxy.pid, worker.proxy.returncode,
        )  # fmt: skip
        # Closed on a thread of its own: this may be the dead proxy's own reader thread,
        # which its close joins.
        threading.Thread(target=worker.proxy.close, kwargs={"cancel": True}, daemon=True).start()
        fresh = self._start(worker.number)
        self.restarts += 1
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [worker.proxy.pid for worker in self._workers]

    def mend(self) -> int:
        """Replace the idle workers found dead (a search would have, on reaching one), for
        ``/healthz``: the number of workers, alive. SearchWorkerError when stopping."""
        with self._lock:
            if self._closing:
                raise SearchWorkerError("the server is stopping")
            for place, worker in enumerate(self._idle):
                if worker.dead:
                    self._idle[place] = self._replace(worker)
            return len(self._workers)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def submit(self, job: SearchJob) -> Future[Any]:
        """Give ``job`` to an idle worker, or hold it until one is free; the future holds
        the answer or the search's error. SearchBusyError at once when the queue is full."""
        with self._lock:
            if self._closing:
                raise SearchWorkerError("the server is stopping")
            worker = self._take_idle()
            if worker is None:
                if len(self._waiting) >= self.queue:
                    raise SearchBusyError(
                        f"{len(self._waiting) + self.size} searches are waiting or going: "
                        f"try again in {RETRY_AFTER_SECONDS} s"
                    )
                waiting = _Waiting(job)
                self._waiting.append(waiting)
                return waiting.future
            future: Future[Any] = Future()
            self._give(worker, job, future)
        return future

    def _take_idle(self) -> _Worker | None:
        """An idle worker, alive: one that died while idle is replaced first, so that the
        search given to it is answered."""
        if not self._idle:
            return None
        worker = self._idle.pop()
        return self._replace(worker) if worker.dead else worker

    def _give(self, worker: _Worker, job: SearchJob, future: Future[Any]) -> None:
        """Send ``job`` to ``worker`` (with the lock held); its answer settles ``future``."""
        worker.job = future
        inner = worker.proxy.call(job)
        inner.add_done_callback(lambda done: self._answered(worker, done, future))

    def _answered(self, worker: _Worker, done: Future[Any], future: Future[Any]) -> None:
        error = done.exception()
        with self._lock:
            worker.job = None
            if isinstance(error, SearchWorkerError) and not self._closing:
                worker = self._replace(worker)  # its process died on this search
            if self._closing:
                pass
            elif self._waiting:
                waiting = self._waiting.popleft()
                self._give(worker, waiting.job, waiting.future)
            else:
                self._idle.append(worker)
        # (Already done when abandoned: its time ran out.)
        with contextlib.suppress(InvalidStateError):
            if error is None:
                future.set_result(done.result())
            else:
                future.set_exception(error)

    def abandon(self, future: Future[Any]) -> None:
        """A search whose time ran out: kill the worker it holds (it is replaced, and the
        search answered SearchWorkerError), or drop it from the queue."""
        with self._lock:
            for waiting in list(self._waiting):
                if waiting.future is future:
                    self._waiting.remove(waiting)
                    break
            holder = next((w for w in self._workers if w.job is future), None)
        with contextlib.suppress(InvalidStateError):
            future.set_exception(SearchWorkerError("the search took too long"))
        if holder is not None:
            log.error("search worker %d (pid %d): a search took over %.0f s: killed",
                      holder.number, holder.proxy.pid, SEARCH_TIMEOUT_SECONDS)  # fmt: skip
            with contextlib.suppress(OSError):
                os.kill(holder.proxy.pid, signal.SIGKILL)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            workers = list(self._workers)
        for held in waiting:
            with contextlib.suppress(InvalidStateError):
                held.future.set_exception(SearchWorkerError("the server is stopping"))
        for worker in workers:
            worker.proxy.close(timeout=10)


__all__ = [
    "QUEUE_PER_WORKER",
    "RETRY_AFTER_SECONDS",
    "SEARCH_TIMEOUT_SECONDS",
    "SearchJob",
    "SearchPool",
    "answer",
    "default_workers",
    "json_bytes",
    "serve_searches",
]
