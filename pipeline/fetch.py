"""Fetch stage: a Kombo client (on httpcore, under httpx) for the calls the pipeline makes.

Every answer is read with bounds before it is believed: a body larger than
:data:`MAX_API_BODY_BYTES` is not read further, JSON nested deeper than :data:`MAX_JSON_DEPTH`
is refused before it is parsed, a listing holds at most :data:`MAX_LISTED_ATTACHMENTS`, and a
whole answer (headers and body) must arrive within ``--timeout``. Success bodies are validated
against the seed's JSON Schema, then normalised: timestamps in any ISO 8601 form become aware
UTC datetimes (or None, with a warning), an attachment listed twice is kept once, and an
attachment naming another candidate or carrying an unusable ``data_url`` fails that listing
with the reason. Every error answer becomes a :class:`~pipeline.errors.KomboError` carrying
Kombo's code. Retries follow Kombo's guide: only the retryable codes, load-balancer 503s, 5xx
with a null code and transport failures are tried again, with exponential backoff and jitter,
``Retry-After`` honoured within the cap. The API key is redacted (:func:`redact`) from every
text Kombo or a library sends back before it leaves this module.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

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
    UsageError,
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

# A page of 250 candidates with their applications is a few hundred kB; a body past this is
# a server that floods (or never ends), and it is not read further.
MAX_API_BODY_BYTES = 8 * 1024 * 1024
# Kombo's deepest documented answer is under ten levels; ``remote_data`` (the ATS's own
# record) may add some. Deeper JSON would exhaust the parser's and the validator's stacks.
MAX_JSON_DEPTH = 100
# One candidate's attachments, in one answer (Kombo does not page them).
MAX_LISTED_ATTACHMENTS = 1000

REDACTED = "[redacted]"


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` (the API key), in plain or URL-encoded spelling.

    The one redaction of this module: every text Kombo, a proxy or a library sends back
    (error messages, titles, warnings, file names, exception texts) goes through it.
    """
    if not secret or not text:
        return text
    for spelling in _spellings(secret):
        if spelling in text:
            text = text.replace(spelling, REDACTED)
    return text


@cache
def _spellings(secret: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((secret, quote(secret, safe=""), quote(secret))))


# -- timestamps ----------------------------------------------------------------------------------

_LEAP_SECOND = re.compile(r"^(.*T\d\d:?\d\d:?)60(?=[.,]\d+|Z|[+-]|$)")
_END_OF_DAY = re.compile(r"^(.*T)24((?::?00(?::?00(?:[.,]0+)?)?)?)(?=Z|[+-]|$)")
_ORDINAL_DATE = re.compile(r"^(\d{4})-?(\d{3})(?=T|$)")


def parse_time(value: object) -> datetime | None:
    """A time from Kombo as an aware UTC datetime; None for null, ValueError if unreadable.

    Accepts what ISO 8601 and RFC 3339 allow: ``z`` or ``Z`` or an offset (``+01:00``,
    ``+0100``, ``+01``), with or without a fraction (of any length), basic or extended form,
    a date alone (midnight UTC), week and ordinal dates, a leap second (``23:59:60``, the
    first instant of the next minute) and ``24:00`` (the end of the day). No offset means UTC.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValueError("not a date-time")
    text = value.strip().upper()
    extra = timedelta(0)
    leap = _LEAP_SECOND.match(text)
    if leap:
        text = leap.group(1) + "59" + text[leap.end() :]
        extra = timedelta(seconds=1)
    else:
        midnight = _END_OF_DAY.match(text)
        if midnight:
            text = midnight.group(1) + "00" + midnight.group(2) + text[midnight.end() :]
            extra = timedelta(days=1)
    ordinal = _ORDINAL_DATE.match(text)
    if ordinal:
        day = datetime.strptime(f"{ordinal.group(1)}-{ordinal.group(2)}", "%Y-%j")
        text = day.strftime("%Y-%m-%d") + text[ordinal.end() :]
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed + extra).astimezone(UTC)


def _lenient_time(value: object, what: str, warnings: list[str]) -> datetime | None:
    """:func:`parse_time`, or None and a warning: one odd timestamp must not fail a listing."""
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        shown = json.dumps(value, ensure_ascii=True, default=str)[:40]
        warnings.append(f"{what} {shown} is not a date-time; kept as unknown")
        return None


# -- data_url ----------------------------------------------------------------------------------

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def data_url_problem(url: object) -> str | None:
    """Why ``url`` cannot be downloaded (the downloader's own reading of it), or None."""
    if not isinstance(url, str) or not url:
        return "it is empty"
    if _CONTROL_OR_SPACE.search(url):
        return "it holds spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"it is malformed ({exc})"
    if parts.scheme not in ("http", "https"):
        return "it is not an http(s) URL"
    if not host:
        return "it names no host"
    try:
        host.encode("idna")
        (parts.path + parts.query).encode("ascii")
    except UnicodeError:
        return "its host or path cannot be sent as it is"
    return None


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
    def from_api(
        cls,
        item: dict[str, Any],
        candidate_id: str | None = None,
        *,
        warnings: list[str] | None = None,
        clean: Callable[[str], str] = lambda text: text,
    ) -> RemoteAttachment:
        """One schema-checked item; odd timestamps become None with a line in ``warnings``."""
        notes = [] if warnings is None else warnings
        what = f"attachment {item['id']}:"
        return cls(
            id=item["id"],
            # Application-level answers carry no candidate id: the caller knows it.
            candidate_id=item.get("candidate_id") or candidate_id or "",
            application_id=item.get("application_id"),
            type=item["type"],
            remote_id=clean(item["remote_id"]),
            data_url=item["data_url"],
            file_name=clean(item["file_name"]),
            content_type=clean(item["content_type"]),
            remote_created_at=_lenient_time(
                item.get("remote_created_at"), f"{what} remote_created_at", notes
            ),
            remote_updated_at=_lenient_time(
                item.get("remote_updated_at"), f"{what} remote_updated_at", notes
            ),
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
        """The body parsed; ValueError for what is not JSON or is nested too deep."""
        if _json_depth(self.content) > MAX_JSON_DEPTH:
            raise _TooDeepError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        data = json.loads(self.content)
        if _SURROGATE_ESCAPE.search(self.content):
            # JSON can spell a lone UTF-16 surrogate ("\ud800"): a server that sends one gets
            # its text mended rather than stop the run at the database.
            data = _mended(data)
        return data


class _TooDeepError(ValueError):
    pass


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A JSON string, escapes included: what lies inside one is not structure.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _json_depth(content: bytes) -> int:
    """How deep arrays and objects nest in ``content``, counted without recursion (so before
    parsing: the parser and the schema validator recurse, and deep input exhausts them)."""
    if content.count(b"[") + content.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot nest deeper than it opens: the common, small answer
    skeleton = _JSON_STRING.sub(b"", content).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in skeleton:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def _mended(value: Any) -> Any:
    if isinstance(value, str):
        return mend_surrogates(value)
    if isinstance(value, dict):
        return {_mended(k): _mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mended(v) for v in value]
    return value


# -- the connection layer ----------------------------------------------------------------------


class _Deadlines(httpcore.NetworkBackend):
    """httpcore's own socket backend, with every connect, read and write of a call bounded
    by that call's deadline as well as by its per-operation timeout.

    httpcore's timeouts bound the silence between two reads; a server that sends one byte
    every few seconds never trips them. The deadline (per thread: each call runs on its
    caller's thread) bounds the whole answer, headers and body.
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._local = threading.local()

    def set_deadline(self, deadline: float | None) -> None:
        self._local.deadline = deadline

    def bound(self, timeout: float | None, error: type[Exception]) -> float | None:
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error("the call's deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            timeout=self.bound(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - the API is reached over TCP
        stream = self._inner.connect_unix_socket(
            path,
            timeout=self.bound(timeout, httpcore.ConnectTimeout),
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:  # pragma: no cover - used by httpcore's retries
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _Deadlines) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._backend.bound(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def environment_proxy(url: str) -> str | None:
    """The proxy URL the environment names for ``url``, read as httpx reads it
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, in any case), or None."""
    # httpx publishes no function for this: its Client reads the environment through these
    # two helpers, and using them keeps the rules (NO_PROXY's curl-like patterns) identical.
    from httpx._utils import URLPattern, get_environment_proxies

    target = httpx.URL(url)
    patterns = sorted(
        ((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()),
        key=lambda pair: pair[0],  # URLPattern orders the most specific first
    )
    for pattern, proxy in patterns:
        if pattern.matches(target):
            return proxy
    return None


def tls_context() -> ssl.SSLContext:
    """httpx's TLS context (certifi's roots, or SSL_CERT_FILE and SSL_CERT_DIR as httpx's
    trust_env reads them), for the API client and the downloads alike."""
    try:
        return httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            "the CA certificates named by SSL_CERT_FILE or SSL_CERT_DIR cannot be read: "
            f"{exc.strerror or exc}"
        ) from exc


def _connection_pool(
    base_url: str, backend: _Deadlines, *, connections: int
) -> httpcore.ConnectionPool:
    ssl_context = tls_context()
    common: dict[str, Any] = {
        "ssl_context": ssl_context,
        "max_connections": connections,
        "max_keepalive_connections": connections,
        "network_backend": backend,
    }
    proxy_url = environment_proxy(base_url)
    if proxy_url is None:
        return httpcore.ConnectionPool(**common)
    try:
        proxy = httpx.Proxy(proxy_url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise UsageError(f"the proxy URL in the environment cannot be used: {exc}") from exc
    url = proxy.url
    proxy_core_url = httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )
    log.info("calling Kombo through the proxy at %s", url.copy_with(username=None, password=None))
    if url.scheme in ("socks5", "socks5h"):
        try:
            return httpcore.SOCKSProxy(
                proxy_url=proxy_core_url, proxy_auth=proxy.raw_auth, **common
            )
        except (ImportError, RuntimeError) as exc:  # httpcore without socksio
            raise UsageError(
                "a SOCKS proxy needs the socksio package: pip install 'httpx[socks]'"
            ) from exc
    # For an https API the proxy sees only a CONNECT to its host and port: the key travels
    # inside the tunnel, to the API's origin alone.
    return httpcore.HTTPProxy(
        proxy_url=proxy_core_url,
        proxy_auth=proxy.raw_auth,
        proxy_headers=proxy.headers.raw,
        proxy_ssl_context=proxy.ssl_context if url.scheme == "https" else None,
        **common,
    )


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
        self._key = settings.api_key.reveal()
        # The key lives in these headers only; they never follow a redirect (none is
        # followed), and the downloader has a connection pool of its own, so no other origin
        # ever sees the key.
        self._headers = [
            (b"Authorization", f"Bearer {self._key}".encode()),
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
        self._deadlines = _Deadlines()
        self._http = _connection_pool(
            settings.base_url, self._deadlines, connections=settings.concurrency + 4
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

    def redact(self, text: str) -> str:
        """:func:`redact` with this client's key."""
        return redact(text, self._key)

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
        return self._listing(body, subject, candidate_id, foreign_check=True)

    def application_attachments(self, application_id: str, candidate_id: str) -> AttachmentList:
        subject = f"application {application_id}"
        body = self._call(
            f"/ats/applications/{quote(application_id, safe='')}/attachments",
            params=None,
            subject=subject,
            schema=APPLICATION_ATTACHMENTS_SCHEMA,
            action=True,
        )
        for item in body["data"]["results"]:
            item.setdefault("application_id", None)
        # KOMBO.md: application items carry no candidate id; one that does must be ours.
        return self._listing(body, subject, candidate_id, foreign_check=True)

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
            notes: list[str] = []
            candidates = []
            for c in data["results"]:
                what = f"candidate {c['id']}:"
                title = c.get("title")
                candidates.append(
                    RemoteCandidate(
                        id=c["id"],
                        changed_at=_lenient_time(c.get("changed_at"), f"{what} changed_at", notes),
                        remote_deleted_at=_lenient_time(
                            c.get("remote_deleted_at"), f"{what} remote_deleted_at", notes
                        ),
                        title=self.redact(title) if isinstance(title, str) else None,
                    )
                )
            cursor = data.get("next")
            warnings = self._warnings(body, "candidate list") + self._noted(notes, "candidate list")
            yield CandidatePage(candidates, cursor, warnings)
            if not cursor:
                return
            if cursor in seen_cursors:  # a server that loops would otherwise never end
                raise ResponseInvalidError("Kombo returned the same page cursor twice")
            seen_cursors.add(cursor)
            params = {"cursor": cursor, "page_size": params["page_size"]}

    # -- validation --------------------------------------------------------------------------

    def _listing(
        self, body: dict[str, Any], subject: str, candidate_id: str, *, foreign_check: bool
    ) -> AttachmentList:
        """The schema-checked answer as attachments, every item checked before any is kept:
        a listing that names another candidate or an unusable link fails whole, since what
        it says about the rest cannot be trusted either."""
        results = body["data"]["results"]
        notes: list[str] = []
        items: list[RemoteAttachment] = []
        seen: set[str] = set()
        for raw in results:
            owner = raw.get("candidate_id")
            if foreign_check and owner and owner != candidate_id:
                raise ResponseInvalidError(
                    f"Kombo's answer for {subject} lists attachment {raw['id']} of another "
                    f"candidate ({self.redact(owner)}); nothing of it is recorded"
                )
            problem = data_url_problem(raw["data_url"])
            if problem is not None:
                raise ResponseInvalidError(
                    f"Kombo's answer for {subject} gives attachment {raw['id']} a data_url "
                    f"that cannot be downloaded: {self.redact(problem)}"
                )
            if raw["id"] in seen:
                notes.append(f"attachment {raw['id']} is listed twice; the first is kept")
                continue
            seen.add(raw["id"])
            items.append(
                RemoteAttachment.from_api(raw, candidate_id, warnings=notes, clean=self.redact)
            )
        return AttachmentList(
            subject, items, self._warnings(body, subject) + self._noted(notes, subject)
        )

    def _warnings(self, body: dict[str, Any], subject: str) -> list[str]:
        messages = [self.redact(str(w.get("message", ""))) for w in body.get("warnings") or []]
        for message in messages:
            log.warning("Kombo warning for %s: %s", subject, message)
        return messages

    def _noted(self, notes: list[str], subject: str) -> list[str]:
        """Our own warnings about an answer, logged as Kombo's are."""
        notes = [self.redact(note) for note in notes]
        for note in notes:
            log.warning("odd answer for %s: %s", subject, note)
        return notes

    # -- plumbing ----------------------------------------------------------------------------

    def _call(
        self,
        path: str,
        *,
        params: dict[str, str] | None,
        subject: str,
        schema: str,
        action: bool,
    ) -> dict[str, Any]:
        # The retry budget holds inside an attempt too: the last one is cut at its end.
        budget_ends = time.monotonic() + self.settings.retry_budget
        for attempt in retrying(self.settings):
            with attempt:
                try:
                    if not action:
                        return self._once(path, params, subject, schema, {}, budget_ends)
                    return self._action(path, params, subject, schema, budget_ends)
                except PipelineError as exc:
                    self._scrubbed(exc)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _action(
        self,
        path: str,
        params: dict[str, str] | None,
        subject: str,
        schema: str,
        budget_ends: float,
    ) -> dict[str, Any]:
        # Actions (calls that reach the ATS live) count against Kombo's limit.
        ticket = self.actions.acquire()
        seen: dict[str, int | None] = {}
        refused = False
        try:
            return self._once(path, params, subject, schema, seen, budget_ends)
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

    def _scrubbed(self, exc: PipelineError) -> PipelineError:
        """``exc`` with the key gone from every text it carries (the last line of defence:
        the texts are redacted where they are read, too)."""
        exc.message = self.redact(exc.message)
        exc.args = tuple(self.redact(a) if isinstance(a, str) else a for a in exc.args)
        if isinstance(exc, KomboError):
            exc.kombo_message = self.redact(exc.kombo_message)
            exc.title = self.redact(exc.title) if exc.title else exc.title
            exc.log_url = self.redact(exc.log_url) if exc.log_url else exc.log_url
        return exc

    def _once(
        self,
        path: str,
        params: dict[str, str] | None,
        subject: str,
        schema: str,
        seen: dict[str, int | None],
        budget_ends: float,
    ) -> dict[str, Any]:
        with self._calls_lock:
            self.calls += 1
        started = time.monotonic()
        limit = self.settings.read_timeout
        deadline = min(started + limit, budget_ends)
        self._deadlines.set_deadline(deadline)
        try:
            url = self._base + path + (f"?{urlencode(params)}" if params else "")
            response = self._read(url, subject)
        except httpcore.TimeoutException as exc:
            if time.monotonic() >= deadline - 0.01:
                raise TransportError(
                    f"Kombo's answer ({subject}) did not arrive whole within "
                    f"{deadline - started:.1f} s; cut off"
                ) from exc
            raise TransportError(
                f"Kombo did not answer in time ({subject}): {type(exc).__name__}"
            ) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            # The library's own words say which: refused, a name that does not resolve, TLS.
            cause = self.redact(str(exc))[:160]
            raise TransportError(
                f"cannot reach Kombo at {self._host} ({subject}): {type(exc).__name__}"
                + (f": {cause}" if cause else "")
            ) from exc
        finally:
            self._deadlines.set_deadline(None)
        seen["remaining"] = _int_header(response, "concurrency-remaining")
        seen["limit"] = _int_header(response, "concurrency-limit")
        log.debug(
            "GET %s -> %d in %.0f ms",
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return _parse(response, subject, schema, self.redact)

    def _read(self, url: str, subject: str) -> _Answer:
        """The answer, its body read up to :data:`MAX_API_BODY_BYTES` and no further."""
        too_large = ResponseInvalidError(
            f"Kombo's answer for {subject} is larger than "
            f"{MAX_API_BODY_BYTES // (1024 * 1024)} MB; not read further"
        )
        with self._http.stream(
            "GET", url, headers=self._headers, extensions={"timeout": self._timeouts}
        ) as answer:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in answer.headers}
            declared = headers.get("content-length", "")
            if declared.strip().isdigit() and int(declared) > MAX_API_BODY_BYTES:
                raise too_large
            chunks: list[bytes] = []
            size = 0
            for chunk in answer.iter_stream():
                size += len(chunk)
                if size > MAX_API_BODY_BYTES:
                    raise too_large  # leaving the block drops the connection, unread
                chunks.append(chunk)
        return _Answer(answer.status, headers, b"".join(chunks))


def _int_header(response: _Answer, name: str) -> int | None:
    raw = response.headers.get(name)
    if raw is None or not raw.strip().isdigit() or len(raw.strip()) > 9:
        return None
    return int(raw)


def _parse(
    response: _Answer, subject: str, schema: str, clean: Callable[[str], str]
) -> dict[str, Any]:
    status = response.status_code
    try:
        body = response.json()
    except _TooDeepError as exc:
        raise ResponseInvalidError(f"Kombo's answer for {subject} is {exc}") from None
    except ValueError:  # not JSON, not UTF-8, or a number longer than Python reads
        body = None
    if status >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
        raise _error_from(response, body, subject, clean)
    if body is None:
        # A cut or garbled body is most often a network fault: worth another try.
        error = ResponseInvalidError(f"Kombo's answer for {subject} is not valid JSON")
        error.transient = True
        raise error
    data = body.get("data") if isinstance(body, dict) else None
    results = data.get("results") if isinstance(data, dict) else None
    if (
        isinstance(results, list)
        and len(results) > MAX_LISTED_ATTACHMENTS
        and schema != (CANDIDATES_SCHEMA)
    ):
        raise ResponseInvalidError(
            f"Kombo's answer for {subject} lists {len(results)} attachments, more than the "
            f"{MAX_LISTED_ATTACHMENTS} one listing may hold"
        )
    # Without the schema's ``format`` checks: timestamps are read by :func:`parse_time`,
    # which accepts every form ISO 8601 allows and turns the rest into a warning rather
    # than a failed listing.
    problem = first_error(schema, body, formats=False)
    if problem is not None:
        raise ResponseInvalidError(
            f"Kombo's answer for {subject} does not match the documented schema: {clean(problem)}"
        )
    return body


def _error_from(
    response: _Answer, body: object, subject: str, clean: Callable[[str], str]
) -> PipelineError:
    status = response.status_code
    retry_after = _retry_after(response)
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict) and isinstance(envelope.get("message"), str):
        title, log_url = envelope.get("title"), envelope.get("log_url")
        return kombo_error(
            code=envelope.get("code") if isinstance(envelope.get("code"), str) else None,
            title=clean(title) if isinstance(title, str) else None,
            message=clean(envelope["message"])[:500],
            log_url=clean(log_url) if isinstance(log_url, str) else None,
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
