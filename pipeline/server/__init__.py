"""``pipeline serve``: the JSON API, the recruiters' page and Kombo's webhooks over one data
directory, with the same App, run engine and locks as the command line (docs/serving.md).

Modules: ``_app`` (the ASGI app, headers, errors, request log), ``_api`` (``/api/v1``),
``_page`` (``/``: sign-in, search page, sessions, CSRF), ``_webhooks`` (signature and
events), ``_runs`` (coalesced runs), ``_tenancy`` (integration id -> App), ``_tokens``,
``_metrics``, ``_openapi``, ``_serve`` (uvicorn, signals).
"""

from __future__ import annotations

from ._app import Server, create_app
from ._serve import ServeSettings, build_server, serve
from ._tokens import Principal, new_token, verify
from ._webhooks import signature

__all__ = [
    "Principal",
    "ServeSettings",
    "Server",
    "build_server",
    "create_app",
    "new_token",
    "serve",
    "signature",
    "verify",
]
