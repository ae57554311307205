"""The most common short words of each stemmed language: what says which language a text is
in whatever markup, table layout or names surround it. One table for the extraction's
language detection (``pipeline.extract.language``) and the search's choice of stemmers
(``pipeline.search._analysis``); light, so neither side imports the other's stage."""

from __future__ import annotations

_WORDS = {
    "en": "the and of to in with for is on as at by from are this that",
    "de": "der die das und mit für von zu den im ist auf des dem nicht eine ein als bei",
    "fr": "le la les et des du un une pour dans est sur avec au aux par en qui",
    "es": "el la los las y de del que en con para por una un es se al",
}
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split()) for lang, words in _WORDS.items()
}
