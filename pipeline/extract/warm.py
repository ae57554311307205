"""Imported once by the extraction workers' forkserver, so that every worker it forks starts
with the parsers imported and the language model loaded."""

from __future__ import annotations

from . import load_parsers
from .language import detect_language, load_model

load_parsers()
load_model()
detect_language("Warm up the language model before the first worker is forked.")
