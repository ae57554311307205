"""How text becomes terms: the token patterns, accent and case folding, the stems.

The same analysis serves documents (``terms``: a document's words, then its marked stems),
queries (the schema's analyzers, ``query_stems``) and snippets (``FOLDED``, ``folded_stems``),
so that a snippet marks exactly the words a query matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from whoosh.analysis import CharsetFilter, LowercaseFilter, RegexTokenizer
from whoosh.lang import stemmer_for_language
from whoosh.support.charset import accent_map

if TYPE_CHECKING:
    from whoosh.analysis import Analyzer

# Words, plus the shapes skills take: "node.js", "c++", "c#", "ci/cd" stays two words.
TOKEN_PATTERN = r"\w+(?:[.'’]\w+)*(?:\+\+|#)?"
# File names break at dots and underscores too: "Lebenslauf_Max_Müller.pdf" is four words,
# so "Müller" finds it (the text's pattern would keep "müller.pdf" whole, as "node.js").
FILE_NAME_PATTERN = r"[^\W_]+(?:\+\+|#)?"
WORD = re.compile(TOKEN_PATTERN)

STEMMED = ("en", "de", "fr", "es")  # languages whose documents are stemmed too
# Stems live in the text field itself, marked so that no word can be mistaken for one: a
# document in a stemmed language holds "~develop" for "developing" (only where the stem
# differs from the word). One field instead of one per language halves the postings to
# write and the terms a query visits; the stems come after the words, so phrase positions
# stay those of the words.
STEM_MARK = "~"


def analyzer(pattern: str = TOKEN_PATTERN) -> Analyzer:
    # Folding accents makes "Müller" find "Muller" and the reverse; case is folded too.
    return RegexTokenizer(pattern) | LowercaseFilter() | CharsetFilter(accent_map)


@cache
def _stemmer(lang: str) -> Callable[[str], str]:
    return lru_cache(maxsize=100_000)(stemmer_for_language(lang))


def fold(word: str) -> str:
    return word.translate(accent_map)


class _WordMap(dict[str, str]):
    """A word's analysed form, worked out once and then found by a lookup.

    ``map(words.__getitem__, ...)`` stays in C for every word seen before; a CV's words are
    mostly words other CVs have. Bounded: emptied when full (the next documents refill it
    with the words that are common).
    """

    LIMIT = 50_000

    def __init__(self, make: Callable[[str], str]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, word: str) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        made = self[word] = self._make(word)
        return made


# A word as the text field holds it: lowercased, then accents folded. Translating through
# Whoosh's accent map costs a dictionary miss per unaccented character, so each distinct
# word is folded once.
FOLDED = _WordMap(lambda word: fold(word.lower()))


@cache
def folded_stems(lang: str) -> _WordMap:
    """Word -> its stem in ``lang``, folded (a snippet's test for a word matched by stem)."""
    stem = _stemmer(lang)
    return _WordMap(lambda word: fold(stem(word.lower())))


@cache
def _marked_stems(lang: str) -> _WordMap:
    """Word -> its marked stem, or "" where the stem is the folded word itself.

    Stems are taken before folding (the German and French stemmers know their accented
    suffixes)."""
    stems = folded_stems(lang)

    def marked(word: str) -> str:
        stemmed = stems[word]
        return "" if stemmed == FOLDED[word] else STEM_MARK + stemmed

    return _WordMap(marked)


def terms(text: str, language: str | None) -> list[str]:
    """The text field's terms for a document: its folded words, then the marked stems.

    Whoosh takes a list of words as already analyzed; one regex scan and a lookup per word
    are many times cheaper than its chain of token generators. The words are what the
    field's analyzer makes of a query.
    """
    words = WORD.findall(text)
    folded = list(map(FOLDED.__getitem__, words))
    if language not in STEMMED:
        return folded
    return folded + list(filter(None, map(_marked_stems(language).__getitem__, words)))


def query_stems(lowered: str) -> set[str]:
    return {fold(_stemmer(lang)(lowered)) for lang in STEMMED}
