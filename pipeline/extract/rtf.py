"""RTF through striprtf, decoding ``\\'xx`` escapes in the document's own ANSI code page."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from striprtf.striprtf import rtf_to_text

from ..errors import ExtractionError
from .detect import RTF
from .registry import Parsed, package_version, register

MAX_RTF_BYTES = 50 * 1024 * 1024
_CODEPAGE = re.compile(rb"\\ansicpg(\d+)")


class RtfParser:
    name = "striprtf"
    mime_types = frozenset({RTF})

    @property
    def version(self) -> str:
        return package_version("striprtf")

    def parse(self, path: Path) -> Parsed:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RTF_BYTES)
        if not raw.lstrip().startswith(b"{\\rtf"):
            raise ExtractionError("not RTF: no {\\rtf header")
        match = _CODEPAGE.search(raw[:4096])
        encoding = f"cp{match.group(1).decode()}" if match else "cp1252"
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = "cp1252"
        # RTF is 7-bit ASCII; latin-1 maps every byte through unchanged for the parser.
        text = rtf_to_text(raw.decode("latin-1"), encoding=encoding, errors="replace")
        return Parsed(text=text.replace("|", " "))


register(RtfParser())
