"""PDF through pypdf (with its crypto extra, for AES-encrypted files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pypdf
from pypdf.errors import FileNotDecryptedError

from ..errors import EncryptedDocumentError
from .detect import PDF
from .registry import Parsed, register

log = logging.getLogger(__name__)


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
        pages = []
        for page in reader.pages:
            pages.append(page.extract_text() or "")
        return Parsed(text="\n\n".join(pages), page_count=len(pages))


register(PdfParser())
