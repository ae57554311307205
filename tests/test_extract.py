"""Extraction on documents the sandbox generates, on hand-made bad files, and on the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.extract import extract_file, normalise_content_type
from pipeline.extract.detect import DOCX, PDF, decide
from pipeline.extract.normalise import normalise_text
from pipeline.sandbox.documents import Block, render_docx, render_pdf, render_text
from pipeline.sandbox.generator import World
from pipeline.states import AttachmentState
from tests.helpers import CORPUS


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("application/pdf", PDF),
        ("application/x-pdf", PDF),
        ("Application/PDF; charset=binary", PDF),
        ("  application/pdf ; name=cv.pdf", PDF),
        ("text/plain; charset=ISO-8859-1", "text/plain"),
        ("pdf", PDF),
        (".docx", DOCX),
        ("", None),
        (None, None),
    ],
)
def test_content_type_is_normalised(declared: str | None, expected: str | None) -> None:
    assert normalise_content_type(declared) == expected


def test_every_generated_kind_reads_back_its_words(world_template: World, tmp_path: Path) -> None:
    for attachment in world_template.attachments.values():
        if attachment.kind == "png" or attachment.same_as:
            continue
        candidate = world_template.candidates[attachment.candidate_id]
        path = _write(tmp_path, attachment.id, world_template.body(attachment.id))
        result = extract_file(path, attachment.content_type, attachment.file_name)
        assert result.state == AttachmentState.PENDING, (attachment.file_name, result.error)
        assert candidate.last_name in result.text
        assert candidate.city in result.text
        if attachment.type == "CV":
            for skill in candidate.skills:
                assert skill in result.text, (attachment.file_name, skill)
        assert result.parser and result.parser_version
        assert result.char_count == len(result.text)


def test_pdf_reports_pages(tmp_path: Path) -> None:
    blocks = [Block("para", f"Line number {n} about Kubernetes.") for n in range(120)]
    result = extract_file(
        _write(tmp_path, "long.pdf", render_pdf(blocks)), "application/pdf", "long.pdf"
    )
    assert result.page_count is not None and result.page_count >= 2
    assert "Line number 119" in result.text


def test_docx_reads_header_tables_and_body_in_order(tmp_path: Path) -> None:
    blocks = [
        Block("title", "Jürgen Müller"),
        Block("para", "Opening paragraph."),
        Block("table", rows=(("Kubernetes", "expert"), ("Terraform", "advanced"))),
        Block("para", "Closing paragraph."),
    ]
    data = render_docx(blocks, header="Lebenslauf Jürgen Müller")
    result = extract_file(_write(tmp_path, "cv.docx", data), DOCX, "cv.docx")
    text = result.text or ""
    assert "Lebenslauf Jürgen Müller" in text
    order = [text.index(w) for w in ("Opening", "Kubernetes", "advanced", "Closing")]
    assert order == sorted(order)


def test_octet_stream_pdf_is_read_as_pdf(tmp_path: Path) -> None:
    data = render_pdf([Block("para", "Scala and Kafka")])
    path = _write(tmp_path, "blob", data)
    result = extract_file(path, "application/octet-stream", "")
    assert result.detected_type == PDF
    assert "Scala and Kafka" in (result.text or "")


def test_a_pdf_labelled_as_text_is_read_as_pdf(tmp_path: Path) -> None:
    path = _write(tmp_path, "cv.txt", render_pdf([Block("para", "Airflow")]))
    assert decide(path, "text/plain", "cv.txt") == PDF


def test_empty_file_is_unreadable_with_reason(tmp_path: Path) -> None:
    result = extract_file(_write(tmp_path, "empty.pdf", b""), "application/pdf", "empty.pdf")
    assert result.state == AttachmentState.UNREADABLE
    assert result.error == "unreadable: empty file"


def test_corrupt_pdf_fails_alone_with_a_reason(tmp_path: Path) -> None:
    data = render_pdf([Block("para", "Python")])
    broken = data[:40] + b"\x00garbage" * 50
    result = extract_file(_write(tmp_path, "broken.pdf", broken), "application/pdf", "x.pdf")
    assert result.state in (AttachmentState.UNREADABLE, AttachmentState.NO_TEXT)
    assert result.error


def test_garbage_labelled_docx_fails(tmp_path: Path) -> None:
    result = extract_file(_write(tmp_path, "x.docx", b"PK\x03\x04not a zip at all"), DOCX, "x.docx")
    assert result.state in (AttachmentState.UNREADABLE, AttachmentState.UNSUPPORTED)
    assert result.error


def test_a_package_whose_main_part_is_not_a_word_document_fails(tmp_path: Path) -> None:
    # A Word template (or a spreadsheet) dressed as a .docx: the package opens, but its main
    # part is not a document's, as docx.Document would refuse it too.
    import io
    import zipfile

    data = render_docx([Block("para", "Kubernetes")], header="CV")
    source, rewritten = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(rewritten, "w") as out:
        for item in source.infolist():
            body = source.read(item.filename)
            if item.filename == "[Content_Types].xml":
                body = body.replace(b"document.main+xml", b"template.main+xml")
            out.writestr(item, body)
    path = _write(tmp_path, "cv.docx", rewritten.getvalue())
    result = extract_file(path, DOCX, "cv.docx")
    assert result.state == AttachmentState.UNREADABLE
    assert result.error is not None and result.error.startswith("not a Word document")
    assert "template.main+xml" in result.error


def test_a_tiny_png_has_no_text(world_template: World, tmp_path: Path) -> None:
    photo = next(a for a in world_template.attachments.values() if a.kind == "png")
    path = _write(tmp_path, "photo.png", world_template.body(photo.id))
    result = extract_file(path, "image/png", "photo.png")
    assert result.state == AttachmentState.NO_TEXT
    assert result.detected_type == "image/png"
    assert result.error == "no text: the image is too small to hold any"


def test_text_in_other_charsets(tmp_path: Path) -> None:
    text = "Größe, café, niño: Führungserfahrung in Zürich und Málaga. " * 5
    for encoding in ("utf-8", "utf-16", "cp1252"):
        path = _write(tmp_path, f"t-{encoding}.txt", text.encode(encoding))
        result = extract_file(path, "text/plain", "t.txt")
        assert "Führungserfahrung in Zürich und Málaga" in (result.text or ""), encoding


def test_plain_text_generated(tmp_path: Path) -> None:
    data = render_text([Block("heading", "Kenntnisse"), Block("bullet", "Kubernetes")])
    result = extract_file(_write(tmp_path, "cv.txt", data), "text/plain", "cv.txt")
    assert result.text == "KENNTNISSE\n\n* Kubernetes"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Pers\u00a8 onliche Daten", "Persönliche Daten"),
        ("e\u0301quipe", "équipe"),
        ("\ufb01nance and \ufb02ow", "finance and flow"),
        ("develop-\nment", "development"),
        ("Berlin-\nBrandenburg", "Berlin-\nBrandenburg"),
        ("Soft\u00adware", "Software"),
        ("\uf0b7 Python \ue001", "Python"),
        ("a   b\t\tc", "a b c"),
        ("one\n\n\n\n\ntwo", "one\n\ntwo"),
    ],
)
def test_normalisation(raw: str, clean: str) -> None:
    assert normalise_text(raw) == clean


def test_a_spreadsheet_labelled_pdf_is_unsupported(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "cv.pdf"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    result = extract_file(path, "application/pdf", "cv.pdf")
    assert result.state == AttachmentState.UNSUPPORTED
    assert (
        result.detected_type == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )


def test_html_is_read_in_its_real_charset_and_only_visibly(tmp_path: Path) -> None:
    markup = (
        '<html><head><meta charset="utf-8"><title>Lebenslauf</title>'
        "<style>p { color: red }</style><script>var secret = 1;</script></head>"
        "<body><h1>Jürgen Müller</h1><p>Führungserfahrung in Köln</p></body></html>"
    )
    path = tmp_path / "cv.html"
    path.write_bytes(markup.encode("cp1252"))  # the meta tag lies: the bytes are cp1252
    result = extract_file(path, "text/html", "cv.html")
    assert result.state == AttachmentState.PENDING
    assert "Jürgen Müller" in result.text and "Führungserfahrung in Köln" in result.text
    assert "secret" not in result.text and "color" not in result.text


def test_rtf_in_its_code_page(tmp_path: Path) -> None:
    path = tmp_path / "cv.rtf"
    path.write_bytes(
        rb"{\rtf1\ansi\ansicpg1250 Za\'bf\'f3\'b3\'e6 g\'ea\'9cl\'b9 ja\'9f\'f1 Kubernetes\par}"
    )
    result = extract_file(path, "application/rtf", "cv.rtf")
    assert result.text == "Zażółć gęślą jaźń Kubernetes"


def test_any_text_type_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "cv.tex"
    path.write_text("\\section{Kenntnisse} Kubernetes", encoding="utf-8")
    result = extract_file(path, "text/x-tex", "cv.tex")
    assert result.state == AttachmentState.PENDING
    assert "Kubernetes" in result.text


_LANGUAGE_SAMPLES = (
    "Senior Python developer with ten years of experience in Kubernetes and cloud platforms.",
    "Erfahrene Entwicklerin mit Schwerpunkt auf verteilten Systemen und Teamfähigkeit.",
    "Ingénieure logiciel passionnée par le développement web et la conception d'API.",
    "Desarrollador con experiencia en gestión de proyectos y diseño de bases de datos.",
)


def test_the_unpacked_language_model_answers_as_py3langid_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from py3langid import langid

    from pipeline.extract import language

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(langid, "IDENTIFIER", None)
    language.load_model()
    assert list((tmp_path / "kombo-cv-pipeline").glob("py3langid-*-model.npz"))
    ours = langid.IDENTIFIER
    assert ours is not None
    reference = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE)
    for text in _LANGUAGE_SAMPLES:
        assert ours.classify(text) == reference.classify(text)


def test_without_a_writable_cache_the_language_model_loads_as_usual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from py3langid import langid

    from pipeline.extract import language

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(langid, "IDENTIFIER", None)
    language.load_model()
    assert langid.IDENTIFIER is None  # left to py3langid
    assert [language.detect_language(t) for t in _LANGUAGE_SAMPLES] == ["en", "de", "fr", "es"]


_LICENCE = "\n".join(  # what a CV template's source opens with: English, not the CV's
    "%\t" + line
    for line in (
        "The MIT License (MIT)",
        "Permission is hereby granted, free of charge, to any person obtaining a copy",
        "of this software and associated documentation files (the Software), to deal",
        "in the Software without restriction, including without limitation the rights",
        "to use, copy, modify, merge, publish, distribute, sublicense, and/or sell",
        "copies of the Software, and to permit persons to whom the Software is",
        "furnished to do so, subject to the following conditions: THE SOFTWARE IS",
        "PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING",
        "BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PURPOSE.",
    )
)
_PREAMBLE = r"""
\documentclass[10pt,a4paper,german]{article}
\usepackage[utf8]{inputenc}
\usepackage{paracol,xcolor,fontawesome5,tabularx}
\definecolor{maincol}{RGB}{0,90,160}
\newcommand{\cvsection}[1]{\vspace{8pt}\textcolor{maincol}{\textbf{\large #1}}\par}
\newcommand{\cvevent}[4]{\textbf{#1} \hfill \textit{#2} \\ #3 \\ \small{#4} \par}
\newcommand{\cvskill}[3]{\textbf{#1} \hfill #2 \\[-2pt]}
\setlength{\columnsep}{2.2em}
"""
_LATEX_BODY = r"""
\begin{document}
\begin{paracol}{2}
\cvsection{Lebenslauf}
\cvskill{Softwareentwicklung}{6+ Jahre}{1}
\cvskill{Cloud Computing}{2+ Jahre}{0.3}
\cvsection{Berufserfahrung}
\cvevent{Senior Software Engineer}{2019 -- heute}{Muster GmbH, München}{Entwicklung
der Plattform für den Handel mit Python und Kubernetes, Leitung eines Teams von vier
Entwicklern und die Einführung von Continuous Delivery in der Firma.}
\cvevent{Backend Developer}{2015 -- 2019}{Beispiel AG, Berlin}{Aufbau von Microservices
mit Go, Betrieb der Datenbanken und Beratung der Kunden bei der Migration in die Cloud.}
\cvsection{Bildung}
\begin{tabularx}{\linewidth}{l X}
2010 -- 2015 & Informatik an der Technischen Universität Berlin \\ \hline
\end{tabularx}
\end{paracol}
\end{document}
"""


def _europass_table() -> str:
    """A CV laid out as a table: English labels (a Europass-style template), German
    entries, table rules and cell bars as a text export draws them."""
    rows = [
        ("CURRICULUM VITAE", ""),
        ("Personal information", "Jörg Fürst"),
        ("Date of birth", "16.6.1974"),
        ("Work experience", ""),
        ("Dates", "2019 - 2024"),
        ("Occupation or position held", "Lead Developer bei der Muster GmbH"),
        ("Main activities and responsibilities", "Planung und Entwicklung der Plattform"),
        ("Main activities and responsibilities", "Betrieb der Dienste auf Kubernetes"),
        ("Dates", "2015 - 2019"),
        ("Occupation or position held", "Backend Engineer für die Payment Platform"),
        ("Education and training", "Informatik an der TU Berlin"),
        ("Mother tongue", "Deutsch"),
        ("Other languages", "Englisch"),
        ("Technical skills and competences", "Python, Kubernetes, Docker, AWS"),
        ("Computer skills and competences", "Git, Jira, Confluence"),
    ]
    rule = "+" + "-" * 38 + "+" + "-" * 44 + "+"
    lines = [rule]
    for label, entry in rows:
        lines += [f"| {label:<36} | {entry:<42} |", rule]
    return "\n".join(lines)


def test_a_german_latex_cv_is_german(tmp_path: Path) -> None:
    import py3langid

    source = _LICENCE + _PREAMBLE + _LATEX_BODY
    assert py3langid.classify(source)[0] == "en"  # what the markup made of it before
    path = tmp_path / "lebenslauf.tex"
    path.write_text(source, encoding="utf-8")
    assert extract_file(path, "text/x-tex", path.name).language == "de"


def test_a_german_cv_laid_out_as_a_table_is_german(tmp_path: Path) -> None:
    import py3langid

    table = _europass_table()
    assert py3langid.classify(table)[0] == "en"  # its English labels outweighed it before
    path = tmp_path / "lebenslauf.txt"
    path.write_text(table, encoding="utf-8")
    assert extract_file(path, "text/plain", path.name).language == "de"


def test_markup_around_prose_does_not_change_its_language() -> None:
    from pipeline.extract.language import detect_language

    expected = ["en", "de", "fr", "es"]
    assert [detect_language(t) for t in _LANGUAGE_SAMPLES] == expected
    in_latex = [f"\\begin{{itemize}}\\item {t}\\end{{itemize}}" for t in _LANGUAGE_SAMPLES]
    assert [detect_language(t) for t in in_latex] == expected
    in_table = [f"+{'-' * 30}+\n| {t} |\n+{'-' * 30}+" for t in _LANGUAGE_SAMPLES]
    assert [detect_language(t) for t in in_table] == expected
    # No LaTeX, no comments: a percent sign keeps the rest of its line.
    assert detect_language("Umsatz um 30% gesteigert, die Leitung der Abteilung mit") == "de"


@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason="the shared corpus is absent")
def test_the_corpus_german_latex_cv_is_german() -> None:
    path = CORPUS / "modern-latex-cv" / "german" / "lebenslauf.tex"
    assert extract_file(path, "text/x-tex", path.name).language == "de"


def test_commands_that_parse_nothing_do_not_import_the_parsers() -> None:
    # pypdf, python-docx and lxml take 0.2 s to import: `pipeline search` starts without them.
    import subprocess
    import sys

    probe = "import sys, pipeline.cli; print(sorted({'pypdf', 'docx', 'lxml'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- lessons from files no test had seen (issue 17) --------------------------------------------


def _secured_with(tmp_path: Path, handler: bytes) -> Path:
    """A real encrypted PDF of ours whose /Encrypt names ``handler`` instead of /Standard."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(render_pdf([Block("para", "Python")]))))
    writer.encrypt("a password no one has", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    data = buffer.getvalue()
    assert b"/Filter /Standard" in data
    return _write(tmp_path, "secured.pdf", data.replace(b"/Filter /Standard", handler, 1))


@pytest.mark.parametrize(
    "handler",
    [b"/Filter /Adobe.PubSec /SubFilter /adbe.pkcs7.s5", b"/Filter /FOPN_foweb"],
    ids=["public-key (certificate)", "a vendor's own"],
)
def test_a_pdf_secured_by_a_handler_pypdf_lacks_is_encrypted(
    tmp_path: Path, handler: bytes
) -> None:
    result = extract_file(_secured_with(tmp_path, handler), "application/pdf", "cv.pdf")
    assert result.state == AttachmentState.ENCRYPTED
    assert result.error is not None and result.error.startswith("encrypted: a security handler")


def test_random_bytes_after_a_pdf_header_are_unreadable(tmp_path: Path) -> None:
    import random

    data = b"%PDF-1.7\n" + random.Random(3).randbytes(20_000)
    result = extract_file(_write(tmp_path, "cv.pdf", data), "application/pdf", "cv.pdf")
    assert result.state == AttachmentState.UNREADABLE
    assert result.parser == "pypdf" and result.parser_version
    assert result.error is not None and result.error.startswith("unreadable: ")


_FRAGMENT = (
    b"<div class='cv'><style>.cv { color: #333; font-family: Arial }</style>"
    b"<h2>Lena Fischer</h2><p>Senior <b>Kotlin</b> developer in Leipzig</p></div>\n"
)


@pytest.mark.parametrize(
    ("content_type", "file_name"),
    [("text/html", "cv"), ("text/html; charset=utf-8", None), (None, "cv.htm"), (None, "x.html")],
)
def test_an_html_fragment_labelled_html_is_read_as_html(
    tmp_path: Path, content_type: str | None, file_name: str | None
) -> None:
    path = _write(tmp_path, "fragment", _FRAGMENT)
    result = extract_file(path, content_type, file_name)
    assert result.detected_type == "text/html"
    assert result.text == "Lena Fischer\n\nSenior Kotlin developer in Leipzig"


def test_plainly_markup_text_is_read_as_html_whatever_its_label(tmp_path: Path) -> None:
    result = extract_file(_write(tmp_path, "mail.txt", _FRAGMENT), "text/plain", "mail.txt")
    assert result.detected_type == "text/html"
    assert "color" not in (result.text or "") and "<" not in (result.text or "")
    # One angle bracket does not make a text markup.
    note = _write(tmp_path, "note.txt", b"<b>Python</b> is what I know best, and SQL.\n")
    assert decide(note, "text/plain", "note.txt") == "text/plain"


# Characters the normaliser is meant to rewrite: spacing diacritics (composed onto the letter)
# and ligatures (spelt out); a raw token holding one is covered by its rewritten form.
_REWRITTEN = set("\u00a8\u00b4`\u02c6^\u02dc\u00b8\u02c7")


def _raw_tokens(text: str) -> set[str]:
    import re
    import unicodedata

    return set(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason="the shared corpus is absent")
def test_normalisation_never_loses_a_word_pypdf_found_on_the_corpus() -> None:
    import logging
    import re

    import pypdf

    lost_by_file = {}
    logging.disable(logging.WARNING)
    try:
        for path in sorted(CORPUS.rglob("*.pdf")):
            try:
                reader = pypdf.PdfReader(path)
                if reader.is_encrypted:
                    reader.decrypt("")
                raw = "\n".join(page.extract_text() or "" for page in reader.pages)
            except Exception:  # files pypdf cannot read have no words to lose
                continue
            # Hyphenation is meant to go: "develop-" + "ment" are one word afterwards.
            pieces = set()
            for match in re.finditer(r"(\w+)[-\u00ad][ \t]*\n\s*(\w+)", raw):
                pieces |= _raw_tokens(match.group(1)) | _raw_tokens(match.group(2))
            rewritten = {
                token
                for chunk in re.findall(r"\S*[" + re.escape("".join(_REWRITTEN)) + r"]\S*", raw)
                for token in _raw_tokens(chunk)
            }
            lost = _raw_tokens(raw) - _raw_tokens(normalise_text(raw)) - pieces - rewritten
            if lost:
                lost_by_file[path.relative_to(CORPUS).as_posix()] = sorted(lost)[:10]
    finally:
        logging.disable(logging.NOTSET)
    assert not lost_by_file, lost_by_file
