"""PostgreSQL beside SQLite, and two workers beside one (issue 19).

    python benchmarks/multihost.py            # 200 candidates; 20 integrations x 20 candidates
    python benchmarks/multihost.py --quick    # 60 candidates; 20 integrations x 5 candidates

Needs the PostgreSQL server binaries and psycopg (a throwaway cluster is started as the
tests start one, ``tests/postgres.py``). The sandbox runs in a process of its own with
little latency (20 ms per API call, 10 ms per download), so that what the database costs
shows rather than the network's floor. Each figure is the wall time of a whole command, a
process of its own as cron starts it:

- ``nightly`` of one integration into a new data directory (and a new database), then the
  same ``nightly --full`` again with nothing changed: SQLite (with Whoosh) against
  PostgreSQL (with its search), and their ratio (target: 1.2 at most);
- ``nightly --all`` over 20 integrations on one PostgreSQL database: one process, against
  two processes with two data directories at once (two machines' work, on one machine);
  throughput ratio = one's wall / two's wall (target on separate machines: 1.7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import integrations  # noqa: E402

from tests import postgres  # noqa: E402

integrations.API_LATENCY = 0.02
integrations.DOWNLOAD_LATENCY = 0.01
ROUNDS = 2
SIZES = {
    "full": {"candidates": 200, "integrations": 20, "per_integration": 20},
    "quick": {"candidates": 60, "integrations": 20, "per_integration": 5},
}


def _pipeline(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, "-q"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate()
    if process.returncode not in (0,):
        raise SystemExit(f"a run failed ({process.returncode}):\n{out[-2000:]}{err[-2000:]}")


def _timed(*processes: subprocess.Popen[str]) -> float:
    started = time.perf_counter()
    for process in processes:
        _wait(process)
    return time.perf_counter() - started


def one_integration(
    cluster: postgres.Cluster, candidates: int, cache: Path, tmp: Path
) -> dict[str, object]:
    process, env, _ = integrations._sandbox(1, candidates, cache)
    figures: dict[str, object] = {}
    seen: dict[str, list[float]] = {}
    try:
        # Each engine ROUNDS times, in turns (the first in each round alternates): the
        # best of each, as the machine's spells move single runs by a quarter.
        for number in range(ROUNDS):
            order = ("sqlite", "postgresql") if number % 2 == 0 else ("postgresql", "sqlite")
            for engine in order:
                data = tmp / f"one-{engine}-{number}"
                url = cluster.database() if engine == "postgresql" else f"sqlite:///{data}/db"
                run_env = {**env, "PIPELINE_DATA_DIR": str(data), "PIPELINE_DATABASE_URL": url}
                started = time.perf_counter()
                _wait(_pipeline(run_env, "nightly"))
                seen.setdefault(f"{engine}_nightly_s", []).append(time.perf_counter() - started)
                started = time.perf_counter()
                _wait(_pipeline(run_env, "nightly", "--full"))
                seen.setdefault(f"{engine}_unchanged_full_s", []).append(
                    time.perf_counter() - started
                )
        figures = {name: round(min(values), 2) for name, values in seen.items()}
        figures.update(
            {f"{name}_all": sorted(round(v, 2) for v in values) for name, values in seen.items()}
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    for kind in ("nightly", "unchanged_full"):
        best = {engine: min(seen[f"{engine}_{kind}_s"]) for engine in ("sqlite", "postgresql")}
        figures[f"{kind}_ratio"] = round(best["postgresql"] / best["sqlite"], 2)
    return figures


def workers(cluster: postgres.Cluster, size: dict, cache: Path, tmp: Path) -> dict[str, object]:
    process, env, ids = integrations._sandbox(size["integrations"], size["per_integration"], cache)
    figures: dict[str, float] = {}
    try:
        for count in (1, 2):
            url = cluster.database()
            base = {**env, "PIPELINE_DATABASE_URL": url}
            first = {**base, "PIPELINE_DATA_DIR": str(tmp / f"w{count}-0")}
            script = (
                "import sys; from pathlib import Path; from pipeline.app import App;"
                "from pipeline.config import DataSettings;"
                "app = App(DataSettings(Path(sys.argv[1]), sys.argv[2]));"
                "[app.add_integration(i) for i in sys.argv[3:]]; app.close()"
            )
            subprocess.run(
                [sys.executable, "-c", script, first["PIPELINE_DATA_DIR"], url, *ids], check=True
            )
            runs = [
                _pipeline(
                    {**base, "PIPELINE_DATA_DIR": str(tmp / f"w{count}-{n}")}, "nightly", "--all"
                )
                for n in range(count)
            ]
            figures[f"workers_{count}_s"] = round(_timed(*runs), 2)
    finally:
        process.terminate()
        process.wait(timeout=10)
    figures["two_over_one_throughput"] = round(figures["workers_1_s"] / figures["workers_2_s"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "sandbox-cache")
    args = parser.parse_args()
    why = postgres.unavailable()
    if why:
        raise SystemExit(why)
    size = SIZES["quick" if args.quick else "full"]
    cluster = postgres.start()
    try:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.cache.parent, prefix="multihost-") as tmp:
            result = {
                "size": "quick" if args.quick else "full",
                "cores": os.cpu_count(),
                **one_integration(cluster, size["candidates"], args.cache, Path(tmp)),
                **workers(cluster, size, args.cache, Path(tmp)),
            }
    finally:
        cluster.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
