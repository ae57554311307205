"""Deciding what a file really is: the declared ``content_type``, the file name's extension
and the file's own bytes. Where they disagree, the bytes win.

Containers are decided from their inside: a zip by the members that name its kind (DOCX, ODT,
XLSX, ...), an OLE2 compound file by its streams (Word 97-2003, Excel, or an encrypted OOXML
package). Everything else is sniffed by puremagic; text that no magic number proves is
recognised by the labels or by looking like text.
"""

from __future__ import annotations

import mimetypes
import re
import zipfile
from pathlib import Path

import olefile
import puremagic

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
DOC = "application/msword"
XLS = "application/vnd.ms-excel"
PPT = "application/vnd.ms-powerpoint"
OLE = "application/x-ole-storage"
ENCRYPTED_OOXML = "application/x-encrypted-ooxml"  # OOXML wrapped in OLE with a password
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
    ".xhtml": HTML,
    ".xlsx": XLSX,
    ".pptx": PPTX,
}

# Binary formats a label may name but only the bytes can prove.
_NEEDS_PROOF = frozenset({PDF, DOCX, ODT, XLSX, PPTX, DOC, XLS, PPT, RTF, ZIP, OCTET})


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


def _zip_kind(path: Path) -> str | None:
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
                with archive.open("mimetype") as member:  # bounded: it could be a bomb
                    kind = member.read(100).decode("ascii", "replace").strip()
                return kind or ZIP
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError, RuntimeError):
        return None  # a broken container proves nothing: the labels decide, the parser says why
    return ZIP


def _ole_kind(path: Path) -> str:
    try:
        with olefile.OleFileIO(str(path)) as ole:
            streams = {"/".join(entry) for entry in ole.listdir(streams=True, storages=False)}
    except (OSError, ValueError, IndexError):
        return OLE
    if "EncryptedPackage" in streams or "EncryptionInfo" in streams:
        return ENCRYPTED_OOXML
    if "WordDocument" in streams:
        return DOC
    if "Workbook" in streams or "Book" in streams:
        return XLS
    if "PowerPoint Document" in streams:
        return PPT
    return OLE


def sniff(path: Path) -> str | None:
    """The type the bytes prove, or None when they prove nothing (then the labels decide)."""
    with path.open("rb") as handle:
        head = handle.read(8192)
    if not head:
        return None
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return _ole_kind(path)
    if head.lstrip().startswith(b"{\\rtf"):
        return RTF
    if b"%PDF-" in head[:1024]:
        return PDF  # PDF allows junk before the header, which magic tables miss
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        return _html_or_text(head)
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    for match in matches:
        if match.confidence >= 0.8 and match.mime_type:
            mime = normalise_content_type(match.mime_type)
            if mime in (ZIP, OLE):
                continue
            return mime
    if head.lstrip()[:1] == b"<":
        return _html_or_text(head)
    return None


# Tags that only HTML uses: text that opens with one and holds several is markup, even with
# no <html> around it (a job board's e-mail body, an ATS's rich-text field).
_HTML_TAG = re.compile(
    rb"<(?:div|p|span|br|table|tr|td|ul|ol|li|h[1-6]|a|b|i|em|strong|font|style|img|meta|"
    rb"head|title|section|article|header|footer|center|hr)[\s>/]"
)


def _html_or_text(head: bytes) -> str:
    probe = head.replace(b"\x00", b"")[:4096].lower()
    if b"<html" in probe or b"<!doctype html" in probe or b"<body" in probe:
        return HTML
    return HTML if plainly_markup(probe) else TEXT


def plainly_markup(probe: bytes) -> bool:
    """Text that starts with an HTML tag and carries a few more: markup, whatever its label."""
    stripped = probe.lstrip()
    return _HTML_TAG.match(stripped) is not None and len(_HTML_TAG.findall(stripped)) >= 3


def decide(path: Path, content_type: str | None, file_name: str | None) -> str:
    """The MIME type the pipeline will parse the file as."""
    sniffed = sniff(path)
    declared = normalise_content_type(content_type)
    by_name = type_from_name(file_name)
    if sniffed == TEXT and HTML in (declared, by_name):
        # Bytes that say only "text" cannot contradict a label of HTML (a fragment opening
        # with <div> is HTML to whoever sent it as text/html or named it .html).
        return HTML
    if sniffed is not None:
        return sniffed
    for label in (declared, by_name):
        if label and label not in _NEEDS_PROOF:
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
