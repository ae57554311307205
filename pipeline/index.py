"""Index stage: full-text search over extracted text, behind an interface of our own.

The engine is Whoosh (the ``whoosh-reloaded`` fork; see the README for why). Nothing outside
this module imports ``whoosh``, so the engine can change (paperless-ngx moved to tantivy)
without touching the rest. The index keeps no text: snippets are made from the database's
copy, so the database stays the one place personal text lives.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from whoosh import index as whoosh_index
from whoosh.analysis import CharsetFilter, LowercaseFilter, RegexTokenizer
from whoosh.fields import ID, STORED, TEXT, Schema
from whoosh.highlight import ContextFragmenter, HtmlFormatter, get_text
from whoosh.qparser import AndGroup, MultifieldParser
from whoosh.query import And, ConstantScoreQuery, Query, Term
from whoosh.support.charset import accent_map
from whoosh.writing import IndexWriter as _WhooshWriter

from .errors import QueryError
from .store import IndexDoc

log = logging.getLogger(__name__)

INDEX_NAME = "attachments"
# Words, plus the shapes skills take: "node.js", "c++", "c#", "ci/cd" stays two words.
_TOKEN_PATTERN = r"\w+(?:[.'’]\w+)*(?:\+\+|#)?"


def _analyzer():  # type: ignore[no-untyped-def]
    # Folding accents makes "Müller" find "Muller" and the reverse; case is folded too.
    return RegexTokenizer(_TOKEN_PATTERN) | LowercaseFilter() | CharsetFilter(accent_map)


def _schema() -> Schema:
    analyzer = _analyzer()
    return Schema(
        attachment_id=ID(stored=True, unique=True),
        candidate_id=ID(stored=True),
        application_id=STORED(),
        type=ID(stored=True),
        file_name=TEXT(stored=True, analyzer=analyzer, field_boost=2.0),
        text=TEXT(analyzer=analyzer, phrase=True),
    )


@dataclass(frozen=True)
class SearchHit:
    attachment_id: str
    candidate_id: str
    application_id: str | None
    type: str
    file_name: str | None
    score: float
    snippet: str


@dataclass(frozen=True)
class SearchResults:
    query: str
    total: int
    hits: list[SearchHit]


class _BoldFormatter(HtmlFormatter):  # type: ignore[misc]
    """``<b>term</b>`` around matches, the rest HTML-escaped."""

    def __init__(self) -> None:
        super().__init__(tagname="b", between=" ... ")

    def format_token(self, text, token, replace=False):  # type: ignore[no-untyped-def]
        return "<b>" + self._text(get_text(text, token, replace)) + "</b>"


class IndexWriter:
    """Adds and removes documents; everything becomes visible at ``commit``."""

    def __init__(self, writer: _WhooshWriter) -> None:
        self._writer = writer
        self.pending = 0

    def upsert(self, doc: IndexDoc) -> None:
        self._writer.update_document(
            attachment_id=doc.attachment_id,
            candidate_id=doc.candidate_id,
            application_id=doc.application_id,
            type=doc.type,
            file_name=doc.file_name or "",
            text=doc.text,
        )
        self.pending += 1

    def delete(self, attachment_id: str) -> None:
        self._writer.delete_by_term("attachment_id", attachment_id)
        self.pending += 1


def _check_syntax(query: str) -> None:
    if not query.strip():
        raise QueryError("empty query: give at least one word")
    if query.count('"') % 2:
        raise QueryError(f"cannot read query {query!r}: a quote is not closed")
    depth = 0
    for char in query:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise QueryError(f"cannot read query {query!r}: parentheses do not match")


class SearchIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _open(self) -> whoosh_index.Index:
        if whoosh_index.exists_in(str(self.directory), indexname=INDEX_NAME):
            return whoosh_index.open_dir(str(self.directory), indexname=INDEX_NAME)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return whoosh_index.create_in(str(self.directory), _schema(), indexname=INDEX_NAME)

    def exists(self) -> bool:
        return whoosh_index.exists_in(str(self.directory), indexname=INDEX_NAME)

    @contextmanager
    def writer(self, *, purge: bool = False) -> Iterator[IndexWriter]:
        """One writer; committed on a clean exit, cancelled (and the error re-raised) if not.

        ``purge`` merges every segment on commit: a deleted document's terms otherwise stay
        in its old segment file until a later merge, and an erasure must not wait for that.
        """
        ix = self._open()
        raw = ix.writer(limitmb=128)
        wrapped = IndexWriter(raw)
        try:
            yield wrapped
        except BaseException:
            raw.cancel()
            raise
        else:
            raw.commit(optimize=purge)
        finally:
            ix.close()

    def write(
        self, docs: Iterable[IndexDoc] = (), deletions: Iterable[str] = (), *, purge: bool = False
    ) -> int:
        with self.writer(purge=purge) as writer:
            for attachment_id in deletions:
                writer.delete(attachment_id)
            for doc in docs:
                writer.upsert(doc)
            return writer.pending

    def rebuild(self, docs: Iterable[IndexDoc]) -> int:
        """Start again from nothing: the database is the source of truth."""
        if self.directory.exists():
            shutil.rmtree(self.directory)
        return self.write(docs)

    def attachment_ids(self) -> set[str]:
        if not self.exists():
            return set()
        ix = self._open()
        try:
            with ix.searcher() as searcher:
                return {fields["attachment_id"] for fields in searcher.all_stored_fields()}
        finally:
            ix.close()

    def doc_count(self) -> int:
        if not self.exists():
            return 0
        ix = self._open()
        try:
            return int(ix.doc_count())
        finally:
            ix.close()

    def search(
        self,
        query: str,
        *,
        texts: Callable[[Sequence[str]], dict[str, str]],
        type: str | None = None,
        candidate_id: str | None = None,
        limit: int = 10,
    ) -> SearchResults:
        """Ranked hits (BM25F) with snippets made from ``texts`` (attachment id -> text)."""
        _check_syntax(query)
        if not self.exists():
            return SearchResults(query, 0, [])
        ix = self._open()
        try:
            parser = MultifieldParser(["text", "file_name"], ix.schema, group=AndGroup)
            try:
                parsed = parser.parse(query)
            except Exception as exc:
                raise QueryError(f"cannot read query {query!r}: {exc}") from exc
            # Filters join the query with no score of their own (Whoosh's filter= argument
            # leaves len(results) counting unfiltered matches).
            filters: list[Query] = []
            if type:
                filters.append(ConstantScoreQuery(Term("type", type), 0.0))
            if candidate_id:
                filters.append(ConstantScoreQuery(Term("candidate_id", candidate_id), 0.0))
            with ix.searcher() as searcher:
                results = searcher.search(
                    And([parsed, *filters]) if filters else parsed,
                    limit=max(1, limit),
                    terms=True,
                )
                results.fragmenter = ContextFragmenter(maxchars=240, surround=60)
                results.formatter = _BoldFormatter()
                total = len(results)
                stored = [dict(hit.fields()) | {"score": hit.score} for hit in results]
                bodies = texts([fields["attachment_id"] for fields in stored])
                hits = []
                for hit, fields in zip(results, stored, strict=True):
                    body = bodies.get(fields["attachment_id"], "")
                    snippet = hit.highlights("text", text=body, top=2) if body else ""
                    if not snippet:
                        snippet = _escape(body[:200])
                    hits.append(
                        SearchHit(
                            attachment_id=fields["attachment_id"],
                            candidate_id=fields["candidate_id"],
                            application_id=fields.get("application_id"),
                            type=fields["type"],
                            file_name=fields.get("file_name"),
                            score=round(float(fields["score"]), 4),
                            snippet=" ".join(snippet.split()),
                        )
                    )
            # Equal scores come back in segment order, which a rebuild changes: break ties
            # by id so the same data always gives the same page.
            hits.sort(key=lambda h: (-h.score, h.attachment_id))
            return SearchResults(query, total, hits)
        finally:
            ix.close()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
