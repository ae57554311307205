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

from pathlib import Path
from typing import cast

from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
from docx.opc.packuri import PACKAGE_URI
from docx.opc.phys_pkg import PhysPkgReader, _ZipPkgReader
from docx.opc.pkgreader import PackageReader, _ContentTypeMap
from lxml import etree

from ..errors import ExtractionError
from .detect import DOCX
from .html import decode_html, visible_text
from .registry import Parsed, package_version, register
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


class _Package:
    """A package's parts as python-docx's ``PackageReader`` finds them (the relationships
    walked from the package's, in the same order, every part's content type looked up),
    except that a part's bytes are read only when asked for: a CV's images, fonts, theme and
    styles were inflated for nothing, half the time of reading one."""

    def __init__(self, path: Path) -> None:
        # PhysPkgReader is a factory (its __new__ picks the reader): a file gets the zip one.
        self._phys = cast(_ZipPkgReader, PhysPkgReader(str(path)))
        content_types = _ContentTypeMap.from_xml(self._phys.content_types_xml)
        self.parts: list[tuple[str, str, str]] = []  # (partname, content type, relationship)
        visited: set[str] = set()
        pending = [iter(PackageReader._srels_for(self._phys, PACKAGE_URI))]
        while pending:  # depth first, as PackageReader._walk_phys_parts
            srel = next(pending[-1], None)
            if srel is None:
                pending.pop()
                continue
            if srel.is_external or srel.target_partname in visited:
                continue
            partname = srel.target_partname
            visited.add(partname)
            self.parts.append((partname, content_types[partname], srel.reltype))
            pending.append(iter(PackageReader._srels_for(self._phys, partname)))

    def blob(self, partname: str) -> bytes:
        return bytes(self._phys.blob_for(partname))

    def close(self) -> None:
        self._phys.close()


class DocxParser:
    name = "python-docx"
    mime_types = frozenset({DOCX})

    @property
    def version(self) -> str:
        return package_version("python-docx")

    def parse(self, path: Path) -> Parsed:
        check_zip(path)
        package = _Package(path)
        try:
            # As docx.Document: the package's main part must be a Word document's.
            main = [
                content_type
                for _, content_type, reltype in package.parts
                if reltype == RELATIONSHIP_TYPE.OFFICE_DOCUMENT
            ]
            if main != [CONTENT_TYPE.WML_DOCUMENT_MAIN]:
                found = main[0] if main else "none"
                raise ExtractionError(f"not a Word document: its main part is {found}")
            parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
            ranked = []
            for partname, content_type, _reltype in package.parts:
                if content_type in _HTML_PARTS:
                    # altChunk: Word keeps imported HTML as a part of its own, outside
                    # document.xml
                    html = visible_text(decode_html(package.blob(partname)))
                    ranked.append((1, str(partname), html))
                    continue
                rank = _part_rank(str(partname))
                if rank is None:
                    continue
                root = etree.fromstring(package.blob(partname), parser=parser)
                ranked.append((rank, str(partname), xml_text(root)))
        finally:
            package.close()
        ranked.sort()
        text = "\n\n".join(body for _, _, body in ranked if body.strip())
        return Parsed(text=text, page_count=None)


register(DocxParser())
