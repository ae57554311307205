"""The language a document is written in (ISO 639-1), by py3langid, whose model ships in
the package. Search stems English, German, French and Spanish by it; other languages are
stored and filterable, unstemmed (``--language`` filters by it).

What the detector reads is the document's prose (:func:`prose`): a LaTeX source's body
without its preamble, comments, commands and environment names (a German CV's licence
header and ``\\cvsection`` commands are English to py3langid), and text without table rules
(``+----+``, ``|---|``) and cell bars. When the function words of English, German, French or
Spanish outnumber the detected one's by half again (and are at least five), they have the
last word: a CV's English labels, job titles and skills do not make its German sentences
English.

Only extraction workers need the model, and their forkserver loads it once
(``pipeline.extract.warm``), so commands that do not extract never pay for it. py3langid
unpacks its LZMA-compressed model each time (0.9 s of CPU in every run that extracts); an
unpacked copy kept in the user's cache loads in 0.1 s.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import shutil
from importlib.metadata import version
from pathlib import Path

from ..function_words import FUNCTION_WORDS

log = logging.getLogger(__name__)

SAMPLE_CHARS = 20_000  # a CV's opening pages say enough
# What this detector is: raised when it would say otherwise of a stored text. A data
# directory's texts detected by an older one are detected again by the next `reindex` (or
# the rebuild at a new analysis version): 2 reads LaTeX and tables as prose and lets the
# function words have the last word (issue 18).
DETECTOR_VERSION = 2
MIN_LETTERS = 20


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kombo-cv-pipeline"


def load_model() -> None:
    """Give py3langid its model from the unpacked copy (made on first use); on any trouble
    (no writable cache, another py3langid layout) py3langid loads its own as usual."""
    import numpy as np
    from py3langid import langid, modelio

    if langid.IDENTIFIER is not None:
        return
    try:
        cached = _cache_dir() / f"py3langid-{version('py3langid')}-model.npz"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
            model = langid.MODEL_DIR / langid.MODEL_FILE
            with lzma.open(model) as packed, partial.open("wb") as unpacked:
                shutil.copyfileobj(packed, unpacked, 1 << 20)
            os.replace(partial, cached)
        with np.load(cached, allow_pickle=False) as data:
            langid.IDENTIFIER = langid.LanguageIdentifier(
                np.asarray(data["ptc"]),
                np.asarray(data["pc"]),
                data["classes"].tolist(),
                modelio._to_array(data["nextmove"]),
                data["out_feat"].tolist(),
                tk_row=modelio._to_array(data["nextmove_row"]),
            )
    except Exception as exc:
        log.debug("language model from py3langid's own file (%s)", exc)


# LaTeX: a source says so by its document class or its environments.
_LATEX_SOURCE = re.compile(r"\\documentclass\b|\\begin\{[A-Za-z*]+\}")
_LATEX_BODY = re.compile(r"\\begin\{document\}(.*?)(?:\\end\{document\}|\Z)", re.S)
_LATEX_COMMENT = re.compile(r"(?<!\\)%[^\n]*")
# \begin{itemize}, \end{minipage}[c]: the environment's name and options say nothing.
_LATEX_ENVIRONMENT = re.compile(r"\\(?:begin|end)\s*\{[^}]*\}(?:\[[^\]]*\])*")
# \textbf, \cvsection[...], \\[6pt]: the command goes, the braced words it sets stay.
_LATEX_COMMAND = re.compile(r"\\(?:[A-Za-z@]+\*?|.)(?:\s*\[[^\]\n]*\])*")
_LATEX_PUNCTUATION = re.compile(r"[{}&~$^_#]")
# Table rules (+----+----+, |---|:--|, ====, ____) and the bars between cells.
_TABLE_RULE = re.compile(r"^[ \t]*[-=_+|:.*#~\u2500-\u257f]{3,}[ \t]*$", re.M)
_CELL_BAR = re.compile(r"[|\u2502\u2503\u2551]")

_FUNCTION = FUNCTION_WORDS  # one table: pipeline/function_words.py
_SHORT_WORD = re.compile(r"\b\w{1,4}\b")
MIN_FUNCTION_WORDS = 5  # fewer say nothing either way (a table of names and dates)
# Measured: a Europass-style table (English labels, German entries) has 9 German function
# words to 6 English; over the 85 readable documents of the shared corpus only the German
# LaTeX CV changes (to German, as its manifest says).
FUNCTION_MARGIN = 1.5


def prose(text: str) -> str:
    """The words of ``text`` a reader would read: LaTeX and table markup taken out."""
    if _LATEX_SOURCE.search(text):
        body = _LATEX_BODY.search(text)
        text = body.group(1) if body else text
        text = _LATEX_COMMENT.sub(" ", text)
        text = _LATEX_ENVIRONMENT.sub(" ", text)
        text = _LATEX_COMMAND.sub(" ", text)
        text = _LATEX_PUNCTUATION.sub(" ", text)
    text = _TABLE_RULE.sub(" ", text)
    return _CELL_BAR.sub(" ", text)


def function_word_counts(text: str) -> dict[str, int]:
    """How many of each stemmed language's function words ``text`` has."""
    words = [w.lower() for w in _SHORT_WORD.findall(text)]
    return {lang: sum(map(function.__contains__, words)) for lang, function in _FUNCTION.items()}


def detect_language(text: str) -> str | None:
    import py3langid

    sample = prose(text[: SAMPLE_CHARS * 4])[:SAMPLE_CHARS]
    if sum(map(str.isalpha, sample)) < MIN_LETTERS:
        sample = text[:SAMPLE_CHARS]  # markup alone: read it as it is
        if sum(map(str.isalpha, sample)) < MIN_LETTERS:
            return None
    language, _score = py3langid.classify(sample)
    language = str(language)
    if language in _FUNCTION:
        counts = function_word_counts(sample)
        best = max(counts, key=counts.__getitem__)
        if (
            counts[best] >= MIN_FUNCTION_WORDS
            and counts[best] >= FUNCTION_MARGIN * counts[language]
        ):
            return best
    return language
