"""The ASGI application: routes, the headers every answer carries, errors as JSON, one log
line per request, and the server's shared state (:class:`Server`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..database import utcnow
from ..errors import PipelineError, StorageError
from . import _api, _page
from ._api import ApiError, error_response
from ._metrics import Metrics
from ._openapi import openapi_document
from ._runs import RunCoordinator
from ._searchers import SearchPool
from ._tenancy import Tenancy
from ._tokens import Principal, verify
from ._webhooks import MAX_BODY_BYTES, SeenEvents, handle

log = logging.getLogger("pipeline.server")

# Every answer: no sniffing, no framing, no referrer, and a policy that allows this
# origin's own script and style only (no inline script, nothing from elsewhere).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
# A verified token is trusted this long without reading its row again (revocation takes
# effect within it); "last used" is written at most this often per token.
TOKEN_CACHE_SECONDS = 5.0
LAST_USED_EVERY_SECONDS = 60.0


@dataclass
class Server:
    """What every request shares: integrations' Apps, runs, sessions, metrics."""

    tenancy: Tenancy
    runs: RunCoordinator
    webhook_secret: bytes | None
    # The search worker processes; None: searches run on this process's threads.
    searches: SearchPool | None = None
    metrics: Metrics = field(init=False)
    sessions: _page.Sessions = field(default_factory=_page.Sessions)
    seen_events: SeenEvents = field(default_factory=SeenEvents)
    _verified: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    _touched: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.tenancy.store, self.runs.in_flight)
        self.runs.on_finished = self._run_finished
        if self.searches is not None:
            pool = self.searches
            self.metrics.watch_searches(pool.waiting, lambda: pool.restarts)

    def _run_finished(self, integration_id: str, code: int) -> None:
        self.metrics.server_runs.labels(integration_id, str(code)).inc()

    def recently_verified(self, text: str) -> Principal | None:
        """The token's principal if it was verified in the last TOKEN_CACHE_SECONDS (no
        database read), else None: then :meth:`authenticate` says."""
        key = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(key)
        if cached is None or cached[1] <= now:
            return None
        self._touch(cached[0].token_id, now)
        return cached[0]

    def authenticate(self, text: str) -> Principal | None:
        key = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None and cached[1] > now:
            principal: Principal | None = cached[0]
        else:
            principal = verify(self.tenancy.store, text)
            with self._lock:
                if principal is None:
                    self._verified.pop(key, None)
                else:
                    if len(self._verified) > 10_000:
                        self._verified.clear()
                    self._verified[key] = (principal, now + TOKEN_CACHE_SECONDS)
        if principal is not None:
            self._touch(principal.token_id, now)
        return principal

    def principal_of(self, token_id: str) -> Principal | None:
        row = self.tenancy.store.api_token(token_id)
        if row is None:
            return None
        self._touch(token_id, time.monotonic())
        return Principal(row.token_id, row.name, row.integration_id, row.scope)

    def _touch(self, token_id: str, now: float) -> None:
        with self._lock:
            if self._touched.get(token_id, 0.0) > now:
                return
            self._touched[token_id] = now + LAST_USED_EVERY_SECONDS

        def write() -> None:
            try:
                self.tenancy.store.touch_api_token(token_id, utcnow())
            except Exception as exc:  # "last used" is a courtesy: never fail a request
                log.debug("token %s: last use not recorded: %s", token_id, exc)

        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.runs.shutdown()
        if self.searches is not None:
            self.searches.close()
        self.tenancy.close()


def _route_label(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/api/v1/") and len(parts) > 3:
        return "/api/v1/" + parts[3]
    if path in ("/", "/healthz", "/metrics", "/webhooks/kombo", "/signin", "/signout"):
        return path
    return "/" + parts[1] if len(parts) > 1 and parts[1] in ("static", "files") else "other"


class _Frame:
    """Security headers on every answer, one log line and one count per request."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, framed)
        finally:
            path = scope.get("path", "")
            label = _route_label(path)
            self.server.metrics.requests.labels(label, str(status[0])).inc()
            principal = scope.get("state", {}).get("principal")
            log.info(
                "%s %s %d %.1fms%s",
                scope.get("method", ""),
                path,  # never the query string: it may hold a search's words
                status[0],
                (time.perf_counter() - started) * 1000,
                f" token={principal.name}" if principal is not None else "",
            )


# -- routes of their own ------------------------------------------------------------------------


def healthz(request: Request) -> Response:
    server = _api.server_of(request)
    tenancy = server.tenancy
    answer: dict[str, Any] = {"status": "ok"}
    try:
        tenancy.store.schema_version()
        for integration_id in tenancy.integration_ids():
            index = tenancy.app_for(integration_id).index
            if index.exists():
                index.doc_count()
        if server.searches is not None:
            # A search worker that died idle is replaced now, not by the search that
            # would have found it.
            answer["search_workers"] = server.searches.mend()
    except Exception as exc:
        log.error("healthz: %s", exc)
        return JSONResponse({"status": "unavailable", "reason": str(exc)[:300]}, 503)
    return JSONResponse(answer)


def metrics(request: Request) -> Response:
    registry = _api.server_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def webhook(request: Request) -> Response:
    server = _api.server_of(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        server.metrics.webhooks.labels("unknown", "too_large").inc()
        return error_response(413, "too_large", "a webhook body is at most 1 MB")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error_response(413, "too_large", "a webhook body is at most 1 MB")
    answer = await run_in_threadpool(
        handle,
        body,
        request.headers.get("x-kombo-signature"),
        secret=server.webhook_secret,
        seen=server.seen_events,
        act=server.tenancy,
    )
    kind = "unknown"
    if answer.status != 401:
        with contextlib.suppress(Exception):
            import json

            kind = str(json.loads(body).get("type", "unknown"))[:40]
    server.metrics.webhooks.labels(kind, answer.outcome).inc()
    if answer.status >= 400:
        code = "unauthorized" if answer.status == 401 else answer.outcome
        return error_response(answer.status, code, answer.message)
    return JSONResponse({"outcome": answer.outcome, "message": answer.message})


def openapi(request: Request) -> Response:
    _api.bearer(request)  # every /api/v1 route checks the token, this one too
    return JSONResponse(openapi_document())


# -- errors ---------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StorageError):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(503, "unavailable", exc.message)
    if isinstance(exc, PipelineError):
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(500, "internal", exc.message)
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal", "internal error (logged)")


def create_app(server: Server) -> Starlette:
    """The ASGI app over ``server`` (its state closes when the app shuts down)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(server.close)

    static = StaticFiles(directory=str(files("pipeline.server") / "static"))
    routes: list[Any] = [
        *_page.routes(),
        *_api.routes(),
        Route("/api/v1/openapi.json", openapi),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/webhooks/kombo", webhook, methods=["POST"]),
        Mount("/static", app=static, name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.server = server
    app.add_middleware(_Frame, server=server)
    return app


__all__ = ["CONTENT_SECURITY_POLICY", "Server", "create_app"]
