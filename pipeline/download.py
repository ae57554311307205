"""Download stage: stream a ``data_url`` into the content-addressed store.

The downloader has an HTTP client of its own that carries no credentials at all: Kombo does
not say whether ``data_url`` needs the key, so we treat it as a capability link and the key
never leaves for any origin but the API's, redirects included.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from . import __version__, child
from .config import KomboSettings, Secret
from .errors import DownloadError, LinkExpiredError, TooLargeError
from .retry import retrying
from .storage import LocalFileStore

log = logging.getLogger(__name__)

_EXPIRED_STATUSES = frozenset({403, 404, 410})


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size_bytes: int


class Downloader:
    """Downloads over httpcore, the connection layer under httpx, used directly.

    httpx's Client layer (URL merging, cookies, auth, event hooks) cost 40% of a download's
    CPU, and a download needs none of it: no credentials, no cookies, a plain GET that
    follows redirects. Redirects are followed here (at most five, http and https only).

    Each thread has a small connection pool of its own: one shared pool takes a lock around
    every request and checks every idle connection for each, which with sixteen threads cost
    more than the requests.
    """

    def __init__(self, settings: KomboSettings, store: LocalFileStore) -> None:
        self.settings = settings
        self.store = store
        self._ssl = httpx.create_ssl_context()
        self._local = threading.local()
        self._pools: list[httpcore.ConnectionPool] = []
        self._pools_lock = threading.Lock()
        self._headers = [
            (b"User-Agent", f"kombo-cv-pipeline/{__version__}".encode()),
            (b"Accept-Encoding", b"identity"),
        ]
        self._timeouts = {
            "connect": settings.connect_timeout,
            "read": settings.read_timeout,
            "write": settings.read_timeout,
            "pool": settings.read_timeout,
        }

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()

    def _pool(self) -> httpcore.ConnectionPool:
        pool: httpcore.ConnectionPool | None = getattr(self._local, "pool", None)
        if pool is None:
            # A thread makes one request at a time; a second connection serves a redirect's
            # other origin.
            pool = httpcore.ConnectionPool(
                ssl_context=self._ssl, max_connections=2, max_keepalive_connections=2
            )
            self._local.pool = pool
            with self._pools_lock:
                self._pools.append(pool)
        return pool

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        """Fetch ``data_url`` whole, retrying transient faults; raise a DownloadError."""
        if not _is_http(data_url):
            raise DownloadError(f"{subject}: data_url is not an http(s) URL")
        for attempt in retrying(self.settings):
            with attempt:
                return self._once(data_url, subject)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, data_url: str, subject: str) -> Downloaded:
        url = data_url
        pool = self._pool()
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                with pool.stream(
                    "GET", url, headers=self._headers, extensions={"timeout": self._timeouts}
                ) as response:
                    if response.status in _REDIRECTS:
                        url = _redirect_target(url, response, subject)
                        continue
                    return self._store(response, subject)
        except httpcore.TimeoutException as exc:
            raise DownloadError(f"{subject}: download timed out", transient=True) from exc
        except (httpcore.RemoteProtocolError, httpcore.ReadError) as exc:
            # A connection cut mid-body: the classic truncated download.
            raise DownloadError(
                f"{subject}: download cut off ({type(exc).__name__})", transient=True
            ) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise DownloadError(
                f"{subject}: download failed ({type(exc).__name__})", transient=True
            ) from exc
        except httpcore.UnsupportedProtocol as exc:
            raise DownloadError(f"{subject}: redirected to a URL that is not http(s)") from exc
        raise DownloadError(f"{subject}: too many redirects")

    def _store(self, response: httpcore.Response, subject: str) -> Downloaded:
        cap = self.settings.max_file_bytes
        status = response.status
        if status in _EXPIRED_STATUSES:
            raise LinkExpiredError(f"{subject}: download link refused (HTTP {status})")
        if status == 429 or status >= 500:
            raise DownloadError(f"{subject}: file server answered HTTP {status}", transient=True)
        if status >= 400:
            raise DownloadError(f"{subject}: file server answered HTTP {status}")
        declared = _content_length(response)
        if declared is not None and declared > cap:
            raise TooLargeError(f"{subject}: {declared} bytes declared, over the {cap}-byte cap")
        with self.store.writer() as writer:
            for chunk in response.iter_stream():
                writer.write(chunk)
                if writer.size > cap:
                    raise TooLargeError(f"{subject}: over the {cap}-byte cap")
            if declared is not None and writer.size != declared:
                raise DownloadError(
                    f"{subject}: body ended after {writer.size} of {declared} bytes",
                    transient=True,
                )
            if writer.size == 0 and declared is None:
                log.debug("%s: empty body", subject)
        return Downloaded(writer.sha256, writer.size)


_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _redirect_target(url: str, response: httpcore.Response, subject: str) -> str:
    location = _header(response, b"location")
    if not location:
        raise DownloadError(f"{subject}: redirect (HTTP {response.status}) without a Location")
    target = urljoin(url, location.strip())
    if not _is_http(target):
        raise DownloadError(f"{subject}: redirected to a URL that is not http(s)")
    return target


def _content_length(response: httpcore.Response) -> int | None:
    # Bodies are stored as sent; a content encoding (none was asked for) would make the
    # length describe other bytes, so only trust the header without one.
    if (_header(response, b"content-encoding") or "identity") not in ("identity", ""):
        return None
    raw = _header(response, b"content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


# -- the download process --------------------------------------------------------------------
#
# Listing candidates, writing the database and indexing keep the parent's interpreter busy;
# the downloads' HTTP work and hashing would compete with them for its one lock. In a process
# of their own they take the second core. The child never holds the API key (downloads carry
# no credentials anyway) and writes only into the file store's temporary folder and hash
# names, exactly as an in-process download would.

_ERRORS: dict[str, type[DownloadError]] = {
    cls.__name__: cls for cls in (DownloadError, LinkExpiredError, TooLargeError)
}


class _ForwardLogs(logging.Handler):
    """In the child: hand log records to the parent, which logs them through its handlers."""

    def __init__(self, send: Callable[[tuple[object, ...]], None]) -> None:
        super().__init__(logging.INFO)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._send(("log", record.name, record.levelno, record.getMessage()))


def serve(fd: int) -> None:
    """The child's entry point: download what the parent asks for over the socket ``fd``,
    each on a thread of its own."""
    # Ctrl-C reaches the whole process group; the parent decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    send_lock = threading.Lock()

    def send(message: tuple[object, ...]) -> None:
        with send_lock:
            conn.send(message)

    logging.getLogger().handlers[:] = [_ForwardLogs(send)]
    logging.getLogger().setLevel(logging.INFO)
    # httpx logs every request URL at INFO: data_url links are capabilities, keep them out.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    settings, root = conn.recv()
    downloader = Downloader(settings, LocalFileStore(Path(root)))
    pool = ThreadPoolExecutor(settings.download_concurrency, thread_name_prefix="download")

    def job(key: int, data_url: str, subject: str) -> None:
        try:
            done = downloader.download(data_url, subject=subject)
            outcome: tuple[object, ...] = ("ok", key, done.sha256, done.size_bytes)
        except DownloadError as exc:
            outcome = ("error", key, type(exc).__name__, exc.message, exc.transient)
        except Exception as exc:  # a bug must fail one download, not the process
            outcome = ("error", key, "DownloadError", f"{subject}: {type(exc).__name__}", False)
        with contextlib.suppress(OSError):
            send(outcome)

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            # The parent is gone (killed, perhaps): stop at once; the next run sweeps any
            # temporary file this leaves behind.
            os._exit(0)
        if request is None:
            break
        pool.submit(job, *request)
    pool.shutdown(wait=True)
    downloader.close()
    conn.close()


MAX_RESTARTS = 3


@dataclass
class _Request:
    future: Future[Downloaded]
    data_url: str
    subject: str
    sent_to: int = 0  # how many download processes it was given to


class DownloadProcess:
    """A :class:`Downloader` in a child process; ``download`` blocks like the original.

    If the child dies (killed, out of memory), a new one takes over: the downloads it had in
    hand are given to the new one once more (a download is idempotent), and the run goes on.
    After MAX_RESTARTS the downloads still waiting fail with the reason, and so do later ones.
    """

    def __init__(self, settings: KomboSettings, store: LocalFileStore) -> None:
        store.ensure()
        # Downloads need no credentials: the child gets the key neither in its settings nor in
        # its environment.
        self._setup = (replace(settings, api_key=Secret("")), str(store.root))
        self._send_lock = threading.Lock()
        # A lock of its own: the results reader must never wait behind a send.
        self._waiting_lock = threading.Lock()
        self._waiting: dict[int, _Request] = {}
        self._keys = itertools.count()
        self._restarts = 0
        self._closing = False
        self._gave_up = False
        self._start()

    def _start(self) -> None:
        # Not the extraction forkserver: its warm-up for the parsers takes a second.
        process, conn = child.start("pipeline.download", "serve")
        conn.send(self._setup)
        reader = threading.Thread(
            target=self._read, args=(process, conn), name="download-results", daemon=True
        )
        self._conn, self._reader, self._process = conn, reader, process
        reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def submit(self, data_url: str, *, subject: str) -> Future[Downloaded]:
        """Start a download; the future holds what ``Downloader.download`` would return or
        raise."""
        future: Future[Downloaded] = Future()
        if not _is_http(data_url):
            future.set_exception(DownloadError(f"{subject}: data_url is not an http(s) URL"))
            return future
        if self._gave_up:
            future.set_exception(DownloadError(f"{subject}: the download process kept dying"))
            return future
        request = _Request(future, data_url, subject)
        with self._waiting_lock:
            key = next(self._keys)
            self._waiting[key] = request
        self._send(key, request)
        return future

    def _send(self, key: int, request: _Request) -> None:
        request.sent_to += 1
        try:
            with self._send_lock:
                self._conn.send((key, request.data_url, request.subject))
        except OSError:
            # The child is gone: its reader hands the request to the next one, unless it has
            # given up already.
            if self._gave_up:
                with self._waiting_lock:
                    self._waiting.pop(key, None)
                if not request.future.done():
                    request.future.set_exception(
                        DownloadError(f"{request.subject}: the download process kept dying")
                    )

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        return self.submit(data_url, subject=subject).result()

    def _read(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "log":
                _, name, level, text = message
                logging.getLogger(name).log(level, "%s", text)
                continue
            with self._waiting_lock:
                request = self._waiting.pop(message[1], None)
            if request is None:
                continue
            if message[0] == "ok":
                request.future.set_result(Downloaded(message[2], message[3]))
            else:
                _, _, kind, text, transient = message
                error = _ERRORS.get(kind, DownloadError)(text, transient=transient)
                request.future.set_exception(error)
        if self._closing:
            self._fail_waiting("the download process ended")
            return
        process.wait()
        self._restarts += 1
        if self._restarts > MAX_RESTARTS:
            log.error("the download process died %d times: giving up", self._restarts)
            self._gave_up = True
            self._fail_waiting("the download process kept dying")
            return
        log.warning("the download process ended (exit %s): starting another", process.returncode)
        with contextlib.suppress(OSError):
            conn.close()
        with self._send_lock:
            self._start()
        with self._waiting_lock:
            again = list(self._waiting.items())
        for key, request in again:
            if request.sent_to >= 2:
                with self._waiting_lock:
                    self._waiting.pop(key, None)
                request.future.set_exception(
                    DownloadError(f"{request.subject}: the download process died twice on it")
                )
            else:
                self._send(key, request)

    def _fail_waiting(self, reason: str) -> None:
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for request in waiting.values():
            if not request.future.done():
                request.future.set_exception(DownloadError(f"{request.subject}: {reason}"))

    def close(self, *, cancel: bool = False) -> None:
        self._closing = True
        child.stop(
            self._process, self._conn, self._send_lock, self._reader, cancel=cancel, timeout=30
        )
