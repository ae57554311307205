"""Kombo CV pipeline: candidates' CVs and cover letters from Kombo's ATS API, as searchable text.

The public surface is re-exported here; implementation modules may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import DataSettings, KomboSettings, Options, resolve_data, resolve_kombo
from .errors import (
    IntegrationError,
    KomboError,
    PipelineError,
    QueryError,
    UsageError,
)
from .index import SearchHit, SearchIndex, SearchResults
from .runner import Pipeline, RunSummary
from .states import AttachmentState

__all__ = [
    "AttachmentState",
    "DataSettings",
    "IntegrationError",
    "KomboError",
    "KomboSettings",
    "Options",
    "Pipeline",
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
