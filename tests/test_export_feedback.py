"""Export at any size, in three formats; feedback that suits a terminal and a log collector."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.database import Attachment, Candidate, ExtractedText, Store
from pipeline.sandbox.server import SandboxServer
from pipeline.schemas import validator


def test_export_since_and_candidate_filters(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    everything = cli("export").out.splitlines()
    assert everything
    assert cli("export", "--since", "2030-01-01").out == ""
    assert len(cli("export", "--since", "2020-01-01").out.splitlines()) == len(everything)
    one = sandbox.world.ordered()[0].id
    mine = [json.loads(line) for line in cli("export", "--candidate", one).out.splitlines()]
    assert mine and {r["candidate_id"] for r in mine} == {one}


def test_parquet_round_trip(cli, sandbox: SandboxServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet is an optional extra")
    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    target = tmp_path / "records.parquet"
    assert cli("export", "--format", "parquet", "--output", str(target)).code == 0
    table = pq.read_table(target)
    jsonl = [json.loads(line) for line in cli("export").out.splitlines()]
    assert table.num_rows == len(jsonl)
    assert table.column("attachment_id").to_pylist() == [r["attachment_id"] for r in jsonl]
    assert table.column("text").to_pylist() == [r["text"] for r in jsonl]
    refused = cli("export", "--format", "parquet")
    assert refused.code == 2 and "--output" in refused.err


def _fill(store: Store, count: int) -> None:
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(
            Candidate.__table__.insert(),
            [
                {"id": f"C{n}", "integration_id": "i", "first_seen_at": now}
                for n in range(count // 2)
            ],
        )
        conn.execute(
            ExtractedText.__table__.insert(),
            [
                {
                    "integration_id": "i",
                    "sha256": "a" * 64,
                    "text": "Kubernetes and Python in Berlin. " * 40,
                }
            ],
        )
        conn.execute(
            Attachment.__table__.insert(),
            [
                {
                    "id": f"A{n:09d}",
                    "integration_id": "i",
                    "candidate_id": f"C{n // 2}",
                    "type": "CV",
                    "status": "indexed",
                    "sha256": "a" * 64,
                    "size_bytes": 1000,
                    "file_name": f"cv {n}.pdf",
                    "content_type": "application/pdf",
                    "remote_updated_at": now,
                    "fetched_at": now,
                    "extracted_at": now,
                    "indexed_at": now,
                    "parser": "pypdf",
                    "page_count": 1,
                }
                for n in range(count)
            ],
        )


_PEAK = """
import sys
from pipeline.export import iter_records, write_jsonl
from pipeline.database import Store
store = Store(sys.argv[1]).for_integration("i")
with open("/dev/null", "w") as sink:
    count = write_jsonl(iter_records(store, status="all"), sink)
# VmHWM, not ru_maxrss: the latter counts the parent's size at fork time.
status = open("/proc/self/status").read()
print(count, int(status.split("VmHWM:")[1].split()[0]))
"""


def _export_peak_kb(tmp_path: Path, count: int) -> int:
    url = f"sqlite:///{tmp_path / f'db{count}.sqlite'}"
    store = Store(url)
    store.create()
    _fill(store, count)
    store.close()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, url], capture_output=True, text=True, check=True
    )
    written, peak = map(int, done.stdout.split())
    assert written == count
    return peak


def test_export_memory_stays_flat_at_100000_records(tmp_path: Path) -> None:
    small = _export_peak_kb(tmp_path, 10_000)
    large = _export_peak_kb(tmp_path, 100_000)
    print(
        f"\npeak RSS exporting 10,000 records: {small / 1024:.0f} MB; "
        f"100,000: {large / 1024:.0f} MB"
    )
    assert large < small * 1.3


def test_every_exported_record_validates(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    schema = validator("export_record.schema.json")
    for flags in ((), ("--no-text",), ("--status", "all")):
        for line in cli("export", *flags).out.splitlines():
            schema.validate(json.loads(line))


def test_json_logs_for_collectors(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "--log-format", "json", "-v", "ingest", *sandbox.world.candidates, env=sandbox.env()
    )
    assert result.code == 0
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert any("no text layer" in json.loads(line)["message"] for line in lines)


def test_no_progress_bar_when_not_a_terminal(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", *sandbox.world.candidates, env=sandbox.env())
    assert "\r" not in result.err and "it/s" not in result.err


def test_progress_bar_on_a_terminal(sandbox: SandboxServer, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    # A terminal has a size; a fresh pseudo-terminal is 0x0, and a bar 0 columns wide is empty.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, **sandbox.env(), "PIPELINE_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", *sandbox.world.candidates],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
        text=True,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
    out, _ = process.communicate(timeout=60)
    os.close(primary)
    assert process.returncode == 0
    assert b"candidates" in seen and b"attachments" in seen and b"\r" in seen
    assert out.strip().splitlines()[-1].startswith("ingest succeeded")
