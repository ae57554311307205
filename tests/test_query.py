"""A plain query's tree built from its words is the very tree Whoosh's parser gives (then
widened by stems and spellings), over queries of every shape; and the correction's cached
lookups answer as the index does."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from whoosh.fields import Schema
from whoosh.query import Query

from pipeline.errors import QueryError
from pipeline.search import IndexDoc, SearchIndex
from pipeline.search._analysis import STEM_MARK
from pipeline.search._query import (
    Budget,
    Lexicon,
    PlainWords,
    _correct,
    _parse,
    _parsed,
    _plain_words,
    parser,
)
from pipeline.search._schema import open_index

# Written before ß = ss and the split tokens: its pickled analyzer reads queries its way.
MAIN_INDEX = Path(__file__).resolve().parent / "data" / "index-main"

WORDS = (
    *("Python", "python", "PYTHON", "Kubernetes", "Entwicklung", "entwickeln", "Entwickler"),
    *("Müller", "Mueller", "muller", "Jörg", "Joerg", "Straße", "Strasse", "Cæsar", "Œuvre"),
    *("Genève", "François", "Ingénieurs", "Begoña", "Córdoba", "développeur", "über"),
    *("Zürich", "İstanbul", "ﬁnance", "Ⅻ", "Þór", "naïve", "Dublin", "Berlin", "experts"),
    *("or", "Or", "and", "not", "to", "TO", "ANDNOT", "ANDMAYBE", "Ör", "Kubernets", "a"),
)
SYNTAX = (
    *('"machine learning"', '"Begoña Muñoz"~2', "pyth*", "Ku?ernetes", "Pyhton~", "C#"),
    *(".NET", "C++", "node.js", "asp.net", "ci/cd", "O'Brien", "d'Ingénieurs", "16.6.1974"),
    *("type:CV", "language:de", "file_name:lebenslauf", "(Python OR Java)", "python^2"),
    *("[a TO c]", "x2", "python3", "max.mueller@example.com", "Jean-Luc", "snake_case"),
    *("Zür*", "PYTH*", "Straß*", "a*", "Œu*", "ﬁn*", "İst*", "Cæs*", "*", "py*thon", "C#*"),
)
JOINS = (" ", " ", " ", " OR ", " AND ", " NOT ", "  ", "\t", " OR NOT ")


def _queries(count: int, seed: int = 16) -> list[str]:
    rng = random.Random(seed)
    made = [*WORDS, *SYNTAX, "Python OR Python", "Müller muller", "a OR Ör", " Python", "x "]
    while len(made) < count:
        pieces = [rng.choice(WORDS if rng.random() < 0.8 else SYNTAX)]
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            pieces += [rng.choice(JOINS), rng.choice(WORDS if rng.random() < 0.8 else SYNTAX)]
        made.append("".join(pieces))
        if rng.random() < 0.15:  # a phrase of the same pieces
            made.append(f'"{made[-1]}"')
    return made


def _outcome(parse: Callable[..., Query], *args: object) -> Query | str:
    try:
        return parse(*args)
    except QueryError as exc:  # a query the parser cannot read: the same error both ways
        return str(exc)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> list[Schema]:
    index = SearchIndex(tmp_path_factory.mktemp("query") / "index")
    index.write([IndexDoc("a1", "C1", None, "CV", "cv.pdf", "Python", language="en")])
    return [open_index(index.directory).schema, open_index(MAIN_INDEX).schema]


def test_a_plain_query_is_the_tree_the_parser_gives(schemas: list[Schema]) -> None:
    queries = _queries(800)
    for schema in schemas:
        made, words = parser(schema), PlainWords(schema)
        built = 0
        for query in queries:
            expected, got = (
                _outcome(_parsed, schema, query, made),
                _outcome(_parse, schema, query, made, words),
            )
            assert repr(got) == repr(expected), query
            assert got == expected, query
            plain = _plain_words(query)
            built += plain is not None and words.query(*plain) is not None
        # The words' own path answered most of them (the rest: syntax, NOT, AND beside OR).
        assert built > len(queries) // 4
        for prefix in ("Zür*", "PYTH*", "Straß*", "a*", "Œu*", "Cæs*"):
            assert words.prefix(prefix[:-1]) == _parsed(schema, prefix, made), prefix
        for phrase in ('"machine learning"', '"Begoña Muñoz"', '"Python OR Go AND not"'):
            ours, theirs = words.phrase(phrase[1:-1]), _parsed(schema, phrase, made)
            assert repr(ours) == repr(theirs) and ours == theirs, phrase
            assert [q.char_ranges for q in ours] == [q.char_ranges for q in theirs], phrase


def test_only_plain_words_take_the_words_path() -> None:
    assert _plain_words("Python") == (["Python"], False)
    assert _plain_words("Python Kubernetes") == (["Python", "Kubernetes"], False)
    assert _plain_words("Python AND Kubernetes") == (["Python", "AND", "Kubernetes"], False)
    assert _plain_words("Python OR Go OR Rust") == (["Python", "OR", "Go", "OR", "Rust"], True)
    for query in ("Python OR Go Rust", "Python NOT Go", "OR Python", "Python OR", "C#", "x2"):
        assert _plain_words(query) is None, query
    for query in ("Python  Go", " Python", '"Python"', "pyth*", "type:CV", "Python OR OR Go"):
        assert _plain_words(query) is None, query


def test_corrections_from_the_cached_lexicon_are_the_index_s(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    texts = [
        "Kubernetes Kubernetes Python engineer",
        "Kubernetes operator, Python developer",
        "Entwicklung von Software in Python, Köln",
        *(f"Python Kubernetes team {n}" for n in range(30)),
    ]
    index.write(IndexDoc(f"a{n}", "C1", None, "CV", "cv.pdf", t) for n, t in enumerate(texts))
    ix = open_index(index.directory)
    with ix.searcher() as searcher:
        reader, lexicon = searcher.reader(), Lexicon(searcher.reader())
        for query in ("Kubernets", "Pyhton Kubernets", "Kubernetes", "Koln", "teams", "Pyhton"):
            for _ in range(2):  # the second time from the cache
                cached = _correct(reader, ix.schema, query, Budget.start(), lexicon)
                fresh = _correct(reader, ix.schema, query, Budget.start(), Lexicon(reader))
                assert cached == fresh, query
        assert _correct(reader, ix.schema, "Kubernets", Budget.start(), lexicon) == "kubernetes"
    ix.close()


def _whooshs_highlighted(searcher, parsed):  # type: ignore[no-untyped-def]
    """The text field's words and stems of the query that Whoosh's ``existing_terms``
    finds in the index, nothing kept between calls."""
    words, stems = set(), set()
    for _field, btext in parsed.existing_terms(
        searcher.reader(), phrases=True, expand=True, fieldname="text"
    ):
        term = btext.decode("utf-8")
        if term.startswith(STEM_MARK):
            stems.add(term[len(STEM_MARK) :])
        else:
            words.add(term)
    return frozenset(words), frozenset(stems)


def test_a_plain_query_highlights_the_words_whoosh_finds(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    texts = [" ".join(WORDS[n::3]) + " developing Entwickler teams" for n in range(3)]
    index.write(IndexDoc(f"a{n}", "C1", None, "CV", "cv.pdf", t) for n, t in enumerate(texts))
    opened = index._opened()
    assert opened is not None
    compared = 0
    for query in _queries(400):
        parsed = _outcome(opened.parse, query)
        if isinstance(parsed, str):
            continue
        ours = opened.highlighted(query, parsed)
        compared += 1
        assert ours == _whooshs_highlighted(opened.searcher, parsed), query
    assert compared > 100
    opened.close()
