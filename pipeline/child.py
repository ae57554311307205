"""Child processes that do one stage's work (downloads, index writes, a rebuild's segments).

Each is a fresh interpreter (a fork of the threaded parent would be unsafe) that imports only
its own stage and talks to the parent over a socket pair with ``multiprocessing``'s framed
pickles. None is given the API key: it is taken out of the environment it inherits.

``ChildProxy`` is the one mechanism for a child that answers calls (the download process,
the index writer process, a rebuild's writer processes): the parent sends
``(key, request)``, the child answers ``("answer", key, value, error)`` (the error is the
exception itself, pickled) or sends ``("event", payload)`` at any time; each call is a
future, and a child's death is noticed by the proxy's reader, logged, and reported to the
calls it leaves unanswered (or, where restarts are allowed, they go to a new child).
The child's entry point is a module-level function, named by reference.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .errors import PipelineError

log = logging.getLogger(__name__)

KEY_VARIABLE = "KOMBO_API_KEY"

# Values no child may find in its environment, under any name: the API key as the parent
# was given it (a flag, a file), registered by whoever holds it (see keep_secret).
_SECRETS: set[str] = set()
_ENVIRON_LOCK = threading.Lock()


def keep_secret(value: str) -> None:
    """Keep ``value`` out of every child's environment, whatever variable holds it."""
    if value:
        _SECRETS.add(value)


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (the process's own by default) without the API key: neither
    ``KOMBO_API_KEY`` nor any variable whose value is the key or a kept secret."""
    environ = os.environ if environ is None else environ
    secrets = set(_SECRETS)
    if environ.get(KEY_VARIABLE):
        secrets.add(environ[KEY_VARIABLE])
    return {k: v for k, v in environ.items() if k != KEY_VARIABLE and v not in secrets}


@contextlib.contextmanager
def scrubbed_environ() -> Iterator[None]:
    """``os.environ`` without the key while the block runs, for children started by a
    library that hands them the parent's own environment (multiprocessing's forkserver and
    its resource tracker). Other threads see the scrubbed environment meanwhile: the key has
    long been read into the settings by then."""
    with _ENVIRON_LOCK:
        saved = dict(os.environ)
        kept = child_environment(saved)
        for name in saved.keys() - kept.keys():
            del os.environ[name]
        try:
            yield
        finally:
            for name in saved.keys() - kept.keys():
                os.environ[name] = saved[name]


def ignore_stop_signals() -> None:
    """In a child: Ctrl-C (which reaches the whole process group) and SIGTERM (which
    ``systemctl stop`` sends to every process of the unit) are the parent's to act on; it
    stops its children itself, and none prints a traceback of its own."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while a child is started: the child inherits
    the mask through fork and exec, so neither can reach it before its first line ignores
    them (an interpreter still importing ``site`` would die of a Ctrl-C with a traceback)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# The first thing a child runs, before it imports its stage (what it ignores, the signals
# blocked since its start are discarded for).
_PROLOGUE = "from pipeline.child import ignore_stop_signals; ignore_stop_signals(); "

Entry = Callable[[int], None]


def start(entry: Entry) -> tuple[subprocess.Popen[bytes], Connection]:
    """Run ``entry(fd)`` in a new interpreter; return it and our end of the socket pair.

    ``entry`` must be a module-level function: the child imports it by its module and name.
    """
    module, name = entry.__module__, entry.__qualname__
    if getattr(sys.modules.get(module), name, None) is not entry:
        raise ValueError(f"{entry!r} is not a module-level function a child can import")
    ours, theirs = socket.socketpair()
    with stop_signals_blocked():
        process = _popen(module, name, theirs.fileno())
    theirs.close()
    return process, Connection(ours.detach())


def _popen(module: str, name: str, fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"{_PROLOGUE}from {module} import {name}; {name}({fd})",
        ],
        pass_fds=[fd],
        env=child_environment(),
        stdin=subprocess.DEVNULL,
    )


def stop(
    process: subprocess.Popen[bytes],
    conn: Connection,
    send_lock: threading.Lock,
    reader: threading.Thread | None,
    *,
    cancel: bool,
    timeout: float,
) -> None:
    """Ask the child to finish (``None``) and wait for it, or, with ``cancel``, kill it."""
    if not cancel:
        with contextlib.suppress(OSError), send_lock:
            conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)
    with contextlib.suppress(OSError):
        conn.close()
    if reader is not None:
        reader.join(timeout=5)


# -- in the child ----------------------------------------------------------------------------


def accept(fd: int) -> tuple[Connection, Any]:
    """In the child: its end of the socket, and the setup the parent sent first."""
    ignore_stop_signals()  # again: an entry point may be called by other means
    conn = Connection(fd)
    return conn, conn.recv()


def answer_message(
    key: int, value: object = None, error: BaseException | None = None
) -> tuple[Any, ...]:
    """The message that answers call ``key``: its value, or the exception as itself.

    An exception that would not arrive whole (it does not pickle, or not back into itself)
    travels as a PipelineError that names it."""
    if error is not None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            error = PipelineError(f"{type(error).__name__}: {error}")
    return ("answer", key, value, error)


def locked_sender(conn: Connection) -> Callable[[tuple[object, ...]], None]:
    """In the child: a send to the parent that several threads may call (answers and
    forwarded log records must not interleave on the socket)."""
    lock = threading.Lock()

    def send(message: tuple[object, ...]) -> None:
        with lock:
            conn.send(message)

    return send


class _ForwardLogs(logging.Handler):
    """In the child: each log record to the parent as an event, which the parent logs
    through its own handlers (its format, ``--log-format json`` included)."""

    def __init__(self, send: Callable[[tuple[object, ...]], None], level: int) -> None:
        super().__init__(level)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._send(("event", (record.name, record.levelno, record.getMessage())))


def forward_logs(send: Callable[[tuple[object, ...]], None], level: int) -> None:
    """In the child: its log records from ``level`` up go to the parent, and only there."""
    logging.getLogger().handlers[:] = [_ForwardLogs(send, level)]
    logging.getLogger().setLevel(level)


def serve_calls(
    conn: Connection,
    handle: Callable[[Any], object],
    failed: Callable[[Any, Exception], BaseException],
    send: Callable[[tuple[object, ...]], None] | None = None,
) -> None:
    """In the child: answer each call the parent sends, one at a time, with
    ``handle(request)``, or with ``failed(request, exc)`` when it raises, until the parent
    sends None; when the parent is gone, the child ends at once."""
    send = send or conn.send
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone
        if message is None:
            return
        key, request = message
        try:
            reply = answer_message(key, handle(request))
        except Exception as exc:
            reply = answer_message(key, error=failed(request, exc))
        send(reply)


# -- in the parent ---------------------------------------------------------------------------


def log_event(event: tuple[str, int, str], prefix: str = "") -> None:
    """In the parent: log a record its child forwarded (``forward_logs``), through the
    parent's handlers, under the child's logger name."""
    name, level, text = event
    logging.getLogger(name).log(level, "%s%s", prefix, text)


@dataclass
class _Call:
    request: Any
    future: Future[Any] = field(default_factory=Future)
    sent_to: int = 0  # how many children it was given to


class ChildProxy:
    """A child process running ``entry``, whose calls answer as futures.

    ``setup`` is sent first. A child that dies is replaced up to ``restarts`` times, and the
    calls it had in hand go to the new one once more (they must be idempotent); a call two
    children died on, and every call once the restarts are spent, fails with the exception
    ``failure(request, reason)`` makes. ``on_event`` receives the payload of each event.
    """

    def __init__(
        self,
        entry: Entry,
        setup: object,
        *,
        label: str,
        failure: Callable[[Any, str], BaseException],
        restarts: int = 0,
        on_event: Callable[[Any], None] | None = None,
    ) -> None:
        self._entry = entry
        self._setup = setup
        self._label = label
        self._failure = failure
        self._max_restarts = restarts
        self._on_event = on_event
        # A call can fill the socket while the child is busy: the answers' reader must
        # never wait behind a send, so sending has a lock of its own.
        self._send_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiting: dict[int, _Call] = {}
        self._keys = itertools.count()
        self._restarts = 0
        self._closing = False
        self._gave_up = False
        self._start()

    def _start(self) -> None:
        process, conn = start(self._entry)
        conn.send(self._setup)
        reader = threading.Thread(
            target=self._read,
            args=(process, conn),
            name=f"{self._entry.__module__}-answers",
            daemon=True,
        )
        self._process, self._conn, self._reader = process, conn, reader
        reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def exit_code(self, timeout: float = 5) -> int | None:
        """The child's exit code, waiting up to ``timeout`` for it to end; None if it has
        not."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=timeout)
        return self._process.returncode

    def call(self, request: object) -> Future[Any]:
        """Send ``request``; the future holds the child's answer (a value or its error)."""
        pending = _Call(request)
        if self._gave_up:
            pending.future.set_exception(self._failure(request, f"{self._label} kept dying"))
            return pending.future
        with self._waiting_lock:
            key = next(self._keys)
            self._waiting[key] = pending
        self._send(key, pending)
        return pending.future

    def _send(self, key: int, pending: _Call) -> None:
        pending.sent_to += 1
        try:
            with self._send_lock:
                self._conn.send((key, pending.request))
        except OSError:
            # The child is gone: its reader hands the call to the next one, unless there
            # is to be none.
            if self._gave_up or self._max_restarts == 0:
                reason = "kept dying" if self._gave_up else "is gone"
                self._fail(key, pending, f"{self._label} {reason}")

    def _fail(self, key: int, pending: _Call, reason: str) -> None:
        with self._waiting_lock:
            self._waiting.pop(key, None)
        if not pending.future.done():
            pending.future.set_exception(self._failure(pending.request, reason))

    def _read(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "event":
                if self._on_event is not None:
                    self._on_event(message[1])
                continue
            _, key, value, error = message
            with self._waiting_lock:
                pending = self._waiting.pop(key, None)
            if pending is None or pending.future.done():
                continue
            if error is None:
                pending.future.set_result(value)
            else:
                pending.future.set_exception(error)
        self._ended(process, conn)

    def _ended(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        if self._closing or self._max_restarts == 0:
            self._fail_waiting(f"{self._label} ended")
            return
        process.wait()
        self._restarts += 1
        if self._restarts > self._max_restarts:
            log.error("%s died %d times: giving up", self._label, self._restarts)
            self._gave_up = True
            self._fail_waiting(f"{self._label} kept dying")
            return
        log.warning("%s ended (exit %s): starting another", self._label, process.returncode)
        with contextlib.suppress(OSError):
            conn.close()
        with self._send_lock:
            self._start()
        with self._waiting_lock:
            again = list(self._waiting.items())
        for key, pending in again:
            if pending.sent_to >= 2:
                self._fail(key, pending, f"{self._label} died twice on it")
            else:
                self._send(key, pending)

    def _fail_waiting(self, reason: str) -> None:
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            if not pending.future.done():
                pending.future.set_exception(self._failure(pending.request, reason))

    def close(self, *, cancel: bool = False, timeout: float = 30) -> None:
        """Let the child finish what it has (or, with ``cancel``, kill it) and wait."""
        self._closing = True
        stop(
            self._process,
            self._conn,
            self._send_lock,
            self._reader,
            cancel=cancel,
            timeout=timeout,
        )
