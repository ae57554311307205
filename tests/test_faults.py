"""Storage faults, made real: a full disk (a small tmpfs), a read-only data directory (a
read-only bind mount: chmod does not stop root, and CI runs as root), a corrupt database
(bytes overwritten), a truncated or missing index segment, an index folder that is a file.

Each gives one line naming what and where, never a traceback. What the CLI makes of it
(exit 2 for what the operator must fix, 1 for what may pass, the run recorded ``failed``)
is the CLI's mapping of ``PipelineError``: those assertions are marked xfail until it lands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.database import Store
from pipeline.errors import (
    DiskFullError,
    is_transient,
)
from pipeline.filestore import LocalFileStore
from pipeline.sandbox.server import SandboxServer
from pipeline.search import SearchIndex
from tests.helpers import CliResult, generated_docs

CLI_MAPPING = pytest.mark.xfail(
    reason="the CLI's PipelineError mapping (exit 2 when terminal, the run recorded failed) "
    "is another helper's part of issue 14; turn on at merge",
    strict=False,
)


def _mount(*args: str) -> bool:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return done.returncode == 0


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A small file system of its own, to fill (outside pytest's 0700 tmp folder)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="pipeline-tmpfs-"))
    if not _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)):
        where.rmdir()
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for everyone, root included: a read-only bind mount."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (chmod does not stop root)")
    if not _mount("--bind", str(folder), str(folder)):
        pytest.skip("this machine refuses bind mounts")
    try:
        if not _mount("-o", "remount,bind,ro", str(folder)):
            pytest.skip("this machine refuses to remount read-only")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write until the file system holding ``folder`` has no byte left."""
    chunk = b"\0" * 65536
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(folder / "filler2", "wb") as handle:
        while True:  # the last few bytes, a byte at a time
            handle.write(b"\0")
            handle.flush()


def one_line(result: CliResult) -> str:
    """The error line, checked to be one line and no traceback."""
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pipeline: error:")]
    assert len(errors) == 1, result.err
    return errors[0]


def run_statuses(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?immutable=1", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT status FROM runs ORDER BY id")]


def _ids(sandbox: SandboxServer) -> list[str]:
    return [c.id for c in sandbox.world.ordered()]


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_disk_under_the_database_is_one_terminal_line() -> None:
    with tmpfs("600k") as disk:
        store = Store(f"sqlite:///{disk / 'pipeline.db'}")
        store.ensure_schema()
        fill(disk)
        with pytest.raises(DiskFullError) as caught:
            for n in range(2000):
                store.set_setting(f"key{n}", "x" * 4000)
        store.close()
    assert "no space left" in str(caught.value) and str(disk) in str(caught.value)
    assert not is_transient(caught.value)
    assert isinstance(caught.value.__cause__, Exception)  # raised from the library's error


def test_a_full_disk_under_the_file_store_is_one_terminal_line() -> None:
    with tmpfs("256k") as disk:
        files = LocalFileStore(disk / "files")
        writer = files.open()
        with pytest.raises(DiskFullError) as caught:
            for _ in range(64):
                writer.write(b"%PDF" * 4096)
            files.commit(writer)
        files.discard(writer)
        assert list((disk / "files" / "tmp").iterdir()) == []  # no half file left
    assert "no space left" in str(caught.value) and "files" in str(caught.value)


def test_a_full_disk_under_the_index_is_one_terminal_line() -> None:
    with tmpfs("1m") as disk:
        index = SearchIndex(disk / "index")
        index.write(generated_docs(5))
        fill(disk)
        with pytest.raises(DiskFullError) as caught:
            index.write(generated_docs(400))
    assert "search index" in str(caught.value) and "no space left" in str(caught.value)


def test_an_ingest_on_a_full_disk_stops_with_one_line(cli, sandbox: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    with tmpfs("3m") as disk:
        env = {**sandbox.env(), "PIPELINE_DATA_DIR": str(disk / "data")}
        ids = _ids(sandbox)
        assert cli("ingest", *ids[:3], env=env).code == 0
        fill(disk)
        result = cli("ingest", *ids[3:], env=env)
        line = one_line(result)
        assert result.code != 0
        assert "no space left" in line and str(disk) in line
        statuses = run_statuses(disk / "data" / "pipeline.db")
    assert statuses[0] == "succeeded"


@CLI_MAPPING
def test_an_ingest_on_a_full_disk_exits_2_and_is_recorded_failed(
    cli, sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    with tmpfs("3m") as disk:
        env = {**sandbox.env(), "PIPELINE_DATA_DIR": str(disk / "data")}
        ids = _ids(sandbox)
        assert cli("ingest", *ids[:3], env=env).code == 0
        fill(disk)
        result = cli("ingest", *ids[3:], env=env)
        one_line(result)
        assert result.code == 2
        statuses = run_statuses(disk / "data" / "pipeline.db")
    assert "running" not in statuses
    assert statuses[-1] == "failed"
