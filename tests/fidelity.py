"""Helpers for comparing extracted text with the corpus's ground truth."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import lxml.html

_ACCENTS = {
    '"': "\u0308",
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    "~": "\u0303",
    "c": "\u0327",
    "v": "\u030c",
}


def strip_latex(source: str) -> str:
    body = source
    if "\\begin{document}" in body:
        body = body.split("\\begin{document}", 1)[1].split("\\end{document}", 1)[0]
    body = re.sub(r"(?<!\\)%.*", "", body)
    # Arguments that are plumbing, not text: links, pictures, lengths, colours, icons.
    body = re.sub(
        r"\\(href|url|includegraphics|vspace|hspace|color|textcolor|definecolor|colorbox|"
        r"setlength|addtolength|fontsize|icon|fa[A-Za-z]*|newcommand|renewcommand|"
        r"usepackage|documentclass|geometry|rule|raisebox|parbox|makebox|resizebox)\*?"
        r"(\[[^\]]*\])?\{[^}]*\}",
        " ",
        body,
    )
    body = re.sub(r"\b\d+(\.\d+)?(pt|em|ex|cm|mm|in)\b", " ", body)
    body = re.sub(
        r"\\([\"'`^~])\{?([A-Za-z])\}?", lambda m: m.group(2) + _ACCENTS[m.group(1)], body
    )
    body = re.sub(r"\\c\{([A-Za-z])\}", lambda m: m.group(1) + "\u0327", body)
    body = body.replace("\\ss{}", "ß").replace("\\ss", "ß").replace("--", "-")
    body = re.sub(r"\\(begin|end)\{[^}]*\}(\{[^}]*\}|\[[^\]]*\])*", " ", body)
    body = re.sub(r"\\\\|~", " ", body)
    body = re.sub(r"\\[A-Za-z@]+\*?(\[[^\]]*\])?", " ", body)
    body = body.replace("{", " ").replace("}", " ").replace("&", " ").replace("$", " ")
    return unicodedata.normalize("NFC", body)


def strip_html(source: str) -> str:
    root = lxml.html.document_fromstring(source)
    for element in root.iter("script", "style"):
        element.drop_tree()
    return root.text_content()


def words(text: str) -> Counter[str]:
    return Counter(w.casefold() for w in re.findall(r"\w+", unicodedata.normalize("NFC", text)))


def similarity(extracted: str, truth: str) -> tuple[float, float, float]:
    """(recall, precision, F1) of the ground truth's words among the extracted words."""
    got, want = words(extracted), words(truth)
    common = sum((got & want).values())
    recall = common / max(1, sum(want.values()))
    precision = common / max(1, sum(got.values()))
    f1 = 2 * recall * precision / max(1e-9, recall + precision)
    return recall, precision, f1
