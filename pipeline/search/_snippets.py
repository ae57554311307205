"""Snippets: fragments of a document's text around the words a query matched.

Made from the database's copy of the text (the index keeps none), with the analysis the
index used, so a word matched through its stem is marked too.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from whoosh.query import Query

from ._analysis import FOLDED, PARTS, STEM_MARK, STEMMED, WORD, folded_stems

if TYPE_CHECKING:
    from whoosh.searching import Searcher

SNIPPET_CHARS = 240  # at most, per fragment
SNIPPET_CONTEXT = 60  # characters of context before the first match and after the last
SNIPPET_FRAGMENTS = 2


def _highlighted(searcher: Searcher, query: Query) -> tuple[frozenset[str], frozenset[str]]:
    """The text field's words the query matches (patterns expanded) and its marked stems."""
    words, stems = set(), set()
    for fieldname, btext in query.existing_terms(searcher.reader(), phrases=True, expand=True):
        if fieldname != "text":
            continue
        term = btext.decode("utf-8") if isinstance(btext, bytes) else str(btext)
        if term.startswith(STEM_MARK):
            stems.add(term[len(STEM_MARK) :])
        else:
            words.add(term)
    return frozenset(words), frozenset(stems)


def _snippet(body: str, words: frozenset[str], stems: frozenset[str], language: str | None) -> str:
    """Up to two fragments of ``body`` around the words that matched, in text order, each
    word in ``<b>`` and the rest HTML-escaped; "" when no word of the query is found.

    A word matched through its stem ("developing" for "development") is marked as well:
    the document's own language stems it as the index did.
    """
    # Each word's folded form through the analysis cache: lookups in C, not a fold a word.
    tokens = WORD.findall(body)
    folded = list(map(FOLDED.__getitem__, tokens))
    hits = list(map(words.__contains__, folded))
    # A joined word matched by one of its parts: ".NET" marks "ASP.NET".
    parts = list(map(PARTS.__getitem__, tokens))
    for place, joined in enumerate(parts):
        if joined and not hits[place]:
            hits[place] = any(part in words for part in joined.split())
    if stems and language in STEMMED:
        stem_of = folded_stems(language)
        # A stem begins as its word does (Snowball changes endings): only words that begin
        # as one of the stems are stemmed.
        starts = tuple({s[:2] for s in stems})
        for place, word in enumerate(folded):
            if not hits[place] and word.startswith(starts):
                hits[place] = stem_of[tokens[place]] in stems
    if not any(hits):
        return ""
    marks = [
        (match.start(), match.end(), word)
        for match, word in zip(
            itertools.compress(WORD.finditer(body), hits),
            itertools.compress(folded, hits),
            strict=True,
        )
    ]
    fragments: list[list[tuple[int, int, str]]] = []
    for mark in marks:
        current = fragments[-1] if fragments else None
        if current and mark[1] - current[0][0] <= SNIPPET_CHARS - 2 * SNIPPET_CONTEXT:
            current.append(mark)
        else:
            fragments.append([mark])
    # The fragments with the most different words (then the most matches), shown in order.
    best = sorted(
        range(len(fragments)),
        key=lambda i: (-len({m[2] for m in fragments[i]}), -len(fragments[i]), i),
    )[:SNIPPET_FRAGMENTS]
    return " ... ".join(_fragment(body, fragments[i]) for i in sorted(best))


def _fragment(body: str, marks: list[tuple[int, int, str]]) -> str:
    start = max(0, marks[0][0] - SNIPPET_CONTEXT)
    end = min(len(body), marks[-1][1] + SNIPPET_CONTEXT)
    # Start and end on whole words: after a space, before one (at most the context's length
    # to walk).
    while start < marks[0][0] and start > 0 and not body[start - 1].isspace():
        start += 1
    while end > marks[-1][1] and end < len(body) and not body[end].isspace():
        end -= 1
    parts, position = [], start
    for mark_start, mark_end, _word in marks:
        parts.append(_escape(body[position:mark_start]))
        parts.append("<b>" + _escape(body[mark_start:mark_end]) + "</b>")
        position = mark_end
    parts.append(_escape(body[position:end]))
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
