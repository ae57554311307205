"""HTML: the visible text only, in the charset the bytes really use.

The declared charset (meta tag or XML declaration) is believed only when the bytes decode
under it; a byte-order mark wins over it, valid UTF-8 is taken as UTF-8, and anything else is
left to charset detection (the corpus has Arabic pages whose meta tag lies).
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import cast

import lxml.html
from charset_normalizer import from_bytes
from lxml import etree

from .detect import HTML
from .registry import Parsed, package_version, register

MAX_HTML_BYTES = 20 * 1024 * 1024
_DECLARED = re.compile(rb"""(?:charset|encoding)\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_INVISIBLE = ("script", "style", "noscript", "template", "head", "svg", "object")
_BLOCK = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
        "title",
    ]
)


def decode_html(raw: bytes) -> str:
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if raw.startswith(bom):
            return raw.decode(encoding, errors="replace")
    if raw[:200].count(b"\x00") > 20:  # UTF-16 without a BOM
        return raw.decode("utf-16-le" if raw[1:2] == b"\x00" else "utf-16-be", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = _DECLARED.search(raw[:4096])
    if declared:
        try:
            return raw.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass
    best = from_bytes(raw).best()
    return str(best) if best is not None else raw.decode("cp1252", errors="replace")


def visible_text(markup: str) -> str:
    # lxml refuses str input that carries an XML encoding declaration.
    markup = re.sub(r"^\s*<\?xml[^>]*\?>", "", markup)
    if not markup.strip():
        return ""
    try:
        root = lxml.html.document_fromstring(markup)
    except (etree.ParserError, ValueError):
        return ""
    for element in root.iter(*_INVISIBLE):
        if element.tag != "head":
            # iter() is typed as yielding etree's elements; an HTML tree's are HtmlElements.
            cast(lxml.html.HtmlElement, element).drop_tree()
    title = (root.findtext(".//title") or "").strip()
    body = root.find("body")
    text = _collect(body if body is not None else root)
    return f"{title}\n\n{text}" if title else text


def _collect(root: lxml.html.HtmlElement) -> str:
    out: list[str] = []
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if not isinstance(element.tag, str):
            if event == "end" and element.tail:
                out.append(element.tail)
            continue
        if event == "start":
            if element.tag in _BLOCK:
                out.append("\n")
            if element.text:
                out.append(element.text)
        else:
            if element.tag in _BLOCK:
                out.append("\n")
            if element.tail and element is not root:
                out.append(element.tail)
    return "".join(out)


class HtmlParser:
    name = "lxml-html"
    mime_types = frozenset({HTML})

    @property
    def version(self) -> str:
        return "lxml " + package_version("lxml")

    def parse(self, path: Path) -> Parsed:
        with path.open("rb") as handle:
            raw = handle.read(MAX_HTML_BYTES)
        return Parsed(text=visible_text(decode_html(raw)))


register(HtmlParser())
