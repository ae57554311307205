"""How text becomes terms: the token patterns, accent and case folding, the stems.

The same analysis serves documents (``terms``: a document's words, then the parts of its
joined words, then its marked stems), queries (the schema's analyzers, ``query_stems``) and
snippets (``FOLDED``, ``folded_stems``, ``PARTS``), so that a snippet marks exactly the words
a query matched.

``ANALYSIS_VERSION`` names what a document's words become. An index records the version it
was written with (``_schema``); an index of an older one keeps answering (its own pickled
analyzer reads queries as its words were read) and says to run ``pipeline reindex``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from whoosh.analysis import CharsetFilter, LowercaseFilter, RegexTokenizer
from whoosh.lang import stemmer_for_language
from whoosh.support.charset import accent_map

from ..function_words import FUNCTION_WORDS

if TYPE_CHECKING:
    from whoosh.analysis import Analyzer

# 1: words as \w+ joined by . and ', ß folded to "s". 2: ß = ss, æ/œ/þ spelt out, elisions
# split, e-mail addresses whole, joined words also indexed by their parts, the German
# word-family key.
ANALYSIS_VERSION = 2

# French and Italian elided articles and pronouns: "d’Ingénieurs" is "d" and "ingénieurs".
# Each is a fixed-width lookbehind (Python's re takes no variable-width one), tried only
# after an apostrophe has matched (before it, they cost three times the whole scan).
_ELIDED = "c d j l m n s t qu lorsqu puisqu jusqu quelqu dell nell dall sull all un quell quest"
_NOT_ELIDED = "".join(rf"(?<!\b{article}['’])" for article in _ELIDED.split())
# Words, plus the shapes skills take: "node.js", "asp.net", "c++", "c#", "16.6.1974"; "ci/cd"
# stays two words; an apostrophe joins ("o'brien") except after an elided article; an
# e-mail address is one token ("max.mueller@example.com", continuing a word, so that the
# scan tries it only where a word meets "@", "+" or "-").
TOKEN_PATTERN = (
    rf"(?i:\w+(?:(?:\.|['’]{_NOT_ELIDED})\w+)*"
    r"(?:\+\+|#|(?:[.+-]+\w+)*@\w[\w-]*(?:\.\w[\w-]*)+)?)"
)
# File names break at dots and underscores too: "Lebenslauf_Max_Müller.pdf" is four words,
# so "Müller" finds it (the text's pattern would keep "müller.pdf" whole, as "node.js").
FILE_NAME_PATTERN = r"[^\W_]+(?:\+\+|#)?"
WORD = re.compile(TOKEN_PATTERN)
# Where a joined word breaks into its parts: "asp.net" -> "asp", "net".
_JOINS = re.compile(r"[.@'’+-]+")

STEMMED = ("en", "de", "fr", "es")  # languages whose documents are stemmed too
# Stems live in the text field itself, marked so that no word can be mistaken for one: a
# document in a stemmed language holds "~develop" for "developing" (only where the stem
# differs from the word). One field instead of one per language halves the postings to
# write and the terms a query visits; the stems come after the words, so phrase positions
# stay those of the words.
STEM_MARK = "~"
# The German word-family key, marked too: "Entwicklung", "entwickeln" and "Entwickler" all
# hold "^entwick" (the Snowball stems are "entwickl", "entwickeln" and "entwickl").
FAMILY_MARK = "^"

# Accents folded, and the letters that stand for two spelt as two, so that "Straße" meets
# "Strasse" and "Cæsar" meets "Caesar" (Whoosh's accent map folds ß to one "s" and keeps æ).
FOLD_MAP: dict[int, str] = {
    **accent_map,
    ord("ß"): "ss",
    ord("ẞ"): "ss",
    ord("æ"): "ae",
    ord("Æ"): "ae",
    ord("œ"): "oe",
    ord("Œ"): "oe",
    ord("þ"): "th",
    ord("Þ"): "th",
}
# German umlauts as they are typed without them: "Jörg" is also "Joerg".
_UMLAUTS = {"ä": "ae", "ö": "oe", "ü": "ue"}
_SPELT_OUT = re.compile("ae|oe|ue")


def analyzer(pattern: str = TOKEN_PATTERN) -> Analyzer:
    # Folding accents makes "Müller" find "Muller" and the reverse; case is folded too.
    return RegexTokenizer(pattern) | LowercaseFilter() | CharsetFilter(FOLD_MAP)


@cache
def _stemmer(lang: str) -> Callable[[str], str]:
    return lru_cache(maxsize=100_000)(stemmer_for_language(lang))


def fold(word: str) -> str:
    return word.translate(FOLD_MAP)


def umlaut_spellings(lowered: str) -> set[str]:
    """The other spellings of a German word typed with or without its umlauts, folded:
    "jörg" -> {"joerg"}, "joerg" -> {"jorg"} (which is how "Jörg" is indexed)."""
    spellings = set()
    if any(u in lowered for u in _UMLAUTS):
        spellings.add(fold("".join(_UMLAUTS.get(c, c) for c in lowered)))
    elif _SPELT_OUT.search(lowered):
        spellings.add(fold(_SPELT_OUT.sub(lambda m: m.group()[0], lowered)))
    spellings.discard(fold(lowered))
    return spellings


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
# the fold map costs a dictionary miss per unaccented character, so each distinct word is
# folded once.
FOLDED = _WordMap(lambda word: fold(word.lower()))


def _parts(word: str) -> str:
    """A joined word's parts, folded, space-separated ("" for a plain word): "ASP.NET" ->
    "asp net", "max.mueller@example.com" -> "max.mueller example.com max mueller example
    com", "16.6.1974" -> "16 6 1974"."""
    if not _JOINS.search(word) or (word.endswith(("++", "#")) and not _JOINS.search(word[:-2])):
        return ""
    folded = FOLDED[word]
    parts: list[str] = []
    if "@" in folded:
        parts += folded.split("@", 1)
    parts += [p for p in _JOINS.split(folded) if p]
    unique = dict.fromkeys(p for p in parts if p != folded)
    return " ".join(unique)


PARTS = _WordMap(_parts)

# German suffixes a word family's members end in, longest first: the noun of action
# ("-ung"), the infinitive and participles, the agent noun ("-er").
_FAMILY_SUFFIXES = sorted(
    (
        *("ierungen", "ierung", "ieren", "iert", "ungen", "ung", "eln", "ern", "elte", "erte"),
        *("elt", "ert", "ete", "ten", "te", "en", "er", "el", "et", "e", "t"),
    ),
    key=len,
    reverse=True,
)
_CONSONANTS = frozenset("bcdfghjklmnpqrstvwxz")


def family_key(folded: str) -> str:
    """A German word's family key: one suffix off (the longest that leaves four letters),
    then a stem's last "l" or "r" after a consonant ("entwickl" -> "entwick", so that
    "Entwicklung" meets "entwickeln"); "" for words too short to tell. A measured rule
    (``tests/test_relevance.py``), not a lemmatiser: it only ever adds a weaker match."""
    if len(folded) < 5 or not folded.isalpha():
        return ""
    for suffix in _FAMILY_SUFFIXES:
        if folded.endswith(suffix) and len(folded) - len(suffix) >= 4:
            folded = folded[: -len(suffix)]
            break
    if len(folded) > 4 and folded[-1] in "lr" and folded[-2] in _CONSONANTS:
        folded = folded[:-1]
    return folded if len(folded) >= 4 else ""


@cache
def folded_stems(lang: str) -> _WordMap:
    """Word -> its stem in ``lang``, folded (a snippet's test for a word matched by stem)."""
    stem = _stemmer(lang)
    return _WordMap(lambda word: fold(stem(word.lower())))


@cache
def _marked_stems(lang: str) -> _WordMap:
    """Word -> its marked stem (and for German its marked family key), or "" where the stem
    is the folded word itself.

    Stems are taken before folding (the German and French stemmers know their accented
    suffixes)."""
    stems = folded_stems(lang)

    def marked(word: str) -> str:
        folded = FOLDED[word]
        stemmed = stems[word]
        made = "" if stemmed == folded else STEM_MARK + stemmed
        if lang == "de":
            key = family_key(folded)
            if key and key != folded:
                made = f"{made} {FAMILY_MARK}{key}".strip()
        return made

    return _WordMap(marked)


_FUNCTION = FUNCTION_WORDS  # one table: pipeline/function_words.py


def stem_languages(words: list[str], detected: str | None) -> list[str]:
    """The languages a document's words are stemmed in: the one detected at extraction, and
    any other whose function words are as common as a quarter of the most common's (a
    German LaTeX CV detected as English, a CV in two languages)."""
    languages = [detected] if detected in STEMMED else []
    lowered = [w.lower() for w in words[:5000] if len(w) <= 4]
    counts = {
        lang: sum(map(function.__contains__, lowered)) for lang, function in _FUNCTION.items()
    }
    best = max(counts.values(), default=0)
    if best >= 3:
        languages += [
            lang for lang in STEMMED if counts[lang] >= max(3, best / 4) and lang not in languages
        ]
    return languages


def terms(text: str, language: str | None) -> list[str]:
    """The text field's terms for a document: its folded words, the parts of its joined
    words, then the marked stems (and German family keys).

    Whoosh takes a list of words as already analyzed; one regex scan and a lookup per word
    are many times cheaper than its chain of token generators. The words are what the
    field's analyzer makes of a query.
    """
    words = WORD.findall(text)
    folded = list(map(FOLDED.__getitem__, words))
    joined = " ".join(filter(None, map(PARTS.__getitem__, words)))
    if joined:
        folded += joined.split()
    for lang in stem_languages(words, language):
        marked = " ".join(filter(None, map(_marked_stems(lang).__getitem__, words)))
        if marked:
            folded += marked.split()
    return folded


def query_stems(lowered: str) -> set[str]:
    return {fold(_stemmer(lang)(lowered)) for lang in STEMMED}
