"""Production-grade fetch and download, proved through the sandbox's fault knobs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import KomboSettings
from pipeline.errors import INTEGRATION_WIDE_CODES, RETRYABLE_CODES
from pipeline.fetch import KomboClient
from pipeline.sandbox.generator import EPOCH, World
from pipeline.sandbox.server import SandboxServer
from tests.helpers import integration_root

# Each code with the status Kombo answers it with (setup errors: 409, auth: 401/403).
_STATUS = {
    "PLATFORM.AUTHENTICATION_INVALID": 401,
    "PLATFORM.INTEGRATION_NOT_FOUND": 404,
    "PLATFORM.IP_NOT_WHITELISTED": 403,
    "INTEGRATION.AUTHENTICATION_INVALID": 401,
    "INTEGRATION.PERMISSION_MISSING": 403,
    "INTEGRATION.INACTIVE": 403,
    "INTEGRATION.SETUP_SYNC_PENDING": 409,
    "INTEGRATION.SETUP_INCOMPLETE": 409,
    "INTEGRATION.QA_FAILED": 409,
    "INTEGRATION.MODEL_NOT_AVAILABLE": 400,
    "INTEGRATION.MODEL_DISABLED": 400,
    "INTEGRATION.ACTION_NOT_AVAILABLE": 400,
    "INTEGRATION.ACTION_DISABLED": 400,
}


def _ids(sandbox: SandboxServer) -> list[str]:
    return [c.id for c in sandbox.world.ordered()]


def _records(cli) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    result = cli("export", "--status", "all")
    assert result.code == 0, result.err
    return {r["attachment_id"]: r for r in map(json.loads, result.out.splitlines())}


@pytest.mark.parametrize("code", sorted(INTEGRATION_WIDE_CODES))
def test_integration_wide_codes_stop_the_run_with_exit_2(cli, sandbox, code: str) -> None:  # type: ignore[no-untyped-def]
    assert code in _STATUS
    sandbox.add_fault(kind="error", status=_STATUS[code], code=code, times=None)
    result = cli("ingest", "--concurrency", "2", *_ids(sandbox), env=sandbox.env())
    assert result.code == 2
    assert code in result.err
    assert result.err.count("pipeline: error:") == 1
    assert result.out.strip().splitlines()[-1].startswith("ingest aborted")
    # Nothing half-written: no attachment rows at all, and the run is on record as aborted.
    assert _records(cli) == {}


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
def test_a_run_rides_out_each_retryable_code(cli, sandbox, code: str) -> None:  # type: ignore[no-untyped-def]
    status = 503 if code.endswith("SERVICE_UNAVAILABLE") else 429
    sandbox.add_fault(kind="error", status=status, code=code, times=5)
    result = cli("ingest", *_ids(sandbox), env=sandbox.env())
    assert result.code == 0, result.err
    assert all(r["status"] in ("indexed", "no_text") for r in _records(cli).values())


def test_a_server_slower_than_the_timeout_is_retried(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="slow", seconds=1.5, times=1)
    candidate = _ids(sandbox)[0]
    with KomboClient(replace(settings, read_timeout=0.3)) as client:
        listing = client.candidate_attachments(candidate)
    assert listing.attachments
    assert client.calls == 2


def test_timeout_flag_reaches_the_client(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox.add_fault(kind="slow", seconds=1.5, times=1)
    result = cli("ingest", "--timeout", "0.3", _ids(sandbox)[0], env=sandbox.env())
    assert result.code == 0, result.err
    assert sandbox.stats.requests["action"] == 2


def test_many_candidates_never_exceed_the_concurrency_limit(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = World(candidates=60, seed=11)
    with SandboxServer(world, latency=0.05, concurrency_limit=30) as server:
        result = cli("ingest", *[c.id for c in world.ordered()], env=server.env())
        assert result.code == 0, result.err
        assert server.stats.refused_concurrency == 0
        assert 1 < server.stats.max_in_flight <= 30


def test_a_lower_server_limit_is_learned_and_the_run_finishes(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = World(candidates=40, seed=12)
    with SandboxServer(world, latency=0.05, concurrency_limit=4) as server:
        result = cli("ingest", *[c.id for c in world.ordered()], env=server.env())
        assert result.code == 0, result.err
        # The headers tell the client the limit after its first answers: few refusals.
        assert server.stats.max_in_flight <= 4
        assert server.stats.refused_concurrency < 30


def test_a_limit_shared_with_another_client_is_held_not_overrun(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Another client of the integration keeps 20 actions running: 10 remain for us, and the
    # answers say so only through Concurrency-Remaining.
    world = World(candidates=60, seed=13)
    with SandboxServer(world, latency=0.05, concurrency_limit=30, others_in_flight=20) as server:
        result = cli("ingest", *[c.id for c in world.ordered()], env=server.env())
        assert result.code == 0, result.err
        assert server.stats.max_in_flight <= 10
        # A few refusals while the client learns the room left (2-16 in sixteen runs: how
        # many calls are out before the first refusal comes back is a matter of timing), not
        # one per candidate.
        assert server.stats.refused_concurrency < 30


def test_downloads_follow_redirects_without_carrying_credentials(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    # A second server stands in for another origin (the file host after a redirect).
    other_world = World(candidates=len(sandbox.world.candidates), seed=7)
    with SandboxServer(other_world) as other:
        sandbox.add_fault(kind="redirect", location=other.origin, times=None)
        result = cli("ingest", *_ids(sandbox), env=sandbox.env())
        assert result.code == 0, result.err
        assert other.stats.file_requests > 0
        assert other.stats.auth_headers_on_files == 0
    assert sandbox.stats.auth_headers_on_files == 0


def test_a_file_over_the_cap_ends_too_large_with_nothing_on_disk(
    cli, sandbox, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", "--max-file-mb", "0.003", *_ids(sandbox), env=sandbox.env())
    assert result.code == 0, result.err  # too_large is a final state, not a failure
    records = _records(cli)
    big = [r for r in records.values() if r["status"] == "too_large"]
    assert big and all(r["sha256"] is None and r["error"] for r in big)
    stored = {
        p.name for p in (integration_root(tmp_path / "data") / "files").rglob("*") if p.is_file()
    }
    assert stored == {r["sha256"] for r in records.values() if r["sha256"]}
    assert not list((integration_root(tmp_path / "data") / "files" / "tmp").iterdir())


def test_truncated_downloads_are_retried_then_fail(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    attachments = [a for a in sandbox.world.attachments.values() if a.kind == "pdf"]
    once, always = attachments[0], attachments[1]
    sandbox.add_fault(kind="truncate", match=once.id, times=1)
    sandbox.add_fault(kind="truncate", match=always.id, times=None)
    result = cli("ingest", *_ids(sandbox), env=sandbox.env())
    assert result.code == 1
    records = _records(cli)
    assert records[once.id]["status"] == "indexed"
    assert records[always.id]["status"] == "failed"
    assert "bytes" in records[always.id]["error"] or "cut off" in records[always.id]["error"]


def test_an_expired_link_is_renewed_once(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    victim = next(a for a in sandbox.world.attachments.values() if a.type == "CV")
    sandbox.add_fault(kind="expired", match=victim.id, times=1)
    result = cli("ingest", victim.candidate_id, env=sandbox.env())
    assert result.code == 0, result.err
    assert _records(cli)[victim.id]["status"] == "indexed"
    assert sandbox.stats.requests["action"] == 2  # the listing, then one fresh link


def test_a_link_that_stays_expired_fails_after_one_renewal(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    victim = next(a for a in sandbox.world.attachments.values() if a.type == "CV")
    sandbox.add_fault(kind="expired", match=victim.id, times=None)
    result = cli("ingest", victim.candidate_id, env=sandbox.env())
    assert result.code == 1
    assert _records(cli)[victim.id]["status"] == "failed"
    assert sandbox.stats.requests["action"] == 2


def test_unchanged_attachments_are_not_downloaded_again(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *_ids(sandbox), env=sandbox.env()).code == 0
    downloads = sandbox.stats.file_requests
    second = cli("ingest", *_ids(sandbox), env=sandbox.env())
    assert second.code == 0
    assert sandbox.stats.file_requests == downloads
    assert f"{len(sandbox.world.attachments)} unchanged" in second.out.splitlines()[-1]


def test_a_changed_cv_is_fetched_again_and_the_old_file_removed(
    cli, sandbox, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    assert cli("ingest", *_ids(sandbox), env=sandbox.env()).code == 0
    candidate = sandbox.world.ordered()[1]
    cv = next(a for a in candidate.attachments if a.type == "CV" and not a.same_as)
    old_sha = _records(cli)[cv.id]["sha256"]
    sandbox.world.touch(candidate.id, EPOCH + timedelta(days=30))
    new_skill = candidate.skills[-1]
    assert cli("ingest", candidate.id, env=sandbox.env()).code == 0
    record = _records(cli)[cv.id]
    assert record["sha256"] != old_sha
    assert new_skill in record["text"]
    files = {
        p.name for p in (integration_root(tmp_path / "data") / "files").rglob("*") if p.is_file()
    }
    assert old_sha not in files and record["sha256"] in files
    hits = json.loads(cli("search", new_skill, "--candidate", candidate.id, "--json").out)
    assert cv.id in {h["attachment_id"] for h in hits["hits"]}


def test_identical_bytes_are_parsed_once_and_indexed_once(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    assert cli("ingest", *_ids(sandbox), env=sandbox.env()).code == 0
    copies = [a for a in sandbox.world.attachments.values() if a.same_as]
    assert copies
    records = _records(cli)
    for copy in copies:
        assert records[copy.id]["status"] == "indexed"
        assert records[copy.id]["sha256"] == records[copy.same_as]["sha256"]
        hits = json.loads(
            cli(
                "search",
                sandbox.world.candidates[copy.candidate_id].skills[0],
                "--candidate",
                copy.candidate_id,
                "--type",
                "CV",
                "--json",
            ).out
        )
        assert hits["total"] == 1  # one CV, not two
    db = sqlite3.connect(tmp_path / "data" / "pipeline.db")
    counts = json.loads(db.execute("select counts from runs order by id desc").fetchone()[0])
    assert counts["reused"] >= len(copies)


def test_application_attachments(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    candidate = sandbox.world.ordered()[0]
    application = candidate.applications[0]
    unknown = cli("ingest", "--application", application.id, env=sandbox.env())
    assert unknown.code == 1
    assert "its candidate is not known here" in unknown.err
    assert cli("ingest", candidate.id, env=sandbox.env()).code == 0
    result = cli("ingest", "--application", application.id, env=sandbox.env())
    assert result.code == 0, result.err
    assert sandbox.stats.requests["action"] == 2
    records = _records(cli)
    mine = [r for r in records.values() if r["candidate_id"] == candidate.id]
    assert mine and all(r["status"] in ("indexed", "no_text") for r in mine)


def _download_process_of(parent: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"pipeline.download import serve" in command:
            return int(entry.name)
    return None


def test_a_killed_download_process_is_replaced_and_the_run_finishes(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import threading
    import time

    world = World(candidates=12, seed=21)
    with SandboxServer(world, download_latency=0.3) as server:
        killed: list[int] = []

        def kill_after_the_first_downloads() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                pid = _download_process_of(os.getpid())
                if pid is not None and server.stats.file_requests >= 2:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.01)

        killer = threading.Thread(target=kill_after_the_first_downloads)
        killer.start()
        result = cli("ingest", *[c.id for c in world.ordered()], env=server.env())
        killer.join()
        assert killed, "the download process was never seen"
        # The downloads it had in hand went to its successor: nothing failed, nothing is lost.
        assert result.code == 0, result.err
        assert "the download process ended (exit -9): starting another" in result.err
    records = [json.loads(line) for line in cli("export", "--status", "all").out.splitlines()]
    assert len(records) == len(world.attachments)
    assert not [r for r in records if r["status"] in ("pending", "failed")]
