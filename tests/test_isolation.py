"""A parser that hangs, eats memory or meets a zip bomb costs at most its limits, and the run
goes on. Real parsers on real files: a long generated PDF, a large text file, a real bomb."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.extract.pool import ProcessExtractor
from pipeline.sandbox.documents import Block, render_pdf
from pipeline.states import AttachmentState

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture(scope="module")
def long_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 120 pages: pypdf needs well over a second for it."""
    blocks = [
        Block("para", f"Line {n}: Kubernetes, Terraform and Python in Berlin. " * 3)
        for n in range(1800)
    ]
    path = tmp_path_factory.mktemp("long") / "long.pdf"
    path.write_bytes(render_pdf(blocks))
    return path


@pytest.fixture(scope="module")
def small_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.pdf"
    path.write_bytes(render_pdf([Block("para", "Scala and Kafka in Köln")]))
    return path


def test_a_parser_over_its_time_is_killed_and_the_next_file_is_read(
    long_pdf: Path, small_pdf: Path
) -> None:
    extractor = ProcessExtractor(workers=1, timeout=0.3)
    try:
        started = time.monotonic()
        result = extractor.submit(long_pdf, "application/pdf", "long.pdf").result(timeout=30)
        elapsed = time.monotonic() - started
        assert result.state == AttachmentState.FAILED
        assert result.error == "timeout"
        assert elapsed < 3.0  # the limit plus the time to kill, not the time to parse
        after = extractor.submit(small_pdf, "application/pdf", "small.pdf").result(timeout=30)
        assert after.state == AttachmentState.PENDING
        assert "Kafka in Köln" in (after.text or "")
    finally:
        extractor.close()


def test_a_parser_over_its_memory_fails_alone(tmp_path: Path, small_pdf: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(("Lebenslauf Kubernetes Müller " * 3 + "\n").encode() * 220_000)
    extractor = ProcessExtractor(workers=1, timeout=60, memory_mb=160)
    try:
        result = extractor.submit(big, "text/plain", "big.txt").result(timeout=60)
        assert result.state == AttachmentState.FAILED
        assert result.error == "memory limit"
        after = extractor.submit(small_pdf, "application/pdf", "small.pdf").result(timeout=30)
        assert after.state == AttachmentState.PENDING
    finally:
        extractor.close()


def _bomb(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_without_being_inflated(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "cv.docx", {"word/document.xml": b"\0" * (300 * 1024 * 1024)})
    assert bomb.stat().st_size < 1024 * 1024
    extractor = ProcessExtractor(workers=1, timeout=30, memory_mb=400)
    try:
        started = time.monotonic()
        result = extractor.submit(bomb, DOCX, "cv.docx").result(timeout=30)
        assert time.monotonic() - started < 2.0
        assert result.state == AttachmentState.UNREADABLE
        assert result.error.startswith("zip bomb refused")
    finally:
        extractor.close()


def test_a_zip_of_countless_members_is_refused(tmp_path: Path) -> None:
    from pipeline.extract import extract_file

    members = {"word/document.xml": b"<w:document/>"}
    members.update({f"word/media/x{n}.bin": b"" for n in range(6000)})
    result = extract_file(_bomb(tmp_path / "cv.docx", members), DOCX, "cv.docx")
    assert result.state == AttachmentState.UNREADABLE
    assert result.error == "zip bomb refused: 6002 members"


def test_extraction_uses_every_core() -> None:
    import os

    extractor = ProcessExtractor()
    try:
        assert extractor.workers == os.cpu_count()
    finally:
        extractor.close()


def test_the_cli_limit_reaches_the_workers(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = [c.id for c in sandbox.world.ordered()]
    result = cli("ingest", "--extract-timeout", "0.01", *ids, env=sandbox.env())
    assert result.code == 1  # timeouts are failures, retried by the next run
    records = [json.loads(line) for line in cli("export", "--status", "all").out.splitlines()]
    timed_out = [r for r in records if r["error"] == "timeout"]
    assert timed_out and all(r["status"] == "failed" for r in timed_out)
    again = cli("ingest", *ids, env=sandbox.env())
    assert again.code == 0, again.err


def test_a_worker_of_the_installed_command_does_not_import_the_command_line(
    tmp_path: Path,
) -> None:
    """A command started as a script (the installed ``pipeline``) has each extraction worker
    import that script again (multiprocessing's forkserver cannot preload it before Python
    3.13). The script pip writes for our entry point must then import nothing heavy: the
    command line with SQLAlchemy and httpx cost each worker half a second of CPU."""
    import subprocess
    import sys
    import tomllib

    project = Path(__file__).resolve().parents[1] / "pyproject.toml"
    entry = tomllib.loads(project.read_text())["project"]["scripts"]["pipeline"]
    module, _, function = entry.partition(":")
    script = tmp_path / "pipeline"
    script.write_text(  # what pip installs for a console script
        f"import sys\nfrom {module} import {function}\n"
        f"if __name__ == '__main__':\n    sys.exit({function}())\n"
    )
    probe = (
        "import runpy, sys; before = set(sys.modules);"
        f"runpy.run_path({str(script)!r}, run_name='__mp_main__');"  # as spawn.prepare does
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    imported = done.stdout.split()
    assert module in imported  # the probe did import the script's module
    heavy = [name for name in imported if name.split(".")[0] in ("sqlalchemy", "httpx", "click")]
    assert heavy == [] and "pipeline.cli" not in imported, imported
