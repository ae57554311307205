"""DOCX through python-docx: every part that holds words, each in reading order.

python-docx's ``Document.paragraphs`` skips tables, text boxes and content controls, so we
read the package with python-docx's OPC reader (content types, relationships, the parts they
reach) and walk each part's XML ourselves: every ``w:p`` in document order (tables, ``w:sdt``
content controls, ``w:ins`` tracked insertions and text boxes included; ``w:delText``
deletions and ``mc:Fallback`` duplicates left out). Only the parts that hold words are
parsed: ``docx.Document`` parsed every part (styles, theme, fonts, settings) into its object
model first, two thirds of the time a CV took.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
from docx.opc.pkgreader import PackageReader
from lxml import etree

from ..errors import ExtractionError
from .detect import DOCX
from .html import decode_html, visible_text
from .registry import Parsed, register
from .safety import check_zip

_HTML_PARTS = frozenset({"text/html", "application/xhtml+xml"})

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
W_P = f"{{{_W}}}p"
W_T = f"{{{_W}}}t"
W_TAB = f"{{{_W}}}tab"
W_BR = f"{{{_W}}}br"
W_CR = f"{{{_W}}}cr"
MC_FALLBACK = f"{{{_MC}}}Fallback"

# Parts in the order a reader meets them: headers, body, notes, footers.
_PART_ORDER = (
    ("/word/header", 0),
    ("/word/document", 1),
    ("/word/footnotes", 2),
    ("/word/endnotes", 3),
    ("/word/footer", 4),
)


def _part_rank(partname: str) -> int | None:
    for prefix, rank in _PART_ORDER:
        if partname.startswith(prefix) and partname.endswith(".xml"):
            return rank
    return None


def _inside_fallback(element: etree._Element) -> bool:
    parent = element.getparent()
    while parent is not None:
        if parent.tag == MC_FALLBACK:
            return True
        parent = parent.getparent()
    return False


def _paragraph_text(paragraph: etree._Element) -> str:
    pieces: list[str] = []
    for node in paragraph.iter(W_T, W_TAB, W_BR, W_CR, W_P):
        if node is paragraph:
            continue
        if node.tag == W_P:
            continue  # a nested paragraph (text box) is read on its own
        # Skip runs that belong to a nested paragraph.
        owner = node.getparent()
        while owner is not None and owner.tag != W_P:
            owner = owner.getparent()
        if owner is not paragraph:
            continue
        if node.tag == W_T:
            pieces.append(node.text or "")
        elif node.tag == W_TAB:
            pieces.append("\t")
        else:
            pieces.append("\n")
    return "".join(pieces)


def xml_text(root: etree._Element) -> str:
    lines: list[str] = []
    for paragraph in root.iter(W_P):
        if _inside_fallback(paragraph):
            continue
        lines.append(_paragraph_text(paragraph))
    return "\n".join(lines)


class DocxParser:
    name = "python-docx"
    mime_types = frozenset({DOCX})

    @property
    def version(self) -> str:
        return version("python-docx")

    def parse(self, path: Path) -> Parsed:
        check_zip(path)
        package = PackageReader.from_file(str(path))
        # As docx.Document: the package's main part must be a Word document's.
        main = [
            content_type
            for partname, content_type, reltype, _ in package.iter_sparts()
            if reltype == RELATIONSHIP_TYPE.OFFICE_DOCUMENT
        ]
        if main != [CONTENT_TYPE.WML_DOCUMENT_MAIN]:
            found = main[0] if main else "none"
            raise ExtractionError(f"not a Word document: its main part is {found}")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        ranked = []
        for partname, content_type, _reltype, blob in package.iter_sparts():
            if content_type in _HTML_PARTS:
                # altChunk: Word keeps imported HTML as a part of its own, outside document.xml
                ranked.append((1, str(partname), visible_text(decode_html(blob))))
                continue
            rank = _part_rank(str(partname))
            if rank is None:
                continue
            ranked.append((rank, str(partname), xml_text(etree.fromstring(blob, parser=parser))))
        ranked.sort()
        text = "\n\n".join(body for _, _, body in ranked if body.strip())
        return Parsed(text=text, page_count=None)


register(DocxParser())
