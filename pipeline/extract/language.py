"""The language a document is written in (ISO 639-1), by py3langid, whose model ships in
the package. Search stems English, German, French and Spanish by it; other languages are
stored and filterable, unstemmed."""

from __future__ import annotations

import py3langid

SAMPLE_CHARS = 20_000  # a CV's opening pages say enough
MIN_LETTERS = 20

# Load the model at import: the extraction workers' forkserver imports this module once.
py3langid.classify("warm up")


def detect_language(text: str) -> str | None:
    sample = text[:SAMPLE_CHARS]
    if sum(ch.isalpha() for ch in sample) < MIN_LETTERS:
        return None
    language, _score = py3langid.classify(sample)
    return str(language)
