"""Start-up of the command line: wall and CPU time of `--help` and of a search, and where a
search's CPU goes (imports, then the command itself), each the least of N runs.

    python -m benchmarks.startup [--runs 7] [--data-dir DIR] [--integration-id ID]

The data directory defaults to a fresh `pipeline demo` (two integrations, 70 documents) under
benchmarks/results/. Bytecode caches are written, as an installed package has them (the
project's test machines set PYTHONDONTWRITEBYTECODE, which would charge every start with
compiling the pipeline's own modules).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Run in a fresh interpreter: the CPU of each step, in the order a search meets them (each
# step counts only what the steps before it did not import).
_STEP = r"""
import contextlib, io, json, sys, time
out = {}
def step(name, work):
    started = time.process_time(); work(); out[name] = time.process_time() - started
"""
_PHASES = (
    _STEP
    + r"""
step("import pipeline.cli (click, config, errors)", lambda: __import__("pipeline.cli"))
step("import pipeline.app, pipeline.sqlite_reader", lambda: [__import__(m) for m in (
    "pipeline.app", "pipeline.sqlite_reader")])
step("import the search package (Whoosh)", lambda: [__import__(m) for m in (
    "pipeline.search._query", "pipeline.search._index", "pipeline.search._results")])
step("import the ranker (numpy)", lambda: __import__("pipeline.search._whoosh._ranker"))
def search():
    from pipeline.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(sys.argv[1:])
step("the search (open database and index, search, print)", search)
print(json.dumps(out))
"""
)
# What a search on SQLite no longer imports (after the command line, as a search would).
_NOT_IMPORTED = (
    _STEP
    + r"""
import pipeline.cli
step("import sqlalchemy (its core)", lambda: __import__("sqlalchemy"))
step("import sqlalchemy.orm", lambda: __import__("sqlalchemy.orm"))
step("import pipeline.database (its models, statements)", lambda: __import__("pipeline.database"))
print(json.dumps(out))
"""
)


def _least_steps(script: str, env: dict[str, str], runs: int) -> dict[str, float]:
    least: dict[str, float] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", script, "search", "python"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        for name, seconds in json.loads(done.stdout.splitlines()[-1]).items():
            least[name] = min(seconds, least.get(name, seconds))
    return least


def _environment(data_dir: Path, integration_id: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PIPELINE_DATA_DIR"] = str(data_dir)
    if integration_id:
        env["KOMBO_INTEGRATION_ID"] = integration_id
    return env


def _timed(command: list[str], env: dict[str, str], runs: int) -> str:
    subprocess.run(command, capture_output=True, env=env)  # writes the bytecode caches
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env, check=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return (
        f"wall {min(walls) * 1000:.0f} ms (median {statistics.median(walls) * 1000:.0f}), "
        f"CPU {min(cpus) * 1000:.0f} ms (median {statistics.median(cpus) * 1000:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--integration-id")
    args = parser.parse_args()
    data_dir, integration_id = args.data_dir, args.integration_id
    if data_dir is None:
        subprocess.run(
            [sys.executable, "-m", "pipeline", "demo", "--data-dir", str(RESULTS / "startup")],
            capture_output=True,
            check=True,
        )
        data_dir = RESULTS / "startup" / "demo"
        integration_id = integration_id or "sandbox:8Xi6iZrwusZqJmDGXs49GBmJ"
    env = _environment(data_dir, integration_id)
    print(f"load average {os.getloadavg()[0]:.1f}, least of {args.runs} runs")
    for command in (["--help"], ["search", "--help"], ["search", "python"]):
        line = _timed([sys.executable, "-m", "pipeline", *command], env, args.runs)
        print(f"pipeline {' '.join(command):14} {line}")
    for name, seconds in _least_steps(_PHASES, env, args.runs).items():
        print(f"  {seconds * 1000:5.0f} ms CPU  {name}")
    print("not imported by a search on SQLite:")
    for name, seconds in _least_steps(_NOT_IMPORTED, env, args.runs).items():
        print(f"  {seconds * 1000:5.0f} ms CPU  {name}")


if __name__ == "__main__":
    main()
