"""The index stage: full-text search over extracted text, behind an interface of our own.

The public surface is ``__all__``; the modules behind it are private, one concern each:

    _doc        IndexDoc, what the index is given of one attachment (imports nothing heavy:
                writer processes unpickle these, and need neither SQLAlchemy nor Whoosh)
    _results    SearchHit, SearchResults, CandidateHit, group_by_candidate
    _analysis   tokens, folding, stems          _schema    the schema, a document's fields
    _query      parsing, filters, spelling      _snippets  fragments around the matches
    _index      SearchIndex, the facade         _rebuild   a rebuild, its writer processes
    _writer     IndexWriterProcess, a run's index writes in a child process
    _postgres   PostgresSearchIndex, the same methods over a PostgreSQL table (issue 19)
    _whoosh/    everything that touches Whoosh's private names, behind the version fence

Names are imported when first used (as ``pipeline`` does), so that ``IndexDoc`` costs
nothing to import. Nothing outside this package imports ``whoosh``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..errors import QueryError, QueryTooCostly
    from ._doc import IndexDoc
    from ._index import IndexWriter, SearchIndex
    from ._postgres import PostgresSearchIndex
    from ._results import CandidateHit, SearchHit, SearchResults, group_by_candidate
    from ._whoosh import FAST_VARIABLE, engine_paths
    from ._writer import IndexWriterProcess, IndexWriterView

_EXPORTS = {
    "CandidateHit": "_results",
    "FAST_VARIABLE": "_whoosh",
    "IndexDoc": "_doc",
    "IndexWriter": "_index",
    "IndexWriterProcess": "_writer",
    "IndexWriterView": "_writer",
    "PostgresSearchIndex": "_postgres",
    "SearchHit": "_results",
    "SearchIndex": "_index",
    "SearchResults": "_results",
    "QueryError": "..errors",
    "QueryTooCostly": "..errors",
    "engine_paths": "_whoosh",
    "group_by_candidate": "_results",
}

__all__ = [
    "FAST_VARIABLE",
    "CandidateHit",
    "IndexDoc",
    "IndexWriter",
    "IndexWriterProcess",
    "IndexWriterView",
    "PostgresSearchIndex",
    "QueryError",
    "QueryTooCostly",
    "SearchHit",
    "SearchIndex",
    "SearchResults",
    "engine_paths",
    "group_by_candidate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.search' has no attribute {name!r}")
    return getattr(
        importlib.import_module(module if module.startswith("..") else f".{module}", __name__), name
    )


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
