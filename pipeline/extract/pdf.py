"""PDF through pypdf (with its crypto extra, for AES-encrypted files).

A page whose content stream is corrupt is skipped and named, so one bad page does not cost
the rest of the document. A scan whose text layer holds only a few stray words per page (a
watermark, an image label) counts as image-only: ``no_text``, ready for OCR.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pypdf
from pypdf.errors import FileNotDecryptedError, PyPdfError

from ..errors import EncryptedDocumentError, ExtractionError
from .detect import PDF
from .registry import Parsed, register

log = logging.getLogger(__name__)

# Fewer letters than this per page, on pages that carry images, is a scan, not a document.
SCAN_LETTERS_PER_PAGE = 15


def _has_images(page: pypdf.PageObject) -> bool:
    try:
        resources = page.get("/Resources")
        xobjects = resources.get_object().get("/XObject") if resources else None
        if not xobjects:
            return False
        return any(xobjects[name].get_object().get("/Subtype") == "/Image" for name in xobjects)
    except (PyPdfError, KeyError, AttributeError, TypeError, ValueError):
        return False


class PdfParser:
    name = "pypdf"
    mime_types = frozenset({PDF})

    @property
    def version(self) -> str:
        return pypdf.__version__

    def parse(self, path: Path) -> Parsed:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            # An owner password alone (printing/copying limits) opens with the empty password.
            try:
                opened = reader.decrypt("")
            except (FileNotDecryptedError, NotImplementedError) as exc:
                raise EncryptedDocumentError("encrypted: needs a password") from exc
            if not opened:
                raise EncryptedDocumentError("encrypted: needs a password")
        pages: list[str] = []
        bad: list[int] = []
        images = 0
        for number, page in enumerate(reader.pages, 1):
            try:
                pages.append(page.extract_text() or "")
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.debug("page %d of %s unreadable: %s", number, path.name, exc)
                bad.append(number)
                continue
            images += _has_images(page)
        if bad and not pages:
            raise ExtractionError(f"unreadable: every page is corrupt ({len(bad)} pages)")
        letters = sum(sum(map(str.isalpha, text)) for text in pages)
        if images and letters < SCAN_LETTERS_PER_PAGE * len(pages):
            pages = []  # image-only: what text there is is a stray label, not the document
        note = f"pages {', '.join(map(str, bad))} unreadable" if bad else None
        return Parsed(text="\n\n".join(pages), page_count=len(reader.pages), note=note)


register(PdfParser())
