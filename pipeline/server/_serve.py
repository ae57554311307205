"""``pipeline serve``: bind, announce, serve until SIGTERM or SIGINT, stop cleanly.

uvicorn catches SIGTERM and SIGINT itself: it stops accepting, lets the requests in
flight finish, then runs the app's shutdown, which stops the runs going (each recorded
``interrupted``, as the CLI records a stopped run) and closes the database.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from ..config import DataSettings, Secret
from ..errors import UsageError
from ._app import Server, create_app
from ._runs import RunCoordinator, RunnerSettings
from ._searchers import SearchPool, default_workers
from ._tenancy import Tenancy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    data: DataSettings
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Secret | None = None
    base_url: str = "https://api.kombo.dev/v1"
    webhook_secret: Secret | None = None
    # Proxies whose X-Forwarded-For/-Proto are believed (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str = "127.0.0.1"
    run_args: tuple[str, ...] = ()
    # Search worker processes (None: one per core; 0: searches on the server's threads) and
    # how many searches may wait for them (None: QUEUE_PER_WORKER per worker).
    search_workers: int | None = None
    search_queue: int | None = None


def build_server(settings: ServeSettings) -> Server:
    runs = RunCoordinator(
        RunnerSettings(settings.data, settings.api_key, settings.base_url, settings.run_args)
    )
    secret = settings.webhook_secret.reveal().encode() if settings.webhook_secret else None
    tenancy = Tenancy(settings.data, runs)  # brings the schema forward before workers read
    workers = default_workers() if settings.search_workers is None else settings.search_workers
    searches = SearchPool(settings.data, workers, settings.search_queue) if workers > 0 else None
    return Server(tenancy=tenancy, runs=runs, webhook_secret=secret, searches=searches)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def event_loop_and_http() -> tuple[str, str]:
    """uvloop and httptools where installed (pyproject's dependencies; both are compiled:
    an answer's parsing and writing, and the loop's own work, cost a fraction of asyncio's
    and h11's pure Python), else the standard library's loop and h11."""
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return loop, http


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets whose proto is
    # IPPROTO_TCP (a bare SOCK_STREAM socket says 0), and without it every answer on a
    # kept-alive connection waited ~40 ms for Nagle and the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = f"port {port} on {host} is in use: choose another with --port"
            raise UsageError(message) from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._on_ready(f"http://{shown}:{port}")


def serve(settings: ServeSettings, on_ready: Callable[[str], None]) -> None:
    """Serve until told to stop; ``on_ready(url)`` once connections are accepted."""
    sock = _bind(settings.host, settings.port)
    server = build_server(settings)
    loop, http = event_loop_and_http()
    log.info(
        "%s; HTTP: %s, event loop: %s",
        f"{server.searches.size} search worker(s)" if server.searches else "searches in-process",
        http, loop,
    )  # fmt: skip
    config = uvicorn.Config(
        create_app(server),
        loop=loop,
        http=http,
        log_config=None,
        access_log=False,  # one line per request is the app's own (pipeline.server)
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    runner = _Uvicorn(config, on_ready)
    # uvicorn re-raises the signal that stopped it once it is done; by then the stop was
    # clean, so the process exits 0 (systemd's "stopped", not "failed").
    on_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if on_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as event_loop:
            event_loop.run(runner.serve(sockets=[sock]))
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("server stopped")


__all__ = ["ServeSettings", "build_server", "event_loop_and_http", "serve"]
