"""Deciding what a file really is: the declared ``content_type``, the file name's extension
and the file's own bytes. Where they disagree, the bytes win."""

from __future__ import annotations

import mimetypes
import zipfile
from pathlib import Path

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
DOC = "application/msword"
OLE = "application/x-ole-storage"
RTF = "application/rtf"
HTML = "text/html"
TEXT = "text/plain"
ZIP = "application/zip"
OCTET = "application/octet-stream"

# Names ATSs use for the same thing.
_ALIASES = {
    "application/x-pdf": PDF,
    "application/acrobat": PDF,
    "application/vnd.pdf": PDF,
    "applications/vnd.pdf": PDF,
    "text/pdf": PDF,
    "text/x-pdf": PDF,
    "application/x-msword": DOC,
    "application/doc": DOC,
    "application/vnd.ms-word": DOC,
    "application/x-rtf": RTF,
    "text/rtf": RTF,
    "text/richtext": RTF,
    "application/xhtml+xml": HTML,
    "text/x-markdown": TEXT,
    "text/markdown": TEXT,
    "application/txt": TEXT,
    "application/x-zip-compressed": ZIP,
    "binary/octet-stream": OCTET,
}

_EXTENSIONS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".doc": DOC,
    ".odt": ODT,
    ".rtf": RTF,
    ".txt": TEXT,
    ".text": TEXT,
    ".md": TEXT,
    ".htm": HTML,
    ".html": HTML,
    ".xlsx": XLSX,
    ".pptx": PPTX,
}


def normalise_content_type(content_type: str | None) -> str | None:
    """``Application/X-PDF; charset=binary`` -> ``application/pdf``; '' -> None."""
    if not content_type:
        return None
    bare = content_type.split(";", 1)[0].strip().lower()
    if not bare:
        return None
    if "/" not in bare:  # an extension-only hint such as "pdf" or ".docx"
        return _EXTENSIONS.get("." + bare.lstrip("."))
    return _ALIASES.get(bare, bare)


def type_from_name(file_name: str | None) -> str | None:
    if not file_name:
        return None
    suffix = Path(file_name).suffix.lower()
    return _EXTENSIONS.get(suffix) or (mimetypes.guess_type("x" + suffix)[0] if suffix else None)


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "word/document.xml" in names:
                return DOCX
            if "xl/workbook.xml" in names:
                return XLSX
            if "ppt/presentation.xml" in names:
                return PPTX
            if "mimetype" in names:
                kind = archive.read("mimetype")[:100].decode("ascii", "replace").strip()
                return kind or ZIP
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return OCTET  # a broken container: nothing a parser can trust
    return ZIP


def sniff(path: Path) -> str | None:
    """The type the bytes prove, or None when they prove nothing (then the labels decide)."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head:
        return None
    if b"%PDF-" in head[:1024]:
        return PDF
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return OLE  # Word 97-2003, Excel 97-2003, or an encrypted OOXML file
    if head.startswith(b"{\\rtf"):
        return RTF
    for magic, kind in (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
    ):
        if head.startswith(magic):
            return kind
    lowered = head[:1024].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered[:512]:
        return HTML
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        return TEXT
    return None


def decide(path: Path, content_type: str | None, file_name: str | None) -> str:
    """The MIME type the pipeline will parse the file as."""
    sniffed = sniff(path)
    declared = normalise_content_type(content_type)
    by_name = type_from_name(file_name)
    if sniffed == OLE:
        # Legacy Word, or something else in an OLE box: trust a label that says Word.
        return DOC if DOC in (declared, by_name) else OLE
    if sniffed is not None:
        return sniffed
    for label in (declared, by_name):
        if label and label not in (OCTET, ZIP, PDF, DOCX, ODT, XLSX, PPTX):
            # A label naming a binary format the bytes did not confirm is a lie; text-ish
            # labels (text/plain, text/html, ...) cannot be proved by magic numbers.
            return label
    if _looks_like_text(path):
        return TEXT
    return declared or by_name or OCTET


def _looks_like_text(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(8192)
    if not head or b"\x00" in head:
        return False
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    return control / len(head) < 0.01
