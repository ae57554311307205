"""A real pipeline process killed mid-run, and interrupted with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from tests.helpers import integration_root

CANDIDATES = 40


def _start(
    server: SandboxServer, data_dir: Path, ids_file: Path, *extra: str
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **server.env(),
        "PIPELINE_DATA_DIR": str(data_dir),
        "PIPELINE_RETRY_BASE_DELAY": "0.01",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", "--ids-file", str(ids_file), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _processed(db_path: Path) -> int:
    """Attachments extracted so far (-1 before the database exists)."""
    if not db_path.exists():
        return -1
    try:
        with sqlite3.connect(db_path, timeout=5) as db:
            return db.execute(
                "select count(*) from attachments where extracted_at is not null"
            ).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return -1


def _wait_until(predicate, process: subprocess.Popen[str], limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        assert process.poll() is None, "the run ended before the moment to stop it"
        assert time.monotonic() < deadline, "the run never reached the moment to stop it"
        time.sleep(0.02)


def _state(cli) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    result = cli("export", "--status", "all")
    assert result.code == 0, result.err
    return {
        r["attachment_id"]: (r["status"], r["sha256"], r["text"], r["page_count"])
        for r in map(json.loads, result.out.splitlines())
    }


@pytest.fixture
def slow_sandbox():  # type: ignore[no-untyped-def]
    world = World(candidates=CANDIDATES, seed=21)
    with SandboxServer(world, latency=0.05, download_latency=0.1) as server:
        yield server


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.6])
def test_a_killed_run_is_finished_by_the_next(
    cli,
    slow_sandbox,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch,
    fraction: float,
) -> None:
    moment = int(fraction * len(slow_sandbox.world.attachments))
    ids = [c.id for c in slow_sandbox.world.ordered()]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids))
    data_dir = tmp_path / "data"
    db_path = data_dir / "pipeline.db"

    process = _start(slow_sandbox, data_dir, ids_file, "--concurrency", "2")
    _wait_until(lambda: _processed(db_path) >= moment, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL

    again = cli("ingest", "--ids-file", str(ids_file), env=slow_sandbox.env())
    assert again.code == 0, again.err
    resumed = _state(cli)

    # The same candidates ingested by one clean run, elsewhere.
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "clean"))
    assert cli("ingest", "--ids-file", str(ids_file), env=slow_sandbox.env()).code == 0
    clean = _state(cli)

    assert resumed == clean
    assert all(status != "pending" for status, *_ in resumed.values())
    assert not any((integration_root(data_dir) / "files" / "tmp").iterdir())
    with sqlite3.connect(db_path) as db:
        statuses = [s for (s,) in db.execute("select status from runs order by id")]
    assert statuses[-1] == "succeeded"
    assert moment == 0 or statuses[0] == "killed"
    assert "succeeded" not in statuses[:-1]
    # Nothing duplicated in search either.
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir))
    skill = "Python"
    hits = json.loads(cli("search", skill, "--json", "--limit", "1000").out)["hits"]
    assert {h["candidate_id"] for h in hits} == slow_sandbox.world.with_skill(skill)
    assert len({h["attachment_id"] for h in hits}) == len(hits)


def test_ctrl_c_stops_promptly_and_records_the_run(slow_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slow_sandbox.state.latency = 0.5
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(c.id for c in slow_sandbox.world.ordered()))
    data_dir = tmp_path / "data"
    process = _start(slow_sandbox, data_dir, ids_file, "--concurrency", "2")
    _wait_until(lambda: _processed(data_dir / "pipeline.db") >= 1, process)
    interrupted_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert time.monotonic() - interrupted_at < 5
    assert process.returncode == 130, err
    assert out.strip().splitlines()[-1].startswith("ingest interrupted")
    with sqlite3.connect(data_dir / "pipeline.db") as db:
        (status,) = db.execute("select status from runs order by id desc").fetchone()
    assert status == "interrupted"
