"""Fetch and download at scale: N sandbox candidates with a set latency per API call.

Prints the wall time of the fetch and download stages, the serial time (what a client
making one call at a time would wait), the ideal time (calls x latency / concurrency) and the
ratio of wall time to ideal. With --full it also runs the whole pipeline (extraction and
indexing too) and prints the CPU floor beside it.

The sandbox runs in its own process (started with `python -m pipeline sandbox`) so that it
does not share an interpreter lock with the pipeline it is measuring; its documents are
rendered once into a cache directory before the clock starts.

    python benchmarks/fetch_download.py                  # 1,000 candidates, 100 ms per call
    python benchmarks/fetch_download.py --candidates 200 --full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

import httpx

from pipeline.config import DataSettings, KomboSettings, Options, resolve_kombo
from pipeline.database import Store
from pipeline.download import Downloaded
from pipeline.engine import RunEngine, RunInProgress, RunSummary, Workspace
from pipeline.extract import Extraction
from pipeline.fetch import RemoteAttachment
from pipeline.filestore import LocalFileStore
from pipeline.search import SearchIndex

ROOT = Path(__file__).resolve().parent


def start_sandbox(args: argparse.Namespace, cache: Path) -> tuple[subprocess.Popen[str], dict]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "sandbox",
            "--port",
            "0",
            "--candidates",
            str(args.candidates),
            "--seed",
            str(args.seed),
            "--latency",
            str(args.latency),
            "--download-latency",
            str(args.download_latency),
            "--cache-dir",
            str(cache),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        line = line.strip()
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = value
        if len(env) == 3:
            return process, env
    raise SystemExit("the sandbox did not start")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(env: dict[str, str]) -> dict:
    origin = env["KOMBO_BASE_URL"].rsplit("/v1", 1)[0]
    return httpx.get(f"{origin}/_sandbox/stats").json()


def candidate_ids(env: dict[str, str]) -> list[str]:
    from pipeline.fetch import KomboClient

    settings = resolve_kombo(Options(), env=env)
    with KomboClient(settings) as client:
        return [c.id for page in client.candidate_pages() for c in page.candidates]


def children_cpu() -> float:
    """User + system CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _DownloadOnlyRun(RunInProgress):
    """A run that stops after the download stage: what this benchmark measures alone."""

    def extract(self, item: RemoteAttachment, downloaded: Downloaded) -> None:
        pass


class _NoExtractor:
    """No workers at all (nothing is handed to them), so none start beside the downloads."""

    workers = 1

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]:
        raise AssertionError("a download-only run extracts nothing")

    def prestart(self) -> None:
        pass

    def close(self, *, cancel: bool = False) -> None:
        pass


class _DownloadOnlyEngine(RunEngine):
    run_type = _DownloadOnlyRun


def open_engine(settings: KomboSettings, data: DataSettings, *, extract: bool) -> RunEngine:
    """A run engine over a data directory opened as a run finds it (before the clock
    starts): the whole pipeline, or only its fetch and download stages."""
    data.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = Store(data.database_url)
    database.ensure_schema()
    store = database.for_integration(settings.integration_id)
    paths = data.integration(settings.integration_id)
    workspace = Workspace(
        data.data_dir,
        store,
        LocalFileStore(paths.files_dir),
        SearchIndex(paths.index_dir),
        lock_dir=paths.lock_dir,
    )
    if extract:
        return RunEngine(settings, workspace)
    return _DownloadOnlyEngine(settings, workspace, new_extractor=_NoExtractor)


def ingest(engine: RunEngine, ids: list[str]) -> RunSummary:
    """One ingest run, with the writer lock, as ``pipeline ingest`` makes it."""
    with engine.workspace.lock():
        return engine.ingest(ids)


def run(
    env: dict[str, str], ids: list[str], args: argparse.Namespace, *, extract: bool, pid: int
) -> dict:
    settings = resolve_kombo(
        Options(),
        env=env,
        concurrency=args.concurrency,
        download_concurrency=args.download_concurrency,
    )
    before = stats(env)
    sandbox_cpu_before = process_cpu(pid)
    # The data directory sits where a user's would (beside the project, not in /tmp, whose
    # file creation is several times slower on this machine).
    (ROOT / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "results", prefix="data-") as tmp:
        data = DataSettings(Path(tmp), f"sqlite:///{tmp}/pipeline.db")
        engine = open_engine(settings, data, extract=extract)
        cpu_before = time.process_time()
        children_before = children_cpu()
        started = time.perf_counter()
        summary = ingest(engine, ids)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        # The download process is our child and has been waited for by now.
        children = children_cpu() - children_before
        engine.workspace.store.close()
    sandbox_cpu = process_cpu(pid) - sandbox_cpu_before
    after = stats(env)
    actions = after["requests"].get("action", 0) - before["requests"].get("action", 0)
    files = after["file_requests"] - before["file_requests"]
    serial = actions * args.latency + files * args.download_latency
    ideal = max(
        actions * args.latency / args.concurrency,
        files * args.download_latency / settings.download_concurrency,
    )
    return {
        "stages": "fetch+download+extract+index" if extract else "fetch+download",
        "candidates": len(ids),
        "api_calls": actions,
        "downloads": files,
        "wall_s": round(wall, 2),
        "serial_s": round(serial, 2),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall / ideal, 2) if ideal else None,
        "cpu_s": round(cpu, 2),
        "child_cpu_s": round(children, 2),
        "cpu_floor_s": round(cpu / (os.cpu_count() or 1), 2),
        "sandbox_cpu_s": round(sandbox_cpu, 2),
        "refused_concurrency": after["refused_concurrency"] - before["refused_concurrency"],
        "max_in_flight": after["max_in_flight"],
        "exit_code": summary.exit_code,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per API call")
    parser.add_argument("--download-latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--download-concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--full", action="store_true", help="also run every stage")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "sandbox-cache")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "fetch_download.json")
    args = parser.parse_args()

    process, env = start_sandbox(args, args.cache)
    try:
        ids = candidate_ids(env)
        rows = [run(env, ids, args, extract=False, pid=process.pid)]
        if args.full:
            rows.append(run(env, ids, args, extract=True, pid=process.pid))
    finally:
        process.terminate()
        process.wait(timeout=10)

    print(
        f"{args.candidates} candidates, {args.latency * 1000:.0f} ms per API call, "
        f"{args.download_latency * 1000:.0f} ms per download, concurrency {args.concurrency}"
    )
    keys = [
        "stages",
        "api_calls",
        "downloads",
        "wall_s",
        "serial_s",
        "ideal_s",
        "wall_over_ideal",
        "cpu_s",
        "child_cpu_s",
        "sandbox_cpu_s",
        "refused_concurrency",
        "peak_rss_mb",
    ]
    print("  ".join(f"{k:>18}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]!s:>18}" for k in keys))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
