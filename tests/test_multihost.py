"""Two machines, one PostgreSQL database: two ``nightly --all`` processes, each with its own
data directory, over several integrations at once. Each integration is claimed in
PostgreSQL by one of them and run once; the records are exactly those of the sandbox; an
erasure made from one machine is seen from the other, and reaches its own files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pipeline.config import DataSettings
from pipeline.sandbox.generator import World

pytestmark = pytest.mark.postgres

OTHERS = (
    "greenhouse:Mh1Second000000000000",
    "lever:Mh2Third00000000000000",
    "workable:Mh3Fourth0000000000000",
)
# Each API call a little slow, so that the two processes' work overlaps for certain.
LATENCY = 0.02


def _start(data_dir: Path, url: str, sandbox, *args: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PIPELINE_DATA_DIR": str(data_dir),
        "PIPELINE_DATABASE_URL": url,
        "PIPELINE_RETRY_BASE_DELAY": "0.01",
        **sandbox.env(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out, err


def _on(cli, machine: Path, url: str, *args: str, env: dict[str, str] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A command on one machine (in-process: only the two nightly runs need processes)."""
    env = {**(env or {}), "PIPELINE_DATA_DIR": str(machine), "PIPELINE_DATABASE_URL": url}
    done = cli(*args, env=env)
    assert done.code == 0, done.out + done.err
    return str(done.out)


def _export(cli, machine: Path, url: str, iid: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    out = _on(cli, machine, url, "export", "--status", "all", "--integration-id", iid)
    return sorted(
        (json.loads(line) for line in out.splitlines()), key=lambda r: str(r["attachment_id"])
    )


def _files(data_dir: Path, iid: str) -> set[str]:
    folder = DataSettings(data_dir=data_dir, database_url="").integration(iid).files_dir
    return {p.name for p in folder.rglob("*") if p.is_file() and len(p.name) == 64}


def test_two_machines_share_the_integrations_and_see_each_others_erasures(  # type: ignore[no-untyped-def]
    cli, sandbox, world_template, postgres_url: str, tmp_path: Path
) -> None:
    sandbox.state.latency = LATENCY
    for iid in OTHERS:
        twin = World(candidates=len(sandbox.world.candidates), seed=7)
        twin._bodies = dict(world_template._bodies)  # identical customers: renders reused
        sandbox.add_integration(iid, twin, latency=LATENCY)
    every = [sandbox.integration_id, *OTHERS]
    for iid in every:
        assert (
            cli("integrations", "add", iid, env={"PIPELINE_DATABASE_URL": postgres_url}).code == 0
        )
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]

    # Both at once, each trying every integration (two at a time each).
    started = [_start(m, postgres_url, sandbox, "nightly", "--all") for m in machines]
    finished = [_finish(p) for p in started]
    for code, out, err in finished:
        assert code == 0, out + err
        assert out.splitlines()[-1].startswith("nightly --all succeeded"), out

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                text("SELECT integration_id, status, host, pid FROM runs WHERE kind = 'nightly'")
            ).all()
    finally:
        engine.dispose()
    # Every integration run exactly once, by one machine or the other; none left running.
    assert sorted(r.integration_id for r in runs) == sorted(every)
    assert {r.status for r in runs} == {"succeeded"}
    assert all(r.host and r.pid for r in runs)
    pids = {p.pid: m for p, m in zip(started, machines, strict=True)}
    ran_by = {r.integration_id: pids[r.pid] for r in runs}
    # What one ran, the other skipped (its claim was taken, or its run already done).
    for (_, out, _), machine in zip(finished, machines, strict=True):
        for iid in every:
            line = next(x for x in out.splitlines() if x.startswith(iid))
            assert line.startswith(f"{iid}: skipped: ") is (ran_by[iid] != machine), out

    # Exactly the sandbox's records, the same from either machine, no text lost.
    expected = set(sandbox.world.candidates)
    reference = None
    for iid in every:
        seen = [_export(cli, m, postgres_url, iid) for m in machines]
        assert seen[0] == seen[1]
        records = seen[0]
        assert {r["candidate_id"] for r in records} == expected
        assert {r["integration_id"] for r in records} == {iid}
        indexed = [r for r in records if r["status"] == "indexed"]
        assert indexed and all(str(r["text"]).strip() for r in indexed)
        # Identical customers, identical records (but for when each was fetched).
        same = [
            {k: v for k, v in r.items() if k != "integration_id" and not k.endswith("ed_at")}
            | {"remote": (r["remote_created_at"], r["remote_updated_at"])}
            for r in records
        ]
        assert reference is None or same == reference
        reference = same
        # The machine that ran it holds its files; the other holds none (a local cache).
        holder = ran_by[iid]
        other = next(m for m in machines if m != holder)
        assert {r["sha256"] for r in indexed} <= _files(holder, iid)
        assert not _files(other, iid)

    # A rebuild on the machine that lacks an integration's files takes that for the cache
    # it is: no candidate is marked to be fetched again.
    lacking = next(m for m in machines if m != ran_by[OTHERS[1]])
    _on(cli, lacking, postgres_url, "reindex", "--integration-id", OTHERS[1])
    status = _on(cli, lacking, postgres_url, "status", "--json", "--integration-id", OTHERS[1])
    assert "went missing" not in status

    # A forget on one machine is seen from the other: not found, not exported ...
    iid = OTHERS[0]
    holder = ran_by[iid]
    other = next(m for m in machines if m != holder)
    records = _export(cli, holder, postgres_url, iid)
    cv = next(r for r in records if r["status"] == "indexed")
    someone, words = str(cv["candidate_id"]), " ".join(str(cv["text"]).split()[:3])

    def found_from(machine: Path) -> list[object]:
        args = ("search", words, "--candidate", someone, "--json", "--integration-id", iid)
        return list(json.loads(_on(cli, machine, postgres_url, *args))["hits"])

    assert found_from(holder) and found_from(other)
    _on(cli, other, postgres_url, "forget", someone, "--integration-id", iid)
    assert not found_from(holder) and not found_from(other)
    for machine in machines:
        assert someone not in {r["candidate_id"] for r in _export(cli, machine, postgres_url, iid)}
    # ... and the machine that did not erase drops its own copy of the files at its next
    # writing command (here a run that finds nothing new).
    theirs = {str(r["sha256"]) for r in records if r["candidate_id"] == someone and r["sha256"]}
    kept = {str(r["sha256"]) for r in records if r["candidate_id"] != someone and r["sha256"]}
    assert theirs - kept <= _files(holder, iid)
    kombo = {**sandbox.env(), "KOMBO_INTEGRATION_ID": iid}
    _on(cli, holder, postgres_url, "nightly", env=kombo)
    assert not (theirs - kept) & _files(holder, iid)

    # Files are a cache: the other machine, asked for a full run, fetches what it lacks.
    _on(cli, other, postgres_url, "nightly", "--full", env=kombo)
    again = _export(cli, other, postgres_url, iid)
    # Kombo still has the candidate forgotten: a full listing brings it back.
    assert {r["candidate_id"] for r in again} == expected
    assert {str(r["sha256"]) for r in again if r["status"] == "indexed"} <= _files(other, iid)


def test_an_erasure_reaches_another_machines_whoosh_index(  # type: ignore[no-untyped-def]
    cli, sandbox, postgres_url: str, tmp_path: Path
) -> None:
    """With PIPELINE_SEARCH=whoosh each machine keeps an index of its own: an erasure made on
    one is hidden from the other's searches at once, and leaves its index at its next
    writing command."""
    from pipeline.search import SearchIndex

    whoosh = {"PIPELINE_SEARCH": "whoosh"}
    ran, erasing = tmp_path / "machine-a", tmp_path / "machine-b"
    _on(cli, ran, postgres_url, "nightly", env={**sandbox.env(), **whoosh})
    records = _export(cli, ran, postgres_url, sandbox.integration_id)
    cv = next(r for r in records if r["status"] == "indexed" and r["type"] == "CV")
    someone, words = str(cv["candidate_id"]), " ".join(str(cv["text"]).split()[:3])
    theirs = {str(r["attachment_id"]) for r in records if r["candidate_id"] == someone}
    index_dir = (
        DataSettings(data_dir=ran, database_url="").integration(sandbox.integration_id).index_dir
    )

    def hits() -> list[object]:
        args = ("search", words, "--candidate", someone, "--json")
        return list(json.loads(_on(cli, ran, postgres_url, *args, env=whoosh))["hits"])

    assert hits()
    _on(cli, erasing, postgres_url, "forget", someone, env=whoosh)
    assert theirs & SearchIndex(index_dir).attachment_ids()  # not applied there yet ...
    assert not hits()  # ... but not found there either
    # Its next writing command (a nightly run that finds nothing new) applies it.
    _on(cli, ran, postgres_url, "nightly", env={**sandbox.env(), **whoosh})
    assert not theirs & SearchIndex(index_dir).attachment_ids()
    assert not hits()

    # The integration removed on one machine: the other's folder of it (index, files) goes
    # at its next `nightly --all` (which then finds none registered).
    folder = index_dir.parent
    assert folder.exists()
    _on(cli, erasing, postgres_url, "integrations", "remove", sandbox.integration_id, "--yes")
    machine = {"PIPELINE_DATA_DIR": str(ran), "PIPELINE_DATABASE_URL": postgres_url}
    assert cli("nightly", "--all", env={**sandbox.env(), **whoosh, **machine}).code == 2
    assert not folder.exists()
