"""Download stage: stream a ``data_url`` into the content-addressed store.

The downloader has an HTTP client of its own that carries no credentials at all: Kombo does
not say whether ``data_url`` needs the key, so we treat it as a capability link and the key
never leaves for any origin but the API's, redirects included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import SplitResult, urljoin, urlsplit

import h11
import httpx

from . import __version__, child
from .config import KomboSettings, Secret
from .errors import DownloadError, LinkExpiredError, PipelineError, TooLargeError
from .fetch import data_url_problem, environment_proxy, tls_context
from .filestore import LocalFileStore
from .retry import async_retrying

log = logging.getLogger(__name__)

_EXPIRED_STATUSES = frozenset({403, 404, 410})


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size_bytes: int


# A download must keep at least this rate over every window of ``--timeout`` seconds (curl's
# ``--speed-limit``/``--speed-time``, with the window the read timeout): 1 KiB/s lets a 50 MB
# file arrive on a link shared by sixteen downloads at 10 kB/s each, and cuts a server that
# trickles a byte now and then (which no silence timeout ever would).
MIN_DOWNLOAD_BYTES_PER_SECOND = 1024


class TooSlowError(TimeoutError):
    """The body came slower than :data:`MIN_DOWNLOAD_BYTES_PER_SECOND` over a whole window."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection driven by h11, one exchange at a time.

    The coroutine making a request awaits two things in turn: the response's head, then the
    end of its body. Between the two the connection reads nothing more out of h11's buffer, so
    no byte of the body arrives before the coroutine has said where it goes. The head must
    arrive whole within the read timeout of the request (a server trickling its status line
    is cut); the body must not fall silent for the read timeout, nor bring fewer than
    ``min_rate`` bytes a second over any window of that length. Either fails the wait with
    ``TimeoutError``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        min_rate: float = MIN_DOWNLOAD_BYTES_PER_SECOND,
    ) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._min_rate = min_rate
        self._h11 = h11.Connection(h11.CLIENT)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Any] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._window_bytes = 0
        self.broken = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP connection's is one

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._window_bytes += len(data)
        if self._reading:
            if self._sink is not None:
                self._arm()  # in the body, a silence is what times out; the head has a deadline
            self._pump()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        if self._reading:
            self._pump()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        if self._reading:
            self._pump()  # what h11 holds may still finish the exchange
        self._fail(exc or ConnectionResetError("connection closed by the file server"))

    # -- the exchange --------------------------------------------------------------------------

    def request(
        self, target: bytes, headers: list[tuple[bytes, bytes]], method: bytes = b"GET"
    ) -> asyncio.Future[Any]:
        """Send a GET; the future holds the response's head (an ``h11.Response``)."""
        assert self._transport is not None
        waiter = self._expect(None)
        try:
            self._transport.write(
                self._h11.send(h11.Request(method=method, target=target, headers=headers))
                + (self._h11.send(h11.EndOfMessage()) or b"")
            )
        except h11.LocalProtocolError as exc:
            self._fail(exc)
        self._pump()
        return waiter

    def body(self, sink: Callable[[bytes], None]) -> asyncio.Future[Any]:
        """Hand the body to ``sink`` chunk by chunk; the future ends with the body."""
        waiter = self._expect(sink)
        self._pump()
        return waiter

    @property
    def open(self) -> bool:
        """Neither side has closed it (a server closes idle connections when it likes)."""
        return not (self.broken or self._transport is None or self._transport.is_closing())

    def recycle(self) -> bool:
        """Ready the connection for another exchange; False when it cannot take one."""
        if not self.open:
            return False
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.broken = True
        self._disarm()
        if self._transport is not None:
            self._transport.abort()

    def _expect(self, sink: Callable[[bytes], None] | None) -> asyncio.Future[Any]:
        self._waiter = self._loop.create_future()
        self._sink = sink
        self._reading = True
        self._arm()
        if sink is not None:
            self._window_bytes = 0
            self._rate_timer = self._loop.call_later(self._read_timeout, self._check_rate)
        return self._waiter

    def _pump(self) -> None:
        try:
            while self._reading:
                event = self._h11.next_event()
                kind = type(event)
                if kind is h11.Data:
                    assert self._sink is not None
                    self._sink(cast(h11.Data, event).data)  # `kind is` does not narrow
                elif kind is h11.Response:
                    self._settle(event)  # stop here: the body waits for its sink
                elif kind is h11.EndOfMessage:
                    self._settle(None)
                elif event is h11.NEED_DATA:
                    if self.broken:
                        raise ConnectionResetError("connection closed by the file server")
                    return
                elif kind is h11.ConnectionClosed or event is h11.PAUSED:
                    raise h11.RemoteProtocolError("the file server closed the connection")
                # InformationalResponse: wait for the final answer
        except Exception as exc:  # h11's protocol errors, a sink's refusal (over the cap)
            self._fail(exc)
            self.close()

    def _settle(self, value: object) -> None:
        self._reading = False
        self._disarm()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        self._reading = False
        self._disarm()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._read_timeout, self._time_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def _check_rate(self) -> None:
        self._rate_timer = None
        if not self._reading:
            return
        window = self._read_timeout
        if self._window_bytes < self._min_rate * window:
            self._fail(
                TooSlowError(
                    f"{self._window_bytes} bytes in {window:g} s, under {self._min_rate:g} bytes/s"
                )
            )
            self.close()
            return
        self._window_bytes = 0
        self._rate_timer = self._loop.call_later(window, self._check_rate)

    def _time_out(self) -> None:
        self._timer = None
        if self._reading:
            self._fail(TimeoutError("no answer within the read timeout"))
            self.close()

    # -- a CONNECT tunnel ------------------------------------------------------------------------

    async def tunnel(self, authority: bytes, headers: list[tuple[bytes, bytes]]) -> h11.Response:
        """Ask the proxy at the other end for a tunnel to ``authority``; its answer's head.

        After a 2xx the connection carries raw bytes: :meth:`upgraded` takes the TLS transport
        laid over it and starts h11 afresh for the origin."""
        waiter = self.request(authority, headers, method=b"CONNECT")
        return await waiter

    def upgraded(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._h11 = h11.Connection(h11.CLIENT)


@dataclass(frozen=True)
class _Route:
    """Where a connection goes: the file's origin, and the proxy it is reached through."""

    scheme: str
    host: str
    port: int
    proxy: httpx.Proxy | None = None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def proxy_headers(self) -> list[tuple[bytes, bytes]]:
        """What the proxy alone is sent: its own credentials, from the userinfo of its URL."""
        if self.proxy is None or self.proxy.raw_auth is None:
            return []
        user, password = self.proxy.raw_auth
        return [(b"Proxy-Authorization", b"Basic " + base64.b64encode(user + b":" + password))]


class AsyncDownloader:
    """Downloads on one event loop: h11 over asyncio connections, kept alive per origin.

    Sixteen downloads on sixteen threads (httpcore's sync client) cost 1.8 ms of CPU each on
    a two-core machine, most of it the threads handing the interpreter lock around; on one
    loop the same downloads cost about half. Redirects are followed here (at most five, http
    and https only), and no request carries a credential or a cookie.

    The environment's proxies are honoured as httpx reads them (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``): an http file is asked of the proxy in
    absolute form, an https one through a CONNECT tunnel with TLS to the origin inside it. The
    proxy gets ``Proxy-Authorization`` only from userinfo in its own URL; the origin never
    gets any credential. ``SSL_CERT_FILE``/``SSL_CERT_DIR`` choose the CA certificates.
    """

    def __init__(self, settings: KomboSettings, store: LocalFileStore | None) -> None:
        self.settings = settings
        self.store = store  # None: each download names its own
        self._ssl = tls_context()
        self._idle: dict[_Route, list[_Connection]] = {}
        self._routes: dict[tuple[str, str, int], _Route] = {}
        self._user_agent = f"kombo-cv-pipeline/{__version__}".encode()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def download(
        self, data_url: str, *, subject: str, store: LocalFileStore | None = None
    ) -> Downloaded:
        """Fetch ``data_url`` whole into ``store`` (by default the downloader's), retrying
        transient faults; raise a DownloadError.

        The retry budget holds inside an attempt too: a retry still running when it is spent
        is cut. The first attempt is bounded by the minimum rate alone, so that a large file
        on a slow link still arrives."""
        problem = data_url_problem(data_url)
        if problem is not None:
            raise DownloadError(f"{subject}: data_url cannot be downloaded: {problem}")
        store = store or self.store
        if store is None:
            raise DownloadError(f"{subject}: no file store to download into")
        loop = asyncio.get_running_loop()
        budget_ends = loop.time() + self.settings.retry_budget
        async for attempt in async_retrying(self.settings):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    return await self._once(data_url, subject, store)
                try:
                    async with asyncio.timeout_at(budget_ends):
                        return await self._once(data_url, subject, store)
                except TimeoutError as exc:
                    raise DownloadError(
                        f"{subject}: download cut off: its retry budget of "
                        f"{self.settings.retry_budget:g} s is spent"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _route(self, parts: SplitResult) -> _Route:
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or _PORTS[scheme]
        key = (scheme, host, port)
        route = self._routes.get(key)
        if route is None:
            # Read once per origin: httpx's reading of the environment is not free.
            authority = f"[{host}]" if ":" in host else host
            proxy_url = environment_proxy(f"{scheme}://{authority}:{port}/")
            proxy = None
            if proxy_url is not None:
                try:
                    proxy = httpx.Proxy(proxy_url)
                except (ValueError, httpx.InvalidURL) as exc:
                    # A DownloadError, not a UsageError: raised in the download process, its
                    # text must reach the attachment's reason.
                    raise DownloadError(
                        f"the proxy URL in the environment cannot be used: {exc}"
                    ) from exc
                if proxy.url.scheme not in ("http", "https"):
                    raise DownloadError(
                        f"downloads go through http(s) proxies only, not {proxy.url.scheme}"
                    )
            route = self._routes[key] = _Route(scheme, host, port, proxy)
        return route

    async def _once(self, data_url: str, subject: str, store: LocalFileStore) -> Downloaded:
        url = data_url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                route = self._route(parts)
                connection = await self._connection(route)
                try:
                    response = await connection.request(
                        self._target(route, parts), self._headers(route)
                    )
                    if response.status_code in _REDIRECTS:
                        url = _redirect_target(url, response, subject)
                        connection.close()  # its body is not wanted
                        continue
                    downloaded = await self._store(connection, response, subject, store)
                except BaseException:
                    connection.close()
                    raise
                if connection.recycle():
                    self._idle.setdefault(route, []).append(connection)
                else:
                    connection.close()
                return downloaded
        except TooSlowError as exc:
            raise DownloadError(
                f"{subject}: download too slow ({exc}); cut off", transient=True
            ) from exc
        except TimeoutError as exc:
            raise DownloadError(f"{subject}: download timed out", transient=True) from exc
        except (
            h11.RemoteProtocolError,
            ConnectionResetError,
            ConnectionAbortedError,
            BrokenPipeError,
            EOFError,
        ) as exc:
            # A connection cut mid-body: the classic truncated download.
            raise DownloadError(
                f"{subject}: download cut off ({type(exc).__name__})", transient=True
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise DownloadError(
                f"{subject}: the file server's TLS certificate is not trusted "
                f"({exc.verify_message}); see SSL_CERT_FILE"
            ) from exc
        except (OSError, h11.ProtocolError) as exc:
            raise DownloadError(
                f"{subject}: download failed ({type(exc).__name__})", transient=True
            ) from exc
        raise DownloadError(f"{subject}: too many redirects")

    def _target(self, route: _Route, parts: SplitResult) -> bytes:
        path = parts.path or "/"
        target = f"{path}?{parts.query}" if parts.query else path
        if route.proxy is not None and route.scheme == "http":
            # Absolute form for the proxy, without any userinfo the data_url carried.
            target = f"http://{route.authority}{target}"
        return target.encode("ascii")

    def _headers(self, route: _Route) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"Host", route.authority.encode("idna")),
            (b"User-Agent", self._user_agent),
            (b"Accept-Encoding", b"identity"),
        ]
        if route.proxy is not None and route.scheme == "http":
            headers += route.proxy_headers
        return headers

    async def _connection(self, route: _Route) -> _Connection:
        idle = self._idle.get(route)
        while idle:
            connection = idle.pop()
            if connection.open:
                return connection
        return await asyncio.wait_for(self._open(route), self.settings.connect_timeout)

    async def _open(self, route: _Route) -> _Connection:
        loop = asyncio.get_running_loop()
        origin_tls = route.scheme == "https"
        if route.proxy is None:
            host, port = route.host, route.port
            tls, tls_name = origin_tls, route.host
        else:
            proxy = route.proxy.url
            host, port = proxy.host, proxy.port or _PORTS[proxy.scheme]
            tls, tls_name = proxy.scheme == "https", proxy.host
        transport, connection = await loop.create_connection(
            lambda: _Connection(loop, self.settings.read_timeout),
            host,
            port,
            ssl=self._ssl if tls else None,
            server_hostname=tls_name if tls else None,
        )
        if route.proxy is None or not origin_tls:
            return connection
        # https through a proxy: a CONNECT tunnel, then TLS to the origin inside it.
        try:
            host_name = f"[{route.host}]" if ":" in route.host else route.host
            authority = f"{host_name}:{route.port}"  # CONNECT names the port always
            answer = await connection.tunnel(
                authority.encode("idna"),
                [(b"Host", authority.encode("idna")), *route.proxy_headers],
            )
            if not 200 <= answer.status_code < 300:
                raise DownloadError(
                    f"the proxy refused a tunnel to {route.authority} (HTTP {answer.status_code})",
                    transient=answer.status_code in (429, 502, 503, 504),
                )
            inner = await loop.start_tls(
                transport, connection, self._ssl, server_hostname=route.host
            )
        except BaseException:
            connection.close()
            raise
        assert inner is not None
        connection.upgraded(inner)
        return connection

    async def _store(
        self, connection: _Connection, response: h11.Response, subject: str, store: LocalFileStore
    ) -> Downloaded:
        cap = self.settings.max_file_bytes
        status = response.status_code
        if status in _EXPIRED_STATUSES:
            raise LinkExpiredError(f"{subject}: download link refused (HTTP {status})")
        if status == 429 or status >= 500:
            raise DownloadError(f"{subject}: file server answered HTTP {status}", transient=True)
        if status >= 400:
            raise DownloadError(f"{subject}: file server answered HTTP {status}")
        declared = _content_length(response)
        if declared is not None and declared > cap:
            raise TooLargeError(f"{subject}: {declared} bytes declared, over the {cap}-byte cap")
        writer = store.open()
        try:

            def sink(chunk: bytes) -> None:
                writer.write(chunk)
                if writer.size > cap:
                    raise TooLargeError(f"{subject}: over the {cap}-byte cap")

            await connection.body(sink)
            if declared is not None and writer.size != declared:
                raise DownloadError(
                    f"{subject}: body ended after {writer.size} of {declared} bytes",
                    transient=True,
                )
            if writer.size == 0 and declared is None:
                log.debug("%s: empty body", subject)
            size = writer.size
            sha256 = store.commit(writer)
        except BaseException:
            store.discard(writer)
            raise
        return Downloaded(sha256, size)


class Downloader:
    """:class:`AsyncDownloader` for callers without an event loop: one download at a time."""

    def __init__(self, settings: KomboSettings, store: LocalFileStore) -> None:
        self._loop = asyncio.new_event_loop()
        self._engine = AsyncDownloader(settings, store)

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        return self._loop.run_until_complete(self._engine.download(data_url, subject=subject))

    def close(self) -> None:
        self._engine.close()
        self._loop.run_until_complete(asyncio.sleep(0))  # let the transports close
        self._loop.close()


_PORTS = {"http": 80, "https": 443}


_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _header(response: h11.Response, name: bytes) -> str | None:
    for key, value in response.headers:  # h11 gives names in lower case
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _redirect_target(url: str, response: h11.Response, subject: str) -> str:
    location = _header(response, b"location")
    if not location:
        raise DownloadError(f"{subject}: redirect (HTTP {response.status_code}) without a Location")
    target = urljoin(url, location.strip())
    problem = data_url_problem(target)
    if problem is not None:
        raise DownloadError(f"{subject}: redirected to a URL that cannot be downloaded: {problem}")
    return target


def _content_length(response: h11.Response) -> int | None:
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


def serve(fd: int) -> None:
    """The child's entry point: download what the parent asks for over the socket ``fd``,
    up to ``download_concurrency`` at once on one event loop, each into the file store its
    request names (several integrations' runs share one download process)."""
    conn, (settings, root) = child.accept(fd)
    store = LocalFileStore(Path(root)) if root else None
    send = child.locked_sender(conn)
    child.forward_logs(send, logging.INFO)
    asyncio.run(_serve(conn, send, AsyncDownloader(settings, store)))
    conn.close()


async def _serve(
    conn: Connection,
    send: Callable[[tuple[object, ...]], None],
    downloader: AsyncDownloader,
) -> None:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(downloader.settings.download_concurrency)
    running: set[asyncio.Task[None]] = set()
    ended = loop.create_future()
    stores = {} if downloader.store is None else {str(downloader.store.root): downloader.store}

    async def job(key: int, data_url: str, subject: str, root: str) -> None:
        store = stores.get(root)
        if store is None:
            store = stores[root] = LocalFileStore(Path(root))
        async with slots:
            try:
                done = await downloader.download(data_url, subject=subject, store=store)
                outcome = child.answer_message(key, done)
            except PipelineError as exc:
                # As itself: a DownloadError fails its attachment, a StorageError (the disk
                # is full) stops the run with its one line.
                outcome = child.answer_message(key, error=exc)
            except Exception as exc:  # a bug must fail one download, not the process
                error = DownloadError(f"{subject}: {type(exc).__name__}")
                outcome = child.answer_message(key, error=error)
        with contextlib.suppress(OSError):
            send(outcome)

    def start(request: tuple[int, tuple[str, str, str]]) -> None:
        key, (data_url, subject, root) = request
        task = loop.create_task(job(key, data_url, subject, root))
        running.add(task)
        task.add_done_callback(running.discard)

    def receive() -> None:
        # The parent's requests arrive on a blocking socket: read them on a thread of their
        # own and hand each to the loop.
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                # The parent is gone (killed, perhaps): stop at once; the next run sweeps any
                # temporary file this leaves behind.
                os._exit(0)
            if request is None:
                loop.call_soon_threadsafe(ended.set_result, None)
                return
            loop.call_soon_threadsafe(start, request)

    threading.Thread(target=receive, name="download-requests", daemon=True).start()
    await ended
    while running:
        await asyncio.gather(*running)
    downloader.close()


MAX_RESTARTS = 3


class DownloadProcess:
    """A :class:`Downloader` in a child process; ``download`` blocks like the original.

    If the child dies (killed, out of memory), a new one takes over: the downloads it had in
    hand are given to the new one once more (a download is idempotent), and the run goes on.
    After MAX_RESTARTS the downloads still waiting fail with the reason, and so do later ones.

    Several runs at once (``nightly --all``) share one: each takes a view of it on its own
    file store (:meth:`for_store`), and ``download_concurrency`` bounds the downloads of
    them all together. One process, not one per integration: each costs half a second of
    CPU to start (its interpreter and imports), which twenty small integrations paid twenty
    times.
    """

    def __init__(self, settings: KomboSettings, store: LocalFileStore | None) -> None:
        """``store``: where downloads go; None for a process several runs share, whose
        every request names its run's (:meth:`for_store`)."""
        if store is not None:
            store.ensure()
        self._store = store
        # Downloads need no credentials: the child gets the key neither in its settings nor in
        # its environment. Not the extraction forkserver: its warm-up for the parsers takes a
        # second.
        self._child = child.ChildProxy(
            serve,
            (replace(settings, api_key=Secret("")), None if store is None else str(store.root)),
            label="the download process",
            failure=lambda request, reason: DownloadError(f"{request[1]}: {reason}"),
            restarts=MAX_RESTARTS,
            on_event=child.log_event,
        )

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def submit(
        self, data_url: str, *, subject: str, store: LocalFileStore | None = None
    ) -> Future[Downloaded]:
        """Start a download into ``store`` (by default the one the process was made with);
        the future holds what ``Downloader.download`` would return or raise."""
        problem = data_url_problem(data_url)
        if problem is not None:
            future: Future[Downloaded] = Future()
            future.set_exception(
                DownloadError(f"{subject}: data_url cannot be downloaded: {problem}")
            )
            return future
        target = store or self._store
        if target is None:
            raise ValueError("a shared download process needs the store of each download")
        return self._child.call((data_url, subject, str(target.root)))

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        return self.submit(data_url, subject=subject).result()

    def for_store(self, store: LocalFileStore) -> StoreDownloads:
        """One run's view of this process: its downloads go into ``store``."""
        store.ensure()
        return StoreDownloads(self, store)

    def close(self, *, cancel: bool = False) -> None:
        self._child.close(cancel=cancel, timeout=30)


class StoreDownloads:
    """A run's downloads through a download process other runs share: into the run's own
    file store. Closing it leaves the process to the others (whoever made the process
    closes it)."""

    def __init__(self, process: DownloadProcess, store: LocalFileStore) -> None:
        self._process = process
        self._store = store

    def submit(self, data_url: str, *, subject: str) -> Future[Downloaded]:
        return self._process.submit(data_url, subject=subject, store=self._store)

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        return self.submit(data_url, subject=subject).result()

    def close(self, *, cancel: bool = False) -> None:
        """Nothing to stop: a cancelled run's downloads still in flight land in its store
        as temporary or unreferenced files, which its next run sweeps."""
