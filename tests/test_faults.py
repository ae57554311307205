"""Storage faults, made real: a full disk (a small tmpfs), a read-only data directory (a
read-only bind mount: chmod does not stop root, and CI runs as root), a corrupt database
(bytes overwritten), a truncated or missing index segment, an index folder that is a file.

Each gives one line naming what and where, never a traceback. What the CLI makes of it
(exit 2 for what the operator must fix, 1 for what may pass, the run recorded ``failed``)
is the CLI's one mapping of ``PipelineError`` (``pipeline.faults``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.database import Store
from pipeline.errors import (
    DatabaseCorruptError,
    DatabaseUnavailableError,
    DiskFullError,
    IndexDamagedError,
    SchemaBehindError,
    is_transient,
)
from pipeline.filestore import LocalFileStore
from pipeline.sandbox.server import SandboxServer
from pipeline.search import SearchIndex
from tests.helpers import CliResult, generated_docs, integration_root


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


def fill(folder: Path, *, leave: int = 0) -> None:
    """Write until the file system holding ``folder`` has no byte left, then free about
    ``leave`` bytes (a run that begins, and meets the full disk on its way)."""
    chunk = b"\0" * 65536
    fillers = folder / "filler"
    fillers.mkdir()
    count = 0
    try:
        while True:
            (fillers / str(count)).write_bytes(chunk)
            count += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(fillers / "last", "wb") as handle:
        while True:  # the last few bytes, a byte at a time
            handle.write(b"\0")
            handle.flush()
    for n in range(min(count, -(-leave // len(chunk)))):
        (fillers / str(n)).unlink()


def one_line(result: CliResult) -> str:
    """The error line, checked to be one line and no traceback."""
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pipeline: error:")]
    assert len(errors) == 1, result.err
    return errors[0]


def run_statuses(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
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
        shutil.rmtree(disk / "filler")  # room again, to read what the run left
        statuses = run_statuses(disk / "data" / "pipeline.db")
    assert statuses[0] == "succeeded"


def _ingest_until_the_disk_fills(cli, sandbox: SandboxServer, disk: Path) -> CliResult:  # type: ignore[no-untyped-def]
    """A first ingest on ``disk``, then the disk filled to leave room to begin a second run
    but not for every file, and that second run's result."""
    env = {**sandbox.env(), "PIPELINE_DATA_DIR": str(disk / "data")}
    ids = _ids(sandbox)
    assert cli("ingest", *ids[:3], env=env).code == 0
    fill(disk, leave=192 * 1024)
    return cli("ingest", *ids[3:], env=env)  # type: ignore[no-any-return]


def test_a_disk_that_fills_during_an_ingest_stops_it_with_one_line(
    cli, sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    with tmpfs("3m") as disk:
        result = _ingest_until_the_disk_fills(cli, sandbox, disk)
        assert result.code != 0
        assert "Traceback" not in result.err
        assert "no space left" in result.err and str(disk) in result.err


def test_an_ingest_on_a_full_disk_exits_2_and_is_recorded_failed(
    cli, sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    with tmpfs("3m") as disk:
        result = _ingest_until_the_disk_fills(cli, sandbox, disk)
        one_line(result)
        assert result.code == 2
        shutil.rmtree(disk / "filler")  # room again, to read what the run left
        statuses = run_statuses(disk / "data" / "pipeline.db")
    assert "running" not in statuses
    assert statuses[-1] == "failed"


# -- a read-only data directory ----------------------------------------------------------------


def test_reads_work_on_a_read_only_data_directory(
    cli, sandbox: SandboxServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    assert cli("ingest", *_ids(sandbox)[:4], env=sandbox.env()).code == 0
    before = sorted(p.name for p in data.iterdir())
    with read_only(data):
        search = cli("search", "the", "--json")
        status = cli("status")
        export = cli("export", "--format", "jsonl")
        check = cli("check")
        assert (search.code, status.code, export.code, check.code) == (0, 0, 0, 0), (
            search.err + status.err + export.err + check.err
        )
        assert '"total"' in search.out and "run" in status.out and export.out.count("\n") >= 4
        assert sorted(p.name for p in data.iterdir()) == before  # no lock, WAL or SHM made
        ingest = cli("ingest", *_ids(sandbox)[4:6], env=sandbox.env())
        line = one_line(ingest)
        assert ingest.code != 0
        assert "not writable" in line or "read-only" in line
        assert str(data) in line


def test_a_run_on_a_read_only_data_directory_exits_2(
    cli, sandbox: SandboxServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *_ids(sandbox)[:2], env=sandbox.env()).code == 0
    with read_only(tmp_path / "data"):
        assert cli("ingest", *_ids(sandbox)[2:4], env=sandbox.env()).code == 2


def test_an_older_database_on_a_read_only_directory_says_to_run_a_writing_command(
    cli, sandbox: SandboxServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *_ids(sandbox)[:2], env=sandbox.env()).code == 0
    database = tmp_path / "data" / "pipeline.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("UPDATE settings SET value = '0' WHERE key = 'schema_version'")
        db.commit()
    with read_only(tmp_path / "data"):
        result = cli("status")
        line = one_line(result)
        assert result.code != 0
        assert "schema version 0" in line and "writing command" in line
        with pytest.raises(SchemaBehindError):
            from pipeline.database import reading_store

            reading_store(f"sqlite:///{database}")
    # Where it may write, a read brings it forward as before.
    assert cli("status").code == 0


# -- a corrupt database ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "words"),
    [("header", "is not a database"), ("pages", "is damaged")],
)
def test_a_corrupt_database_is_one_terminal_line(
    cli, sandbox: SandboxServer, tmp_path: Path, damage: str, words: str
) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *_ids(sandbox)[:4], env=sandbox.env()).code == 0
    database = tmp_path / "data" / "pipeline.db"
    raw = bytearray(database.read_bytes())
    page = int.from_bytes(raw[16:18], "big") or 65536
    if damage == "header":
        raw[:100] = b"\xa5" * 100
    else:  # every page after the schema's: the tables' b-trees are garbage
        raw[page * 2 :] = b"\xa5" * (len(raw) - page * 2)
    database.write_bytes(bytes(raw))
    for args in (("status",), ("search", "the"), ("ingest", *_ids(sandbox)[4:6])):
        result = cli(*args, env=sandbox.env())
        line = one_line(result)
        assert result.code != 0, args
        assert words in line and str(database) in line, (args, line)
    with pytest.raises(DatabaseCorruptError) as caught:
        Store(f"sqlite:///{database}").for_integration(sandbox.integration_id).counts_by_status()
    assert not is_transient(caught.value)


# -- a damaged index ---------------------------------------------------------------------------


def _segments(index: Path) -> list[Path]:
    return sorted(
        p for p in index.iterdir() if p.suffix not in (".toc",) and "WRITELOCK" not in p.name
    )


@pytest.mark.parametrize(
    "damage", ["deleted", "segment missing", "segment truncated", "toc truncated", "a file"]
)
def test_a_damaged_index_says_to_reindex_and_reindex_repairs_it(
    cli, sandbox: SandboxServer, tmp_path: Path, damage: str
) -> None:  # type: ignore[no-untyped-def]
    assert cli("ingest", *_ids(sandbox)[:6], env=sandbox.env()).code == 0
    before = cli("search", "the", "--json")
    assert before.code == 0
    index = integration_root(tmp_path / "data") / "index"
    if damage == "deleted":
        shutil.rmtree(index)
    elif damage == "segment missing":
        max(_segments(index), key=lambda p: p.stat().st_size).unlink()
    elif damage == "segment truncated":
        for segment in _segments(index):
            with open(segment, "r+b") as handle:
                handle.truncate(segment.stat().st_size // 3)
    elif damage == "toc truncated":
        for toc in index.glob("*.toc"):
            toc.write_bytes(toc.read_bytes()[:20])
    else:
        shutil.rmtree(index)
        index.write_text("not a folder\n")
    result = cli("search", "the")
    line = one_line(result)
    assert result.code != 0 and result.out == ""
    assert "run `pipeline reindex`" in line and str(index) in line
    with pytest.raises(IndexDamagedError):
        from pipeline.app import App, SearchRequest
        from pipeline.config import DataSettings

        with App(
            DataSettings(tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'pipeline.db'}")
        ) as app:
            app.search(SearchRequest("the"))
    repaired = cli("reindex")
    assert repaired.code == 0, repaired.err
    assert cli("search", "the", "--json").out == before.out


def test_a_fresh_data_directory_answers_no_hits_not_an_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("search", "anything", "--json")
    assert result.code == 0, result.err
    assert '"total": 0' in result.out


# -- a stored file that went missing ---------------------------------------------------------


def test_check_names_each_repair_and_reindex_fetches_a_missing_file_again(
    cli, sandbox: SandboxServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # A nightly run first: the next one lists only what changed at Kombo since.
    assert cli("nightly", env=sandbox.env()).code == 0
    files = integration_root(tmp_path / "data") / "files"
    lost = next(p for p in sorted(files.glob("??/*")) if p.is_file())
    lost.unlink()
    check = cli("check")
    assert check.code == 1
    report = next(line for line in check.out.splitlines() if line.startswith("files missing"))
    assert lost.name in report and "repair:" in report and "fetched again" in report
    unmarked = cli("nightly", env=sandbox.env())  # nothing changed at Kombo: not listed
    assert unmarked.code == 0 and not lost.is_file()
    assert cli("reindex").code == 0
    # The next run takes the candidate up again though nothing changed at Kombo, and the
    # file is downloaded again.
    nightly = cli("nightly", env=sandbox.env())
    assert nightly.code == 0, nightly.err
    assert lost.is_file()
    assert cli("check").code == 0


# -- an unreachable database server ------------------------------------------------------------


def test_an_unreachable_database_server_is_one_transient_line(cli) -> None:  # type: ignore[no-untyped-def]
    drivers = {"psycopg": "postgresql+psycopg", "psycopg2": "postgresql+psycopg2"}
    found = next((url for module, url in drivers.items() if _importable(module)), None)
    if found is None:
        pytest.skip("no PostgreSQL driver installed (psycopg or psycopg2)")
    # Port 1 on the loopback: refused at once.
    url = f"{found}://pipeline:secret-password@127.0.0.1:1/pipeline?connect_timeout=2"
    with pytest.raises(DatabaseUnavailableError) as caught:
        Store(url).ensure_schema()
    assert is_transient(caught.value)
    assert "127.0.0.1:1" in str(caught.value) and "secret-password" not in str(caught.value)
    result = cli("status", "--database-url", url)
    line = one_line(result)
    assert "unreachable" in line and "secret-password" not in result.err


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
