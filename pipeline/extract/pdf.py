"""PDF through pypdf (with its crypto extra, for AES-encrypted files), and OCR for its scans.

A page whose content stream is corrupt is skipped and named, so one bad page does not cost
the rest of the document. A page that carries images and only a few stray letters (a
watermark, an image label) is a scan: it is rendered with pypdfium2 at 300 dpi and read by
Tesseract (``ocr.py``); a document that is a scan as a whole (few letters per page over all its
pages) has every page read so. Without OCR such pages give no text, and a document of only
such pages ends ``no_text`` with the reason.

A security handler pypdf does not implement (the public-key handler ``/Adobe.PubSec`` of a
certificate-secured PDF, or a vendor's own) is a file we cannot open without a key we do not
have: ``encrypted``, like a password.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pypdf
from pypdf.errors import FileNotDecryptedError, PyPdfError

from ..errors import EncryptedDocumentError, ExtractionError
from . import ocr
from .detect import PDF
from .registry import Parsed, register

if TYPE_CHECKING:
    from PIL import Image

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
        try:
            reader = pypdf.PdfReader(path)
            encrypted = reader.is_encrypted
        except NotImplementedError as exc:
            # pypdf reads the /Encrypt dictionary while it opens the file, and knows only the
            # standard (password) handler.
            raise EncryptedDocumentError(
                "encrypted: a security handler pypdf does not implement (a certificate?)"
            ) from exc
        if encrypted:
            _decrypt(reader)
        texts: dict[int, str] = {}
        bad: list[int] = []
        with_images: set[int] = set()
        for number, page in enumerate(reader.pages, 1):
            try:
                texts[number] = page.extract_text() or ""
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.debug("page %d of %s unreadable: %s", number, path.name, exc)
                bad.append(number)
                continue
            if _has_images(page):
                with_images.add(number)
        if bad and not texts:
            raise ExtractionError(f"unreadable: every page is corrupt ({len(bad)} pages)")
        letters = {number: sum(map(str.isalpha, text)) for number, text in texts.items()}
        if with_images and sum(letters.values()) < SCAN_LETTERS_PER_PAGE * len(texts):
            # A scan as a whole: what text there is is a stray label, not the document.
            scans = sorted(texts)
        else:
            scans = [n for n in sorted(with_images) if letters[n] < SCAN_LETTERS_PER_PAGE]
        notes = [f"pages {', '.join(map(str, bad))} unreadable"] if bad else []
        found = None
        if scans:
            reason = ocr.unavailable_reason()
            if reason is None:
                found = ocr.read_images(_rendered(path, scans))
                texts.update(found.texts)
                for number in found.skipped:
                    texts[number] = ""
                notes.append(ocr.note(found, len(reader.pages)))
            else:
                for number in scans:
                    texts[number] = ""
                notes.append(reason)
        text = "\n\n".join(texts[n] for n in sorted(texts))
        return Parsed(
            text=text,
            page_count=len(reader.pages),
            note="; ".join(notes) or None,
            ocr=found,
        )


def _decrypt(reader: pypdf.PdfReader) -> None:
    # An owner password alone (printing/copying limits) opens with the empty password.
    try:
        opened = reader.decrypt("")
    except NotImplementedError as exc:
        raise EncryptedDocumentError(
            "encrypted: a security handler pypdf does not implement (a certificate?)"
        ) from exc
    except FileNotDecryptedError as exc:
        raise EncryptedDocumentError("encrypted: needs a password") from exc
    if not opened:
        raise EncryptedDocumentError("encrypted: needs a password")


def _rendered(path: Path, numbers: list[int]) -> Iterator[tuple[int, Image.Image]]:
    """The pages, rendered grey for OCR one at a time (an A4 page at 300 dpi is 9 MB)."""
    import pypdfium2

    document = pypdfium2.PdfDocument(path)
    try:
        for number in numbers:
            try:
                page = document[number - 1]
                width, height = page.get_size()
                # 300 dpi, but never past 40 megapixels (a poster-sized page)
                scale = min(ocr.RENDER_DPI / 72, (40e6 / max(width * height, 1)) ** 0.5)
                image = page.render(scale=scale, grayscale=True).to_pil()
            except pypdfium2.PdfiumError as exc:
                log.debug("page %d of %s cannot be rendered: %s", number, path.name, exc)
                continue
            yield number, image
    finally:
        document.close()


register(PdfParser())
