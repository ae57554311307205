"""Extract stage: decide what a downloaded file is, pick its parser, return clean text.

``extract_file`` never raises for a bad file: every outcome is an :class:`Extraction` whose
``state`` says what happened (PENDING meaning "text ready to index"), with a one-line reason.
Library errors are translated here and only here: a file no parser here reads is
``unreadable`` (final), and only what may pass on another try (a parser's timeout, its memory
limit) is ``failed``. Scanned pages and images go through OCR (``ocr.py``), and the record
then names Tesseract as (part of) the parser, with the pages read and a mean confidence.
"""

from __future__ import annotations

import importlib
import logging
import resource
import time
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypedDict

from ..errors import EncryptedDocumentError, ExtractionError
from ..states import AttachmentState
from ..surrogates import mend_surrogates
from . import ocr, registry
from .detect import ENCRYPTED_OOXML, decide, normalise_content_type
from .doc import UnavailableError
from .language import detect_language
from .normalise import normalise_text
from .registry import parser_for, parser_named

log = logging.getLogger(__name__)

# Each module registers its parser when imported.
_PARSER_MODULES = ("doc", "docx", "html", "image", "odt", "pdf", "rtf", "text")
# Outcomes that may pass on another try (a busy machine, a parser's bad day): ``failed``, and
# retried; the run engine makes the third on the same bytes ``unreadable``.
RETRIED_ERRORS = frozenset({"timeout", "memory limit"})


@cache
def load_parsers() -> None:
    """Import the parsers, on first use: pypdf, python-docx and lxml take 0.2 s to import, and
    most commands (search, export, status) parse nothing. The extraction workers' forkserver
    loads them before it forks (``warm.py``)."""
    for name in _PARSER_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def supported_types() -> list[str]:
    load_parsers()
    return registry.supported_types()


__all__ = [
    "RETRIED_ERRORS",
    "Extraction",
    "extract_file",
    "identify",
    "normalise_content_type",
    "parser_upgraded",
    "supported_types",
]


@dataclass(frozen=True)
class Extraction:
    state: AttachmentState
    detected_type: str | None
    parser: str | None = None
    parser_version: str | None = None
    page_count: int | None = None
    text: str | None = None
    error: str | None = None
    seconds: float = 0.0
    language: str | None = None
    # of the parsing process and its children (benchmarks sum it into a CPU floor)
    cpu_seconds: float = 0.0
    ocr_pages: int = 0  # pages read by OCR
    ocr_confidence: float | None = None  # Tesseract's mean word confidence (0-100) over them

    @property
    def char_count(self) -> int:
        return len(self.text or "")


class _ParserMeta(TypedDict):
    """The fields every outcome past the parser's choice carries (typed for ``**meta``)."""

    detected_type: str
    parser: str
    parser_version: str


def identify(path: Path, content_type: str | None, file_name: str | None) -> Extraction:
    """What a file is and which parser (and version) reads it, without parsing: for the
    record of a parse that never answered (a worker killed for its time or memory)."""
    load_parsers()
    try:
        detected = decide(path, content_type, file_name)
    except OSError:
        return Extraction(AttachmentState.FAILED, None)
    parser = parser_for(detected)
    if parser is None:
        return Extraction(AttachmentState.FAILED, detected)
    return Extraction(AttachmentState.FAILED, detected, parser.name, _version_of(parser.name))


def parser_upgraded(parser: str | None, version: str | None) -> bool:
    """Whether the parser on an ``unreadable`` record is now another version (or gone): then
    the file deserves another try."""
    if parser is None:
        return False
    load_parsers()
    return _version_of(parser) != version


def _version_of(parser_name: str) -> str | None:
    base, _, extra = parser_name.partition("+")
    parser = parser_named(base)
    if parser is None:
        return None
    return f"{parser.version}; {ocr.tesseract_version()}" if extra else parser.version


def _no_text_reason(note: str | None, read: ocr.OcrResult | None) -> str:
    if read is not None:
        return f"no text: OCR read {len(read.pages)} page(s) and found none"
    return note or "no text (image-only or empty document)"


def extract_file(path: Path, content_type: str | None, file_name: str | None) -> Extraction:
    load_parsers()
    started, cpu = time.perf_counter(), _cpu_time()
    result = _extract(path, content_type, file_name)
    return _with_time(result, time.perf_counter() - started, _cpu_time() - cpu)


def _cpu_time() -> float:
    """This process's CPU and its finished children's (Tesseract, antiword): a scan's CPU is
    nearly all Tesseract's."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _with_time(result: Extraction, seconds: float, cpu_seconds: float) -> Extraction:
    # A library's error message can quote the file, and so hold what the database refuses.
    error = mend_surrogates(result.error) if result.error else result.error
    return Extraction(
        **{**result.__dict__, "error": error, "seconds": seconds, "cpu_seconds": cpu_seconds}
    )


def _extract(path: Path, content_type: str | None, file_name: str | None) -> Extraction:
    if path.stat().st_size == 0:
        # Whole (the download checks its length) and empty: nothing will ever be read from it.
        return Extraction(AttachmentState.UNREADABLE, None, error="unreadable: empty file")
    detected = decide(path, content_type, file_name)
    if detected == ENCRYPTED_OOXML:
        return Extraction(
            AttachmentState.ENCRYPTED, detected, error="encrypted: the Office file needs a password"
        )
    parser = parser_for(detected)
    if parser is None:
        return Extraction(AttachmentState.UNSUPPORTED, detected, error=f"no parser for {detected}")
    meta: _ParserMeta = {
        "detected_type": detected,
        "parser": parser.name,
        "parser_version": parser.version,
    }
    try:
        parsed = parser.parse(path)
    except EncryptedDocumentError as exc:
        return Extraction(AttachmentState.ENCRYPTED, **meta, error=exc.message)
    except UnavailableError as exc:
        return Extraction(AttachmentState.UNSUPPORTED, **meta, error=exc.message)
    except ExtractionError as exc:
        state = (
            AttachmentState.FAILED if exc.message in RETRIED_ERRORS else AttachmentState.UNREADABLE
        )
        return Extraction(state, **meta, error=exc.message)
    except MemoryError:
        return Extraction(AttachmentState.FAILED, **meta, error="memory limit")
    except RecursionError:
        return Extraction(
            AttachmentState.UNREADABLE, **meta, error="unreadable: parser gave up: nested too deep"
        )
    except (zipfile.BadZipFile, KeyError) as exc:
        return Extraction(
            AttachmentState.UNREADABLE, **meta, error=f"unreadable: broken container: {exc}"[:300]
        )
    except Exception as exc:
        # pypdf, python-docx (whose PackageNotFoundError is not a PythonDocxError) and lxml
        # each raise their own families; a corrupt file must fail alone, not stop the run.
        reason = (
            f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__
        )
        log.debug("parser %s failed on %s", parser.name, path.name, exc_info=True)
        return Extraction(AttachmentState.UNREADABLE, **meta, error=f"unreadable: {reason}")
    read = parsed.ocr
    ocr_pages = len(read.pages) if read is not None else 0
    ocr_confidence = read.confidence if read is not None else None
    if read is not None and parser.name != "tesseract":
        # A PDF's scanned pages: pypdf and Tesseract both read it.
        meta["parser"] = f"{parser.name}+tesseract"
        meta["parser_version"] = f"{parser.version}; {ocr.tesseract_version()}"
    text = normalise_text(parsed.text)
    if not text:
        return Extraction(
            AttachmentState.NO_TEXT,
            **meta,
            page_count=parsed.page_count,
            text="",
            error=_no_text_reason(parsed.note, read),
            ocr_pages=ocr_pages,
            ocr_confidence=ocr_confidence,
        )
    return Extraction(
        AttachmentState.PENDING,
        **meta,
        page_count=parsed.page_count,
        text=text,
        error=parsed.note,
        language=detect_language(text),
        ocr_pages=ocr_pages,
        ocr_confidence=ocr_confidence,
    )
