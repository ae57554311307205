"""A Kombo-compatible HTTP server on 127.0.0.1, faithful to the seed and to KOMBO.md.

Routes (under ``/v1``): ``GET /ats/candidates``, ``GET /ats/candidates/{id}/attachments``,
``GET /ats/applications/{id}/attachments``; file downloads on ``/files/{id}`` with a signed,
expiring token and no key; control routes under ``/_sandbox/`` (faults, stats) for tests that
drive a server in another process.

Knobs: latency per API call and per download, the concurrency limit (more actions in flight
are refused with 429 PLATFORM.CONCURRENCY_LIMIT_EXCEEDED, as Kombo does), the link lifetime,
and scripted faults (:class:`Fault`).

Several integrations (:meth:`SandboxServer.add_integration`): one API key, each integration
its own world (candidates and documents), concurrency limit, faults and stats, chosen by the
request's ``X-Integration-Id`` as at Kombo; ``error=CODE`` makes one answer an
integration-wide error (``INTEGRATION.INACTIVE``, ...) on every call until cleared.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .generator import SandboxAttachment, SandboxCandidate, World

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_INTEGRATION_ID = "sandbox:8Xi6iZrwusZqJmDGXs49GBmJ"
_MAX_PAGE_SIZE = 250

_TITLES = {
    "PLATFORM.AUTHENTICATION_INVALID": "The API key is invalid.",
    "PLATFORM.INTEGRATION_NOT_FOUND": "The integration could not be found.",
    "PLATFORM.INPUT_INVALID": "The input is invalid.",
    "PLATFORM.RATE_LIMIT_EXCEEDED": "Rate limit exceeded.",
    "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED": "Concurrency limit exceeded.",
}


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{value.microsecond // 1000:03d}Z"
    )


@dataclass
class Fault:
    """One scripted misbehaviour.

    kind:
      ``error``        answer ``status`` with Kombo's envelope and ``code`` (API routes)
      ``html503``      503 with an HTML body, as the load balancer sends (API or files)
      ``broken_json``  200 with a body cut in half (API routes)
      ``bad_schema``   200 with an attachment missing ``data_url`` (API routes)
      ``bad_unicode``  200 with a lone UTF-16 surrogate (``\\ud800`` in JSON) in a file name (API)
      ``slow``         sleep ``seconds`` before answering (API or files)
      ``truncate``     send a file's headers, half its body, then close (files)
      ``corrupt``      send garbage instead of the file, same length (files)
      ``expired``      403 on the download, as an expired link would get (files)
      ``content_type`` list the attachment with ``content_type`` instead of its own (API)
      ``redirect``     answer a download with 302 to the same path on ``location`` (files)
      ``replace``      send ``body`` instead of the file, a hostile document say (files)
    Hostile answers (issue 14), all on the attachments routes unless said otherwise:
      ``deep``         200 whose body nests ``depth`` arrays inside each other (default 5000)
      ``timestamp``    every attachment's ``remote_created_at``/``remote_updated_at`` set to
                       ``value`` (``...T10:00:00z``, ``...T23:59:60Z``, ``+01:00``, a date alone)
      ``duplicate``    the first attachment listed twice
      ``many``         the listing holds ``depth`` attachments (copies of the first, new ids)
      ``foreign``      the first attachment's ``candidate_id`` names another candidate
                       (``value``, or the world's next candidate)
      ``data_url``     the first attachment's ``data_url`` replaced by ``value``
                       (default ``http://[::1/x``, a malformed IPv6 host)
      ``endless``      200 whose body never ends (JSON that opens and keeps going), until the
                       client goes away or ``seconds`` pass (0: no bound)
      ``trickle``      the real answer, one byte every ``seconds``, headers first (API or files;
                       ``value="headers"`` trickles the headers too)
      ``echo_key``     answer ``status``/``code`` with Kombo's envelope, its message and title
                       echoing the request's Authorization header, as a misconfigured proxy does
    match: a substring of the request path (a candidate or attachment id); None matches all.
    times: how many requests it hits before it is spent; None means every one.
    """

    kind: str
    match: str | None = None
    times: int | None = 1
    status: int = 429
    code: str | None = "PLATFORM.RATE_LIMIT_EXCEEDED"
    retry_after: float | None = None
    seconds: float = 0.0
    content_type: str = "application/pdf"
    location: str = ""
    body: bytes = b""
    target: str = "api"  # api or files
    depth: int = 5000
    value: str | None = None
    hits: int = 0


# The ``match`` of an integration-wide error fault (``SandboxState.set_error``): every path.
_WIDE = "\x00integration-wide"
_FILE_KINDS = {"truncate", "corrupt", "expired", "redirect", "replace"}
_ENDLESS_BYTES_PER_SECOND = 32 * 1024 * 1024
# Kinds that decide an API answer (``slow`` only delays one).
_API_ANSWER_KINDS = {
    "error",
    "html503",
    "broken_json",
    "bad_schema",
    "bad_unicode",
    "deep",
    "timestamp",
    "duplicate",
    "many",
    "foreign",
    "data_url",
    "endless",
    "trickle",
    "echo_key",
}


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    refused_concurrency: int = 0
    auth_headers_on_files: int = 0
    file_requests: int = 0
    file_connections: int = 0  # TCP connections that carried at least one download

    def count(self, route: str) -> None:
        self.requests[route] = self.requests.get(route, 0) + 1


class SandboxState:
    """Everything the handler reads; shared by the server's threads."""

    def __init__(
        self,
        world: World,
        *,
        api_key: str = DEFAULT_API_KEY,
        integration_id: str = DEFAULT_INTEGRATION_ID,
        latency: float = 0.0,
        download_latency: float = 0.0,
        concurrency_limit: int = 30,
        others_in_flight: int = 0,
        link_ttl: float = 7 * 24 * 3600,
        tenant: int = 0,
    ) -> None:
        self.world = world
        # Which of the server's integrations this is (0: the first): its download links say
        # it, so that a file is looked up in its own world.
        self.tenant = tenant
        self.api_key = api_key
        self.integration_id = integration_id
        self.latency = latency
        self.download_latency = download_latency
        self.concurrency_limit = concurrency_limit
        # Actions another client of the same integration keeps in flight all the time: they
        # use up part of the limit, and only the headers tell our client so.
        self.others_in_flight = others_in_flight
        self.link_ttl = link_ttl
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.lock = threading.Lock()
        self._secret = hashlib.sha256(f"sandbox-links:{world.seed}".encode()).digest()

    # -- faults ------------------------------------------------------------------------------

    def add_fault(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        fault = fault or Fault(**kwargs)
        if fault.kind in _FILE_KINDS:
            fault.target = "files"
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, path: str, target: str, kinds: set[str] | None = None) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.target != target:
                    continue
                if kinds is not None and fault.kind not in kinds:
                    continue
                if fault.match is not None and fault.match != _WIDE and fault.match not in path:
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                fault.hits += 1
                return fault
        return None

    # -- links -------------------------------------------------------------------------------

    def sign(self, attachment_id: str, expires: int) -> str:
        message = f"{attachment_id}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def data_url(self, origin: str, attachment_id: str) -> str:
        expires = int(time.time() + self.link_ttl)
        token = self.sign(attachment_id, expires)
        link = f"{origin}/files/{attachment_id}?expires={expires}&token={token}"
        return link + (f"&tenant={self.tenant}" if self.tenant else "")

    def set_error(self, code: str | None) -> None:
        """Answer every API call of this integration with an integration-wide error
        (``INTEGRATION.INACTIVE``, ``INTEGRATION.PERMISSION_MISSING``, ...), or stop."""
        with self.lock:
            self.faults = [f for f in self.faults if f.match != _WIDE]
        if code is not None:
            status = 401 if "AUTHENTICATION" in code else 409 if "SETUP" in code else 403
            self.add_fault(kind="error", status=status, code=code, times=None, match=_WIDE)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold each answer back by tens of milliseconds.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox: " + format, *args)

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        """The integration this request is for (set by ``_api``/``_file``), else the first."""
        return self.__dict__.get("_tenant") or self.server.state

    @property
    def origin(self) -> str:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET address: never bytes
        return f"http://{host}:{port}"

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: dict[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        self._json(
            status,
            {
                "status": "error",
                "error": {
                    "code": code,
                    "title": title or _TITLES.get(code or ""),
                    "message": message,
                    "log_url": "https://app.kombo.dev/sandbox/logs?interactionId=sandbox",
                },
            },
            headers,
        )

    def _html503(self) -> None:
        self._send(
            503,
            b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
            "text/html",
        )

    # -- routing -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._tenant: SandboxState | None = None  # a kept-alive connection's last is not this
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query)
        try:
            if path.startswith("/files/"):
                self._file(unquote(path[len("/files/") :]), query)
            elif path.startswith("/v1/"):
                self._api(path[len("/v1") :], query)
            elif path == "/_sandbox/stats":
                # ?integration=ID: that integration's own (each has its own stats)
                named = (query.get("integration") or [""])[0]
                state = self.server.tenants.get(named, self.state)
                with state.lock:
                    self._json(200, asdict(state.stats))
            else:
                self._error(404, None, f"No route for GET {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_sandbox/faults":
            payload = json.loads(body or b"{}")
            for item in payload if isinstance(payload, list) else [payload]:
                if isinstance(item.get("body"), str):
                    # JSON carries bytes as text: each character one byte (\u0000-\u00ff).
                    item["body"] = item["body"].encode("latin-1")
                self.state.add_fault(**item)
            self._json(200, {"faults": len(self.state.faults)})
        elif self.path == "/_sandbox/faults/clear":
            self.state.clear_faults()
            self._json(200, {"faults": 0})
        else:
            self._error(404, None, f"No route for POST {self.path}")

    def _api(self, route: str, query: dict[str, list[str]]) -> None:
        state = self.state
        segments = [unquote(s) for s in route.strip("/").split("/")]
        is_action = len(segments) == 4 and segments[3] == "attachments"
        # Counted in the stats of the integration the call names (the first's when it names
        # none it has), so that each integration's stats hold its own calls.
        counted = self.server.tenants.get(self.headers.get("X-Integration-Id") or "", state)
        with counted.lock:
            counted.stats.count(
                "action" if is_action else "list" if segments == ["ats", "candidates"] else "other"
            )
        authorization = self.headers.get("Authorization", "")
        if authorization != f"Bearer {state.api_key}":
            self._error(
                401,
                "PLATFORM.AUTHENTICATION_INVALID",
                "The provided API key is invalid or missing.",
            )
            return
        integration = self.headers.get("X-Integration-Id")
        if not integration:
            self._error(400, "PLATFORM.INPUT_INVALID", "The X-Integration-Id header is missing.")
            return
        tenant = self.server.tenants.get(integration)
        if tenant is not None:
            self._tenant = state = tenant
        if integration != state.integration_id:
            self._error(
                404,
                "PLATFORM.INTEGRATION_NOT_FOUND",
                f"No integration with the id {integration} exists in this environment.",
            )
            return
        if not is_action:
            self._api_inner(segments, query, route, None)
            return
        # Actions count against the integration's concurrency limit, as at Kombo.
        with state.lock:
            if state.stats.in_flight + state.others_in_flight >= state.concurrency_limit:
                state.stats.refused_concurrency += 1
                refused = True
            else:
                refused = False
                state.stats.in_flight += 1
                state.stats.max_in_flight = max(state.stats.max_in_flight, state.stats.in_flight)
            remaining = max(
                0, state.concurrency_limit - state.others_in_flight - state.stats.in_flight
            )
        headers = {
            "Concurrency-Limit": str(state.concurrency_limit),
            "Concurrency-Remaining": str(remaining),
        }
        if refused:
            self._error(
                429,
                "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
                "Too many concurrent actions for this integration.",
                headers,
            )
            return
        try:
            self._api_inner(segments, query, route, headers)
        finally:
            with state.lock:
                state.stats.in_flight -= 1

    def _api_inner(
        self,
        segments: list[str],
        query: dict[str, list[str]],
        route: str,
        headers: dict[str, str] | None,
    ) -> None:
        state = self.state
        if state.latency:
            time.sleep(state.latency)
        fault = state.take_fault(route, "api", {"slow"})
        if fault is not None:
            time.sleep(fault.seconds)
        fault = state.take_fault(route, "api", _API_ANSWER_KINDS)
        if fault is not None and fault.kind == "error":
            extra = dict(headers or {})
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            self._error(fault.status, fault.code, f"Scripted fault {fault.code}.", extra)
            return
        if fault is not None and fault.kind == "echo_key":
            echoed = self.headers.get("Authorization", "")
            self._error(
                fault.status,
                fault.code,
                f"upstream refused the request (Authorization: {echoed})",
                headers,
                title=f"Bad gateway for {echoed}",
            )
            return
        if fault is not None and fault.kind == "endless":
            self._endless(fault.seconds)
            return
        if fault is not None and fault.kind == "html503":
            self._html503()
            return
        if segments == ["ats", "candidates"]:
            self._list_candidates(query)
            return
        if len(segments) == 4 and segments[0] == "ats" and segments[3] == "attachments":
            if segments[1] == "candidates":
                payload = self._candidate_attachments(segments[2])
            elif segments[1] == "applications":
                payload = self._application_attachments(segments[2])
            else:
                payload = None
            if payload is None:
                self._error(
                    404,
                    "PLATFORM.INPUT_INVALID",
                    f"No {segments[1][:-1]} with the ID {segments[2]} was found.",
                )
                return
            if fault is not None and fault.kind == "broken_json":
                body = json.dumps(payload).encode()
                self._send(200, body[: len(body) // 2], "application/json", headers)
                return
            if fault is not None and fault.kind == "bad_schema" and payload["data"]["results"]:
                del payload["data"]["results"][0]["data_url"]
            if fault is not None and fault.kind == "bad_unicode" and payload["data"]["results"]:
                payload["data"]["results"][0]["file_name"] += "\ud800"
            if fault is not None:
                payload = self._hostile(fault, payload, segments[2])
            body = json.dumps(payload).encode()
            if fault is not None and fault.kind == "deep":
                # Built as text: json.dumps itself would recurse too deep.
                nested = b"[" * fault.depth + b"]" * fault.depth
                body = body.replace(b'"__deep__"', nested, 1)
            if fault is not None and fault.kind == "trickle":
                self._trickle(
                    200,
                    body,
                    "application/json",
                    headers,
                    fault.seconds,
                    headers_too=fault.value == "headers",
                )
                return
            self._send(200, body, "application/json", headers)
            return
        self._error(404, None, f"No route for GET /v1{route}")

    # -- hostile answers ---------------------------------------------------------------------

    def _hostile(self, fault: Fault, payload: dict[str, Any], subject_id: str) -> dict[str, Any]:
        results: list[dict[str, Any]] = payload["data"]["results"]
        if fault.kind == "deep":
            payload["data"]["nested"] = "__deep__"
        elif fault.kind == "timestamp":
            for item in results:
                item["remote_created_at"] = item["remote_updated_at"] = fault.value
        elif fault.kind == "duplicate" and results:
            results.append(dict(results[0]))
        elif fault.kind == "many" and results:
            first = results[0]
            results[:] = [
                {**first, "id": f"{first['id'][:16]}{n:08d}".replace("0", "z")}
                for n in range(fault.depth)
            ]
        elif fault.kind == "foreign" and results:
            others = [c for c in self.state.world.candidates if c != subject_id]
            results[0]["candidate_id"] = fault.value or (others[0] if others else "x" * 24)
        elif fault.kind == "data_url" and results:
            results[0]["data_url"] = fault.value if fault.value is not None else "http://[::1/x"
        return payload

    def _endless(self, seconds: float) -> None:
        """A success answer that never ends: no length, and JSON that keeps going."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        filler = (b'{"id": "' + b"x" * 1000 + b'"},') * 64
        # At a fast link's pace, not the loopback's: a client that reads it all (as one
        # without a cap does) grows by tens of MB a second, not by gigabytes.
        pause = len(filler) / _ENDLESS_BYTES_PER_SECOND
        stop = time.monotonic() + seconds if seconds else None
        with contextlib.suppress(OSError):
            self.wfile.write(b'{"status": "success", "data": {"results": [')
            while stop is None or time.monotonic() < stop:
                self.wfile.write(filler)
                time.sleep(pause)

    def _trickle(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None,
        seconds: float,
        *,
        headers_too: bool = False,
    ) -> None:
        """Headers at once (or, ``headers_too``, trickled as well), then the body one byte
        every ``seconds``."""
        fields = {"Content-Type": content_type, "Content-Length": str(len(body))}
        fields.update(headers or {})
        if headers_too:
            head = f"HTTP/1.1 {status} OK\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in fields.items()
            )
            body = (head + "\r\n").encode("latin-1") + body
        else:
            self.send_response(status)
            for name, value in fields.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
        with contextlib.suppress(OSError):
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(seconds)
        self.close_connection = True

    # -- API answers -------------------------------------------------------------------------

    def _attachment_json(self, attachment: SandboxAttachment) -> dict[str, Any]:
        content_type = attachment.content_type
        fault = self.state.take_fault(attachment.id, "api", {"content_type"})
        if fault is not None:
            content_type = fault.content_type
        return {
            "id": attachment.id,
            "application_id": attachment.application_id,
            "candidate_id": attachment.candidate_id,
            "type": attachment.type,
            "remote_id": attachment.remote_id,
            "data_url": self.state.data_url(self.origin, attachment.id),
            "file_name": attachment.file_name,
            "content_type": content_type,
            "remote_created_at": iso(attachment.remote_created_at),
            "remote_updated_at": iso(attachment.remote_updated_at),
        }

    def _warnings(self, candidate: SandboxCandidate) -> list[dict[str, str]]:
        if any(a.kind == "png" for a in candidate.attachments):
            return [{"message": "Attachment photo.png has no text layer in the source ATS."}]
        return []

    def _candidate_attachments(self, candidate_id: str) -> dict[str, Any] | None:
        world = self.state.world
        with world.lock:
            candidate = world.candidates.get(candidate_id)
            if candidate is None or candidate.deleted_at is not None:
                return None
            results = [self._attachment_json(a) for a in candidate.attachments]
            warnings = self._warnings(candidate)
        return {"status": "success", "data": {"results": results}, "warnings": warnings}

    def _application_attachments(self, application_id: str) -> dict[str, Any] | None:
        world = self.state.world
        with world.lock:
            for candidate in world.candidates.values():
                if any(app.id == application_id for app in candidate.applications):
                    if candidate.deleted_at is not None:
                        return None
                    results = [
                        self._attachment_json(a)
                        for a in candidate.attachments
                        if a.application_id in (None, application_id)
                    ]
                    # KOMBO.md: application-level items carry no candidate/application id.
                    for item in results:
                        del item["candidate_id"], item["application_id"]
                    return {"status": "success", "data": {"results": results}, "warnings": []}
        return None

    def _list_candidates(self, query: dict[str, list[str]]) -> None:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        try:
            page_size = int(one("page_size") or 100)
        except ValueError:
            self._error(400, "PLATFORM.INPUT_INVALID", "page_size must be an integer.")
            return
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            self._error(400, "PLATFORM.INPUT_INVALID", "page_size must be between 1 and 250.")
            return
        cursor = one("cursor")
        if cursor is not None:
            try:
                params = json.loads(bytes.fromhex(cursor).decode())
                offset = int(params["offset"])
                updated_after = params.get("updated_after")
                include_deleted = bool(params.get("include_deleted"))
            except (ValueError, KeyError, TypeError):
                self._error(400, "PLATFORM.INPUT_INVALID", "The cursor is invalid.")
                return
        else:
            offset = 0
            updated_after = one("updated_after")
            include_deleted = (one("include_deleted") or "false").lower() == "true"
        since = None
        if updated_after:
            try:
                since = datetime.fromisoformat(updated_after.replace("Z", "+00:00"))
            except ValueError:
                self._error(400, "PLATFORM.INPUT_INVALID", "updated_after is not a date-time.")
                return
        world = self.state.world
        with world.lock:
            chosen = [
                c
                for c in world.ordered()
                if (include_deleted or c.deleted_at is None)
                and (since is None or c.changed_at > since)
            ]
            page = chosen[offset : offset + page_size]
            results = [_candidate_json(c) for c in page]
        next_cursor = None
        if offset + page_size < len(chosen):
            next_cursor = (
                json.dumps(
                    {
                        "offset": offset + page_size,
                        "updated_after": updated_after,
                        "include_deleted": include_deleted,
                    }
                )
                .encode()
                .hex()
            )
        self._json(
            200,
            {
                "status": "success",
                "data": {"next": next_cursor, "results": results},
                "warnings": [],
            },
        )

    # -- files -------------------------------------------------------------------------------

    def _file(self, attachment_id: str, query: dict[str, list[str]]) -> None:
        number = (query.get("tenant") or ["0"])[0]
        for tenant in self.server.tenants.values():
            if str(tenant.tenant) == number:
                self._tenant = tenant
        state = self.state
        with state.lock:
            state.stats.file_requests += 1
            if not getattr(self, "_served_a_file", False):
                self._served_a_file = True  # one handler per connection
                state.stats.file_connections += 1
            state.stats.count("file")
            if self.headers.get("Authorization") or self.headers.get("X-Integration-Id"):
                state.stats.auth_headers_on_files += 1
        if state.download_latency:
            time.sleep(state.download_latency)
        fault = state.take_fault(attachment_id, "files", {"slow"})
        if fault is not None:
            time.sleep(fault.seconds)
        expires = (query.get("expires") or ["0"])[0]
        token = (query.get("token") or [""])[0]
        valid = expires.isdigit() and hmac.compare_digest(
            token, state.sign(attachment_id, int(expires))
        )
        fault = state.take_fault(attachment_id, "files", _FILE_KINDS | {"html503", "trickle"})
        if fault is not None and fault.kind == "redirect":
            self._send(302, b"", "text/plain", {"Location": f"{fault.location}{self.path}"})
            return
        if not valid or int(expires) < time.time() or (fault and fault.kind == "expired"):
            self._send(
                403,
                b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                "application/xml",
            )
            return
        if fault is not None and fault.kind == "html503":
            self._html503()
            return
        world = state.world
        with world.lock:
            attachment = world.attachments.get(attachment_id)
        if attachment is None:
            self._send(404, b"Not Found", "text/plain")
            return
        body = world.body(attachment_id)
        mime = {
            "pdf": "application/pdf",
            "png": "image/png",
            "txt": "text/plain",
            "docx": attachment.content_type,
        }.get(attachment.kind, "application/octet-stream")
        disposition = f"attachment; filename*=UTF-8''{quote(attachment.file_name)}"
        if fault is not None and fault.kind == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "corrupt":
            body = (b"\x00garbage\xff" * (len(body) // 10 + 1))[: len(body)]
        elif fault is not None and fault.kind == "replace":
            body = fault.body
        elif fault is not None and fault.kind == "trickle":
            self._trickle(
                200,
                body,
                mime,
                {"Content-Disposition": disposition},
                fault.seconds,
                headers_too=fault.value == "headers",
            )
            return
        self._send(200, body, mime, {"Content-Disposition": disposition})


def _candidate_json(c: SandboxCandidate) -> dict[str, Any]:
    """A candidate with every field the official SDK's model requires."""
    return {
        "id": c.id,
        "remote_id": c.remote_id,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "company": None,
        "title": c.title,
        "confidential": False,
        "source": "sandbox",
        "phone_numbers": [],
        "email_addresses": [{"email_address": c.email, "type": "PERSONAL"}],
        "social_media": [],
        "location": {
            "city": c.city,
            "country": None,
            "raw": c.city,
            "state": None,
            "street_1": None,
            "street_2": None,
            "zip_code": None,
        },
        "custom_fields": {},
        "integration_fields": [],
        "remote_url": None,
        "remote_created_at": iso(c.created_at),
        "remote_updated_at": iso(c.changed_at),
        "remote_data": None,
        "changed_at": iso(c.changed_at),
        "remote_deleted_at": iso(c.deleted_at),
        "applications": [
            {
                "id": app.id,
                "remote_id": app.remote_id,
                "outcome": "PENDING",
                "rejection_reason_name": None,
                "rejected_at": None,
                "remote_url": None,
                "changed_at": iso(app.changed_at),
                "remote_created_at": iso(app.changed_at),
                "remote_updated_at": iso(app.changed_at),
                "current_stage": None,
                "job": {
                    "id": app.job_id,
                    "name": app.job_name,
                    "remote_id": f"job-{app.job_id[:6]}",
                },
            }
            for app in c.applications
        ],
        "tags": [],
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    state: SandboxState

    def __init__(self, address: tuple[str, int], state: SandboxState | None) -> None:
        self.tenants: dict[str, SandboxState] = {}  # integration id -> its state
        if state is not None:
            self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a run cut short, a timeout, Ctrl-C) is what a
        # real server sees every day: not worth a traceback on the sandbox's stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s hung up", client_address)
            return
        super().handle_error(request, client_address)


class SandboxServer:
    """Serve a world on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self,
        world: World | None = None,
        *,
        port: int = 0,
        candidates: int = 20,
        seed: int = 7,
        cache_dir: Path | None = None,
        **state_options: Any,
    ) -> None:
        # The port first: a port already taken is told at once, not after building (and,
        # with a cache, rendering) thousands of documents. Nothing is served before start().
        self._server = _Server(("127.0.0.1", port), None)
        try:
            self.world = world or World(candidates=candidates, seed=seed, cache_dir=cache_dir)
            self.state = SandboxState(self.world, **state_options)
        except BaseException:
            self._server.server_close()
            raise
        self._server.state = self.state
        self._server.tenants[self.state.integration_id] = self.state
        self._state_options = state_options
        self._thread: threading.Thread | None = None

    def add_integration(
        self,
        integration_id: str,
        world: World | None = None,
        *,
        candidates: int = 20,
        seed: int = 7,
        error: str | None = None,
        **state_options: Any,
    ) -> SandboxState:
        """Another integration under the same API key: its own world (the same seed gives
        the same candidate ids and bytes as another's: two customers with identical data),
        concurrency limit, faults and stats. ``error``: answer every call with that
        integration-wide code (``SandboxState.set_error``)."""
        options = {
            **{k: v for k, v in self._state_options.items() if k != "integration_id"},
            **state_options,
        }
        options.setdefault("api_key", self.state.api_key)
        state = SandboxState(
            world or World(candidates=candidates, seed=seed),
            integration_id=integration_id,
            tenant=len(self._server.tenants),
            **options,
        )
        if error is not None:
            state.set_error(error)
        self._server.tenants[integration_id] = state
        return state

    def integration(self, integration_id: str) -> SandboxState:
        return self._server.tenants[integration_id]

    @property
    def integration_ids(self) -> list[str]:
        return list(self._server.tenants)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def integration_id(self) -> str:
        return self.state.integration_id

    @property
    def stats(self) -> Stats:
        return self.state.stats

    def add_fault(self, **kwargs: Any) -> Fault:
        return self.state.add_fault(**kwargs)

    def env(self) -> dict[str, str]:
        return {
            "KOMBO_BASE_URL": self.base_url,
            "KOMBO_API_KEY": self.api_key,
            "KOMBO_INTEGRATION_ID": self.integration_id,
        }

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kombo-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
