"""The child processes of a real ``python -m pipeline ingest`` (issue 14): none starts with the
API key in its environment, under its name or another, and Ctrl-C sent to the whole process
group (as a terminal does) ends the run with the parent's summary and exit 130, with no
child's traceback on the terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds processes in /proc"
)

# What each child's command line holds (the extraction workers are forks of the forkserver,
# with its command line).
KINDS = {
    "download process": b"pipeline.download import serve",
    "index writer process": b"serve_writer",
    "forkserver": b"multiprocessing.forkserver",
    "resource tracker": b"resource_tracker",
}


@contextmanager
def _slow_ingest(sandbox: SandboxServer, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """An ingest of the whole sandbox that takes a while (each download waits 0.3 s, two at
    a time), in a process group of its own; the key is also in a second variable."""
    sandbox.state.download_latency = 0.3
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))}
    env.update(
        {
            **sandbox.env(),
            "THE_SAME_KEY_AGAIN": sandbox.api_key,
            "PIPELINE_DATA_DIR": str(tmp_path / "data"),
            "PIPELINE_RETRY_BASE_DELAY": "0.01",
            "PYTHONPATH": str(ROOT),
        }
    )
    ids = [c.id for c in sandbox.world.ordered()]
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", "--download-concurrency", "2", *ids],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def _descendants(root: int) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process under ``root``."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(stat[1]), (entry / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    found: dict[int, tuple[int, bytes]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, command) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = (ppid, command)
                frontier.append(pid)
    return found


def _children_by_kind(root: int) -> dict[str, list[int]]:
    children = _descendants(root)
    kinds: dict[str, list[int]] = {}
    forkservers = set()
    for pid, (_, command) in children.items():
        for kind, mark in KINDS.items():
            if mark in command:
                kinds.setdefault(kind, []).append(pid)
                if kind == "forkserver":
                    forkservers.add(pid)
    kinds["extraction worker"] = [p for p, (ppid, _) in children.items() if ppid in forkservers]
    return kinds


def _wait_for_workers(process: subprocess.Popen[str], wanted: set[str]) -> dict[str, list[int]]:
    deadline = time.monotonic() + 60
    kinds: dict[str, list[int]] = {}
    while time.monotonic() < deadline and process.poll() is None:
        kinds = _children_by_kind(process.pid)
        if all(kinds.get(kind) for kind in wanted):
            return kinds
        time.sleep(0.05)
    raise AssertionError(f"the run's children never all showed: {kinds}")


def _kind(pid: int, children: dict[int, tuple[int, bytes]]) -> str | None:
    parent, command = children[pid]
    for kind, mark in KINDS.items():
        if mark in command:
            return "extraction worker" if parent in children and kind == "forkserver" else kind
    return None


def test_no_child_starts_with_the_api_key_in_its_environment(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Each child's environment is read as soon as it shows, for the whole run (the index
    writer starts with the first batch, the workers with the first extraction)."""
    key = sandbox.api_key.encode()
    environments: dict[int, tuple[str, list[bytes]]] = {}
    with _slow_ingest(sandbox, tmp_path) as process:
        while process.poll() is None:
            children = _descendants(process.pid)
            for pid in children.keys() - environments.keys():
                kind = _kind(pid, children)
                if kind is None:
                    continue
                try:
                    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue  # ended meanwhile
                environments[pid] = (kind, environment)
            time.sleep(0.02)
    assert process.returncode == 0
    assert {kind for kind, _ in environments.values()} == {*KINDS, "extraction worker"}
    for kind, environment in environments.values():
        assert not [v for v in environment if v.startswith(b"KOMBO_API_KEY=")], kind
        assert not [v for v in environment if key in v], kind
        # The rest of the environment is there (the integration id is no secret).
        assert b"KOMBO_INTEGRATION_ID=" + sandbox.integration_id.encode() in environment, kind


@pytest.mark.parametrize(
    "moment",
    [
        # The forkserver imports the parsers and loads the language model (about a second).
        pytest.param({"download process", "forkserver"}, id="forkserver-warming-up"),
        pytest.param(
            {"download process", "forkserver", "extraction worker"}, id="workers-extracting"
        ),
    ],
)
def test_ctrl_c_to_the_process_group_ends_the_run_without_a_childs_traceback(
    sandbox: SandboxServer, tmp_path: Path, moment: set[str]
) -> None:
    with _slow_ingest(sandbox, tmp_path) as process:
        _wait_for_workers(process, moment)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert "interrupted" in (out + err)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_children_outlive_a_sigterm_of_their_own_and_end_when_the_parent_says(
    tmp_path: Path,
) -> None:
    """SIGTERM (``systemctl stop`` sends it to every process of the unit) is the parent's to
    act on: a child that gets one keeps going until the parent stops it."""
    from pipeline.config import KomboSettings, Secret
    from pipeline.download import DownloadProcess
    from pipeline.extract.pool import ProcessExtractor
    from pipeline.filestore import LocalFileStore

    settings = KomboSettings(api_key=Secret("k"), integration_id="i", base_url="http://x/v1")
    downloads = DownloadProcess(settings, LocalFileStore(tmp_path / "files"))
    extractor = ProcessExtractor(workers=1)
    try:
        text = tmp_path / "cv.txt"
        text.write_text("Python in Berlin")
        assert extractor.submit(text, "text/plain", "cv.txt").result(timeout=60).text
        (worker,) = [s.process for s in extractor._slots]
        assert worker is not None and worker.pid is not None
        for pid in (downloads.pid, worker.pid):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert _running(downloads.pid) and _running(worker.pid)
        assert extractor.submit(text, "text/plain", "cv.txt").result(timeout=60).text
    finally:
        downloads.close()
        extractor.close()
    assert downloads.returncode == 0


def test_nightly_all_starts_one_set_of_children_for_every_integration(
    sandbox: SandboxServer,
    world_template,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """``nightly --all`` over three integrations: one download process, one index writer
    process and one pool of extraction workers serve them all (each integration's run had
    started its own), and each integration's files still land in its own folder."""
    from pipeline.app import App
    from pipeline.config import DataSettings, integration_folder
    from pipeline.sandbox.generator import World

    ids = [sandbox.integration_id, "acme:Second", "bolt:Third"]
    for iid in ids[1:]:
        twin = World(candidates=len(world_template.candidates), seed=7)
        twin._bodies = dict(world_template._bodies)
        sandbox.add_integration(iid, twin, download_latency=0.05)
    sandbox.state.download_latency = 0.05
    data = tmp_path / "data"
    with App(DataSettings(data, f"sqlite:///{data}/pipeline.db")) as app:
        for iid in ids:
            app.add_integration(iid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))}
    env.update({**sandbox.env(), "PIPELINE_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "nightly", "--all"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, str] = {}
    while process.poll() is None:
        children = _descendants(process.pid)
        for pid in children.keys() - seen.keys():
            kind = _kind(pid, children)
            if kind is not None:
                seen[pid] = kind
        time.sleep(0.02)
    out, err = process.communicate()
    assert process.returncode == 0, out + err
    assert "3 integrations: 3 succeeded" in out, out
    started = [kind for kind in seen.values()]
    for kind in ("download process", "index writer process", "forkserver"):
        assert started.count(kind) == 1, seen
    assert 1 <= started.count("extraction worker") <= (os.cpu_count() or 1), seen
    for iid in ids:
        files = data / "integrations" / integration_folder(iid) / "files"
        assert len([p for p in files.rglob("*") if p.is_file()]) >= len(world_template.candidates)
