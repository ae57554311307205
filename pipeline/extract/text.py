"""Plain text in whatever charset it came in."""

from __future__ import annotations

import codecs
from pathlib import Path

from charset_normalizer import from_bytes

from .detect import TEXT
from .registry import Parsed, package_version, register

MAX_TEXT_BYTES = 20 * 1024 * 1024


def decode_bytes(raw: bytes) -> str:
    """UTF-8 and BOM-marked UTF-16/32 directly; anything else by charset detection."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if raw.startswith(bom):
            return raw.decode(encoding, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best = from_bytes(raw).best()
    if best is not None:
        return str(best)
    return raw.decode("cp1252", errors="replace")


class TextParser:
    name = "text"
    mime_types = frozenset({TEXT})

    @property
    def version(self) -> str:
        return "charset-normalizer " + package_version("charset-normalizer")

    def parse(self, path: Path) -> Parsed:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TEXT_BYTES)
        return Parsed(text=decode_bytes(raw), page_count=None)


register(TextParser())
