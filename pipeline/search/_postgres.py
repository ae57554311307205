"""Search inside PostgreSQL: ``PostgresSearchIndex``, the methods of ``SearchIndex`` that
the App and the run engine use, over one table that every machine using the database shares.

Chosen by ``PIPELINE_SEARCH=postgres`` (``--search postgres``) on a PostgreSQL database.

- One row per document in ``search_documents``, keyed by (integration_id, attachment_id):
  every statement names its integration, so one integration's rows never answer another's.
  The row keeps no text, only its ``tsvector`` (and its distinct words, for spelling and
  "similar"): snippets are made from the database's own copy of the text (``texts``), as on
  Whoosh.
- Each document is analysed with its language's text search configuration (english,
  german, french, spanish; ``simple`` for any other), each one ``unaccent`` first, so case and
  accents do not matter and stems are the language's own. A query is analysed once per
  configuration and each document is matched with its own.
- Weights: a match in the file name is weight A, in the candidate's title B, in the text D;
  ranked by ``ts_rank`` with those weights (2 : 1.5 : 1, as Whoosh's field boosts) and the
  length normalisation 1 (divided by 1 + log of the length), ties broken by id.
- The query syntax is the Whoosh engine's (its parser reads it): words (all must match),
  ``OR``, ``AND``, ``NOT``, parentheses, ``"phrases"``, ``prefix*``, fields
  (``file_name:lebenslauf``), and the filters ``type:``, ``language:``, ``candidate_id:`` at
  the top level. A wildcard inside a word (``wild?ard``) becomes the prefix before it.
- ``search_words`` counts, per integration, the documents holding each (folded) word: a query
  word no document holds is spelled again from it (``did_you_mean``), and ``similar`` weighs
  a document's key terms by it.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import IndexBuildError, QueryError
from ._analysis import FILE_NAME_PATTERN, FOLDED, WORD
from ._doc import IndexDoc
from ._query import _check_syntax, corrected_query
from ._results import SearchHit, SearchResults
from ._snippets import _escape

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from whoosh.query import Query

log = logging.getLogger(__name__)

CONFIGS = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}
SIMPLE = "simple"
# Ours, so that a database's own configurations are never changed: pipeline_english, ...
PREFIX = "pipeline_"
# {D, C, B, A}: text 1, (unused), candidate title 1.5, file name 2 (relative to 2).
WEIGHTS = "{0.5, 0.5, 0.75, 1.0}"
FILTER_FIELDS = {"type": "type", "language": "language", "candidate_id": "candidate_id"}
TEXT_FIELDS = {"file_name": "A", "candidate_title": "B", "text": "D"}
# The advisory lock every process takes in turn to create the search schema.
SCHEMA_LOCK = 0x5049_5045_5345_4152  # "PIPESEAR"
# A tsvector holds at most 1 MB: the text indexed is cut there (a CV is far below it).
MAX_TEXT_CHARS = 400_000
MAX_WORD_CHARS = 64  # longer "words" (base64, hashes) are left out of the word counts
WRITE_BATCH = 500
# Snippet markers no text holds (removed from it first): escaped around, then made <b>.
_START, _STOP = "\ue000", "\ue001"
HEADLINE = (
    f"StartSel={_START}, StopSel={_STOP}, MaxFragments=2, MaxWords=30, MinWords=12, "
    'FragmentDelimiter=" ... "'
)
# What PostgreSQL refuses in text: NUL, and halves of surrogate pairs (not UTF-8).
_REFUSED = re.compile("[\x00\ud800-\udfff]")


def config_of(language: str | None) -> str:
    return PREFIX + CONFIGS.get(language or "", SIMPLE)


def mend(value: str | None) -> str:
    """Text as PostgreSQL takes it: NULs and lone surrogates dropped, markers removed."""
    if not value:
        return ""
    return _REFUSED.sub("", value).replace(_START, "").replace(_STOP, "")


def doc_words(doc: IndexDoc) -> list[str]:
    """The document's distinct folded words (text, file name, title), sorted."""
    found = set(map(FOLDED.__getitem__, WORD.findall(doc.text)))
    found.update(w.lower() for w in re.findall(FILE_NAME_PATTERN, doc.file_name or ""))
    found.update(map(FOLDED.__getitem__, WORD.findall(doc.candidate_title or "")))
    return sorted(w for w in map(mend, found) if w and len(w) <= MAX_WORD_CHARS)


# -- the query: our syntax (Whoosh's parser) as a tsquery text -------------------------------


def _lexeme(word: str, labels: str, prefix: bool) -> str:
    quoted = "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"
    suffix = ("*" if prefix else "") + labels
    return quoted + (":" + suffix if suffix else "")


def _labels(fields: set[str]) -> str:
    if fields >= set(TEXT_FIELDS):
        return ""  # every field: no restriction
    return "".join(sorted(TEXT_FIELDS[f] for f in fields))


class _Translation:
    """A parsed query as tsquery text (to be analysed by each configuration), and the
    filters it named at its top level."""

    def __init__(self) -> None:
        self.filters: dict[str, str] = {}

    def top(self, query: Query) -> str:
        from whoosh.query import And, Term

        parts = query.subqueries if type(query) is And else [query]
        rest = []
        for part in parts:
            if type(part) is Term and part.fieldname in FILTER_FIELDS:
                self.filters[FILTER_FIELDS[part.fieldname]] = str(part.text)
            else:
                rest.append(part)
        return " & ".join(f"({self.node(p)})" for p in rest)

    def node(self, query: Query) -> str:
        from whoosh.query import (
            And,
            AndNot,
            Every,
            Not,
            Or,
            Phrase,
            Prefix,
            Term,
            Wildcard,
        )

        kind = type(query)
        if kind is And:
            return " & ".join(f"({self.node(q)})" for q in query.subqueries)
        if kind is Or:
            return self._either(query.subqueries)
        if kind is Not:
            return f"!({self.node(query.query)})"
        if kind is AndNot:
            return f"({self.node(query.a)}) & !({self.node(query.b)})"
        if kind in (Term, Prefix, Wildcard, Phrase):
            return self._either([query])
        if kind is Every:
            raise QueryError("a query of `*` alone matches everything: give a word")
        fieldname = getattr(query, "fieldname", None)
        if fieldname in FILTER_FIELDS:
            raise QueryError(
                f"{fieldname}: filters only the whole query on the PostgreSQL search "
                "(not inside OR, NOT or parentheses)"
            )
        raise QueryError(f"cannot search for {query} on the PostgreSQL search")

    def _either(self, queries: Sequence[Query]) -> str:
        """Alternatives; the same word or phrase in several fields is one lexeme with their
        weights (in every field: no weight restriction)."""
        from whoosh.query import Phrase, Prefix, Term, Wildcard

        grouped: dict[tuple[str, tuple[str, ...]], set[str]] = {}
        others = []
        for q in queries:
            kind = type(q)
            if kind in (Term, Prefix, Wildcard) and q.fieldname in TEXT_FIELDS:
                text = str(q.text)
                if kind is Wildcard:
                    text = re.split(r"[*?]", text, maxsplit=1)[0]
                    if not text:
                        raise QueryError(f"cannot read query: {q.text!r} starts with a wildcard")
                    kind = Prefix
                shape = "prefix" if kind is Prefix else "word"
                grouped.setdefault((shape, (text,)), set()).add(q.fieldname)
            elif kind is Phrase and q.fieldname in TEXT_FIELDS:
                words = tuple(str(w) for w in q.words)
                grouped.setdefault(("phrase", words), set()).add(q.fieldname)
            elif kind is Term and q.fieldname in FILTER_FIELDS:
                raise QueryError(
                    f"{q.fieldname}: filters only the whole query on the PostgreSQL search "
                    "(not inside OR, NOT or parentheses)"
                )
            else:
                others.append(f"({self.node(q)})")
        parts = []
        for (shape, words), fields in grouped.items():
            labels = _labels(fields)
            if shape == "phrase":
                parts.append(" <-> ".join(_lexeme(w, labels, False) for w in words))
            else:
                parts.append(_lexeme(words[0], labels, shape == "prefix"))
        return " | ".join(f"({p})" for p in [*parts, *others])


def translate(query: str) -> tuple[_Translation, str]:
    """Our query syntax, read by the Whoosh engine's parser, as tsquery text."""
    from whoosh.qparser import AndGroup, MultifieldParser

    from ._schema import FIELDS, _schema

    _check_syntax(query)
    parser = MultifieldParser(list(FIELDS), _schema(), group=AndGroup)
    try:
        parsed = parser.parse(query)
    except Exception as exc:  # whoosh's parser raises assorted errors
        raise QueryError(f"cannot read query {query!r}: {exc}") from exc
    translation = _Translation()
    return translation, translation.top(parsed)


# -- the index -----------------------------------------------------------------------------


class _SearchWords:
    """One integration's ``search_words`` as the spelling correction reads an index
    (``_query.Words``): the words of a first letter read once, with their counts."""

    def __init__(self, conn: Connection, integration_id: str) -> None:
        self._conn = conn
        self._integration_id = integration_id
        self._counts: dict[str, int] = {}
        self._by_letter: dict[str, list[str]] = {}

    def frequency(self, word: str) -> int:
        if word not in self._counts and word[:1] not in self._by_letter:
            found = self._conn.exec_driver_sql(
                "SELECT documents FROM search_words WHERE integration_id = %(i)s AND word = %(w)s",
                {"i": self._integration_id, "w": word},
            ).scalar()
            self._counts[word] = int(found or 0)
        return self._counts.get(word, 0)

    def starting_with(self, letter: str) -> list[str]:
        if letter not in self._by_letter:
            rows = self._conn.exec_driver_sql(
                "SELECT word, documents FROM search_words WHERE integration_id = %(i)s "
                "AND word LIKE %(start)s",
                {"i": self._integration_id, "start": _like_prefix(letter)},
            )
            words = []
            for word, documents in rows:
                self._counts[word] = int(documents)
                if word.isalpha():
                    words.append(word)
            self._by_letter[letter] = words
        return self._by_letter[letter]


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class PostgresSearchIndex:
    """The search index as rows of the PostgreSQL database, for one integration.

    Writes go in-process (``writes_in_process``): the run engine sends its batches straight
    to :meth:`write`, in one transaction each, instead of to an index writer process.
    """

    writes_in_process = True

    def __init__(self, engine: Engine, integration_id: str) -> None:
        if engine.dialect.name != "postgresql":
            raise QueryError(
                "PIPELINE_SEARCH=postgres needs a PostgreSQL database "
                "(PIPELINE_DATABASE_URL=postgresql+psycopg://...)"
            )
        self.engine = engine
        self.integration_id = integration_id
        self._ready = False

    # -- schema ---------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the extension, configurations, tables and indexes that are missing: once,
        under an advisory lock every process takes in turn (two machines starting at once
        would otherwise both try to create them)."""
        if self._ready:
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": SCHEMA_LOCK})
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS unaccent")
            have = {
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT cfgname FROM pg_ts_config WHERE cfgname LIKE 'pipeline\\_%%'"
                )
            }
            for name in [*CONFIGS.values(), SIMPLE]:
                ours = PREFIX + name
                if ours in have:
                    continue
                stem = "simple" if name == SIMPLE else f"{name}_stem"
                conn.exec_driver_sql(f"CREATE TEXT SEARCH CONFIGURATION {ours} (COPY = {name})")
                conn.exec_driver_sql(
                    f"ALTER TEXT SEARCH CONFIGURATION {ours} ALTER MAPPING FOR "
                    f"asciiword, asciihword, hword_asciipart, word, hword, hword_part "
                    f"WITH unaccent, {stem}"
                )
            conn.exec_driver_sql(_TABLES)
        self._ready = True

    def exists(self) -> bool:
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT to_regclass('search_documents')").scalar()
        return found is not None

    # -- writes ---------------------------------------------------------------------------

    def write(
        self, docs: Iterable[IndexDoc] = (), deletions: Iterable[str] = (), *, purge: bool = False
    ) -> int:
        """Upsert ``docs`` and delete ``deletions`` in one transaction; the number of changes.

        ``purge`` (an erasure) also vacuums the tables, so the erased rows' space is
        reclaimed at once rather than by a later autovacuum.
        """
        self.ensure_schema()
        docs = list(docs)
        deletions = [d for d in deletions if d not in {doc.attachment_id for doc in docs}]
        with self.engine.begin() as conn:
            self._write(conn, docs, deletions)
        if purge:
            self.vacuum()
        return len(docs) + len(deletions)

    def _write(self, conn: Connection, docs: list[IndexDoc], deletions: list[str]) -> None:
        key = {"integration": self.integration_id}
        ids = sorted({*deletions, *(d.attachment_id for d in docs)})
        counts: Counter[str] = Counter()
        if ids:
            # Locked in id order, so two writers of one integration cannot deadlock here.
            old = conn.exec_driver_sql(
                "SELECT words FROM search_documents WHERE integration_id = %(integration)s "
                "AND attachment_id = ANY(%(ids)s) ORDER BY attachment_id FOR UPDATE",
                {**key, "ids": ids},
            )
            for (words,) in old:
                counts.subtract(words)
        if deletions:
            conn.exec_driver_sql(
                "DELETE FROM search_documents WHERE integration_id = %(integration)s "
                "AND attachment_id = ANY(%(ids)s)",
                {**key, "ids": deletions},
            )
        rows = []
        for doc in docs:
            words = doc_words(doc)
            counts.update(words)
            rows.append(
                {
                    **key,
                    "attachment_id": doc.attachment_id,
                    "candidate_id": doc.candidate_id,
                    "application_id": doc.application_id,
                    "type": doc.type,
                    "language": doc.language,
                    "config": config_of(doc.language),
                    "file_name": mend(doc.file_name) or None,
                    "file_words": " ".join(re.findall(FILE_NAME_PATTERN, mend(doc.file_name))),
                    "title": mend(doc.candidate_title),
                    "text": mend(doc.text[:MAX_TEXT_CHARS]),
                    "updated_at": _naive_utc(doc.updated_at),
                    "words": words,
                }
            )
        if rows:
            conn.exec_driver_sql(_UPSERT, rows)  # executemany
        changed = sorted((w, n) for w, n in counts.items() if n)
        if changed:
            conn.exec_driver_sql(
                "INSERT INTO search_words (integration_id, word, documents) "
                "SELECT %(integration)s, w, n FROM unnest(%(words)s::text[], %(counts)s::int[]) "
                "AS t(w, n) ON CONFLICT (integration_id, word) "
                "DO UPDATE SET documents = search_words.documents + excluded.documents",
                {**key, "words": [w for w, _ in changed], "counts": [n for _, n in changed]},
            )
            conn.exec_driver_sql(
                "DELETE FROM search_words WHERE integration_id = %(integration)s "
                "AND word = ANY(%(words)s) AND documents <= 0",
                {**key, "words": [w for w, n in changed if n < 0]},
            )

    def erase_all(self) -> int:
        """Delete every row of this integration (``integrations remove``), space reclaimed
        at once; the documents deleted."""
        if not self.exists():
            return 0
        with self.engine.begin() as conn:
            deleted = conn.exec_driver_sql(
                "DELETE FROM search_documents WHERE integration_id = %(i)s",
                {"i": self.integration_id},
            ).rowcount
            conn.exec_driver_sql(
                "DELETE FROM search_words WHERE integration_id = %(i)s",
                {"i": self.integration_id},
            )
        self.vacuum()
        return int(deleted or 0)

    def vacuum(self) -> None:
        """Reclaim the space of deleted rows now (VACUUM cannot run in a transaction)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM search_documents, search_words")

    def rebuild(self, docs: Iterable[IndexDoc]) -> int:
        """Start again from the database's documents: this integration's rows and word
        counts replaced in one transaction (searches see the old rows until it commits)."""
        self.ensure_schema()
        added = 0
        with self.engine.begin() as conn:
            for table in ("search_documents", "search_words"):
                conn.exec_driver_sql(
                    f"DELETE FROM {table} WHERE integration_id = %(integration)s",
                    {"integration": self.integration_id},
                )
            batch: list[IndexDoc] = []
            for doc in docs:
                batch.append(doc)
                if len(batch) >= WRITE_BATCH:
                    self._write(conn, batch, [])
                    added += len(batch)
                    batch = []
            if batch:
                self._write(conn, batch, [])
                added += len(batch)
        held = self.doc_count()
        if held != added:
            raise IndexBuildError(
                f"the search table holds {held} of the {added} documents written: "
                "run `pipeline reindex` again"
            )
        return added

    # -- reads ----------------------------------------------------------------------------

    def analysis_outdated(self) -> bool:
        """Never: the analysis is PostgreSQL's own, applied to each row as it is written."""
        return False

    def outdated_reason(self) -> str | None:
        return None

    def attachment_ids(self) -> set[str]:
        if not self.exists():
            return set()
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT attachment_id FROM search_documents WHERE integration_id = %(i)s",
                {"i": self.integration_id},
            )
            return {row[0] for row in rows}

    def doc_count(self) -> int:
        if not self.exists():
            return 0
        with self.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM search_documents WHERE integration_id = %(i)s",
                    {"i": self.integration_id},
                ).scalar_one()
            )

    def search(
        self,
        query: str,
        *,
        texts: Callable[[Sequence[str]], dict[str, str]],
        type: str | None = None,
        candidate_id: str | None = None,
        language: str | None = None,
        since: datetime | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> SearchResults:
        """Ranked hits with snippets, an exact total; a query word no document holds is
        spelled again: offered as "did you mean", its hits shown only when the query found none."""
        translation, tsquery = translate(query)
        if not self.exists():
            return SearchResults(query, 0, [])
        filters = dict(translation.filters)
        for name, value in (("type", type), ("candidate_id", candidate_id), ("language", language)):
            if value:
                if filters.get(name, value) != value:
                    return SearchResults(query, 0, [])  # two filters that cannot both hold
                filters[name] = value
        with self.engine.connect() as conn:
            found, total = self._ranked(conn, tsquery, filters, since, limit, offset)
            corrected = self._correct(conn, query)
            # As on Whoosh: the query's own hits are never replaced; the correction is
            # offered beside them, and its hits are shown only when the query found none.
            if corrected is not None and total == 0:
                _, again_query = translate(corrected)
                again, again_total = self._ranked(conn, again_query, filters, since, limit, offset)
                hits = self._page(conn, again, again_query, texts) if again_total else []
                return SearchResults(query, again_total, hits, corrected, corrected=again_total > 0)
            page = self._page(conn, found, tsquery, texts)
            return SearchResults(query, total, page, corrected)

    def _ranked(
        self,
        conn: Connection,
        tsquery: str,
        filters: dict[str, str],
        since: datetime | None,
        limit: int,
        offset: int,
    ) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, Any] = {
            "integration": self.integration_id,
            "limit": limit,
            "offset": offset,
            "since": _naive_utc(since),
        }
        where = ["d.integration_id = %(integration)s"]
        for name, value in filters.items():
            where.append(f"d.{name} = %(f_{name})s")
            params[f"f_{name}"] = value
        if since is not None:
            where.append("d.updated_at >= %(since)s")
        if tsquery:
            params["q"] = tsquery
            source = f"search_documents d JOIN ({_QUERIES}) q ON q.config = d.config"
            where.append("d.body @@ q.query")
            score = f"ts_rank('{WEIGHTS}', d.body, q.query, 1)"
        else:  # filters only
            source, score = "search_documents d", "0.0"
        sql = (
            f"SELECT d.attachment_id, d.candidate_id, d.application_id, d.type, d.file_name, "
            f"d.language, d.config::text AS config, {score} AS score, count(*) OVER () AS total "
            f"FROM {source} WHERE {' AND '.join(where)} "
            f'ORDER BY score DESC, d.attachment_id COLLATE "C" '
            f"LIMIT %(limit)s OFFSET %(offset)s"
        )
        rows = [dict(row._mapping) for row in conn.exec_driver_sql(sql, params)]
        if rows:
            return rows, int(rows[0]["total"])
        if offset == 0:
            return [], 0
        counted = sql.replace("LIMIT %(limit)s OFFSET %(offset)s", "")
        total = conn.exec_driver_sql(f"SELECT count(*) FROM ({counted}) c", params).scalar_one()
        return [], int(total)

    def _page(
        self,
        conn: Connection,
        rows: list[dict[str, Any]],
        tsquery: str,
        texts: Callable[[Sequence[str]], dict[str, str]],
    ) -> list[SearchHit]:
        bodies = texts([row["attachment_id"] for row in rows]) if rows else {}
        snippets: list[str] = []
        if rows and tsquery:
            made = conn.exec_driver_sql(
                "SELECT ts_headline(c::regconfig, b, to_tsquery(c::regconfig, %(q)s), %(o)s) "
                "FROM unnest(%(configs)s::text[], %(bodies)s::text[]) WITH ORDINALITY "
                "AS t(c, b, n) ORDER BY n",
                {
                    "q": tsquery,
                    "o": HEADLINE,
                    "configs": [row["config"] for row in rows],
                    "bodies": [mend(bodies.get(row["attachment_id"], "")) for row in rows],
                },
            )
            snippets = [row[0] or "" for row in made]
        hits = []
        for place, row in enumerate(rows):
            body = bodies.get(row["attachment_id"], "")
            snippet = snippets[place] if snippets else ""
            if _START in snippet:
                shown = _escape(snippet).replace(_START, "<b>").replace(_STOP, "</b>")
            else:  # the match was in the file name or title: the text's beginning
                shown = _escape(body[:200])
            hits.append(
                SearchHit(
                    attachment_id=row["attachment_id"],
                    candidate_id=row["candidate_id"],
                    application_id=row["application_id"],
                    type=row["type"],
                    file_name=row["file_name"],
                    score=round(float(row["score"]), 4),
                    snippet=" ".join(shown.split()),
                    language=row["language"] or None,
                )
            )
        return hits

    def _correct(self, conn: Connection, query: str) -> str | None:
        """The query with each misspelled word spelled as this integration's documents spell
        it: the Whoosh index's policy (``_query.corrected_query``), over ``search_words``."""

        def term_of(lowered: str) -> str | None:
            found = WORD.findall(lowered)
            return FOLDED[found[0]] if len(found) == 1 else None

        return corrected_query(query, _SearchWords(conn, self.integration_id), term_of)

    def similar(
        self,
        attachment_id: str,
        *,
        texts: Callable[[Sequence[str]], dict[str, str]],
        type: str | None = None,
        limit: int = 10,
    ) -> SearchResults:
        """Documents most like this one (by its 25 key terms), other candidates' first."""
        body = texts([attachment_id]).get(attachment_id)
        if body is None or not self.exists():
            raise QueryError(f"attachment {attachment_id} is not in the index")
        with self.engine.connect() as conn:
            own = conn.exec_driver_sql(
                "SELECT candidate_id FROM search_documents WHERE integration_id = %(i)s "
                "AND attachment_id = %(a)s",
                {"i": self.integration_id, "a": attachment_id},
            ).scalar()
            if own is None:
                raise QueryError(f"attachment {attachment_id} is not in the index")
            keys = self._key_terms(conn, body)
            if not keys:
                return SearchResults(f"similar:{attachment_id}", 0, [])
            tsquery = " | ".join(_lexeme(word, "D", False) for word in keys)
            filters = {"type": type} if type else {}
            rows, _ = self._ranked(conn, tsquery, filters, None, (limit + 1) * 4, 0)
            wanted = [
                r for r in rows if r["attachment_id"] != attachment_id and r["candidate_id"] != own
            ][:limit]
            hits = self._page(conn, wanted, tsquery, texts)
        return SearchResults(f"similar:{attachment_id}", len(hits), hits)

    def _key_terms(self, conn: Connection, body: str, count: int = 25) -> list[str]:
        """The words that set this text apart (Bo1, as Whoosh's key terms): frequent here,
        rare in the integration's other documents."""
        tf = Counter(w for w in map(FOLDED.__getitem__, WORD.findall(body)) if len(w) > 2)
        if not tf:
            return []
        total = conn.exec_driver_sql(
            "SELECT count(*) FROM search_documents WHERE integration_id = %(i)s",
            {"i": self.integration_id},
        ).scalar_one()
        held: dict[str, int] = dict(
            conn.exec_driver_sql(
                "SELECT word, documents FROM search_words WHERE integration_id = %(i)s "
                "AND word = ANY(%(w)s)",
                {"i": self.integration_id, "w": sorted(tf)},
            ).all()
        )
        scored = []
        for word, n in tf.items():
            f = max(held.get(word, 1), 1) / max(int(total), 1)
            scored.append((n * math.log2((1 + f) / f) + math.log2(1 + f), word))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [word for _score, word in scored[:count]]


def _naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


# One row per configuration: the query analysed by each, matched to the documents of that
# configuration (to_tsquery drops a word that is a stop word of one language only there).
_QUERIES = " UNION ALL ".join(
    f"SELECT '{config_of(lang)}'::regconfig AS config, "
    f"to_tsquery('{config_of(lang)}', %(q)s) AS query"
    for lang in [*CONFIGS, None]
)

_TABLES = """
CREATE TABLE IF NOT EXISTS search_documents (
    integration_id text COLLATE "C" NOT NULL,
    attachment_id text COLLATE "C" NOT NULL,
    candidate_id text COLLATE "C" NOT NULL,
    application_id text COLLATE "C",
    type text NOT NULL,
    language text,
    config regconfig NOT NULL,
    file_name text,
    updated_at timestamp,
    words text[] NOT NULL,
    body tsvector NOT NULL,
    PRIMARY KEY (integration_id, attachment_id)
);
CREATE INDEX IF NOT EXISTS search_documents_body ON search_documents USING GIN (body);
CREATE INDEX IF NOT EXISTS search_documents_candidate
    ON search_documents (integration_id, candidate_id);
CREATE TABLE IF NOT EXISTS search_words (
    integration_id text COLLATE "C" NOT NULL,
    word text COLLATE "C" NOT NULL,
    documents integer NOT NULL,
    PRIMARY KEY (integration_id, word)
);
"""

_UPSERT = """
INSERT INTO search_documents AS d (integration_id, attachment_id, candidate_id, application_id,
    type, language, config, file_name, updated_at, words, body)
VALUES (%(integration)s, %(attachment_id)s, %(candidate_id)s, %(application_id)s, %(type)s,
    %(language)s, %(config)s::regconfig, %(file_name)s, %(updated_at)s, %(words)s,
    setweight(to_tsvector(%(config)s::regconfig, %(file_words)s), 'A')
    || setweight(to_tsvector(%(config)s::regconfig, %(title)s), 'B')
    || setweight(to_tsvector(%(config)s::regconfig, %(text)s), 'D'))
ON CONFLICT (integration_id, attachment_id) DO UPDATE SET
    candidate_id = excluded.candidate_id, application_id = excluded.application_id,
    type = excluded.type, language = excluded.language, config = excluded.config,
    file_name = excluded.file_name, updated_at = excluded.updated_at, words = excluded.words,
    body = excluded.body
"""
