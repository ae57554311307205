"""The JSON API under ``/api/v1``: every route checks the token, then acts through the App
of the token's integration; what belongs to another integration is 404, as if not there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ..app import App, SearchRequest
from ..database import ExportSelection
from ..errors import (
    IntegrationChoiceError,
    PipelineError,
    QueryError,
    SearchBusyError,
    SearchWorkerError,
)
from ..json_answers import status_json
from ..states import AttachmentState
from ._searchers import RETRY_AFTER_SECONDS, SEARCH_TIMEOUT_SECONDS, SearchJob, answer
from ._tokens import Principal

if TYPE_CHECKING:
    from ._app import Server

TYPES = ("CV", "COVER_LETTER", "OTHER")
# Bounded work per request. The search package caps terms, expansions and time
# (pipeline.search.QueryTooCostly); the length is capped here, before any parsing.
MAX_QUERY_CHARS = 500
MAX_LIMIT = 100
MAX_OFFSET = 10_000


class ApiError(Exception):
    """An answer other than success: ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def server_of(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


def _bearer_text(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN")
    return text.strip()


def bearer(request: Request) -> Principal:
    """The request's token, checked (401 without one or with a wrong one)."""
    principal = server_of(request).authenticate(_bearer_text(request))
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    request.state.principal = principal
    return principal


async def bearer_async(request: Request) -> Principal:
    """:func:`bearer` for a route on the event loop: a token verified in the last seconds
    is checked there; any other reads the database on a thread."""
    principal = server_of(request).recently_verified(_bearer_text(request))
    if principal is None:
        return await run_in_threadpool(bearer, request)
    request.state.principal = principal
    return principal


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "forbidden", "this needs an admin token")


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name}: not a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, "bad_parameter", f"{name}: between {low} and {high}")
    return value


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", "since: a date (YYYY-MM-DD) or ISO time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _type(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in TYPES:
        raise ApiError(400, "bad_parameter", f"type: one of {', '.join(TYPES)}")
    return raw


def _flag(raw: str | None) -> bool:
    return (raw or "").lower() in ("1", "true", "yes", "on")


def search_request(params: Any, *, limit_default: int = 10) -> SearchRequest:
    query = (params.get("q") or "").strip()
    if not query:
        raise ApiError(400, "bad_query", "q: the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ApiError(
            400, "query_too_long", f"the query has {len(query)} characters; at most "
            f"{MAX_QUERY_CHARS}"
        )  # fmt: skip
    return SearchRequest(
        query,
        type=_type(params.get("type")),
        candidate_id=params.get("candidate") or None,
        language=params.get("language") or None,
        since=_since(params.get("since")),
        limit=limit_default,
        offset=0,
    )


def query_error(exc: QueryError) -> ApiError:
    code = "query_too_costly" if type(exc).__name__ == "QueryTooCostly" else "bad_query"
    return ApiError(400, code, exc.message)


def _search_failed(exc: Exception, job: SearchJob) -> ApiError | None:
    """The answer to a search that failed, or None for an error the app's handlers answer
    (a damaged index: 503; a bug: 500)."""
    if isinstance(exc, QueryError):
        # A similar's attachment that is not there (or not this integration's) is 404.
        return ApiError(404, "not_found", exc.message) if job.similar_to else query_error(exc)
    if isinstance(exc, IntegrationChoiceError):
        return ApiError(
            404, "not_found", f"integration {job.integration_id} is not registered here"
        )
    if isinstance(exc, SearchBusyError):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return ApiError(429, "too_many_searches", exc.message, headers)
    if isinstance(exc, SearchWorkerError):
        return ApiError(503, "unavailable", exc.message)
    return None


def _in_process(server: Server, job: SearchJob) -> Any:
    return answer(server.tenancy.app_for(job.integration_id), job)


@contextlib.contextmanager
def _answering(server: Server, job: SearchJob) -> Iterator[None]:
    """Around a search however it is waited for: its errors as the API answers them, and its
    time in the latency histogram."""
    started = time.perf_counter()
    try:
        yield
    except PipelineError as exc:
        failed = _search_failed(exc, job)
        if failed is None:
            raise
        raise failed from None
    finally:
        server.metrics.search_seconds.observe(time.perf_counter() - started)


async def searched(server: Server, job: SearchJob) -> Any:
    """``job``'s answer from a search worker (``--search-workers 0``: from a thread of
    this process); its errors as the API answers them."""
    with _answering(server, job):
        pool = server.searches
        if pool is None:
            return await run_in_threadpool(_in_process, server, job)
        future = pool.submit(job)
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), SEARCH_TIMEOUT_SECONDS
            )
        except TimeoutError:
            pool.abandon(future)
            raise SearchWorkerError("the search took too long") from None


def searched_blocking(server: Server, job: SearchJob) -> Any:
    """:func:`searched` for a route on a thread (the page)."""
    with _answering(server, job):
        pool = server.searches
        if pool is None:
            return _in_process(server, job)
        future = pool.submit(job)
        try:
            return future.result(timeout=SEARCH_TIMEOUT_SECONDS)
        except FutureTimeout:
            pool.abandon(future)
            raise SearchWorkerError("the search took too long") from None


def record_of(app: App, principal: Principal, attachment_id: str) -> dict[str, Any]:
    """An attachment's export record (without text), 404 unless the token's integration
    holds it."""
    candidate_id = app.reader.attachment_candidate(attachment_id)
    if candidate_id is not None:
        selection = ExportSelection(status="all", candidate_id=candidate_id, with_text=False)
        for record in app.export_records(selection):
            if (
                record["attachment_id"] == attachment_id
                and record["integration_id"] == principal.integration_id
            ):
                return record
    raise ApiError(404, "not_found", f"no attachment {attachment_id}")


def safe_file_name(name: str | None, fallback: str) -> str:
    """A name fit for Content-Disposition: no path, no control or quote characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in '"')
    name = name.strip(" .")[:150]
    return name or fallback


def download(app: App, record: dict[str, Any]) -> Response:
    """The original bytes, as a download only: never rendered inline, never sniffed."""
    sha256 = record.get("sha256")
    path = app.files.path(sha256) if sha256 else None
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", "the original file is not stored")
    name = safe_file_name(record.get("file_name"), f"{record['attachment_id']}.bin")
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", name)
    quoted = urllib.parse.quote(name, safe="")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{ascii_name}"; '
            f"filename*=UTF-8''{quoted}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )


def text_of(app: App, record: dict[str, Any]) -> str:
    if record["status"] not in (AttachmentState.INDEXED, AttachmentState.PENDING):
        raise ApiError(404, "not_found", f"no text: the attachment is {record['status']}")
    text = app.reader.texts_for([record["attachment_id"]]).get(record["attachment_id"])
    if text is None:
        raise ApiError(404, "not_found", "no text on record")
    return text


# -- routes -------------------------------------------------------------------------------------


# Search and similar run on the event loop: what they do here is parsing and checking, and
# the search itself is a worker process's (pipeline.server._searchers), whose JSON bytes are
# the answer as they come.


async def search(request: Request) -> Response:
    principal = await bearer_async(request)
    params = request.query_params
    base = search_request(params)
    wanted = SearchRequest(
        base.query, base.type, base.candidate_id, base.language, base.since,
        limit=_int(request, "limit", 10, 1, MAX_LIMIT),
        offset=_int(request, "offset", 0, 0, MAX_OFFSET),
    )  # fmt: skip
    job = SearchJob(
        principal.integration_id, wanted, by_candidate=_flag(params.get("by_candidate"))
    )
    body = await searched(server_of(request), job)
    return Response(body, media_type="application/json")


async def similar(request: Request) -> Response:
    principal = await bearer_async(request)
    job = SearchJob(
        principal.integration_id,
        similar_to=request.path_params["attachment_id"],
        type=_type(request.query_params.get("type")),
        limit=_int(request, "limit", 10, 1, MAX_LIMIT),
    )
    body = await searched(server_of(request), job)
    return Response(body, media_type="application/json")


def attachment(request: Request) -> Response:
    principal = bearer(request)
    app = server_of(request).tenancy.app_for(principal.integration_id)
    return JSONResponse(record_of(app, principal, request.path_params["attachment_id"]))


def attachment_text(request: Request) -> Response:
    principal = bearer(request)
    app = server_of(request).tenancy.app_for(principal.integration_id)
    record = record_of(app, principal, request.path_params["attachment_id"])
    return PlainTextResponse(text_of(app, record), media_type="text/plain; charset=utf-8")


def attachment_file(request: Request) -> Response:
    principal = bearer(request)
    app = server_of(request).tenancy.app_for(principal.integration_id)
    return download(app, record_of(app, principal, request.path_params["attachment_id"]))


def status(request: Request) -> Response:
    principal = bearer(request)
    app = server_of(request).tenancy.app_for(principal.integration_id)
    report = app.status(limit=_int(request, "limit", 10, 1, 1000))
    return JSONResponse(status_json(report))


def export(request: Request) -> Response:
    principal = bearer(request)
    _admin(principal)
    params = request.query_params
    if params.get("format", "jsonl") != "jsonl":
        raise ApiError(400, "bad_parameter", "format: jsonl (the other formats: the CLI)")
    state = params.get("status") or "indexed"
    if state != "all" and state not in {s.value for s in AttachmentState}:
        raise ApiError(400, "bad_parameter", f"status: a state or all, not {state!r}")
    selection = ExportSelection(
        type=_type(params.get("type")),
        status=state,
        candidate_id=params.get("candidate") or None,
        since=_since(params.get("since")),
        with_text=not _flag(params.get("no_text")),
    )
    app = server_of(request).tenancy.app_for(principal.integration_id)
    records = app.export_records(selection)

    def lines() -> Iterator[str]:
        for record in records:
            if record["integration_id"] == principal.integration_id:
                yield json.dumps(record, ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson; charset=utf-8")


def erase_candidate(request: Request) -> Response:
    principal = bearer(request)
    _admin(principal)
    candidate_id = request.path_params["candidate_id"]
    app = server_of(request).tenancy.app_for(principal.integration_id)
    selection = ExportSelection(status="all", candidate_id=candidate_id, with_text=False)
    attachments = sum(1 for _ in app.export_records(selection))
    # The App acts on the token's integration: another's candidate is "not there".
    if not app.forget([candidate_id], reason="api"):
        raise ApiError(404, "not_found", f"no candidate {candidate_id}")
    return JSONResponse({"candidate_id": candidate_id, "erased": True, "attachments": attachments})


def routes() -> list[Route]:
    return [
        Route("/api/v1/search", search),
        Route("/api/v1/similar/{attachment_id}", similar),
        Route("/api/v1/attachments/{attachment_id}", attachment),
        Route("/api/v1/attachments/{attachment_id}/text", attachment_text),
        Route("/api/v1/attachments/{attachment_id}/file", attachment_file),
        Route("/api/v1/status", status),
        Route("/api/v1/export", export),
        Route("/api/v1/candidates/{candidate_id}", erase_candidate, methods=["DELETE"]),
    ]


__all__ = [
    "MAX_QUERY_CHARS",
    "ApiError",
    "error_response",
    "routes",
    "searched",
    "searched_blocking",
]
