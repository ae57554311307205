"""API tokens: made, kept as a hash, checked in constant time.

A token reads ``pk_<token_id>_<secret>``. ``token_id`` (public, 12 characters) finds the
row; the secret (32 random bytes, base64url) is never stored: only its SHA-256 is, and the
hash of what a request presents is compared with :func:`hmac.compare_digest`. A token never
reaches a log line: the server logs the token's name, never its text.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from ..database import ApiToken, Store, utcnow

SCOPES = ("read", "admin")
_PREFIX = "pk_"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token's name, its integration and its scope."""

    token_id: str
    name: str
    integration_id: str
    scope: str

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token(
    store: Store, *, integration_id: str, name: str | None, admin: bool
) -> tuple[ApiToken, str] | None:
    """A new token recorded in ``store``: (its row, the token text to show once).
    None when ``name`` is taken."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(
        token_id=token_id,
        name=name or f"token-{token_id}",
        integration_id=integration_id,
        scope="admin" if admin else "read",
        secret_sha256=_digest(secret),
        created_at=utcnow(),
        last_used_at=None,
    )
    if not store.add_api_token(row):
        return None
    return row, f"{_PREFIX}{token_id}_{secret}"


def split_token(text: str) -> tuple[str, str] | None:
    """(token id, secret) of a token's text, or None when it cannot be one."""
    if not text.startswith(_PREFIX) or len(text) > 200:
        return None
    token_id, sep, secret = text[len(_PREFIX) :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


def verify(store: Store, text: str, *, now: datetime | None = None) -> Principal | None:
    """The principal a token's text stands for, or None (unknown, revoked or wrong)."""
    parts = split_token(text)
    if parts is None:
        return None
    token_id, secret = parts
    row = store.api_token(token_id)
    # Hash even when there is no row: an unknown id and a wrong secret take the same time.
    presented = _digest(secret)
    expected = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(presented, expected) or row is None:
        return None
    return Principal(row.token_id, row.name, row.integration_id, row.scope)


__all__ = ["SCOPES", "Principal", "new_token", "split_token", "verify"]
