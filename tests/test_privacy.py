"""Private by default: whatever the umask and whatever the data folder already was, every
file the pipeline writes under the data directory is 0600 and every folder 0700."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.database import Store
from pipeline.lock import WriterLock
from pipeline.sandbox.server import SandboxServer


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    files: dict[str, int] = {}
    folders: dict[str, int] = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for here, dirs, names in os.walk(root):
        for name in dirs:
            folders[os.path.join(here, name)] = stat.S_IMODE(
                os.lstat(os.path.join(here, name)).st_mode
            )
        for name in names:
            files[os.path.join(here, name)] = stat.S_IMODE(
                os.lstat(os.path.join(here, name)).st_mode
            )
    return files, folders


@pytest.fixture
def keep_umask():  # type: ignore[no-untyped-def]
    """The App makes the process's umask private; give the test process its own back."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def test_an_ingest_under_umask_022_in_a_0755_folder_leaves_only_private_files(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as a clone ships it
    (data / "README.md").write_text("what the clone ships\n")
    os.chmod(data / "README.md", 0o644)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))},
        **sandbox.env(),
        "PIPELINE_DATA_DIR": str(data),
        "PIPELINE_RETRY_BASE_DELAY": "0.01",
    }
    ids = [c.id for c in sandbox.world.ordered()][:6]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: os.umask(0o022),  # what a login shell gives
        )

    ingest = run("ingest", *ids)
    assert ingest.returncode == 0, ingest.stderr
    assert run("search", "the").returncode == 0
    assert run("export", "--output", str(data / "export.jsonl")).returncode == 0
    files, folders = _modes(data)
    assert any(name.endswith("pipeline.db") for name in files)
    assert any("/index/" in name for name in files)
    assert any("/files/" in name for name in files)
    # The README the clone ships is not ours to change; everything else is private.
    files.pop(str(data / "README.md"))
    assert {name: oct(mode) for name, mode in files.items() if mode != 0o600} == {}
    assert {name: oct(mode) for name, mode in folders.items() if mode != 0o700} == {}


def test_the_database_and_its_wal_are_created_private_under_any_umask(
    tmp_path: Path, keep_umask: None
) -> None:
    os.umask(0o022)
    folder = tmp_path / "d"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    store = Store(f"sqlite:///{folder / 'pipeline.db'}")
    store.ensure_schema()
    with store.batch():
        store.set_setting("probe", "1")  # a write with the connection held: the WAL is there
        files, folders = _modes(folder)
    store.close()
    assert {Path(n).name for n in files} >= {"pipeline.db", "pipeline.db-wal", "pipeline.db-shm"}
    assert set(files.values()) == {0o600}
    assert set(folders.values()) == {0o700}


def test_an_older_database_and_lock_file_are_tightened_at_open(
    tmp_path: Path, keep_umask: None
) -> None:
    os.umask(0o022)
    database = tmp_path / "pipeline.db"
    Store(f"sqlite:///{database}").ensure_schema()
    os.chmod(database, 0o644)
    (tmp_path / ".writer.lock").write_text("")
    os.chmod(tmp_path / ".writer.lock", 0o644)
    Store(f"sqlite:///{database}").close()
    with WriterLock(tmp_path):
        pass
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".writer.lock").stat().st_mode) == 0o600


def test_a_folder_that_is_not_ours_to_tighten_gives_a_warning_not_a_failure() -> None:
    from pipeline.filestore import private_folder

    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    # Outside pytest's 0700 tmp folder, so that another user can reach it.
    base = Path(tempfile.mkdtemp(prefix="pipeline-privacy-"))
    try:
        os.chmod(base, 0o755)
        folder = base / "shared"
        folder.mkdir()
        os.chmod(folder, 0o755)  # root's: the other user may use it, not chmod it
        script = (
            "import logging, os, pathlib; from pipeline.filestore import private_folder;"
            "logging.basicConfig(level=logging.WARNING); os.setgid(65534); os.setuid(65534);"
            f"private_folder(pathlib.Path({str(folder)!r})); print('ok')"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"
        assert "cannot make" in result.stderr and "other local users may read it" in result.stderr
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        private_folder(folder)  # its owner may: tightened
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(base)
