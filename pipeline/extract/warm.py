"""Imported once by the extraction workers' forkserver, so that every worker it forks starts
with the parsers imported and the language model loaded."""

from __future__ import annotations

from ..child import ignore_stop_signals

# The forkserver's first own line: it and the workers it forks (which inherit what it ignores)
# leave Ctrl-C and SIGTERM to the parent, which stops them. Its start blocked both until now.
ignore_stop_signals()

from . import load_parsers  # noqa: E402
from .language import detect_language, load_model  # noqa: E402

load_parsers()
load_model()
detect_language("Warm up the language model before the first worker is forked.")
