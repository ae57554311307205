"""The shared corpus is the yardstick: every file ends in the state its notes imply, and text
with ground truth beside it is extracted faithfully. Both tests print their table."""

from __future__ import annotations

import mimetypes
import shutil

import pytest

from pipeline.extract import extract_file
from tests.helpers import CORPUS, needs_corpus, similarity, strip_html, strip_latex

pytestmark = [needs_corpus(), pytest.mark.corpus]


def _rows() -> list[dict[str, str]]:
    lines = (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def _expected(row: dict[str, str]) -> set[str]:
    """The states a file's manifest notes allow ("pending" is extracted text, to be indexed)."""
    notes, path = row["notes"], row["path"]
    upper = notes.upper()
    if upper.startswith("GROUND TRUTH"):
        return {"pending"}  # the truth files themselves; their notes name other files
    if "EMPTY FILE" in upper:
        return {"unreadable"}
    if "OWNER PASSWORD ONLY" in upper:
        return {"pending"}
    if "ENCRYPTED" in upper:
        return {"encrypted"}
    if "IMAGE-ONLY" in upper and shutil.which("tesseract") is not None:
        return {"no_text", "pending"}  # OCR reads what text the images hold (none, or some)
    if "IMAGE-ONLY" in upper or "NO TEXT CONTENT" in upper or "EXPECT ~NO TEXT" in upper:
        return {"no_text"}
    if "WRONG EXTENSION" in upper:
        return {"unsupported"}
    if "CORRUPT" in upper or "MALFORMED" in upper or "BROKEN" in upper:
        # pypdf recovers some damage and not other: either way a state, never a crash.
        return {"unreadable", "pending"}
    if path.endswith(".doc"):
        if shutil.which("antiword") is None:
            return {"unsupported"}
        if "WORD 6" in upper:
            return {"unsupported", "pending"}  # antiword does not read every Word 6 file
    return {"pending"}


def _label(row: dict[str, str]) -> str | None:
    # What an ATS would most likely report: the type its file name suggests.
    return mimetypes.guess_type(row["path"])[0]


def test_every_file_ends_in_the_state_its_notes_imply() -> None:
    table, wrong = [], []
    for row in _rows():
        path = CORPUS / row["path"]
        result = extract_file(path, _label(row), path.name)
        expected = _expected(row)
        ok = result.state in expected
        table.append(
            f"{'ok ' if ok else 'BAD'} {result.state:<11} want {'/'.join(sorted(expected)):<16} "
            f"{row['path'][:58]:<58} {(result.error or '')[:50]}"
        )
        if not ok:
            wrong.append(row["path"])
        if result.state != "pending":
            assert result.error, f"{row['path']} ended {result.state} without a reason"
    print("\n".join(["", *table]))
    assert not wrong, f"unexpected states: {wrong}"


# (extracted file, ground truth, how to read the truth, floor on recall, floor on precision)
GROUND_TRUTH = [
    ("py-pdf_pypdf/crazyones.pdf", "py-pdf_pypdf/crazyones.txt", "text", 0.98, 0.98),
    ("py-pdf_sample-files/crazyones-pdfa.pdf", "py-pdf_pypdf/crazyones.txt", "text", 0.98, 0.98),
    (
        "py-pdf_sample-files/GeoTopo-komprimiert.pdf",
        "py-pdf_benchmarks/GeoTopo-book.txt",
        "text",
        0.95,
        0.95,
    ),
    # The truth is page one of three: recall is what counts.
    (
        "py-pdf_sample-files/multicolumn.pdf",
        "py-pdf_pypdf/multicolumn-lorem-ipsum.txt",
        "text",
        0.92,
        0.40,
    ),
    (
        "py-pdf_sample-files/pdflatex-forms.pdf",
        "py-pdf_pypdf/010-pdflatex-forms.txt",
        "text",
        0.98,
        0.98,
    ),
    (
        "py-pdf_sample-files/minimal-document.pdf",
        "py-pdf_sample-files/minimal-document.tex",
        "latex",
        0.97,
        0.95,
    ),
    (
        "latexPlantillaUnam/Curriculum/curriculum.pdf",
        "latexPlantillaUnam/Curriculum/curriculum.tex",
        "latex",
        0.95,
        0.70,
    ),
    (
        "modern-latex-cv/german/lebenslauf.pdf",
        "modern-latex-cv/german/lebenslauf.tex",
        "latex",
        0.85,
        0.90,
    ),
    ("py-pdf_sample-files/habibi.pdf", "py-pdf_sample-files/habibi.html", "html", 0.70, 0.55),
    ("py-pdf_pypdf/unencrypted.pdf", "pdf encryption test password: asdfzxcv", "literal", 1.0, 1.0),
    (
        "py-pdf_pypdf/r6-owner-password.pdf",
        "pdf encryption test password: asdfzxcv",
        "literal",
        1.0,
        1.0,
    ),
    ("apache-tika/testWORD.doc", "apache-tika/testWORD.docx", "extracted", 0.85, 0.95),
    ("apache-tika/testRTFUmlautSpaces.rtf", "Übersicht", "literal", 1.0, 1.0),
    ("apache-tika/testRTFWord2010CzechCharacters.rtf", "Článek týdne", "contains", 1.0, 0.0),
    ("apache-tika/russian.cp866.txt", "Однажды, в студеную зимнюю пору", "contains", 1.0, 0.0),
    (
        "apache-tika/testWORD_text_box.docx",
        "This text is inside of a text box in the header of the document.",
        "contains",
        1.0,
        0.0,
    ),
    ("apache-tika/footnotes.docx", "snoska", "contains", 1.0, 0.0),
    (
        "apache-tika/testPDFTwoTextBoxes.pdf",
        "Left column line 1 Left column line 2",
        "contains",
        1.0,
        0.0,
    ),
]


def _truth(source: str, how: str) -> str:
    if how in ("literal", "contains"):
        return source
    if how == "extracted":
        return extract_file(CORPUS / source, None, source).text or ""
    raw = (CORPUS / source).read_text(encoding="utf-8", errors="replace")
    return {"text": raw, "latex": strip_latex(raw), "html": strip_html(raw)}[how]


def test_text_is_faithful_to_the_ground_truth() -> None:
    if shutil.which("antiword") is None:
        pytest.skip("antiword is not installed (apt-get install antiword): .doc is unsupported")
    table, low = [], []
    for name, source, how, min_recall, min_precision in GROUND_TRUTH:
        result = extract_file(CORPUS / name, _label({"path": name}), name)
        text = result.text or ""
        truth = _truth(source, how)
        recall, precision, f1 = similarity(text, truth)
        ok = recall >= min_recall and precision >= min_precision
        if how == "contains":
            ok = " ".join(truth.split()) in " ".join(text.split())
        table.append(
            f"{'ok ' if ok else 'LOW'} recall {recall:.3f} (floor {min_recall:.2f}) precision "
            f"{precision:.3f} (floor {min_precision:.2f}) F1 {f1:.3f}  {name}"
        )
        if not ok:
            low.append(name)
    print("\n".join(["", *table]))
    assert not low, f"below their floors: {low}"
