"""Imported once by the extraction workers' forkserver, so that every worker it forks starts
with the parsers imported and the language model loaded."""

from __future__ import annotations

from . import extract_file  # noqa: F401  (imports every parser)
from .language import detect_language, load_model

load_model()
detect_language("Warm up the language model before the first worker is forked.")
