"""The language a document is written in (ISO 639-1), by py3langid, whose model ships in
the package. Search stems English, German, French and Spanish by it; other languages are
stored and filterable, unstemmed.

Only extraction workers need the model, and their forkserver loads it once
(``pipeline.extract.warm``), so commands that do not extract never pay for it. py3langid
unpacks its LZMA-compressed model each time (0.9 s of CPU in every run that extracts); an
unpacked copy kept in the user's cache loads in 0.1 s.
"""

from __future__ import annotations

import logging
import lzma
import os
import shutil
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_CHARS = 20_000  # a CV's opening pages say enough
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


def detect_language(text: str) -> str | None:
    import py3langid

    sample = text[:SAMPLE_CHARS]
    if sum(map(str.isalpha, sample)) < MIN_LETTERS:
        return None
    language, _score = py3langid.classify(sample)
    return str(language)
