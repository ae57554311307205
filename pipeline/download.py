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

    def close(self, *, cancel: bool = False) -> None:
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


class DownloadProcess:
    """A :class:`Downloader` in a child process; ``download`` blocks like the original."""

    def __init__(self, settings: KomboSettings, store: LocalFileStore) -> None:
        store.ensure()
        # Not the extraction forkserver: its warm-up for the parsers takes a second. Downloads
        # need no credentials, so the child gets the key neither in its settings nor in its
        # environment.
        self._process, self._conn = child.start("pipeline.download", "serve")
        self._conn.send((replace(settings, api_key=Secret("")), str(store.root)))
        self._send_lock = threading.Lock()
        # A lock of its own: the results reader must never wait behind a send.
        self._waiting_lock = threading.Lock()
        self._waiting: dict[int, Future[Downloaded]] = {}
        self._keys = itertools.count()
        self._reader = threading.Thread(target=self._read, name="download-results", daemon=True)
        self._reader.start()

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
        with self._waiting_lock:
            key = next(self._keys)
            self._waiting[key] = future
        try:
            with self._send_lock:
                self._conn.send((key, data_url, subject))
        except OSError:
            with self._waiting_lock:
                self._waiting.pop(key, None)
            future.set_exception(DownloadError(f"{subject}: the download process is gone"))
        return future

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        return self.submit(data_url, subject=subject).result()

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "log":
                _, name, level, text = message
                logging.getLogger(name).log(level, "%s", text)
                continue
            with self._waiting_lock:
                future = self._waiting.pop(message[1], None)
            if future is None:
                continue
            if message[0] == "ok":
                future.set_result(Downloaded(message[2], message[3]))
            else:
                _, _, kind, text, transient = message
                future.set_exception(_ERRORS.get(kind, DownloadError)(text, transient=transient))
        # The child ended under us: nobody waits forever.
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(DownloadError("the download process ended"))

    def close(self, *, cancel: bool = False) -> None:
        child.stop(
            self._process, self._conn, self._send_lock, self._reader, cancel=cancel, timeout=30
        )
