"""Kombo CV pipeline: candidates' CVs and cover letters from Kombo's ATS API, as searchable text.

The public surface is re-exported here; implementation modules may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App
    from .config import DataSettings, KomboSettings, Options, resolve_data, resolve_kombo
    from .engine import RunSummary
    from .errors import IntegrationError, KomboError, PipelineError, QueryError, UsageError
    from .search import SearchHit, SearchIndex, SearchResults
    from .states import AttachmentState

# Imported on first use (PEP 562): a process that needs one stage (the download process,
# the CLI's quick commands) does not pay for Whoosh, SQLAlchemy and every parser.
_EXPORTS = {
    "DataSettings": "config",
    "KomboSettings": "config",
    "Options": "config",
    "resolve_data": "config",
    "resolve_kombo": "config",
    "IntegrationError": "errors",
    "KomboError": "errors",
    "PipelineError": "errors",
    "QueryError": "errors",
    "UsageError": "errors",
    "SearchHit": "search",
    "SearchIndex": "search",
    "SearchResults": "search",
    "App": "app",
    "RunSummary": "engine",
    "AttachmentState": "states",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "App",
    "AttachmentState",
    "DataSettings",
    "IntegrationError",
    "KomboError",
    "KomboSettings",
    "Options",
    "PipelineError",
    "QueryError",
    "RunSummary",
    "SearchHit",
    "SearchIndex",
    "SearchResults",
    "UsageError",
    "__version__",
    "resolve_data",
    "resolve_kombo",
]
