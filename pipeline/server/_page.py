"""The recruiters' page at ``/``: sign in with a token, search, read, download.

Server-side templates (Jinja2, autoescaped: text from CVs is always escaped, the search's
``<b>`` highlights are rebuilt here as ``<mark>`` around escaped text) and one small script
file; no inline script or style, so the Content-Security-Policy allows only this origin.

Sessions: signing in with a token makes a random session id kept in this process's memory
(a restart signs everyone out), sent as an HttpOnly, SameSite=Strict cookie (Secure over
HTTPS). Each request checks the token is still there, so ``tokens revoke`` signs out at
once. Every form that changes something (sign in, sign out) carries a CSRF token checked
against the session's (or, before signing in, against a cookie of its own).
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..app import SearchRequest
from ._api import (
    MAX_OFFSET,
    TYPES,
    ApiError,
    download,
    record_of,
    search_request,
    searched_blocking,
    server_of,
)
from ._searchers import SearchJob
from ._tokens import Principal

if TYPE_CHECKING:
    from ._app import Server

SESSION_COOKIE = "pipeline_session"
SIGNIN_CSRF_COOKIE = "pipeline_signin_csrf"
SESSION_SECONDS = 8 * 3600
PAGE_SIZE = 10

_BOLD = re.compile(r"<b>(.*?)</b>", re.S)


def highlight(snippet: str) -> Markup:
    """A search snippet as safe HTML: the matched words in ``<mark>``, everything else
    escaped (whatever the snippet holds)."""
    out: list[str] = []
    position = 0
    for match in _BOLD.finditer(snippet):
        out.append(str(escape(html.unescape(snippet[position : match.start()]))))
        out.append(f"<mark>{escape(html.unescape(match.group(1)))}</mark>")
        position = match.end()
    out.append(str(escape(html.unescape(snippet[position:]))))
    return Markup("".join(out))


@dataclass
class Session:
    token_id: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, token_id: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(token_id, secrets.token_urlsafe(24), time.time() + SESSION_SECONDS)
        with self._lock:
            now = time.time()
            for key in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[key]
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.time():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


_TEMPLATES = Environment(
    loader=PackageLoader("pipeline.server", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_TEMPLATES.filters["highlight"] = highlight


def _render(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    body = _TEMPLATES.get_template(name).render(types=TYPES, **context)
    return HTMLResponse(
        body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _signed_in(request: Request) -> tuple[Session, Principal] | None:
    server = server_of(request)
    session = server.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    principal = server.principal_of(session.token_id)
    if principal is None:  # revoked since
        server.sessions.end(request.cookies.get(SESSION_COOKIE))
        return None
    request.state.principal = principal
    return session, principal


def _signin_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(24)
    response = _render("signin.html", status, csrf=csrf, error=error)
    _cookie(response, request, SIGNIN_CSRF_COOKIE, csrf, 3600)
    return response


def page(request: Request) -> Response:
    signed = _signed_in(request)
    if signed is None:
        return _signin_page(request)
    session, principal = signed
    server = server_of(request)
    params = request.query_params
    context: dict[str, Any] = {
        "csrf": session.csrf,
        "principal": principal,
        "form": {k: params.get(k, "") for k in ("q", "type", "language", "since")},
        "error": None,
        "people": None,
    }
    similar_to = params.get("similar")
    try:
        if similar_to:
            context.update(_similar(server, principal, similar_to))
        elif params.get("q", "").strip():
            context.update(_search(server, principal, params))
    except ApiError as exc:
        context["error"] = exc.message
        # A 429 (every search worker busy) says when to try again, as the API's does.
        return _render("search.html", exc.status, exc.headers, **context)
    return _render("search.html", **context)


def _search(server: Server, principal: Principal, params: Any) -> dict[str, Any]:
    base = search_request(params)
    try:
        offset = max(0, min(int(params.get("offset") or 0), MAX_OFFSET))
    except ValueError:
        offset = 0
    request = SearchRequest(
        base.query, base.type, base.candidate_id, base.language, base.since,
        limit=PAGE_SIZE, offset=offset,
    )  # fmt: skip
    job = SearchJob(principal.integration_id, request, by_candidate=True, as_json=False)
    result = searched_blocking(server, job)
    keep = {k: params.get(k) for k in ("q", "type", "language", "since") if params.get(k)}

    def link(**changes: Any) -> str:
        return "/?" + urllib.parse.urlencode({**keep, **changes})

    return {
        "people": result.people,
        "total": result.total,
        "offset": offset,
        "did_you_mean": result.results.did_you_mean,
        "did_you_mean_link": link(q=result.results.did_you_mean)
        if result.results.did_you_mean
        else None,
        "previous_link": link(offset=max(0, offset - PAGE_SIZE)) if offset else None,
        "next_link": link(offset=offset + PAGE_SIZE) if offset + PAGE_SIZE < result.total else None,
    }


def _similar(server: Server, principal: Principal, attachment_id: str) -> dict[str, Any]:
    from ..search import group_by_candidate

    app = server.tenancy.app_for(principal.integration_id)
    record = record_of(app, principal, attachment_id)
    job = SearchJob(
        principal.integration_id, similar_to=attachment_id, limit=PAGE_SIZE * 3, as_json=False
    )
    results = searched_blocking(server, job)
    people = group_by_candidate(results.hits)[:PAGE_SIZE]
    return {
        "people": people,
        "total": len(people),
        "offset": 0,
        "similar_to": record.get("file_name") or attachment_id,
    }


def _csrf_ok(expected: str | None, given: Any) -> bool:
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


async def signin(request: Request) -> Response:
    form = await request.form()
    if not _csrf_ok(request.cookies.get(SIGNIN_CSRF_COOKIE), form.get("csrf")):
        return _signin_page(request, "The form had expired: sign in again.", 403)
    server = server_of(request)
    token = form.get("token")
    principal = server.authenticate(token.strip()) if isinstance(token, str) else None
    if principal is None:
        return _signin_page(request, "That token is not valid.", 401)
    session_id, _ = server.sessions.new(principal.token_id)
    response = RedirectResponse("/", status_code=303)
    _cookie(response, request, SESSION_COOKIE, session_id, SESSION_SECONDS)
    response.delete_cookie(SIGNIN_CSRF_COOKIE, path="/")
    return response


async def signout(request: Request) -> Response:
    form = await request.form()
    signed = _signed_in(request)
    if signed is not None:
        if not _csrf_ok(signed[0].csrf, form.get("csrf")):
            raise ApiError(403, "forbidden", "the form's CSRF token does not match")
        server_of(request).sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def page_file(request: Request) -> Response:
    signed = _signed_in(request)
    if signed is None:
        raise ApiError(401, "unauthorized", "sign in first")
    app = server_of(request).tenancy.app_for(signed[1].integration_id)
    return download(app, record_of(app, signed[1], request.path_params["attachment_id"]))


def routes() -> list[Route]:
    return [
        Route("/", page),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/files/{attachment_id}", page_file),
    ]


__all__ = ["Sessions", "highlight", "routes"]
