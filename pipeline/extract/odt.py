"""OpenDocument text: content.xml (body, tables, frames) and the header and footer text kept
with the master pages in styles.xml, read straight from the package with lxml."""

from __future__ import annotations

import zipfile
from pathlib import Path

from lxml import etree

from ..errors import EncryptedDocumentError, ExtractionError
from .detect import ODT
from .registry import Parsed, package_version, register
from .safety import check_zip

_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_STYLE = "urn:oasis:names:tc:opendocument:xmlns:style:1.0"
_BLOCKS = {f"{{{_TEXT}}}{name}" for name in ("p", "h")}
_SPACE = f"{{{_TEXT}}}s"
_TAB = f"{{{_TEXT}}}tab"
_BREAK = f"{{{_TEXT}}}line-break"
_NOTE_CITATION = f"{{{_TEXT}}}note-citation"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _paragraph(element: etree._Element) -> str:
    pieces = [element.text or ""]
    for child in element:
        if child.tag == _SPACE:
            pieces.append(" " * int(child.get(f"{{{_TEXT}}}c", "1")))
        elif child.tag == _TAB:
            pieces.append("\t")
        elif child.tag == _BREAK:
            pieces.append("\n")
        elif child.tag in _BLOCKS:
            pass  # a nested paragraph (a note body) is read on its own
        elif child.tag != _NOTE_CITATION:
            pieces.append(_paragraph(child))
        pieces.append(child.tail or "")
    return "".join(pieces)


def _blocks(root: etree._Element) -> list[str]:
    return [_paragraph(e) for e in root.iter(*_BLOCKS)]


class OdtParser:
    name = "odt-lxml"
    mime_types = frozenset({ODT})

    @property
    def version(self) -> str:
        return "lxml " + package_version("lxml")

    def parse(self, path: Path) -> Parsed:
        check_zip(path)
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "META-INF/manifest.xml" in names:
                manifest = archive.read("META-INF/manifest.xml")
                if b"encryption-data" in manifest:
                    raise EncryptedDocumentError("encrypted: the ODF package needs a password")
            if "content.xml" not in names:
                raise ExtractionError("broken container: no content.xml")
            content = etree.fromstring(archive.read("content.xml"), _PARSER)
            parts = _blocks(content)
            if "styles.xml" in names:
                styles = etree.fromstring(archive.read("styles.xml"), _PARSER)
                for master in styles.iter(f"{{{_STYLE}}}master-page"):
                    parts = _blocks(master) + parts
        return Parsed(text="\n".join(parts))


register(OdtParser())
