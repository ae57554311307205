"""Parsers declare the MIME types they read; adding a format is adding a module."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .ocr import OcrResult


@cache
def package_version(distribution: str) -> str:
    """An installed distribution's version, read once: importlib.metadata parses the
    package's METADATA file on every call (2 ms, as long as reading a DOCX CV)."""
    return version(distribution)


@dataclass(frozen=True)
class Parsed:
    text: str
    page_count: int | None = None
    note: str | None = None  # something the reader should know, e.g. pages skipped
    ocr: OcrResult | None = None  # what OCR read, when some pages were images


class Parser(Protocol):
    name: str
    mime_types: frozenset[str]

    @property
    def version(self) -> str: ...

    def parse(self, path: Path) -> Parsed:
        """Read ``path``; raise EncryptedDocumentError or ExtractionError, or any library
        error (the extract stage translates it)."""
        ...


_PARSERS: dict[str, Parser] = {}


def register(parser: Parser) -> Parser:
    for mime in parser.mime_types:
        _PARSERS[mime] = parser
    return parser


def parser_for(mime: str) -> Parser | None:
    parser = _PARSERS.get(mime)
    if parser is None and mime.startswith("text/"):
        # text/x-tex, text/markdown, text/csv ...: plain text to a recruiter's search.
        parser = _PARSERS.get("text/plain")
    return parser


def parser_named(name: str) -> Parser | None:
    return next((p for p in _PARSERS.values() if p.name == name), None)


def supported_types() -> list[str]:
    return sorted(_PARSERS)
