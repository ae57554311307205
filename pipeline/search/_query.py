"""Reading a query: its syntax and cost checked, parsed over the fields, widened by stems
and spellings; filters; and a correction of its spelling from the index's own words."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from whoosh.fields import Schema
from whoosh.qparser import AndGroup, MultifieldParser
from whoosh.query import (
    And,
    ConstantScoreQuery,
    DateRange,
    FuzzyTerm,
    MultiTerm,
    Or,
    Phrase,
    Prefix,
    Query,
    Term,
    Wildcard,
)

from ..errors import QueryError, QueryTooCostly
from ._analysis import FAMILY_MARK, STEM_MARK, family_key, query_stems, umlaut_spellings
from ._schema import BOOSTS, FIELDS, STEM_BOOST

if TYPE_CHECKING:
    from whoosh.reading import IndexReader

# What one query may cost. A query of 2,000 characters of unknown words took 17 s, and
# "[a TO z]" 4 s, at 124 documents, before these caps.
MAX_QUERY_CHARS = 1_000
MAX_QUERY_WORDS = 64
# Words a prefix, wildcard, range or fuzzy term may stand for, all together: each costs a
# posting list read (0.2 ms at 124 documents; "[a TO z]" stood for 900 and took 200 ms).
MAX_EXPANSIONS = 250
# A last guard, checked before each further step (ranking, each word to correct); generous,
# so that a loaded machine does not refuse a query the caps above let through.
MAX_QUERY_SECONDS = 5.0
# Fields a query may name (``type:CV``); anything else is a mistake, not a word to find.
QUERY_FIELDS = (*FIELDS, "type", "language", "candidate_id", "attachment_id")
# Other spellings of a word ("Joerg" for "Jörg") weigh as the word; its German word family
# ("entwickeln" for "Entwicklung") less than its stem.
FAMILY_BOOST = 0.4
OPERATORS = ("AND", "OR", "NOT")

# A query's pieces outside quotes: a quoted phrase, a parenthesis, or a run of other text.
_PIECES = re.compile(r'"[^"]*"(?:~\d+)?|[()]|[^\s()"]+')
_FIELD = re.compile(r"^[+-]?([A-Za-z_]\w*):(?!//)(.*)$")
_LETTERS = re.compile(r"[^\W\d_]+")


@dataclass
class Budget:
    """A query's time limit: checked between the steps of a search."""

    deadline: float

    @classmethod
    def start(cls, seconds: float = MAX_QUERY_SECONDS) -> Budget:
        return cls(time.monotonic() + seconds)

    def check(self, query: str) -> None:
        if time.monotonic() > self.deadline:
            raise QueryTooCostly(
                f"query {_short(query)!r} took more than {MAX_QUERY_SECONDS:g} s: "
                "make it narrower (fewer words, longer prefixes)"
            )


def _short(query: str) -> str:
    return query if len(query) <= 60 else query[:57] + "..."


def _check_syntax(query: str) -> None:
    """A query that cannot mean what its writer meant is an error with the reason, not a
    guess: unbalanced quotes or parentheses, an operator with nothing on one side, a field
    the index does not have, or a query past the caps."""
    if not query.strip():
        raise QueryError("empty query: give at least one word")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryTooCostly(
            f"query is {len(query):,} characters long: at most {MAX_QUERY_CHARS:,} are read"
        )
    if query.count('"') % 2:
        raise QueryError(f"cannot read query {_short(query)!r}: a quote is not closed")
    depth = 0
    for char in query if "(" in query or ")" in query else "":
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise QueryError(f"cannot read query {_short(query)!r}: parentheses do not match")
    pieces = _PIECES.findall(query)
    words = sum(1 for p in pieces if p not in ("(", ")") and p not in OPERATORS)
    if words > MAX_QUERY_WORDS:
        raise QueryTooCostly(f"query has {words} words: at most {MAX_QUERY_WORDS} are read")
    _check_operators(query, pieces)
    for piece in pieces:
        field = _FIELD.match(piece)
        if field and field.group(1) not in QUERY_FIELDS:
            raise QueryError(
                f"cannot read query {_short(query)!r}: there is no field {field.group(1)!r} "
                f"(fields: {', '.join(QUERY_FIELDS)})"
            )


def _check_operators(query: str, pieces: list[str]) -> None:
    before = "("  # the query's start reads as an opening parenthesis
    for piece in [*pieces, ")"]:
        if piece in ("AND", "OR") and before in ("(", "AND", "OR", "NOT"):
            where = "nothing" if before == "(" else before
            raise QueryError(
                f"cannot read query {_short(query)!r}: {piece} has {where} on its left"
            )
        if piece == ")" and before in OPERATORS:
            raise QueryError(
                f"cannot read query {_short(query)!r}: {before} has nothing on its right"
            )
        before = piece


def parser(schema: Schema) -> MultifieldParser:
    return MultifieldParser(list(FIELDS), schema, fieldboosts=BOOSTS, group=AndGroup)


def _parse(
    schema: Schema,
    query: str,
    made: MultifieldParser | None = None,
    words: PlainWords | None = None,
) -> Query:
    """The query's tree over the fields, widened (``_widened``). Plain words (the common
    shape), a plain prefix or a plain phrase are built from their words (``PlainWords``:
    the very tree the parser gives, at a tenth of its cost); anything else goes through
    Whoosh's parser."""
    plain = _plain_words(query)
    built = None
    if plain is not None:
        built = (words or PlainWords(schema)).query(*plain)
    elif _PLAIN_PREFIX.fullmatch(query):
        built = (words or PlainWords(schema)).prefix(query[:-1])
    elif query[:1] == '"' and _PLAIN_PHRASE.fullmatch(query, 1, len(query) - 1):
        built = (words or PlainWords(schema)).phrase(query[1:-1])
    return built if built is not None else _parsed(schema, query, made)


def _parsed(schema: Schema, query: str, made: MultifieldParser | None = None) -> Query:
    """The query through Whoosh's parser, widened: every shape."""
    parser_ = made or parser(schema)
    try:
        parsed = parser_.parse(query)
    except Exception as exc:  # whoosh's parser raises assorted errors
        raise QueryError(f"cannot read query {_short(query)!r}: {exc}") from exc
    # The parser folded the words (with the analysis the index was written with, pickled
    # in its schema); stems need them as typed (lower-cased, accents kept).
    analyzer = schema["text"].analyzer
    typed: dict[str, str] = {}
    for piece in _LETTERS.findall(query):
        lowered = piece.lower()
        for token in analyzer(lowered):
            typed.setdefault(token.text, lowered)
    return _widened(_bounded(parsed), typed)


# A query of plain words: letters only, one space between them, joined by nothing, AND or
# OR. Anything else (quotes, fields, patterns, digits, symbols, NOT, AND beside OR, other
# spacing) goes through Whoosh's parser.
_PLAIN = re.compile(r"[^\W\d_]+(?: [^\W\d_]+)*")
# A plain prefix: letters, then "*".
_PLAIN_PREFIX = re.compile(r"[^\W\d_]+\*")
# A plain phrase: two words or more of letters in quotes, one space between them.
_PLAIN_PHRASE = re.compile(r"[^\W\d_]+(?: [^\W\d_]+)+")
# What Whoosh's parser reads as operators between words.
_PARSER_OPERATORS = frozenset(("AND", "OR", "NOT", "ANDNOT", "ANDMAYBE"))


def _plain_words(query: str) -> tuple[list[str], bool] | None:
    """A plain query's pieces (its words and operators, as typed) and whether its words
    are joined by OR, or None for any other query."""
    if not _PLAIN.fullmatch(query):
        return None
    pieces = query.split(" ")
    joins = set()
    operator = None
    for place, piece in enumerate(pieces):
        if piece in _PARSER_OPERATORS:
            if piece not in ("AND", "OR") or operator is not None or not place:
                return None
            operator = piece
            continue
        if place:
            joins.add(operator or "AND")
        operator = None
    if operator is not None or len(joins) > 1:
        return None
    return pieces, "OR" in joins


class PlainWords:
    """The tree of a plain query (``_plain_words``) as Whoosh's parser makes it and widens
    it, made from each word's terms (its per-field analysis and its stems and spellings
    worked out once per word while the index is open: ``_index._Opened``).

    The parser's tree: each word an Or of its term in each field (boosted), the words
    joined by an And (a word repeated, or another spelling of one, appears once; one word
    is its Or alone), or by OR into one flat Or of every word's terms (repeats dropped); a
    prefix or a phrase an Or of it in each field. ``tests/test_query.py`` compares the two
    over hundreds of queries of every shape.
    """

    LIMIT = 50_000  # words of each kind remembered; emptied when full

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._analyzer = schema["text"].analyzer
        self._terms: dict[str, tuple[Term, ...] | None] = {}
        self._tokens: dict[str, list[str]] = {}
        self._widened: dict[tuple[str, str], Query] = {}

    def query(self, pieces: list[str], joined_by_or: bool) -> Query | None:
        """The widened tree, or None where a word is not one term in every field (the
        parser then decides)."""
        typed: dict[str, str] = {}  # as _parsed builds it: a term -> its first word typed
        words: list[tuple[Term, ...]] = []
        for piece in pieces:
            lowered = piece.lower()
            for token in self._typed_tokens(lowered):
                typed.setdefault(token, lowered)
            if piece in _PARSER_OPERATORS:
                continue
            terms = self._field_terms(piece)
            if terms is None:
                return None
            words.append(terms)
        if joined_by_or:
            flat = dict.fromkeys(itertools.chain.from_iterable(words))
            return Or([self._widen(term, typed) for term in flat])
        ors = [Or([self._widen(term, typed) for term in terms]) for terms in dict.fromkeys(words)]
        return ors[0] if len(ors) == 1 else And(ors)

    def prefix(self, start: str) -> Query | None:
        """A plain prefix's tree (``start*``): an Or of the prefix in each field, folded
        but not split into words (Whoosh's parser does not tokenize a pattern); None where
        a field's analysis makes no prefix or more than one."""
        prefixes: list[Query] = []
        for field in FIELDS:
            texts = list(
                self.schema[field].process_text(
                    start, mode="query", tokenize=False, removestops=False
                )
            )
            if len(texts) != 1:
                return None
            prefixes.append(Prefix(field, texts[0], boost=BOOSTS.get(field, 1.0)))
        return Or(prefixes)

    def phrase(self, text: str) -> Query | None:
        """A plain phrase's tree (``"text"``): an Or of the phrase in each field, with the
        places of its words in the query as the parser records them; None where a field's
        analysis leaves fewer than two words (the parser makes a term of one)."""
        phrases: list[Query] = []
        for field in FIELDS:
            # One token object, changed in place for each word: read as it goes.
            tokens = self.schema[field].tokenize(text, mode="query", chars=True)
            found = [(t.text, (1 + t.startchar, 1 + t.endchar)) for t in tokens]
            if len(found) < 2:
                return None
            words, places = [w for w, _ in found], [c for _, c in found]
            boost = BOOSTS.get(field, 1.0)
            phrases.append(Phrase(field, words, slop=1, boost=boost, char_ranges=places))
        return Or(phrases)

    def _field_terms(self, word: str) -> tuple[Term, ...] | None:
        if word not in self._terms:
            if len(self._terms) >= self.LIMIT:
                self._terms.clear()
            terms = []
            for field in FIELDS:
                texts = list(self.schema[field].process_text(word, mode="query"))
                if len(texts) != 1:
                    self._terms[word] = None
                    return None
                terms.append(Term(field, texts[0], boost=BOOSTS.get(field, 1.0)))
            self._terms[word] = tuple(terms)
        return self._terms[word]

    def _typed_tokens(self, lowered: str) -> list[str]:
        tokens = self._tokens.get(lowered)
        if tokens is None:
            if len(self._tokens) >= self.LIMIT:
                self._tokens.clear()
            tokens = self._tokens[lowered] = [t.text for t in self._analyzer(lowered)]
        return tokens

    def _widen(self, term: Term, typed: dict[str, str]) -> Query:
        if term.fieldname != "text":
            return term
        key = (term.text, typed.get(term.text, term.text))
        widened = self._widened.get(key)
        if widened is None:
            if len(self._widened) >= self.LIMIT:
                self._widened.clear()
            widened = self._widened[key] = _widened(term, typed)
        return widened


def _bounded(query: Query) -> Query:
    # A fuzzy term keeps its first letter: without it Whoosh measures the distance to every
    # word of the index.
    if isinstance(query, FuzzyTerm):
        query.prefixlength = max(query.prefixlength, 1)
        query.maxdist = min(query.maxdist, 2)
        return query
    if query.is_leaf():
        return query
    return query.apply(_bounded)


def check_expansions(query: Query, reader: IndexReader, text: str) -> None:
    """Prefixes, wildcards, ranges and fuzzy terms stand for at most ``MAX_EXPANSIONS``
    words together (``[a TO z]`` would read every posting list of the index)."""
    left = MAX_EXPANSIONS
    for leaf in query.leaves():
        if not isinstance(leaf, MultiTerm) or not leaf.field():
            continue
        if isinstance(leaf, Wildcard) and not re.match(r"[^*?]", leaf.text):
            raise QueryTooCostly(
                f"query {_short(text)!r}: a wildcard must begin with a letter "
                f"({leaf.text!r} would read every word of the index)"
            )
        count = sum(1 for _ in itertools.islice(leaf.expanded_terms(reader), left + 1))
        left -= count
        if left < 0:
            raise QueryTooCostly(
                f"query {_short(text)!r}: {leaf} stands for more than {MAX_EXPANSIONS:,} "
                "words of the index: make it longer or narrower"
            )


def _widened(query: Query, typed: dict[str, str]) -> Query:
    """Each word of the text field also matches the documents that share one of its stems
    (in any stemmed language: the query's own language is unknown), its other spellings
    (umlauts typed or spelt out), and its German word family."""
    if type(query) is Term and query.fieldname == "text":
        word = query.text
        lowered = typed.get(word, word)
        stems = query_stems(lowered)
        boost = query.boost * STEM_BOOST
        alternatives: list[Query] = [query]
        alternatives += [
            Term("text", s, boost=query.boost) for s in sorted(umlaut_spellings(lowered))
        ]
        alternatives += [Term("text", STEM_MARK + s, boost=boost) for s in sorted(stems)]
        alternatives += [Term("text", s, boost=boost) for s in sorted(stems) if s != word]
        key = family_key(word)
        if key:
            family = query.boost * FAMILY_BOOST
            alternatives.append(Term("text", FAMILY_MARK + key, boost=family))
            if key not in stems and key != word:
                alternatives.append(Term("text", key, boost=family))
        return Or(alternatives)
    if query.is_leaf():
        return query
    return query.apply(lambda sub: _widened(sub, typed))


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


# -- spelling -------------------------------------------------------------------------------

# A word the index holds is still taken for a typo when a word one edit away, and not one of
# its inflections, is in this many times as many documents (a typo made in three CVs while
# thousands say "Python"). Measured (benchmarks/README.md, "the correction's margin"): over
# 142 documents (124 generated CVs and the shared corpus's 18), of the 1,039 words held in at
# most three documents with a neighbour one edit away, a margin of 20 "corrected" 32, none
# of them a typo ("term" -> "team", "date" -> "data"); at 100, none.
RARE_MARGIN = 100
# ... and only a word in so few documents: one in more is a word, however common its
# neighbour.
RARE_MOST = 3


_CORRECTABLE = re.compile(r"[^\W\d_]{4,}")


def edit_budget(word: str) -> int:
    """Edits a correction may make: none for words of three letters or fewer ("Go", "R",
    "SQL" are words, not typos), one up to six letters, two beyond."""
    if len(word) <= 3:
        return 0
    return 1 if len(word) <= 6 else 2


def correctable(piece: str) -> bool:
    """Only plain words are spelled again: not operators, fields, patterns, numbers, or
    tokens with symbols ("C++", "C#", ".NET", "node.js")."""
    return piece not in OPERATORS and bool(_CORRECTABLE.fullmatch(piece))


def _correct(
    reader: IndexReader,
    schema: Schema,
    query: str,
    budget: Budget,
    lexicon: Lexicon | None = None,
) -> str | None:
    """The query with every misspelled word spelled as the index's words are ("Kubernets"
    -> "kubernetes"), or None when no word needs it."""
    analyzer = schema["text"].analyzer
    words = lexicon or Lexicon(reader)
    terms = words.terms

    def term_of(lowered: str) -> str | None:
        if lowered not in terms:
            if len(terms) >= Lexicon.LIMIT:
                terms.clear()
            folded = [t.text for t in analyzer(lowered)]
            terms[lowered] = folded[0] if len(folded) == 1 else None
        return terms[lowered]

    return corrected_query(query, words, term_of, budget)


class Words(Protocol):
    """What the spelling correction reads of an index: each back end's own (``Lexicon``
    over Whoosh's terms, the PostgreSQL search's over its ``search_words``)."""

    def frequency(self, word: str) -> int:
        """How many documents hold the word."""
        ...

    def starting_with(self, letter: str) -> list[str]:
        """The plain words (letters only) beginning with the letter."""
        ...


def corrected_query(
    query: str,
    words: Words,
    term_of: Callable[[str], str | None],
    budget: Budget | None = None,
) -> str | None:
    """The correction's one policy, for every back end: the query with each misspelled word
    replaced, or None. ``term_of`` gives a lower-cased word as the index holds it (None: not
    one word there)."""
    replacements: dict[str, str] = {}
    pieces = itertools.chain.from_iterable(p.strip('"').split() for p in _PIECES.findall(query))
    for word in pieces:
        lowered = word.lower()
        if not correctable(word) or lowered in replacements:
            continue
        term = term_of(lowered)
        if term is None:
            continue
        suggestion = _spelled_again(words, term, lowered)
        if budget is not None:
            budget.check(query)
        if suggestion is not None:
            replacements[lowered] = suggestion
    if not replacements:
        return None
    pattern = re.compile(
        r"(?<![\w.+#])(" + "|".join(map(re.escape, replacements)) + r")(?![\w+#]|\.\w)",
        re.IGNORECASE,
    )
    return pattern.sub(lambda m: replacements[m.group(1).lower()], query)


def _spelled_again(words: Words, term: str, lowered: str) -> str | None:
    """The word a plain query word (``term`` as indexed, ``lowered`` as typed) is taken for
    a typo of, or None: see docs/search.md, "Spelling"."""
    known = words.frequency(term) + sum(words.frequency(s) for s in umlaut_spellings(lowered))
    if known > RARE_MOST:
        return None
    best = _nearest(words, term, edit_budget(term) if not known else 1)
    if best is None:
        return None
    suggestion, frequency = best
    if known and (
        frequency < RARE_MARGIN * known or query_stems(lowered) & query_stems(suggestion)
    ):
        return None  # a word of its own, or an inflection ("experts" beside "expert")
    return suggestion


class Lexicon:
    """The text field's plain words by first letter, read once per letter, and each word's
    document frequency and query term, looked up once per word (a search's lexicon lives
    as long as its open searcher: ``_index._Opened``; a lookup in the index's four
    segments' term tables cost 0.05 ms)."""

    LIMIT = 50_000  # words remembered of each kind; emptied when full

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self._by_letter: dict[str, list[str]] = {}
        self._frequencies: dict[str, int] = {}
        # A lower-cased query word -> its term in the text field (``_correct``'s term_of).
        self.terms: dict[str, str | None] = {}

    def frequency(self, word: str) -> int:
        found = self._frequencies.get(word)
        if found is None:
            if len(self._frequencies) >= self.LIMIT:
                self._frequencies.clear()
            found = self._frequencies[word] = int(self.reader.doc_frequency("text", word))
        return found

    def starting_with(self, letter: str) -> list[str]:
        if letter not in self._by_letter:
            words = (b.decode("utf-8") for b in self.reader.expand_prefix("text", letter))
            self._by_letter[letter] = [w for w in words if w.isalpha()]
        return self._by_letter[letter]


def _nearest(words: Words, term: str, edits: int) -> tuple[str, int] | None:
    """The index's word nearest to ``term`` within ``edits`` edits (a transposition is one),
    beginning with the same letter: fewest edits first, then the most documents."""
    if edits <= 0:
        return None
    # Imported when a query has a word to correct; its loop over the words runs in C.
    from rapidfuzz import process
    from rapidfuzz.distance import OSA

    matches = process.extract(
        term, words.starting_with(term[0]), scorer=OSA.distance, score_cutoff=edits, limit=None
    )
    found = [
        (edited, -words.frequency(word), word) for word, edited, _place in matches if word != term
    ]
    if not found:
        return None
    _edits, frequency, candidate = min(found)
    return candidate, -frequency
