"""Realistic CVs and cover letters as real PDF (fpdf2), DOCX (python-docx) and text files.

Every document is built from one list of blocks, so the PDF, DOCX and text versions of a CV
say the same words. Bytes are deterministic: fixed creation dates and zip timestamps.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime

from .generator import EPOCH, SandboxAttachment, SandboxCandidate
from .scans import SCAN_KINDS
from .scans import render as render_scan


@dataclass(frozen=True)
class Block:
    kind: str  # title, subtitle, heading, para, bullet, table
    text: str = ""
    rows: tuple[tuple[str, str], ...] = ()


_HEADINGS = {
    "en": ("Profile", "Skills", "Experience", "Education", "Languages"),
    "de": ("Profil", "Kenntnisse", "Berufserfahrung", "Ausbildung", "Sprachen"),
    "fr": ("Profil", "Compétences", "Expérience professionnelle", "Formation", "Langues"),
    "es": ("Perfil", "Habilidades", "Experiencia profesional", "Formación", "Idiomas"),
}
_SUMMARY = {
    "en": "{title} based in {city} with {years} years of experience in {s0} and {s1}. "
    "Known for {d0} and {d1}.",
    "de": "{title} aus {city} mit {years} Jahren Berufserfahrung in {s0} und {s1}. "
    "Stärken: {d0} und {d1}.",
    "fr": "{title} basé à {city}, {years} ans d'expérience en {s0} et {s1}. "
    "Points forts : {d0} et {d1}.",
    "es": "{title} en {city} con {years} años de experiencia en {s0} y {s1}. "
    "Destaca en {d0} e {d1}.",
}
_BULLET = {
    "en": "Designed and ran services with {a} and {b} for a team of {n}.",
    "de": "Entwicklung und Betrieb von Diensten mit {a} und {b} in einem Team von {n}.",
    "fr": "Conception et exploitation de services avec {a} et {b} dans une équipe de {n}.",
    "es": "Diseño y operación de servicios con {a} y {b} en un equipo de {n}.",
}
_PHRASE = {
    "en": "Hands-on work in {p}.",
    "de": "Praktische Arbeit im Bereich {p}.",
    "fr": "Travail concret en {p}.",
    "es": "Trabajo práctico en {p}.",
}
_SPOKEN = {
    "en": "English (native), German (B2)",
    "de": "Deutsch (Muttersprache), Englisch (C1)",
    "fr": "Français (langue maternelle), Anglais (C1)",
    "es": "Español (nativo), Inglés (C1)",
}
_LEVEL = {"en": "Level", "de": "Niveau", "fr": "Niveau", "es": "Nivel"}
_LEVELS = ("expert", "advanced", "intermediate")
_LETTER = {
    "en": (
        "Dear hiring team,",
        "I am applying for the position of {job}. In my {years} years as {title} in {city} "
        "I have worked extensively with {s0} and {s1}.",
        "Kind regards,",
    ),
    "de": (
        "Sehr geehrte Damen und Herren,",
        "hiermit bewerbe ich mich als {job}. In {years} Jahren als {title} in {city} habe "
        "ich intensiv mit {s0} und {s1} gearbeitet.",
        "Mit freundlichen Grüßen",
    ),
    "fr": (
        "Madame, Monsieur,",
        "Je vous adresse ma candidature au poste de {job}. Depuis {years} ans comme {title} "
        "à {city}, je travaille avec {s0} et {s1}.",
        "Veuillez agréer mes salutations distinguées.",
    ),
    "es": (
        "Estimado equipo de selección:",
        "Me dirijo a ustedes para el puesto de {job}. En mis {years} años como {title} en "
        "{city} he trabajado con {s0} y {s1}.",
        "Atentamente,",
    ),
}


def cv_blocks(c: SandboxCandidate) -> list[Block]:
    lang = c.language
    profile, skills_h, experience_h, education_h, languages_h = _HEADINGS[lang]
    s = c.skills
    d = c.domain_terms
    blocks = [
        Block("title", c.full_name),
        Block("subtitle", f"{c.title} · {c.city} · {c.email}"),
        Block("heading", profile),
        Block(
            "para",
            _SUMMARY[lang].format(
                title=c.title, city=c.city, years=c.years, s0=s[0], s1=s[1], d0=d[0], d1=d[1]
            ),
        ),
        Block("heading", skills_h),
        Block(
            "table",
            rows=(
                (skills_h, _LEVEL[lang]),
                *tuple((skill, _LEVELS[i % 3]) for i, skill in enumerate(s)),
            ),
        ),
        Block("para", ", ".join(s)),
        Block("heading", experience_h),
    ]
    end_year = 2026
    for number, employer in enumerate(c.employers):
        start = end_year - max(1, c.years // 2)
        blocks.append(Block("subtitle", f"{c.title}, {employer}, {c.city} ({start}-{end_year})"))
        a, b = s[(2 * number) % len(s)], s[(2 * number + 1) % len(s)]
        blocks.append(Block("bullet", _BULLET[lang].format(a=a, b=b, n=3 + number * 4)))
        end_year = start
    for phrase in c.phrases:
        blocks.append(Block("bullet", _PHRASE[lang].format(p=phrase)))
    if c.years > 10:  # long careers run onto a second page
        for year in range(c.years):
            blocks.append(
                Block(
                    "bullet",
                    _BULLET[lang].format(a=s[year % len(s)], b=s[(year + 1) % len(s)], n=year + 2),
                )
            )
    blocks += [
        Block("heading", education_h),
        Block("para", c.school),
        Block("heading", languages_h),
        Block("para", _SPOKEN[lang]),
    ]
    return blocks


def letter_blocks(c: SandboxCandidate) -> list[Block]:
    opening, body, closing = _LETTER[c.language]
    job = c.applications[0].job_name
    return [
        Block("subtitle", f"{c.full_name}, {c.city}"),
        Block("para", opening),
        Block(
            "para",
            body.format(
                job=job, years=c.years, title=c.title, city=c.city, s0=c.skills[0], s1=c.skills[1]
            ),
        ),
        Block("para", closing),
        Block("para", c.full_name),
    ]


# -- renderers -------------------------------------------------------------------------------


def _latin1(text: str) -> str:
    # The PDF core fonts speak cp1252 only; keep the letters, simplify the punctuation.
    return text.replace("·", "-").encode("latin-1", "replace").decode("latin-1")


def render_pdf(blocks: list[Block], created: datetime = EPOCH) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(created)
    pdf.set_auto_page_break(True, margin=18)
    pdf.set_margins(20, 18, 20)
    pdf.add_page()
    for block in blocks:
        text = _latin1(block.text)
        if block.kind == "title":
            pdf.set_font("Helvetica", "B", 20)
            pdf.multi_cell(0, 10, text, new_x="LMARGIN", new_y="NEXT")
        elif block.kind == "subtitle":
            pdf.set_font("Helvetica", "I", 11)
            pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        elif block.kind == "heading":
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        elif block.kind == "bullet":
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, "- " + text, new_x="LMARGIN", new_y="NEXT")
        elif block.kind == "table":
            pdf.set_font("Helvetica", "", 10)
            for left, right in block.rows:
                pdf.cell(60, 6, _latin1(left))
                pdf.cell(0, 6, _latin1(right), new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
    return bytes(pdf.output())


def render_docx(blocks: list[Block], header: str, created: datetime = EPOCH) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.created = created.replace(tzinfo=None)
    document.core_properties.modified = created.replace(tzinfo=None)
    document.core_properties.author = "sandbox"
    # The name in the page header too, as many CV templates do: extraction must read it.
    document.sections[0].header.paragraphs[0].text = header
    for block in blocks:
        if block.kind == "title":
            document.add_heading(block.text, level=0)
        elif block.kind == "heading":
            document.add_heading(block.text, level=1)
        elif block.kind == "bullet":
            document.add_paragraph(block.text, style="List Bullet")
        elif block.kind == "table":
            table = document.add_table(rows=0, cols=2)
            for left, right in block.rows:
                cells = table.add_row().cells
                cells[0].text = left
                cells[1].text = right
        elif block.kind == "subtitle":
            document.add_paragraph().add_run(block.text).italic = True
        else:
            document.add_paragraph(block.text)
    buffer = io.BytesIO()
    document.save(buffer)
    return _fixed_zip_times(buffer.getvalue())


def _fixed_zip_times(data: bytes) -> bytes:
    """Rewrite a zip with constant timestamps, so the same seed gives the same bytes."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(2026, 1, 5, 9, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(fixed, source.read(info.filename))
    return out.getvalue()


def render_text(blocks: list[Block]) -> bytes:
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines += ["", block.text.upper(), ""]
        elif block.kind == "bullet":
            lines.append("* " + block.text)
        elif block.kind == "table":
            lines += [f"{left}: {right}" for left, right in block.rows]
        else:
            lines.append(block.text)
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_png() -> bytes:
    """A tiny real PNG (a 2x2 grey square): a photo the pipeline cannot read as text."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + b"\x80\x80" for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def render(candidate: SandboxCandidate, attachment: SandboxAttachment) -> bytes:
    if attachment.kind == "png":
        return render_png()
    blocks = cv_blocks(candidate) if attachment.type == "CV" else letter_blocks(candidate)
    if attachment.kind == "pdf":
        return render_pdf(blocks, attachment.remote_updated_at)
    if attachment.kind in SCAN_KINDS:  # a scan or photo of the PDF (scans.py)
        pdf = render_pdf(blocks, attachment.remote_updated_at)
        return render_scan(attachment.kind, pdf, f"{attachment.id}:{attachment.revision}")
    if attachment.kind == "docx":
        return render_docx(blocks, candidate.full_name, attachment.remote_updated_at)
    return render_text(blocks)
