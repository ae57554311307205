"""Failures that end (issue 17): a file no parser here reads is ``unreadable``, counted like
``unsupported`` (exit 0, the reason in the summary line), and neither fetched nor parsed
again until it changes at Kombo or the parser that failed is upgraded."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

from pipeline.database import Outcome, Store
from pipeline.sandbox.generator import SandboxCandidate
from pipeline.sandbox.server import SandboxServer
from pipeline.schemas import validator
from pipeline.states import AttachmentState
from tests.helpers import CliResult

# What the user met: a PDF header, then nothing any parser can make sense of.
RANDOM_PDF = b"%PDF-1.7\n" + random.Random(17).randbytes(20_000)


def _single_pdf(sandbox: SandboxServer) -> tuple[SandboxCandidate, list[SandboxCandidate]]:
    """A candidate whose only attachment is a PDF CV, and two others."""
    ordered = sandbox.world.ordered()
    lone = next(c for c in ordered if len(c.attachments) == 1 and c.attachments[0].kind == "pdf")
    return lone, [c for c in ordered if c is not lone][:2]


def _records(cli) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    result = cli("export", "--status", "all")
    assert result.code == 0, result.err
    return {r["attachment_id"]: r for r in map(json.loads, result.out.splitlines())}


def _summary(result: CliResult) -> str:
    return result.out.strip().splitlines()[-1]


def test_a_corrupt_pdf_ends_unreadable_and_no_later_run_fails_or_fetches_it(
    cli, sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    corrupt, others = _single_pdf(sandbox)
    attachment = corrupt.attachments[0]
    sandbox.add_fault(kind="replace", match=attachment.id, body=RANDOM_PDF, times=None)

    first = cli("ingest", corrupt.id, env=sandbox.env())
    assert first.code == 0, first.out + first.err
    line = _summary(first)
    assert line.startswith("ingest succeeded: 1 candidates (0 failed)"), line
    assert "0 failed" in line and "1 unreadable (" in line, line
    record = _records(cli)[attachment.id]
    assert record["status"] == "unreadable"
    assert record["error"].startswith("unreadable: ") and record["parser"] == "pypdf"
    validator("export_record.schema.json").validate(record)

    # Another candidate's run: exit 0, and the corrupt file is neither fetched nor parsed.
    files_before = sandbox.stats.requests["file"]
    second = cli("ingest", *(c.id for c in others), env=sandbox.env())
    assert second.code == 0, second.out + second.err
    assert sandbox.stats.requests["file"] - files_before == sum(len(c.attachments) for c in others)
    # Its own candidate again, unchanged at Kombo: nothing to fetch, still exit 0.
    files_before = sandbox.stats.requests["file"]
    third = cli("ingest", corrupt.id, env=sandbox.env())
    assert third.code == 0, third.out + third.err
    assert sandbox.stats.requests["file"] == files_before
    assert "1 unchanged" in _summary(third)


def test_a_new_version_at_kombo_or_of_the_parser_reads_it_again(
    cli, sandbox: SandboxServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    corrupt, _ = _single_pdf(sandbox)
    attachment = corrupt.attachments[0]
    fault = sandbox.add_fault(kind="replace", match=attachment.id, body=RANDOM_PDF, times=None)
    assert cli("ingest", corrupt.id, env=sandbox.env()).code == 0
    sandbox.state.clear_faults()
    del fault

    # The record says an older pypdf failed (as a database from before an upgrade would).
    db = sqlite3.connect(tmp_path / "data" / "pipeline.db")
    with db:
        db.execute("UPDATE attachments SET parser_version = '0.1' WHERE id = ?", (attachment.id,))
    db.close()
    files_before = sandbox.stats.requests["file"]
    again = cli("ingest", corrupt.id, env=sandbox.env())
    assert again.code == 0, again.out + again.err
    assert sandbox.stats.requests["file"] == files_before + 1
    assert _records(cli)[attachment.id]["status"] == "indexed"  # the real file, this time


def test_three_timeouts_on_the_same_bytes_make_it_unreadable(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    lone, _ = _single_pdf(sandbox)
    attachment = lone.attachments[0]
    slow = ("--extract-timeout", "0.01")
    for run in (1, 2):
        result = cli("ingest", *slow, lone.id, env=sandbox.env())
        assert result.code == 1, (run, result.out)  # a timeout may pass: failed, retried
        assert _records(cli)[attachment.id]["status"] == "failed"
    third = cli("ingest", *slow, lone.id, env=sandbox.env())
    assert third.code == 0, third.out + third.err
    assert "1 unreadable (timeout 3 times on these bytes)" in _summary(third)
    record = _records(cli)[attachment.id]
    assert record["status"] == "unreadable"
    assert record["parser"] == "pypdf" and record["parser_version"]  # who gave up, on record


def test_existing_failed_rows_that_could_not_be_read_become_unreadable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    store.create()
    reasons = {
        "att-corrupt": "unreadable: PdfStreamError: Stream has ended unexpectedly",
        "att-zip": "broken container: File is not a zip file",
        "att-timeout": "timeout",
        "att-network": "download failed: connection reset",
    }
    db = sqlite3.connect(tmp_path / "old.db")
    with db:
        db.execute(
            "INSERT INTO candidates (id, integration_id, first_seen_at) "
            "VALUES ('cand-1', 'int-1', '2026-05-01 10:00:00.000000')"
        )
        for attachment_id in reasons:
            db.execute(
                "INSERT INTO attachments (id, integration_id, candidate_id, type, status) "
                "VALUES (?, 'int-1', 'cand-1', 'CV', 'pending')",
                (attachment_id,),
            )
    db.close()
    for attachment_id, error in reasons.items():
        store.save_outcome(attachment_id, Outcome(AttachmentState.FAILED, error))
    store.set_setting("schema_version", "1")  # as a database from before this step

    assert store.ensure_schema()
    statuses = store.counts_by_status()
    assert statuses == {"unreadable": 2, "failed": 2}
    store.create()  # the step runs on every create(): a second time changes nothing
    assert store.counts_by_status() == statuses
    store.close()
