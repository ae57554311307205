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
- wall / max(floors), the figure of ``run.py``'s end-to-end row (target 1.3).

Also run by ``python -m benchmarks`` (its "integrations" section).
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


def one_command(integrations: int, candidates: int, cache: Path) -> dict:
    """One ``nightly --all`` (or, for one integration, ``nightly``) into a new data
    directory, with its floors."""
    process, env, ids = _sandbox(integrations, candidates, cache)
    cores = os.cpu_count() or 1
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix="data-") as tmp:
            data = Path(tmp) / "data"
            _register(data, ids)
            before = {i: _stats(env, i) for i in ids}
            args = ["nightly", "--all"] if integrations > 1 else ["nightly"]
            cpu, started = _children_cpu(), time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", *args, "-q"],
                env={**os.environ, **env, "PIPELINE_DATA_DIR": str(data)},
                capture_output=True,
                text=True,
                check=False,
            )
            wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
            if done.returncode != 0:
                raise SystemExit(
                    f"the run failed ({done.returncode}):\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            after = {i: _stats(env, i) for i in ids}
    finally:
        process.terminate()
        process.wait(timeout=10)
    calls = {
        i: sum(after[i]["requests"].values()) - sum(before[i]["requests"].values()) for i in ids
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
        "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "",
    }


def measure(size: dict, cache: Path) -> dict:
    many = one_command(size["integrations"], size["candidates"], cache)
    one = one_command(1, size["integrations"] * size["candidates"], cache)
    return {"many": many, "one": one, "target": TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "sandbox-cache")
    args = parser.parse_args()
    result = measure(SIZES["quick" if args.quick else "full"], args.cache)
    for name in ("many", "one"):
        r = result[name]
        print(
            f"{r['integrations']:>3} x {r['candidates_each']:>5} candidates: wall {r['wall_s']}s, "
            f"network floor {r['network_floor_s']}s, CPU floor {r['cpu_floor_s']}s "
            f"-> {r['over_floor']} (target {TARGET})"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
