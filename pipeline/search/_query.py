"""Reading a query: its syntax checked, parsed over the fields, widened by stems; filters;
and a correction of its spelling from the index's own words."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from whoosh.fields import Schema
from whoosh.qparser import AndGroup, MultifieldParser, QueryParser
from whoosh.query import ConstantScoreQuery, DateRange, Or, Query, Term

from ..errors import QueryError
from ._analysis import STEM_MARK, WORD, fold, query_stems
from ._schema import BOOSTS, FIELDS, STEM_BOOST
from ._whoosh._spelling import WordCorrector

if TYPE_CHECKING:
    from whoosh.searching import Searcher


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


def _parse(schema: Schema, query: str) -> Query:
    parser = MultifieldParser(list(FIELDS), schema, fieldboosts=BOOSTS, group=AndGroup)
    try:
        parsed = parser.parse(query)
    except Exception as exc:  # whoosh's parser raises assorted errors
        raise QueryError(f"cannot read query {query!r}: {exc}") from exc
    # The parser folded the words; stems need them as typed (lower-cased, accents kept).
    typed = {fold(word): word for word in (w.lower() for w in WORD.findall(query))}
    return _with_stems(parsed, typed)


def _with_stems(query: Query, typed: dict[str, str]) -> Query:
    """Each word of the text field also matches the documents that share one of its stems
    (in any stemmed language: the query's own language is unknown)."""
    if type(query) is Term and query.fieldname == "text":
        word = query.text
        stems = query_stems(typed.get(word, word))
        boost = query.boost * STEM_BOOST
        alternatives: list[Query] = [query]
        alternatives += [Term("text", STEM_MARK + s, boost=boost) for s in sorted(stems)]
        alternatives += [Term("text", s, boost=boost) for s in sorted(stems) if s != word]
        return Or(alternatives)
    if query.is_leaf():
        return query
    return query.apply(lambda sub: _with_stems(sub, typed))


def _filters(
    type: str | None, candidate_id: str | None, language: str | None, since: datetime | None
) -> list[Query]:
    # Filters join the query with no score of their own (Whoosh's filter= argument leaves
    # len(results) counting unfiltered matches).
    filters: list[Query] = []
    if type:
        filters.append(ConstantScoreQuery(Term("type", type), 0.0))
    if candidate_id:
        filters.append(ConstantScoreQuery(Term("candidate_id", candidate_id), 0.0))
    if language:
        filters.append(ConstantScoreQuery(Term("language", language), 0.0))
    if since is not None:
        start = since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since
        filters.append(ConstantScoreQuery(DateRange("updated", start, None), 0.0))
    return filters


def _correct(searcher: Searcher, schema: Schema, query: str) -> str | None:
    """The query spelled with words the index holds ("Kubernets" -> "kubernetes")."""
    try:
        plain = QueryParser("text", schema).parse(query)
        corrected = searcher.correct_query(
            plain,
            query,
            maxdist=2,
            prefix=1,  # a typo in the first letter is rare; a whole-lexicon scan is not cheap
            correctors={"text": WordCorrector(searcher.reader(), "text", schema["text"])},
        )
    except Exception:  # a suggestion is a nicety: never fail a search for it
        return None
    if corrected.query == plain or not corrected.string.strip():
        return None
    return str(corrected.string)
