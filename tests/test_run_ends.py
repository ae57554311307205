"""Issue 14's run engine and command line, as a user sees them: a run always ends recorded
(``failed`` or ``interrupted``, never ``running``), a fault is one line with the exit code
that says who must act, SIGTERM and the run budget stop a run as Ctrl-C does, an unreachable
Kombo is told once, and ids Kombo does not know are recorded and left alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.sandbox.server import SandboxServer

UNKNOWN = "UnknownCandidate12345678"


def _ids(sandbox: SandboxServer) -> list[str]:
    return [c.id for c in sandbox.world.ordered()]


def _status(cli) -> dict:  # type: ignore[no-untyped-def]
    result = cli("status", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text


def _pipeline(
    sandbox: SandboxServer, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``python -m pipeline ARGS`` in a process of its own (for signals and os._exit)."""
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))},
        **sandbox.env(),
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_RETRY_BASE_DELAY": "0.01",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


# -- ids that go away (item 7) -------------------------------------------------------------------


def test_an_unknown_id_is_said_recorded_and_not_retried_unless_named(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    first, second = _ids(sandbox)[:2]
    result = cli("ingest", UNKNOWN, first, env=sandbox.env())
    assert result.code == 1
    assert f"candidate {UNKNOWN} is not known at Kombo" in result.err  # default log level
    failed = _status(cli)["failed_candidates"]
    assert [(f["candidate_id"], f["retried_by_next_run"]) for f in failed] == [(UNKNOWN, False)]
    assert "PLATFORM.INPUT_INVALID" in failed[0]["reason"]

    # A later run does not ask for it again, and succeeds.
    asked = sandbox.stats.requests.copy()
    later = cli("ingest", second, env=sandbox.env())
    assert later.code == 0, later.err
    assert later.out.strip().splitlines()[-1].startswith("ingest succeeded: 1 candidates")
    assert UNKNOWN not in later.err
    assert sandbox.stats.requests["action"] - asked["action"] == 1  # the second's listing only

    text = cli("status")
    assert f"{UNKNOWN}: " in text.out and "not retried unless named again" in text.out

    # Named again, it is asked again.
    again = cli("ingest", UNKNOWN, env=sandbox.env())
    assert again.code == 1
    assert UNKNOWN in again.err


def test_status_lists_failed_attachments_with_reasons_and_retry(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    candidate = sandbox.world.ordered()[0]
    victim = candidate.attachments[0]
    sandbox.add_fault(kind="truncate", match=victim.id, times=None)
    assert cli("ingest", candidate.id, env=sandbox.env()).code == 1
    status = _status(cli)
    listed = {f["attachment_id"]: f for f in status["failed_attachments"]}
    assert listed[victim.id]["status"] == "failed"
    assert listed[victim.id]["reason"]
    assert listed[victim.id]["retried_by_next_run"] is True
    assert status["failed_attachments_total"] == 1
    text = cli("status").out
    assert "failed or unfinished attachments: 1" in text and victim.id in text


# -- runs always end (items 1 and 3) -------------------------------------------------------------


def test_an_unreachable_kombo_is_one_line_and_a_failed_run(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = [f"Candidate{n:04d}xyz" for n in range(50)]
    env = {**sandbox.env(), "KOMBO_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1"}
    started = time.monotonic()
    result = cli("ingest", *ids, env=env)
    took = time.monotonic() - started
    assert result.code == 1  # may pass: the network
    _no_traceback(result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("pipeline: error: cannot reach Kombo at 127.0.0.1")
    assert "ConnectError" in lines[0] or "refused" in lines[0].lower()
    assert result.out.strip().splitlines()[-1].startswith("ingest failed")
    assert took < 30
    assert _status(cli)["runs"][0]["status"] == "failed"


def test_nightly_with_an_unreachable_kombo_ends_failed(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    env = {**sandbox.env(), "KOMBO_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1"}
    result = cli("nightly", env=env)
    assert result.code == 1
    _no_traceback(result.err)
    assert result.err.count("pipeline: error:") == 1
    assert "cannot reach Kombo" in result.err
    status = _status(cli)
    assert (status["runs"][0]["kind"], status["runs"][0]["status"]) == ("nightly", "failed")
    assert status["nightly_watermark"] is None  # a stopped run does not move the mark


def test_a_corrupt_database_is_one_line_with_exit_2(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", _ids(sandbox)[0], env=sandbox.env()).code == 0
    database = tmp_path / "data" / "pipeline.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.write_bytes(b"this is not a database at all" * 200)
    for args in (("status",), ("ingest", _ids(sandbox)[1])):
        result = cli(*args, env=sandbox.env())
        assert result.code == 2, (args, result.err)
        _no_traceback(result.err)
        assert result.err.count("\n") == 1, result.err
        assert result.err.startswith("pipeline: error: database")
        assert "pipeline.db" in result.err


def test_the_fatal_line_is_json_under_log_format_json(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    env = {**sandbox.env(), "KOMBO_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1"}
    result = cli("ingest", "--log-format", "json", _ids(sandbox)[0], env=env)
    assert result.code == 1
    lines = [json.loads(line) for line in result.err.strip().splitlines()]
    assert lines[-1]["level"] == "error"
    assert "cannot reach Kombo" in lines[-1]["message"]


def _last_run(tmp_path: Path) -> dict[str, object]:
    """The newest run as ``status --json`` shows it, read by a process of its own."""
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--json"],
        env={**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(status.stdout)["runs"][0]  # type: ignore[no-any-return]


def test_sigterm_stops_a_run_as_ctrl_c_with_143(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sandbox.add_fault(kind="slow", seconds=1.5, times=None)
    process = _pipeline(sandbox, tmp_path, "ingest", "--concurrency", "2", *_ids(sandbox))
    time.sleep(4)  # past the start, inside the listings
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    _no_traceback(err)
    assert out.strip().splitlines()[-1].startswith("ingest interrupted")
    assert _last_run(tmp_path)["status"] == "interrupted"


def test_the_run_budget_stops_a_run_cleanly(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sandbox.add_fault(kind="slow", seconds=1.5, times=None)
    process = _pipeline(
        sandbox,
        tmp_path,
        "ingest",
        "--concurrency",
        "2",
        "--max-run-minutes",
        "0.05",  # 3 s
        *_ids(sandbox),
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    _no_traceback(err)
    assert "run budget of 0.05 minutes (--max-run-minutes) is spent" in err
    assert out.strip().splitlines()[-1].startswith("ingest interrupted")
    run = _last_run(tmp_path)
    assert run["status"] == "interrupted"


# -- the small things (item 8) ------------------------------------------------------------------


def test_log_flags_after_the_command_and_progress_lines(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "ingest",
        "-v",
        *_ids(sandbox)[:3],
        env={**sandbox.env(), "PIPELINE_PROGRESS_SECONDS": "0"},
    )
    assert result.code == 0, result.err
    assert " INFO " in result.err
    assert "progress: " in result.err and "attachments" in result.err
    quiet = cli("status", "-q", "--log-format", "json")
    assert quiet.code == 0 and quiet.err == ""


def test_ids_files_with_a_bom_or_not_utf8(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with_bom = tmp_path / "ids.txt"
    with_bom.write_bytes(("\ufeff" + _ids(sandbox)[0] + "\n").encode())
    result = cli("ingest", "--ids-file", str(with_bom), env=sandbox.env())
    assert result.code == 0, result.err
    assert result.out.strip().splitlines()[-1].startswith("ingest succeeded: 1 candidates")
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"abc\n\xff\xfe\xfa\n")
    bad = cli("ingest", "--ids-file", str(broken), env=sandbox.env())
    assert bad.code == 2
    assert bad.err.strip().splitlines() == [
        f"pipeline: error: --ids-file {broken}: not UTF-8 text (byte 5 cannot be read); "
        "save it as UTF-8"
    ]


def test_api_key_file_and_its_help(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = sandbox.env()
    key = tmp_path / "key"
    key.write_text(env.pop("KOMBO_API_KEY") + "\n")
    result = cli("ingest", "--api-key-file", str(key), _ids(sandbox)[0], env=env)
    assert result.code == 0, result.err
    help_text = " ".join(cli("ingest", "--help").out.split())
    assert "visible to other local users" in help_text and "--api-key-file" in help_text


def test_sandbox_on_a_taken_port_is_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("sandbox", "--port", str(port), "--candidates", "5000")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"pipeline: error: port {port} on 127.0.0.1 is taken: pass another --port "
        "(0 picks a free one)"
    ]


# -- demo and export never touch what is not theirs (item 6) -----------------------------------


def test_demo_keeps_what_it_did_not_make(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "files").mkdir()
    (mine / "files" / "keep.txt").write_text("keep")
    before = os.umask(0o022)  # a shell's usual umask: the demo's files are private anyway
    try:
        result = cli("demo", "--candidates", "4", "--data-dir", str(mine), "--query", "Python")
    finally:
        os.umask(before)
    assert result.code == 0, result.err
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert (mine / "files" / "keep.txt").read_text() == "keep"
    assert (mine / "demo" / ".pipeline-demo").is_file()
    for path in [mine / "demo", *(mine / "demo").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path

    # A demo folder it did not mark is refused, and left as it was.
    other = tmp_path / "other"
    (other / "demo").mkdir(parents=True)
    (other / "demo" / "notes.txt").write_text("mine")
    refused = cli("demo", "--candidates", "4", "--data-dir", str(other))
    assert refused.code == 2
    assert "was not made by demo" in refused.err
    assert (other / "demo" / "notes.txt").read_text() == "mine"


def test_export_writes_a_symlinks_target_and_a_pipe_in_place(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", _ids(sandbox)[0], env=sandbox.env()).code == 0
    target = tmp_path / "target.jsonl"
    target.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert cli("export", "--output", str(link)).code == 0
    assert link.is_symlink()
    assert target.read_text().count("\n") >= 1

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = cli("export", "--output", str(fifo))
    reader.join(timeout=30)
    assert result.code == 0, result.err
    assert fifo.is_fifo()
    assert received and received[0].count(b"\n") >= 1


@pytest.mark.parametrize("value", ["", "1"])
def test_no_color_is_accepted(cli, value: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("status", env={"NO_COLOR": value})
    assert result.code == 0
    assert "\x1b[" not in result.out


def test_a_version_1_database_gains_the_not_found_column(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from pipeline.database import SCHEMA_VERSION

    assert cli("ingest", _ids(sandbox)[0], env=sandbox.env()).code == 0
    database = tmp_path / "data" / "pipeline.db"
    with sqlite3.connect(database) as conn:  # as the previous release left it
        conn.execute("ALTER TABLE candidates DROP COLUMN not_found_at")
        conn.execute("UPDATE settings SET value = '1' WHERE key = 'schema_version'")
    result = cli("ingest", UNKNOWN, env=sandbox.env())
    assert result.code == 1
    assert [f["candidate_id"] for f in _status(cli)["failed_candidates"]] == [UNKNOWN]
    with sqlite3.connect(database) as conn:
        version = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'")
        assert int(version.fetchone()[0]) == SCHEMA_VERSION


def test_a_client_the_settings_refuse_is_a_usage_error_and_no_run(
    cli, sandbox, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "ca.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    result = cli("ingest", _ids(sandbox)[0], env={**sandbox.env(), "SSL_CERT_FILE": str(garbage)})
    assert result.code == 2
    _no_traceback(result.err)
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert "SSL_CERT_FILE" in result.err
    assert sandbox.stats.requests == {}
    assert _status(cli)["runs"] == []  # nothing ran: no run on record, none left running
