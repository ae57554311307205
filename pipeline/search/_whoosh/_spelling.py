"""Spelling suggestions from the text field's words, never from its marked stems."""

from __future__ import annotations

from whoosh.spelling import ReaderCorrector

from .._analysis import STEM_MARK


class WordCorrector(ReaderCorrector):
    """Suggests words of the text field, never its marked stems.

    Overrides Whoosh's private ``_suggestions``; were a release to drop it, the stems could
    be suggested too (a suggestion is never an error: ``_query._correct``)."""

    def _suggestions(self, text, maxdist, prefix):
        for score, suggestion in super()._suggestions(text, maxdist, prefix):
            if not suggestion.startswith(STEM_MARK):
                yield score, suggestion
