"""Kombo's webhooks: the signature first, then the event, acted on once, answered at once.

``X-Kombo-Signature`` is the HMAC-SHA256 of the raw body with the account's webhook secret,
base64url without ``=`` padding (KOMBO.md). It is checked against the raw bytes before the
body is parsed, in constant time; without it, or wrong, the answer is 401 and nothing
changes. What an event asks for (a run, a pause, an erasure) is handed to a background
thread or the run coordinator, so the answer comes in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Models whose change can change what we hold (candidates, their applications, their files).
WATCHED_MODELS = frozenset({"ats_candidates", "ats_applications", "ats_attachments"})
# A webhook body is a few hundred bytes: anything near this is not Kombo's.
MAX_BODY_BYTES = 1024 * 1024
# Event ids remembered for "the same id twice is done once" (at-least-once delivery
# repeats within minutes; the oldest are forgotten first).
SEEN_EVENTS = 50_000


def signature(secret: bytes, body: bytes) -> str:
    """Kombo's signature of ``body``: HMAC-SHA256, base64url, no padding."""
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signature_ok(secret: bytes | None, body: bytes, header: str | None) -> bool:
    if not secret or not header:
        return False
    expected = signature(secret, body).encode("ascii")
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


class Lifecycle(Protocol):
    """What the webhook acts through (the server's integrations adapter)."""

    def registered(self, integration_id: str) -> bool: ...
    def request_run(self, integration_id: str) -> str: ...
    def state_changed(self, integration_id: str, state: str) -> None: ...
    def deleted(self, integration_id: str) -> None: ...


class SeenEvents:
    """Event ids already acted on (bounded, oldest forgotten first)."""

    def __init__(self, size: int = SEEN_EVENTS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._ids:
                return False
            self._ids[event_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


@dataclass(frozen=True)
class Answer:
    status: int
    outcome: str  # also the metrics label
    message: str


def _background(work: Callable[[], None], what: str) -> None:
    def guarded() -> None:
        try:
            work()
        except Exception as exc:
            log.error("webhook %s failed: %s", what, exc)

    threading.Thread(target=guarded, daemon=True, name=f"webhook-{what}").start()


def handle(
    body: bytes, header: str | None, *, secret: bytes | None, seen: SeenEvents, act: Lifecycle
) -> Answer:
    """One webhook delivery, start to answer (the work is started, not awaited)."""
    if not signature_ok(secret, body, header):
        if not secret:
            log.error("webhook refused: KOMBO_WEBHOOK_SECRET is not set for `pipeline serve`")
        return Answer(401, "bad_signature", "missing or wrong X-Kombo-Signature")
    try:
        event = json.loads(body)
        event_id, kind, data = str(event["id"]), str(event["type"]), event.get("data") or {}
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        return Answer(400, "malformed", f"not a Kombo webhook: {exc}")
    if not seen.first_time(event_id):
        log.info("webhook %s (%s) delivered again: already acted on", event_id, kind)
        return Answer(200, "duplicate", "already acted on")
    return _act(event_id, kind, data, act)


def _integration_of(kind: str, data: dict[str, Any]) -> str | None:
    value = data.get("integration_id") if kind == "data-changed" else None
    value = value or data.get("id") or data.get("integration_id")
    return str(value) if value else None


def _act(event_id: str, kind: str, data: dict[str, Any], act: Lifecycle) -> Answer:
    integration_id = _integration_of(kind, data)
    if kind not in ("data-changed", "integration-deleted", "integration-state-changed"):
        return Answer(200, "ignored", f"{kind}: nothing to do")
    if integration_id is None:
        return Answer(400, "malformed", f"{kind} without an integration id")
    if not act.registered(integration_id):
        log.info("webhook %s (%s) for integration %s, which is not registered: nothing done",
                 event_id, kind, integration_id)  # fmt: skip
        return Answer(200, "unknown_integration", "integration not registered: nothing done")
    if kind == "data-changed":
        changed = data.get("changed_models") or []
        models = {str(m.get("name")) for m in changed if isinstance(m, dict)}
        if not models & WATCHED_MODELS:
            return Answer(200, "ignored", "no candidate, application or attachment changed")
        outcome = act.request_run(integration_id)
        log.info("webhook %s: data-changed for %s: run %s", event_id, integration_id, outcome)
        return Answer(200, f"run_{outcome}", f"run {outcome}")
    if kind == "integration-deleted":
        log.info("webhook %s: integration %s deleted at Kombo", event_id, integration_id)
        _background(lambda: act.deleted(integration_id), "integration-deleted")
        return Answer(200, "deleted", "integration deleted at Kombo: paused, erased after grace")
    state = str(data.get("state") or "").upper()
    if state not in ("ACTIVE", "INVALID", "INACTIVE"):
        return Answer(200, "ignored", f"state {state or 'missing'}: nothing to do")
    # INACTIVE or INVALID pauses it; ACTIVE takes back one that Kombo had paused.
    _background(lambda: act.state_changed(integration_id, state), "integration-state-changed")
    return Answer(200, "paused" if state != "ACTIVE" else "resumed", f"integration {state}")


__all__ = ["MAX_BODY_BYTES", "Answer", "Lifecycle", "SeenEvents", "handle", "signature"]
