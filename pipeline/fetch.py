"""Fetch stage: a Kombo client (on httpcore, under httpx) for the calls the pipeline makes.

Every success body is validated against the seed's JSON Schema; every error answer becomes a
:class:`~pipeline.errors.KomboError` carrying Kombo's code. Retries follow Kombo's guide: only
the retryable codes, load-balancer 503s, 5xx with a null code and transport failures are tried
again, with exponential backoff and jitter, ``Retry-After`` honoured within the cap.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpcore
import httpx

from . import __version__
from .config import KomboSettings
from .errors import (
    IntegrationError,
    KomboError,
    PipelineError,
    ResponseInvalidError,
    TransportError,
    kombo_error,
)
from .limits import AdaptiveLimit
from .retry import retrying
from .schemas import first_error
from .surrogates import mend_surrogates

log = logging.getLogger(__name__)

AttachmentType = Literal["CV", "COVER_LETTER", "OTHER"]
ATTACHMENTS_SCHEMA = "kombo_attachments_response.schema.json"
APPLICATION_ATTACHMENTS_SCHEMA = "kombo_application_attachments_response.schema.json"
CANDIDATES_SCHEMA = "kombo_candidates_response.schema.json"
MAX_PAGE_SIZE = 250


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time from Kombo as an aware UTC datetime (None stays None)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class RemoteAttachment:
    id: str
    candidate_id: str
    application_id: str | None
    type: AttachmentType
    remote_id: str
    data_url: str
    file_name: str
    content_type: str
    remote_created_at: datetime | None
    remote_updated_at: datetime | None

    @classmethod
    def from_api(cls, item: dict[str, Any], candidate_id: str | None = None) -> RemoteAttachment:
        return cls(
            id=item["id"],
            # Application-level answers carry no candidate id: the caller knows it.
            candidate_id=item.get("candidate_id") or candidate_id or "",
            application_id=item.get("application_id"),
            type=item["type"],
            remote_id=item["remote_id"],
            data_url=item["data_url"],
            file_name=item["file_name"],
            content_type=item["content_type"],
            remote_created_at=parse_time(item.get("remote_created_at")),
            remote_updated_at=parse_time(item.get("remote_updated_at")),
        )


@dataclass(frozen=True)
class AttachmentList:
    """One answer of an attachments endpoint."""

    subject: str
    attachments: list[RemoteAttachment]
    warnings: list[str]


@dataclass(frozen=True)
class RemoteCandidate:
    id: str
    changed_at: datetime | None
    remote_deleted_at: datetime | None
    title: str | None = None  # their current job title, as the ATS has it

    @property
    def deleted(self) -> bool:
        return self.remote_deleted_at is not None


@dataclass(frozen=True)
class CandidatePage:
    candidates: list[RemoteCandidate]
    next_cursor: str | None
    warnings: list[str]


def _retry_after(response: _Answer) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class _Answer:
    """What the client keeps of an HTTP answer."""

    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    def json(self) -> Any:
        data = json.loads(self.content)
        if _SURROGATE_ESCAPE.search(self.content):
            # JSON can spell a lone UTF-16 surrogate ("\ud800"): a server that sends one gets
            # its text mended rather than stop the run at the database.
            data = _mended(data)
        return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _mended(value: Any) -> Any:
    if isinstance(value, str):
        return mend_surrogates(value)
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mended(v) for v in value]
    return value


class KomboClient:
    """Synchronous, thread-safe client; one instance serves a whole run.

    It speaks HTTP through httpcore, the connection layer under httpx, directly: every call is
    a GET with fixed headers, and httpx's Client layer (URL merging, cookies, auth, event
    hooks) cost about 40% of a call's CPU, which on a big run is the pipeline's own ceiling.
    """

    def __init__(self, settings: KomboSettings) -> None:
        self.settings = settings
        base = httpx.URL(settings.base_url)
        self._host = base.host
        self._base = str(base).rstrip("/")
        # The key lives in these headers only; they never follow a redirect (none is
        # followed), and the downloader has a connection pool of its own, so no other origin
        # ever sees the key.
        self._headers = [
            (b"Authorization", f"Bearer {settings.api_key.reveal()}".encode()),
            (b"X-Integration-Id", settings.integration_id.encode()),
            (b"Accept", b"application/json"),
            (b"User-Agent", f"kombo-cv-pipeline/{__version__}".encode()),
        ]
        self._timeouts = {
            "connect": settings.connect_timeout,
            "read": settings.read_timeout,
            "write": settings.read_timeout,
            # waiting for a pooled connection is bounded by our own limit on calls in flight
            "pool": None,
        }
        self._http = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=settings.concurrency + 4,
            max_keepalive_connections=settings.concurrency + 4,
        )
        self.actions = AdaptiveLimit(settings.concurrency)
        self.calls = 0
        self._calls_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KomboClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public calls ------------------------------------------------------------------------

    def candidate_attachments(self, candidate_id: str) -> AttachmentList:
        subject = f"candidate {candidate_id}"
        body = self._call(
            f"/ats/candidates/{quote(candidate_id, safe='')}/attachments",
            params=None,
            subject=subject,
            schema=ATTACHMENTS_SCHEMA,
            action=True,
        )
        items = [RemoteAttachment.from_api(i, candidate_id) for i in body["data"]["results"]]
        return AttachmentList(subject, items, self._warnings(body, subject))

    def application_attachments(self, application_id: str, candidate_id: str) -> AttachmentList:
        subject = f"application {application_id}"
        body = self._call(
            f"/ats/applications/{quote(application_id, safe='')}/attachments",
            params=None,
            subject=subject,
            schema=APPLICATION_ATTACHMENTS_SCHEMA,
            action=True,
        )
        items = [
            RemoteAttachment.from_api(
                {**i, "application_id": i.get("application_id")}, candidate_id
            )
            for i in body["data"]["results"]
        ]
        return AttachmentList(subject, items, self._warnings(body, subject))

    def candidate_pages(
        self,
        *,
        updated_after: datetime | None = None,
        include_deleted: bool = True,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[CandidatePage]:
        """Every page of ``GET /ats/candidates``, following the cursor."""
        params: dict[str, str] = {
            "page_size": str(min(page_size, MAX_PAGE_SIZE)),
            "include_deleted": "true" if include_deleted else "false",
        }
        if updated_after is not None:
            stamp = updated_after.astimezone(UTC)
            params["updated_after"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + (
                f"{stamp.microsecond // 1000:03d}Z"
            )
        seen_cursors: set[str] = set()
        while True:
            body = self._call(
                "/ats/candidates",
                params=params,
                subject="candidate list",
                schema=CANDIDATES_SCHEMA,
                action=False,
            )
            data = body["data"]
            candidates = [
                RemoteCandidate(
                    id=c["id"],
                    changed_at=parse_time(c.get("changed_at")),
                    remote_deleted_at=parse_time(c.get("remote_deleted_at")),
                    title=c.get("title") if isinstance(c.get("title"), str) else None,
                )
                for c in data["results"]
            ]
            cursor = data.get("next")
            yield CandidatePage(candidates, cursor, self._warnings(body, "candidate list"))
            if not cursor:
                return
            if cursor in seen_cursors:  # a server that loops would otherwise never end
                raise ResponseInvalidError("Kombo returned the same page cursor twice")
            seen_cursors.add(cursor)
            params = {"cursor": cursor, "page_size": params["page_size"]}

    # -- plumbing ----------------------------------------------------------------------------

    def _warnings(self, body: dict[str, Any], subject: str) -> list[str]:
        messages = [str(w.get("message", "")) for w in body.get("warnings") or []]
        for message in messages:
            log.warning("Kombo warning for %s: %s", subject, message)
        return messages

    def _call(
        self,
        path: str,
        *,
        params: dict[str, str] | None,
        subject: str,
        schema: str,
        action: bool,
    ) -> dict[str, Any]:
        for attempt in retrying(self.settings):
            with attempt:
                if not action:
                    return self._once(path, params, subject, schema, {})
                # Actions (calls that reach the ATS live) count against Kombo's limit.
                ticket = self.actions.acquire()
                seen: dict[str, int | None] = {}
                refused = False
                try:
                    return self._once(path, params, subject, schema, seen)
                except KomboError as exc:
                    refused = exc.code == "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED"
                    raise
                finally:
                    self.actions.release(
                        ticket,
                        refused=refused,
                        remaining=seen.get("remaining"),
                        server_limit=seen.get("limit"),
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        path: str,
        params: dict[str, str] | None,
        subject: str,
        schema: str,
        seen: dict[str, int | None],
    ) -> dict[str, Any]:
        with self._calls_lock:
            self.calls += 1
        started = time.monotonic()
        try:
            url = self._base + path + (f"?{urlencode(params)}" if params else "")
            answer = self._http.request(
                "GET", url, headers=self._headers, extensions={"timeout": self._timeouts}
            )
            response = _Answer(
                answer.status,
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in answer.headers},
                answer.content,
            )
        except httpcore.TimeoutException as exc:
            raise TransportError(
                f"Kombo did not answer in time ({subject}): {type(exc).__name__}"
            ) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise TransportError(
                f"cannot reach Kombo at {self._host} ({subject}): {type(exc).__name__}"
            ) from exc
        seen["remaining"] = _int_header(response, "concurrency-remaining")
        seen["limit"] = _int_header(response, "concurrency-limit")
        log.debug(
            "GET %s -> %d in %.0f ms",
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return _parse(response, subject, schema)


def _int_header(response: _Answer, name: str) -> int | None:
    raw = response.headers.get(name)
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def _parse(response: _Answer, subject: str, schema: str) -> dict[str, Any]:
    status = response.status_code
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if status >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
        raise _error_from(response, body, subject)
    if body is None:
        # A cut or garbled body is most often a network fault: worth another try.
        error = ResponseInvalidError(f"Kombo's answer for {subject} is not valid JSON")
        error.transient = True
        raise error
    problem = first_error(schema, body)
    if problem is not None:
        raise ResponseInvalidError(
            f"Kombo's answer for {subject} does not match the documented schema: {problem}"
        )
    return body  # type: ignore[no-any-return]


def _error_from(response: _Answer, body: object, subject: str) -> PipelineError:
    status = response.status_code
    retry_after = _retry_after(response)
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict) and isinstance(envelope.get("message"), str):
        return kombo_error(
            code=envelope.get("code") if isinstance(envelope.get("code"), str) else None,
            title=envelope.get("title") if isinstance(envelope.get("title"), str) else None,
            message=envelope["message"][:500],
            log_url=envelope.get("log_url") if isinstance(envelope.get("log_url"), str) else None,
            status_code=status,
            retry_after=retry_after,
            subject=subject,
        )
    if status in (401, 403):
        return IntegrationError(
            "the API key or integration id was refused",
            code=None,
            status_code=status,
            subject=subject,
        )
    if status >= 500 or status == 429:
        # The load balancer answers 503 with an HTML page, not Kombo's envelope.
        return TransportError(
            f"Kombo answered HTTP {status} without its error envelope ({subject})",
            retry_after=retry_after,
        )
    return KomboError(
        f"HTTP {status} without Kombo's error envelope",
        code=None,
        status_code=status,
        subject=subject,
    )
