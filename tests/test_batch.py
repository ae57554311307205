"""The batch side an operator leaves alone: nightly runs, erasure, status, consistency."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.lock import WriterLock
from pipeline.sandbox.server import SandboxServer
from tests.helpers import integration_root


def _records(cli) -> list[dict]:  # type: ignore[no-untyped-def]
    result = cli("export", "--status", "all")
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def _hits(cli, query: str, *extra: str) -> list[dict]:  # type: ignore[no-untyped-def]
    result = cli("search", query, "--json", "--limit", "1000", *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)["hits"]


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_nightly_ingests_changes_and_erases_deletions(
    cli,
    sandbox: SandboxServer,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    world = sandbox.world
    first = cli("nightly", env=sandbox.env())
    assert first.code == 0, first.err
    assert first.out.splitlines()[-1].startswith(f"nightly succeeded: {len(world.candidates)} ")
    assert {r["candidate_id"] for r in _records(cli)} == set(world.candidates)

    # At Kombo: two candidates change, one is deleted, one is new.
    now = datetime.now(UTC) + timedelta(seconds=1)
    changed, gone = world.ordered()[1], world.ordered()[2]
    also_changed = world.ordered()[3]
    world.touch(changed.id, now)
    world.touch(also_changed.id, now)
    world.delete(gone.id, now)
    newcomer = world.add_candidate(at=now)
    gone_email = gone.email.encode()
    actions_before = sandbox.stats.requests.get("action", 0)

    second = cli("nightly", env=sandbox.env())
    assert second.code == 0, second.err
    assert "1 candidates erased" in second.out.splitlines()[-1]
    # Only what changed was asked for: two changed candidates and the newcomer.
    assert sandbox.stats.requests["action"] - actions_before == 3

    records = _records(cli)
    assert {r["candidate_id"] for r in records} == set(world.candidates) - {gone.id}
    new_skill = changed.skills[-1]
    assert changed.id in {h["candidate_id"] for h in _hits(cli, new_skill)}
    assert newcomer.id in {h["candidate_id"] for h in _hits(cli, newcomer.skills[0])}
    assert not _hits(cli, gone.skills[0], "--candidate", gone.id)
    data = tmp_path / "data"
    assert gone_email not in _all_bytes(integration_root(data) / "index")
    assert gone_email not in (data / "pipeline.db").read_bytes()

    status = json.loads(cli("status", "--json").out)
    assert [r["kind"] for r in status["runs"][:2]] == ["nightly", "nightly"]
    assert status["nightly_watermark"]
    assert status["erasures"] == 1


def test_nightly_keeps_its_mark_when_a_run_is_aborted(
    cli, sandbox: SandboxServer, on_each_database
) -> None:  # type: ignore[no-untyped-def]
    assert cli("nightly", env=sandbox.env()).code == 0
    mark = json.loads(cli("status", "--json").out)["nightly_watermark"]
    aborted = cli("nightly", env={**sandbox.env(), "KOMBO_API_KEY": "wrong"})
    assert aborted.code == 2
    assert "PLATFORM.AUTHENTICATION_INVALID" in aborted.err
    assert json.loads(cli("status", "--json").out)["nightly_watermark"] == mark


def test_nightly_full_and_ids_file(
    cli, sandbox: SandboxServer, tmp_path: Path, on_each_database
) -> None:  # type: ignore[no-untyped-def]
    ids = [c.id for c in sandbox.world.ordered()][:3]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids))
    given = cli("nightly", "--ids-file", str(ids_file), env=sandbox.env())
    assert given.code == 0, given.err
    assert {r["candidate_id"] for r in _records(cli)} == set(ids)
    assert sandbox.stats.requests.get("list", 0) == 0  # no listing with --ids-file
    full = cli("nightly", "--full", env=sandbox.env())
    assert full.code == 0
    assert {r["candidate_id"] for r in _records(cli)} == set(sandbox.world.candidates)


def test_one_writer_at_a_time(cli, sandbox: SandboxServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    held = WriterLock(integration_root(data, sandbox.integration_id)).__enter__()
    try:
        refused = cli("nightly", env=sandbox.env())
        assert refused.code == 2
        assert "another pipeline run" in refused.err and "--wait" in refused.err
    finally:
        held.__exit__(None, None, None)
    held = WriterLock(integration_root(data, sandbox.integration_id)).__enter__()
    release = threading.Timer(0.5, held.__exit__, (None, None, None))
    release.start()
    waited = cli("nightly", "--wait", env=sandbox.env())
    release.join()
    assert waited.code == 0, waited.err


def test_forget_leaves_no_trace(cli, sandbox: SandboxServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = sandbox.world
    assert cli("ingest", *world.candidates, env=sandbox.env()).code == 0
    # Two candidates with the same photo: erasing one keeps the other's file.
    with_photo = [c for c in world.ordered() if any(a.kind == "png" for a in c.attachments)]
    victim = with_photo[0] if len(with_photo) > 1 else world.ordered()[0]
    victim_files = {r["sha256"] for r in _records(cli) if r["candidate_id"] == victim.id}
    others = {r["sha256"] for r in _records(cli) if r["candidate_id"] != victim.id}
    email = victim.email.encode()
    data = tmp_path / "data"
    assert email in (data / "pipeline.db").read_bytes()

    result = cli("forget", victim.id, "UnknownCandidate12345678")
    assert result.code == 0, result.err
    assert result.out.strip() == "forget succeeded: 1 of 2 candidates erased (1 were not on record)"
    assert not [r for r in _records(cli) if r["candidate_id"] == victim.id]
    for skill in victim.skills:
        assert victim.id not in {h["candidate_id"] for h in _hits(cli, skill)}
    stored = {p.name for p in (integration_root(data) / "files").rglob("*") if p.is_file()}
    assert not (victim_files - others) & stored
    assert (victim_files & others) <= stored  # shared bytes stay for the other candidate
    assert email not in (data / "pipeline.db").read_bytes()
    assert email not in _all_bytes(integration_root(data) / "index")
    wal = data / "pipeline.db-wal"
    assert not wal.exists() or email not in wal.read_bytes()
    with sqlite3.connect(data / "pipeline.db") as db:
        rows = db.execute("select candidate_id, reason, attachments from erasures").fetchall()
    assert rows == [(victim.id, "forget", len(victim.attachments))]
    assert cli("check").code == 0


def test_purge_erases_candidates_not_seen_for_n_days(
    cli,
    sandbox: SandboxServer,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    ids = [c.id for c in sandbox.world.ordered()][:3]
    assert cli("ingest", *ids, env=sandbox.env()).code == 0
    old = (datetime.now(UTC) - timedelta(days=40)).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(tmp_path / "data" / "pipeline.db") as db:
        db.execute("update candidates set last_seen_at = ? where id = ?", (old, ids[0]))
    result = cli("purge", "--not-seen-days", "30")
    assert result.code == 0
    assert result.out.startswith("purge succeeded: 1 candidates")
    assert {r["candidate_id"] for r in _records(cli)} == set(ids[1:])


def test_check_finds_drift_and_reindex_repairs_it(
    cli,
    sandbox: SandboxServer,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    import shutil

    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    clean = cli("check")
    assert clean.code == 0 and "no drift" in clean.out
    data = tmp_path / "data"
    shutil.rmtree(integration_root(data) / "index")
    orphan = integration_root(data) / "files" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left behind")
    drift = cli("check")
    assert drift.code == 1
    assert "missing from the index" in drift.out and "stored files nothing refers to" in drift.out
    assert cli("reindex").code == 0
    assert cli("check").code == 0
    assert not orphan.exists()


def test_status_shows_runs_and_states(cli, sandbox: SandboxServer, on_each_database) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    result = cli("status")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].startswith("attachments: ") and "indexed" in lines[0]
    assert any(line.startswith("run    1 ingest   succeeded") for line in lines)


def test_candidate_title_from_kombo_is_searched(
    cli, sandbox: SandboxServer, on_each_database
) -> None:  # type: ignore[no-untyped-def]
    candidate = sandbox.world.ordered()[0]
    for attachment in candidate.attachments:
        sandbox.world.body(attachment.id)  # documents written with the old title
    candidate.title = "Quantenphysikerin"  # only Kombo's candidate record says so
    assert cli("nightly", env=sandbox.env()).code == 0
    hits = _hits(cli, "quantenphysikerin")
    assert hits and {h["candidate_id"] for h in hits} == {candidate.id}
    assert b"Quantenphysikerin" not in b"".join(
        sandbox.world.body(a.id) for a in candidate.attachments
    )


def test_an_index_that_refuses_writes_leaves_documents_pending_and_reindex_repairs_it(
    cli,
    sandbox: SandboxServer,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from whoosh import fields, index

    # An index from another build, whose schema has none of the fields a run writes.
    folder = integration_root(tmp_path / "data", sandbox.integration_id) / "index"
    folder.mkdir(parents=True)
    index.create_in(str(folder), fields.Schema(other=fields.ID()), indexname="attachments")
    result = cli("ingest", *sandbox.world.candidates, env=sandbox.env())
    assert result.code == 1, result.err
    assert "writing the search index failed" in result.err
    assert "stay pending" in result.err
    pending = [r for r in _records(cli) if r["status"] == "pending"]
    assert pending, "the texts wait for the index, none is lost"
    assert cli("search", "Python").code == 2  # the old index asks for a reindex
    assert cli("reindex").code == 0
    assert not [r for r in _records(cli) if r["status"] == "pending"]
    assert _hits(cli, "Python")
