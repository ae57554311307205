"""``pipeline serve``: the JSON API, the recruiters' page and Kombo's webhooks over one data
directory, with the same App, run engine and locks as the command line (docs/serving.md).

Modules: ``_app`` (the ASGI app, headers, errors, request log), ``_api`` (``/api/v1``),
``_page`` (``/``: sign-in, search page, sessions, CSRF), ``_webhooks`` (signature and
events), ``_runs`` (coalesced runs), ``_tenancy`` (integration id -> App), ``_tokens``,
``_metrics``, ``_openapi``, ``_serve`` (uvicorn, signals).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import Server, create_app
    from ._serve import ServeSettings, build_server, serve
    from ._tokens import Principal, new_token, verify
    from ._webhooks import signature

# Imported when first asked for: a search worker process imports ``._searchers`` alone,
# without Starlette, uvicorn, Jinja2 and Prometheus' client (most of a second at its start,
# which a search waits for when a worker is replaced).
_WHERE = {
    "Server": "._app",
    "create_app": "._app",
    "ServeSettings": "._serve",
    "build_server": "._serve",
    "serve": "._serve",
    "Principal": "._tokens",
    "new_token": "._tokens",
    "verify": "._tokens",
    "signature": "._webhooks",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


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
