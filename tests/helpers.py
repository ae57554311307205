"""Helpers that several test files share: plain functions, classes and constants, imported by
name. Fixtures stay in ``conftest.py``; nothing here is a test, and no test file imports
from another test file."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lxml.html
import pytest

from pipeline.sandbox.documents import cv_blocks, render_text
from pipeline.sandbox.generator import World
from pipeline.search import IndexDoc

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"


@dataclass
class CliResult:
    """What the ``cli`` fixture's run of ``python -m pipeline ARGS`` gave."""

    code: int
    out: str
    err: str


def needs_corpus() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (CORPUS / "MANIFEST.tsv").is_file(),
        reason=f"the shared corpus is not at {CORPUS} (it lives beside the project in the "
        "developers' workplace, not in a user's clone)",
    )


def generated_docs(count: int) -> list[IndexDoc]:
    """``count`` index documents from the sandbox's seeded generator (seed 5): CVs and cover
    letters in four languages, file names and dates that vary, for index and ranking tests."""
    world = World(candidates=count, seed=5)
    docs = []
    for number, candidate in enumerate(world.ordered()):
        docs.append(
            IndexDoc(
                attachment_id=f"doc{number:05d}",
                candidate_id=candidate.id,
                application_id=None,
                type="CV" if number % 5 else "COVER_LETTER",
                file_name=f"{candidate.full_name} {'CV' if number % 3 else 'Lebenslauf'}.pdf",
                text=render_text(cv_blocks(candidate)).decode(),
                sha256=None,
                language=candidate.language,
                updated_at=datetime(2026, 1 + number % 12, 1, tzinfo=UTC),
                candidate_title=candidate.title,
            )
        )
    return docs


# Comparing extracted text with the corpus's ground truth (LaTeX and HTML sources, reference
# texts).

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


def integration_root(data_dir: Path, integration_id: str | None = None) -> Path:
    """The folder of an integration's index, files and writer lock (``data/integrations/
    <folder>``): of the one named, or the only one there."""
    from pipeline.config import DataSettings

    if integration_id is not None:
        return DataSettings(data_dir, "").integration(integration_id).root
    (only,) = [p for p in (data_dir / "integrations").iterdir() if p.is_dir()]
    return only
