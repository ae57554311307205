"""Snippets: fragments of a document's text around the words a query matched.

Made from the database's copy of the text (the index keeps none), with the analysis the
index used, so a word matched through its stem is marked too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from whoosh.query import Query

from ._analysis import FOLDED, PARTS, STEM_MARK, STEMMED, WORD, fold, folded_stems

if TYPE_CHECKING:
    from whoosh.reading import IndexReader
    from whoosh.searching import Searcher

SNIPPET_CHARS = 240  # at most, per fragment
SNIPPET_CONTEXT = 60  # characters of context before the first match and after the last
SNIPPET_FRAGMENTS = 2
# Snippets made, by (text, words, stems, language): bounded, emptied when full.
_MADE: dict[tuple[int, int, frozenset[str], frozenset[str], str | None], str] = {}
_MADE_LIMIT = 4_096


def _highlighted(searcher: Searcher, query: Query) -> tuple[frozenset[str], frozenset[str]]:
    """The text field's words the query matches (patterns expanded) and its marked stems."""
    words, stems = set(), set()
    # Only the text field's leaves: the file name's and the title's terms would be looked
    # up in every segment for nothing.
    reader = _KnownTerms(searcher.reader())
    found = query.existing_terms(reader, phrases=True, expand=True, fieldname="text")
    for fieldname, btext in found:
        if fieldname != "text":
            continue
        term = btext.decode("utf-8") if isinstance(btext, bytes) else str(btext)
        if term.startswith(STEM_MARK):
            stems.add(term[len(STEM_MARK) :])
        else:
            words.add(term)
    return frozenset(words), frozenset(stems)


# Whether a term is in a reader's segments, by reader while it lives: a new query's words are
# mostly words earlier queries asked, and each lookup reads every segment's hash table.
_KNOWN: WeakKeyDictionary[IndexReader, dict[tuple[str, bytes], bool]] = WeakKeyDictionary()
_KNOWN_LIMIT = 100_000


class _KnownTerms:
    """A reader whose ``(fieldname, btext) in reader`` is answered from ``_KNOWN`` once
    asked; everything else is the reader's."""

    def __init__(self, reader: IndexReader) -> None:
        self._reader = reader
        known = _KNOWN.get(reader)
        if known is None or len(known) > _KNOWN_LIMIT:
            known = _KNOWN[reader] = {}
        self._known = known

    def __contains__(self, term: tuple[str, bytes]) -> bool:
        found = self._known.get(term)
        if found is None:
            found = self._known[term] = term in self._reader
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def _clear_caches() -> None:
    """Forget every kept answer (the benchmarks measure a process that has none)."""
    _MADE.clear()
    _KNOWN.clear()
    _at_word_start.cache_clear()


def _snippet(body: str, words: frozenset[str], stems: frozenset[str], language: str | None) -> str:
    """Up to two fragments of ``body`` around the words that matched, in text order, each
    word in ``<b>`` and the rest HTML-escaped; "" when no word of the query is found.

    A word matched through its stem ("developing" for "development") is marked as well:
    the document's own language stems it as the index did. Made once per text, words and
    language while the process keeps it (a page asked again, a server's repeated query).
    """
    key = (hash(body), len(body), words, stems, language)
    made = _MADE.get(key)
    if made is None:
        if len(_MADE) >= _MADE_LIMIT:
            _MADE.clear()
        made = _MADE[key] = _made(body, words, stems, language)
    return made


def _made(body: str, words: frozenset[str], stems: frozenset[str], language: str | None) -> str:
    stemmed = bool(stems) and language in STEMMED
    # A stem begins as its word does (Snowball changes endings): only words that begin as
    # one of the stems are stemmed.
    starts = tuple({s[:2] for s in stems}) if stemmed else ()
    # And where a matched word is looked for: the stem's beginning (``_STEM_ENDING``).
    beginnings = tuple({s[: max(2, len(s) - _STEM_ENDING)] for s in stems}) if stemmed else ()
    marks = _matched(body, words, stems, starts, beginnings, language if stemmed else None)
    if not marks:
        return ""
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


def _matched(
    body: str,
    words: frozenset[str],
    stems: frozenset[str],
    starts: tuple[str, ...],
    beginnings: tuple[str, ...],
    language: str | None,
) -> list[tuple[int, int, str]]:
    """The tokens of ``body`` the query matched (a word, a part of a joined word, or, for
    ``language``, a stem of a word beginning with one of ``starts``), as (start, end,
    folded form), in text order: of the tokens ``WORD.finditer(body)`` gives, those that
    test as the index analysed them.

    Only the stretches between whitespace that can hold a match are tokenized (a token
    never spans whitespace, and the token pattern looks back at most a few characters, so
    a stretch scanned alone gives the tokens the whole scan gives there). They are found in
    the text folded character by character (:func:`_folded_text`, same length), by the
    query's words themselves (a matched token's folded form holds its word, or its part),
    by the stems' beginnings at a word's start, and by the characters that do not
    fold one to one (every stretch holding one is tokenized).
    """
    folded_text = _folded_text(body)
    if folded_text is None:
        return _tested(body, WORD.finditer(body), words, stems, starts, language, [])
    if not words and not beginnings:
        return []
    places = _places(folded_text, words, beginnings)
    stem_of = folded_stems(language) if language is not None else None
    marks: list[tuple[int, int, str]] = []
    position, length = 0, len(body)
    for start in places:
        if start < position:  # in the stretch just tokenized
            continue
        place = start
        while start > position and not body[start - 1].isspace():
            start -= 1
        # A place's characters are no whitespace in the text (a word's or a beginning's
        # fold from none), but for one that does not fold regularly: the stretch ends at
        # the first whitespace after the place's first character.
        end_match = _STRETCH_END.match(body, place + 1)
        position = end_match.end() if end_match else length
        # ``_tested``, written out: this runs for every stretch of every hit.
        for match in WORD.finditer(body, start, position):
            token = match.group()
            folded = FOLDED[token]
            if folded in words:
                marks.append((*match.span(), folded))
                continue
            joined = PARTS[token]
            if (joined and any(part in words for part in joined.split())) or (
                stem_of is not None and folded.startswith(starts) and stem_of[token] in stems
            ):
                marks.append((*match.span(), folded))
    return marks


def _places(folded_text: str, words: frozenset[str], beginnings: tuple[str, ...]) -> list[int]:
    """Where in ``folded_text`` a match can begin, in order (repeats allowed): each of the
    words (or, past ``_FINDER_WORDS``, their first three letters), each stem's beginning
    at a word's start, each ``IRREGULAR`` character.

    Found one needle at a time by ``str.find`` (a one-pattern alternation of them is tried
    at every character of the text and compiled anew for every query: several times the
    cost); a beginning, short and common inside words, by a pattern of its own, kept."""
    needles = words if len(words) <= _FINDER_WORDS else {w[:3] for w in words}
    places: list[int] = []
    for needle in (IRREGULAR, *needles):
        if not needle:  # matches everywhere, as an empty alternative would
            return list(range(len(folded_text)))
        found = folded_text.find(needle)
        while found >= 0:
            places.append(found)
            found = folded_text.find(needle, found + 1)
    for beginning in beginnings:
        if beginning in folded_text:
            places += map(_match_start, _at_word_start(beginning).finditer(folded_text))
    places.sort()
    return places


_match_start = re.Match.start


@lru_cache(maxsize=4_096)
def _at_word_start(beginning: str) -> re.Pattern[str]:
    """``beginning`` where no word character precedes it: the literal first, so that the
    scan jumps from one occurrence to the next."""
    escaped = re.escape(beginning)
    return re.compile(rf"{escaped}(?<!\w{escaped})")


def _tested(
    body: str,
    tokens: Iterator[re.Match[str]],
    words: frozenset[str],
    stems: frozenset[str],
    starts: tuple[str, ...],
    language: str | None,
    marks: list[tuple[int, int, str]],
) -> list[tuple[int, int, str]]:
    """``marks`` with the (start, end, folded form) of each of ``tokens`` that matched."""
    stem_of = folded_stems(language) if language is not None else None
    for match in tokens:
        token = match.group()
        folded = FOLDED[token]
        joined = PARTS[token]
        if (
            folded in words
            # A joined word matched by one of its parts: ".NET" marks "ASP.NET".
            or (joined and any(part in words for part in joined.split()))
            or (stem_of is not None and folded.startswith(starts) and stem_of[token] in stems)
        ):
            marks.append((*match.span(), folded))
    return marks


# A stretch between whitespace: where a token can end at the latest.
_STRETCH_END = re.compile(r"\S*")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_WORD_CHAR = re.compile(r"\w")
# Characters the token pattern joins words with: folding must not make or unmake one.
_JOINERS = frozenset(".'’+#@-")
# What stands in the folded text for a character that does not fold to exactly one
# character of its kind (ß is "ss", a combining accent nothing, Σ's lower case depends on
# what follows): every stretch holding one is tokenized.
IRREGULAR = "\x00"


class _CharFolds(dict[str, str]):
    """A non-ASCII character -> its folded form when that is one character of the same kind
    (a word character, a space, a joiner or none of them), else ``IRREGULAR``."""

    def __missing__(self, char: str) -> str:
        lowered = char.lower()
        folded = fold(lowered) if len(lowered) == 1 and char != "Σ" else ""
        regular = (
            len(folded) == 1
            and bool(_WORD_CHAR.match(folded)) == bool(_WORD_CHAR.match(char))
            and folded.isspace() == char.isspace()
            and (folded == char or (folded not in _JOINERS and char not in _JOINERS))
        )
        made = self[char] = folded if regular else IRREGULAR
        return made


_CHAR_FOLDS = _CharFolds()


def _fold_char(match: re.Match[str]) -> str:
    return _CHAR_FOLDS[match.group()]


def _folded_text(body: str) -> str | None:
    """``body`` lower-cased and folded a character at a time, each character where it was
    (the ones that do not fold one to one as ``IRREGULAR``), or None if it cannot be."""
    if body.isascii():
        return body.lower()
    # A text holds a few different non-ASCII characters, each many times: replaced one by
    # one, in C, rather than through a call per occurrence. A fold into another non-ASCII
    # character could be replaced again: those texts go through ``_fold_char``.
    folded = body
    for char in set(_NON_ASCII.findall(body)):
        into = _CHAR_FOLDS[char]
        if into != char:
            if not into.isascii():
                folded = _NON_ASCII.sub(_fold_char, body)
                break
            folded = folded.replace(char, into)
    folded = folded.lower()
    return folded if len(folded) == len(body) else None


# Snowball changes at most this many of a word's last letters in the stem it makes, in
# the folded forms (French "applications" -> "appliqu": two; English "ability"'s "biliti"
# -> "ble": two): a word stemmed to ``s`` begins with ``s`` but for its last three letters.
# Measured over the 5,212 words of 3,000 generated CVs and the shared corpus in all four
# languages (at most two changed); a word past it would be found, only not marked.
_STEM_ENDING = 3

# A query's words past this many are looked for by their first three letters (one
# alternation of hundreds of words, a prefix's expansions, costs more than it saves).
_FINDER_WORDS = 24


def _fragment(body: str, marks: list[tuple[int, int, str]]) -> str:
    first, last = marks[0][0], marks[-1][1]
    start = max(0, first - SNIPPET_CONTEXT)
    end = min(len(body), last + SNIPPET_CONTEXT)
    # Start and end on whole words: after a space, before one (or at the match itself).
    if 0 < start < first and not body[start - 1].isspace():
        space = _WHITESPACE.search(body, start, first - 1)
        start = space.end() if space else first
    if last < end < len(body) and not body[end].isspace():
        space = _LAST_WHITESPACE.search(body, last + 1, end)
        end = space.start() if space else last
    parts, position = [], start
    for mark_start, mark_end, _word in marks:
        parts.append(_escape(body[position:mark_start]))
        parts.append("<b>" + _escape(body[mark_start:mark_end]) + "</b>")
        position = mark_end
    parts.append(_escape(body[position:end]))
    return "".join(parts)


_WHITESPACE = re.compile(r"\s")
# The last whitespace before the end searched to.
_LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
