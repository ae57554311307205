"""OCR (issue 17): scanned CVs and phone photos that the sandbox makes from its own PDFs are
read by Tesseract well enough to find their candidates. Lean on purpose: one ingest of four
one-page documents (Tesseract is slow); the measurements live in benchmarks/ocr.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.extract import extract_file
from pipeline.extract.ocr import NEEDS_TESSERACT, OCR_OFF
from pipeline.sandbox.documents import Block, cv_blocks, render_pdf, render_text
from pipeline.sandbox.generator import SCAN_ORDER, World
from pipeline.sandbox.scans import render_scan
from pipeline.sandbox.server import SandboxServer
from pipeline.states import AttachmentState
from tests.helpers import similarity

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr is not installed (.ci/run installs it)"
)
RECALL_FLOOR = 0.90


@pytest.fixture(scope="module")
def scanned_world() -> World:
    """Four candidates whose CVs are a 300 dpi scan, a 200 dpi scan, a JPEG photo and a HEIC
    photo, one in each language (rendered once for the module)."""
    world = World(candidates=0, seed=7, scans=len(SCAN_ORDER))
    for attachment_id in world.attachments:
        world.body(attachment_id)
    return world


@pytest.fixture
def scanned_sandbox(scanned_world: World) -> Iterator[SandboxServer]:
    world = World(candidates=0, seed=7, scans=len(SCAN_ORDER))
    world._bodies = dict(scanned_world._bodies)  # same seed, same bytes
    with SandboxServer(world) as server:
        yield server


@needs_tesseract
def test_scans_and_photos_are_read_and_their_candidates_found(
    cli, scanned_sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    world = scanned_sandbox.world
    ids = [c.id for c in world.ordered()]
    result = cli("ingest", *ids, env=scanned_sandbox.env())
    assert result.code == 0, result.out + result.err
    records = {
        r["attachment_id"]: r
        for r in map(json.loads, cli("export", "--status", "all").out.splitlines())
    }
    for candidate in world.ordered():
        cv = next(a for a in candidate.attachments if a.type == "CV" and not a.same_as)
        record = records[cv.id]
        assert record["status"] == "indexed", (cv.kind, record["error"])
        assert "tesseract" in record["parser"] and "tesseract 5" in record["parser_version"]
        assert record["error"].startswith("OCR: 1 page, mean confidence"), record["error"]
        truth = render_text(cv_blocks(candidate)).decode()
        recall, _, _ = similarity(record["text"], truth)  # accents count: "Málaga" != "Malaga"
        assert recall >= RECALL_FLOOR, (cv.kind, candidate.language, recall)
        # A recruiter finds the candidate by name and by a skill only the scan holds.
        for query in (f'"{candidate.first_name} {candidate.last_name}"', candidate.city):
            found = cli("search", query, "--json", "--limit", "100")
            assert found.code == 0, found.err
            hits = {hit["candidate_id"] for hit in json.loads(found.out)["hits"]}
            assert candidate.id in hits, (cv.kind, query)


def _small_scan(tmp_path: Path) -> Path:
    pdf = render_pdf([Block("title", "Jürgen Müller"), Block("para", "Kubernetes in Köln")])
    path = tmp_path / "scan.pdf"
    path.write_bytes(render_scan(pdf, 200, "small"))
    return path


def test_without_tesseract_a_scan_has_no_text_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _small_scan(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    result = extract_file(path, "application/pdf", "scan.pdf")
    assert result.state == AttachmentState.NO_TEXT
    assert result.error == NEEDS_TESSERACT


def test_ocr_off_leaves_scans_without_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _small_scan(tmp_path)
    monkeypatch.setenv("PIPELINE_OCR", "off")
    result = extract_file(path, "application/pdf", "scan.pdf")
    assert result.state == AttachmentState.NO_TEXT
    assert result.error == OCR_OFF


@needs_tesseract
def test_only_the_scanned_page_is_ocrd(tmp_path: Path) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    typed = render_pdf([Block("para", "Page one was typed: Terraform and Ansible in Zürich.")])
    scanned = render_scan(
        render_pdf([Block("para", "Page two was scanned: Kafka and Flink in Sevilla.")]), 200, "p2"
    )
    writer = PdfWriter()
    for data in (typed, scanned):
        for page in PdfReader(io.BytesIO(data)).pages:
            writer.add_page(page)
    path = tmp_path / "mixed.pdf"
    with path.open("wb") as handle:
        writer.write(handle)
    result = extract_file(path, "application/pdf", "mixed.pdf")
    assert result.state == AttachmentState.PENDING
    assert result.ocr_pages == 1 and result.page_count == 2
    assert result.error is not None and result.error.startswith("OCR: 1 page of 2")
    assert "Terraform and Ansible in Zürich" in (result.text or "")
    assert "Kafka and Flink in Sevilla" in (result.text or "")
    assert result.parser == "pypdf+tesseract"
