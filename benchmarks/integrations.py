"""``nightly --all`` over many integrations, beside one integration holding as many
candidates (issue 15).

    python benchmarks/integrations.py            # 20 integrations x 100 candidates, and 1 x 2,000
    python benchmarks/integrations.py --quick    # 5 x 40, and 1 x 200

Both against the sandbox in a process of its own, 100 ms per API call and 50 ms per
download, documents rendered once into a cache. Wall time of the whole command (a process of
its own, as cron starts it) against its floors:

- network floor: each integration's calls against its own 30-in-flight limit, the
  integrations in parallel (the slowest integration's), and every download against the
  downloads in flight in all (``nightly --all`` shares them out), the larger of the two;
- CPU floor: the CPU of the pipeline's process and every process it started (extraction
  workers, download and index writer processes), over the cores;
- wall / max(floors), the figure of ``run.py``'s end-to-end row (target 1.3); beside it the
  same with the sandbox's CPU in the CPU floor (the sandbox shares the cores).

Beside them, where the CPU went: the processes the command started, by kind (sampled from
/proc every 0.1 s), how many of each, and the sandbox's own CPU (it shares the cores).
``--trace`` also samples the API calls in flight at the sandbox every 0.25 s (the one
integration's, and the sum over all of them) and prints the timeline.

Also run by ``python -m benchmarks`` (its "integrations" section).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
API_LATENCY = 0.1
DOWNLOAD_LATENCY = 0.05
CONCURRENCY = 30  # Kombo's default limit per integration (the sandbox's too)
DOWNLOADS_PER_RUN = 16  # KomboSettings.download_concurrency
SIZES = {
    "full": {"integrations": 20, "candidates": 100},
    "quick": {"integrations": 5, "candidates": 40},
}
TARGET = 1.3


def _sandbox(
    integrations: int, candidates: int, cache: Path
) -> tuple[subprocess.Popen[str], dict, list[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "sandbox",
            "--port",
            "0",
            "--candidates",
            str(candidates),
            "--integrations",
            str(integrations),
            "--latency",
            str(API_LATENCY),
            "--download-latency",
            str(DOWNLOAD_LATENCY),
            "--cache-dir",
            str(cache),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    env: dict[str, str] = {}
    ids: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.strip()
        if line.startswith("# integrations:"):
            ids = line.split(":", 1)[1].split()
        elif line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = value
        if len(env) == 3:
            return process, env, ids or [env["KOMBO_INTEGRATION_ID"]]
    raise SystemExit("the sandbox did not start")


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class ProcessWatch:
    """The CPU of a process and every process under it, by kind, sampled from /proc (a
    process's last 0.1 s before it ends is missed: the totals come from rusage)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _kind(self, pid: int, parent: int, kinds: dict[int, str]) -> str:
        if pid == self.root:
            return "main"
        line = _cmdline(pid)
        if "pipeline.download" in line:
            return "download"
        if "_writer" in line:
            return "index writer"
        if "resource_tracker" in line:
            return "resource tracker"
        if "forkserver" in line:
            return "extraction workers" if kinds.get(parent) == "forkserver" else "forkserver"
        return "tools"  # pdftotext, tesseract, antiword

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None:
                    parents[int(entry)], cpu[int(entry)] = stat
        kinds = {pid: kind for pid, (kind, _) in self.seen.items()}
        # Parents before children: the tree under the root, breadth first.
        frontier = [self.root]
        while frontier:
            below = []
            for pid in frontier:
                if pid not in cpu:
                    continue
                kind = kinds.get(pid) or self._kind(pid, parents[pid], kinds)
                kinds[pid] = kind
                self.seen[pid] = (kind, cpu[pid])
                below += [child for child, parent in parents.items() if parent == pid]
            frontier = below

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        cpu: Counter[str] = Counter()
        count: Counter[str] = Counter()
        for kind, seconds in self.seen.values():
            cpu[kind] += seconds
            count[kind] += 1
        return {k: {"cpu_s": round(cpu[k], 2), "processes": count[k]} for k in sorted(cpu)}


class InFlightTrace:
    """API calls in flight at the sandbox every ``interval`` seconds: the first
    integration's and the sum over all, with the downloads served so far."""

    def __init__(self, env: dict[str, str], ids: list[str], interval: float = 0.25) -> None:
        self.env, self.ids, self.interval = env, ids, interval
        self.samples: list[tuple[float, int, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        origin = self.env["KOMBO_BASE_URL"].rsplit("/v1", 1)[0]
        with httpx.Client() as client:
            while not self._stop.wait(self.interval):
                stats = [
                    client.get(f"{origin}/_sandbox/stats", params={"integration": i}).json()
                    for i in self.ids
                ]
                self.samples.append(
                    (
                        time.perf_counter() - self._started,
                        stats[0]["in_flight"],
                        sum(s["in_flight"] for s in stats),
                        sum(s["requests"].get("action", 0) for s in stats),
                        sum(s["file_requests"] for s in stats),
                    )
                )

    def stop(self) -> list[tuple[float, int, int, int, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def _adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux's
    PR_SET_CHILD_SUBREAPER). The extraction workers are children of multiprocessing's
    forkserver, which outlives the command by a moment and was reaped by init: their CPU
    never reached this process's rusage, and the CPU floor left extraction out."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _reap_orphans(keep: int, timeout: float = 10.0) -> None:
    """Wait for every orphan adopted (not ``keep``, the sandbox): their CPU then counts in
    this process's rusage of its children."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        alive = [
            int(e)
            for e in os.listdir("/proc")
            if e.isdigit() and int(e) != keep and (_stat(int(e)) or (0,))[0] == os.getpid()
        ]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stats(env: dict[str, str], integration_id: str) -> dict:
    origin = env["KOMBO_BASE_URL"].rsplit("/v1", 1)[0]
    return httpx.get(f"{origin}/_sandbox/stats", params={"integration": integration_id}).json()


def _register(data: Path, ids: list[str]) -> None:
    script = (
        "import sys; from pathlib import Path; from pipeline.app import App;"
        "from pipeline.config import DataSettings; d = Path(sys.argv[1]);"
        "app = App(DataSettings(d, f'sqlite:///{d}/pipeline.db'));"
        "[app.add_integration(i) for i in sys.argv[2:]]; app.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(data), *ids], check=True)


def _sandbox_cpu(pid: int) -> float:
    stat = _stat(pid)
    return stat[1] if stat is not None else 0.0


def one_command(integrations: int, candidates: int, cache: Path, *, trace: bool = False) -> dict:
    """One ``nightly --all`` (or, for one integration, ``nightly``) into a new data
    directory, with its floors."""
    process, env, ids = _sandbox(integrations, candidates, cache)
    cores = os.cpu_count() or 1
    samples: list[tuple[float, int, int, int, int]] = []
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix="data-") as tmp:
            data = Path(tmp) / "data"
            _register(data, ids)
            before = {i: _stats(env, i) for i in ids}
            args = ["nightly", "--all"] if integrations > 1 else ["nightly"]
            sandbox_cpu = _sandbox_cpu(process.pid)
            cpu, started = _children_cpu(), time.perf_counter()
            command = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *args, "-q"],
                env={**os.environ, **env, "PIPELINE_DATA_DIR": str(data)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            watch = ProcessWatch(command.pid)
            tracer = InFlightTrace(env, ids) if trace else None
            stdout, stderr = command.communicate()
            wall = time.perf_counter() - started
            _reap_orphans(keep=process.pid)
            cpu = _children_cpu() - cpu
            by_kind = watch.stop()
            if tracer is not None:
                samples = tracer.stop()
            sandbox_cpu = _sandbox_cpu(process.pid) - sandbox_cpu
            done = subprocess.CompletedProcess(command.args, command.returncode, stdout, stderr)
            if done.returncode != 0:
                raise SystemExit(
                    f"the run failed ({done.returncode}):\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            after = {i: _stats(env, i) for i in ids}
    finally:
        process.terminate()
        process.wait(timeout=10)
    # API calls only (the sandbox counts downloads among its requests too, as "file").
    calls = {
        i: sum(n for route, n in after[i]["requests"].items() if route != "file")
        - sum(n for route, n in before[i]["requests"].items() if route != "file")
        for i in ids
    }
    downloads = sum(after[i]["file_requests"] - before[i]["file_requests"] for i in ids)
    running = min(len(ids), cores)  # nightly --all's default: one integration per core
    api_floor = max(calls[i] * API_LATENCY / CONCURRENCY for i in ids)
    download_floor = downloads * DOWNLOAD_LATENCY / (DOWNLOADS_PER_RUN * running)
    network = max(api_floor, download_floor)
    cpu_floor = cpu / cores
    return {
        "integrations": len(ids),
        "candidates_each": candidates,
        "api_calls": sum(calls.values()),
        "downloads": downloads,
        "wall_s": round(wall, 2),
        "network_floor_s": round(network, 2),
        "cpu_s": round(cpu, 2),
        "cpu_floor_s": round(cpu_floor, 2),
        "over_floor": round(wall / max(network, cpu_floor), 2),
        "cpu_by_kind": by_kind,
        "sandbox_cpu_s": round(sandbox_cpu, 2),
        # The sandbox shares the cores (a deployment's Kombo does not): the floor with its
        # CPU too, and the ratio against that.
        "cpu_floor_with_sandbox_s": round((cpu + sandbox_cpu) / cores, 2),
        "over_floor_with_sandbox": round(wall / max(network, (cpu + sandbox_cpu) / cores), 2),
        "max_in_flight": max(after[i]["max_in_flight"] for i in ids),
        "refused_concurrency": sum(after[i]["refused_concurrency"] for i in ids),
        "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "",
        "in_flight_trace": samples,
    }


def measure(size: dict, cache: Path, *, trace: bool = False, only: str | None = None) -> dict:
    _adopt_orphans()
    result: dict = {"target": TARGET}
    if only in (None, "many"):
        result["many"] = one_command(size["integrations"], size["candidates"], cache, trace=trace)
    if only in (None, "one"):
        result["one"] = one_command(
            1, size["integrations"] * size["candidates"], cache, trace=trace
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "sandbox-cache")
    parser.add_argument("--trace", action="store_true", help="sample API calls in flight")
    parser.add_argument("--only", choices=["many", "one"], help="run one of the two rows")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    result = measure(size, args.cache, trace=args.trace, only=args.only)
    for name in ("many", "one"):
        if name not in result:
            continue
        r = result[name]
        print(
            f"{r['integrations']:>3} x {r['candidates_each']:>5} candidates: wall {r['wall_s']}s, "
            f"network floor {r['network_floor_s']}s, CPU floor {r['cpu_floor_s']}s "
            f"-> {r['over_floor']} (target {TARGET})"
        )
        kinds = ", ".join(
            f"{kind} {v['cpu_s']} s ({v['processes']})" for kind, v in r["cpu_by_kind"].items()
        )
        print(
            f"    CPU {r['cpu_s']} s: {kinds}; sandbox {r['sandbox_cpu_s']} s; "
            f"at most {r['max_in_flight']} API calls in flight, "
            f"{r['refused_concurrency']} refused; with the sandbox's CPU the floor is "
            f"{r['cpu_floor_with_sandbox_s']}s -> {r['over_floor_with_sandbox']}"
        )
        for at, first, total, actions, files in r["in_flight_trace"]:
            print(
                f"    {at:6.2f}s in flight {first:>3} (all {total:>3}); "
                f"actions {actions:>5}, downloads {files:>5}"
            )
    print(json.dumps({k: v for k, v in result.items()}))


if __name__ == "__main__":
    main()
