"""The language a document is written in (ISO 639-1), by py3langid, whose model ships in
the package. Search stems English, German, French and Spanish by it; other languages are
stored and filterable, unstemmed.

The model takes most of a second to load: only extraction workers need it, and their
forkserver loads it once (``pipeline.extract.warm``), so commands that do not extract never
pay for it.
"""

from __future__ import annotations

SAMPLE_CHARS = 20_000  # a CV's opening pages say enough
MIN_LETTERS = 20


def detect_language(text: str) -> str | None:
    import py3langid

    sample = text[:SAMPLE_CHARS]
    if sum(ch.isalpha() for ch in sample) < MIN_LETTERS:
        return None
    language, _score = py3langid.classify(sample)
    return str(language)
