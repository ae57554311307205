"""Every performance figure in one run, side by side, as ratios (these machines are noisy).

    python -m benchmarks            # full size: 2,000 candidates, 10,000 and 100,000 documents
    python -m benchmarks --quick    # a laptop's size: 300 candidates, 2,000 and 10,000 documents

Prints one table and writes it as JSON (``benchmarks/results/run.json``):

- end to end: N sandbox candidates (PDF and DOCX, about two files each), 100 ms per API call
  and 50 ms per download. Wall time; the network floor (calls x latency / concurrency, API
  calls and downloads each against their own bound, the larger); the CPU floor (extraction
  and indexing CPU / cores); wall / max(floors): the median of three runs, each into a new
  data directory;
- the same run again with nothing changed: wall time against the listing calls' floor;
- extraction alone: pypdf against ``pdftotext`` on the same PDFs (the shared corpus when it
  is beside the project, else the sandbox's own PDFs);
- indexing alone: Whoosh against SQLite FTS5 on the same generated CVs;
- search: p50 and p95 over a fixed query mix at both index sizes;
- memory: peak RSS of the pipeline's process for the small and the full end-to-end run;
- integrations: ``nightly --all`` over 20 integrations x 100 candidates beside one of 2,000
  (``benchmarks/integrations.py``; quick: 5 x 40 beside 1 x 200);
- the API: search through ``pipeline serve`` with 10 clients at once at the largest index
  size, requests per second and p50/p95 (``benchmarks/api.py``);
- OCR (``ocr.py``): Tesseract's pages per second on the sandbox's scans and photos, on one
  core and on every core, beside pdftotext on their born-digital twins, and OCR's share of
  a run's CPU when one CV in twenty is a scan.

Each end-to-end run is a process of its own (``--child``), so that its peak RSS is its own.
The sandbox runs in a process of its own too, its documents rendered once into a cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import api  # noqa: E402
import extraction  # noqa: E402
import fetch_download  # noqa: E402
import index_search  # noqa: E402
import integrations  # noqa: E402
import ocr  # noqa: E402

SIZES = {
    "full": {
        "candidates": 2000,
        "small": 500,
        "docs": [10_000, 100_000],
        "rounds": 5,
        "scans": 8,
    },
    "quick": {"candidates": 300, "small": 75, "docs": [2_000, 10_000], "rounds": 3, "scans": 4},
}
# The end-to-end run is made this many times, each into a new data directory, and the table
# shows the median run: a single run's ratio swings by a quarter with the machine's spells.
E2E_RUNS = 3
API_LATENCY = 0.1
DOWNLOAD_LATENCY = 0.05
TARGETS = {
    "end_to_end_over_floor": 1.3,
    "rerun_over_floor": 1.5,
    "whoosh_over_fts5_time": 20.0,
    "search_p95_ms_largest": 50.0,
    "peak_rss_ratio": 1.3,
}


# -- one end-to-end run, in a process of its own ------------------------------------------------


def child(data_dir: Path, ids_file: Path) -> None:
    from pipeline.app import App
    from pipeline.config import DataSettings, Options, resolve_kombo

    settings = resolve_kombo(Options(), env=dict(os.environ))
    data = DataSettings(data_dir, f"sqlite:///{data_dir}/pipeline.db")
    ids = ids_file.read_text().split()
    with App(data, settings) as pipeline:
        pipeline.store.ensure_schema()  # opened before the clock starts, as a run finds it
        started, cpu = time.perf_counter(), time.process_time()
        summary = pipeline.ingest(ids)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        json.dumps(
            {
                "wall_s": wall,
                "exit_code": summary.exit_code,
                "counts": summary.counts(),
                "extract_cpu_s": summary.extract_cpu,
                "index_cpu_s": summary.index_cpu,
                "main_cpu_s": cpu,  # this process: listings, the database, handing work on
                # the download process and the index writer, waited for by now
                "helpers_cpu_s": fetch_download.children_cpu(),
                "concurrency": settings.concurrency,
                "download_concurrency": settings.download_concurrency,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                # the largest of the download process and the index writer (waited for by
                # now; extraction workers belong to the forkserver and are not counted)
                "peak_rss_helpers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                / 1024,
            }
        )
    )


def ingest(env: dict[str, str], ids: list[str], data_dir: Path, sandbox: int) -> dict:
    ids_file = data_dir.parent / f"{data_dir.name}.ids"
    ids_file.write_text("\n".join(ids))
    before = fetch_download.stats(env)
    sandbox_cpu = fetch_download.process_cpu(sandbox)
    # Not ``python run.py``: the run's extraction workers would each import a script given
    # by path again (this one imports the whole pipeline: a second of CPU per run), which
    # ``python -m pipeline`` and the installed command do not do.
    start = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import run; run.main()"
    done = subprocess.run(
        [sys.executable, "-c", start, "--child", str(data_dir), str(ids_file)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the end-to-end run failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    after = fetch_download.stats(env)
    result["api_calls"] = after["requests"].get("action", 0) - before["requests"].get("action", 0)
    result["downloads"] = after["file_requests"] - before["file_requests"]
    result["sandbox_cpu_s"] = fetch_download.process_cpu(sandbox) - sandbox_cpu
    return result


def end_to_end(size: dict, cache: Path) -> dict:
    args = argparse.Namespace(
        candidates=size["candidates"],
        seed=7,
        latency=API_LATENCY,
        download_latency=DOWNLOAD_LATENCY,
    )
    process, env = fetch_download.start_sandbox(args, cache)
    cores = os.cpu_count() or 1
    try:
        ids = fetch_download.candidate_ids(env)
        # Data directories where a user's would be (/tmp creates files several times slower
        # on this machine).
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix="data-") as tmp:
            fulls = []
            for number in range(E2E_RUNS):
                if number:
                    shutil.rmtree(Path(tmp) / "full")
                fulls.append(ingest(env, ids, Path(tmp) / "full", process.pid))
            rerun = ingest(env, ids, Path(tmp) / "full", process.pid)
            small = ingest(env, ids[: size["small"]], Path(tmp) / "small", process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)

    def network_floor(run: dict) -> float:
        return max(
            run["api_calls"] * API_LATENCY / run["concurrency"],
            run["downloads"] * DOWNLOAD_LATENCY / run["download_concurrency"],
        )

    def over_floor(run: dict) -> float:
        cpu = (run["extract_cpu_s"] + run["index_cpu_s"]) / cores
        return run["wall_s"] / max(network_floor(run), cpu)

    full = sorted(fulls, key=over_floor)[len(fulls) // 2]
    cpu = (full["extract_cpu_s"] + full["index_cpu_s"]) / cores
    peak_full = max(run["peak_rss_mb"] for run in fulls)
    rerun_floor = rerun["api_calls"] * API_LATENCY / rerun["concurrency"]
    return {
        "candidates": len(ids),
        "attachments": sum(v for k, v in full["counts"].items() if k not in _NOT_ATTACHMENTS),
        "api_calls": full["api_calls"],
        "downloads": full["downloads"],
        "exit_code": full["exit_code"],
        "wall_s": round(full["wall_s"], 2),
        "network_floor_s": round(network_floor(full), 2),
        "cpu_floor_s": round(cpu, 2),
        "extract_cpu_s": round(full["extract_cpu_s"], 2),
        "index_cpu_s": round(full["index_cpu_s"], 2),
        "end_to_end_over_floor": round(over_floor(full), 2),
        "runs": len(fulls),
        "runs_wall_s": sorted(round(run["wall_s"], 2) for run in fulls),
        "runs_over_floor": sorted(round(over_floor(run), 2) for run in fulls),
        # Where the run's CPU went (the extraction workers' is extract_cpu_s): the run is
        # bound by it whenever it passes the cores x the wall time.
        "main_cpu_s": round(full["main_cpu_s"], 2),
        "helpers_cpu_s": round(full["helpers_cpu_s"], 2),
        "sandbox_cpu_s": round(full["sandbox_cpu_s"], 2),
        "rerun_wall_s": round(rerun["wall_s"], 2),
        "rerun_api_calls": rerun["api_calls"],
        "rerun_downloads": rerun["downloads"],
        "rerun_floor_s": round(rerun_floor, 2),
        "rerun_over_floor": round(rerun["wall_s"] / rerun_floor, 2),
        "small_candidates": size["small"],
        "peak_rss_small_mb": round(small["peak_rss_mb"], 1),
        # The largest of the full runs: memory is judged by its worst case.
        "peak_rss_full_mb": round(peak_full, 1),
        "peak_rss_ratio": round(peak_full / small["peak_rss_mb"], 2),
        "peak_rss_helpers_small_mb": round(small["peak_rss_helpers_mb"], 1),
        "peak_rss_helpers_full_mb": round(max(run["peak_rss_helpers_mb"] for run in fulls), 1),
    }


_NOT_ATTACHMENTS = {"candidates", "candidate_errors", "unchanged", "reused", "erased"}


def pdfs(cache: Path) -> tuple[list[Path], Path | None]:
    corpus = ROOT.parent.parent / "shared" / "corpus"
    if corpus.is_dir():
        return sorted(corpus.rglob("*.pdf")), corpus
    # No shared corpus (a user's clone): the sandbox's own PDFs, rendered into the cache.
    found = [p for p in sorted(cache.glob("*.bin")) if p.read_bytes()[:5] == b"%PDF-"]
    return found[:200], None


# -- the table ------------------------------------------------------------------------------------


def _cpu_share(e2e: dict) -> str:
    parts = ("extract_cpu_s", "main_cpu_s", "helpers_cpu_s", "sandbox_cpu_s")
    if any(e2e.get(name) is None for name in parts):
        return "?"
    used = sum(e2e[name] for name in parts)
    return f"{used / (e2e['wall_s'] * (os.cpu_count() or 1)):.0%}"


def table(result: dict) -> list[tuple[str, str, str]]:
    e2e, ext = result["end_to_end"], result["extraction"]
    rows = [
        (
            f"end to end, {e2e['candidates']} candidates ({e2e['attachments']} attachments)",
            f"{e2e['wall_s']} s, the median of {e2e.get('runs', 1)} runs "
            f"({', '.join(map(str, e2e.get('runs_wall_s', [e2e['wall_s']])))} s; "
            f"network floor {e2e['network_floor_s']} s, CPU floor {e2e['cpu_floor_s']} s)",
            f"{e2e['end_to_end_over_floor']} (<= 1.3; runs "
            f"{', '.join(map(str, e2e.get('runs_over_floor', [])))})",
        ),
        (
            "  where its CPU went",
            f"extraction {e2e['extract_cpu_s']} s, main process {e2e.get('main_cpu_s')} s, "
            f"download and index processes {e2e.get('helpers_cpu_s')} s, "
            f"sandbox {e2e.get('sandbox_cpu_s')} s",
            f"{_cpu_share(e2e)} of the cores",
        ),
        (
            "the same run again, nothing changed",
            f"{e2e['rerun_wall_s']} s ({e2e['rerun_api_calls']} calls, "
            f"{e2e['rerun_downloads']} downloads; floor {e2e['rerun_floor_s']} s)",
            f"{e2e['rerun_over_floor']} (<= 1.5)",
        ),
        (
            f"extraction, {ext['files']} PDFs, {ext['pages']} pages",
            f"pypdf {ext['pypdf_pages_per_s']} pages/s, "
            f"pdftotext {ext['pdftotext_pages_per_s']} pages/s",
            f"{ext['pypdf_over_pdftotext_speed']} (speed ratio)",
        ),
    ]
    for row in result["index"]:
        rows.append(
            (
                f"indexing {row['docs']:,} documents",
                f"Whoosh {row['whoosh_docs_per_s']} docs/s, FTS5 {row['fts5_docs_per_s']} docs/s",
                f"{row['whoosh_over_fts5_time']} (<= 20)",
            )
        )
        rows.append(
            (
                f"search at {row['docs']:,} documents",
                f"p50 {row['search_p50_ms']} ms, p95 {row['search_p95_ms']} ms",
                "p95 < 50 ms at the largest",
            )
        )
    for name in ("many", "one"):
        run = result.get("integrations", {}).get(name)
        if run is not None:
            rows.append(
                (
                    f"nightly{' --all' if name == 'many' else ''}, {run['integrations']} x "
                    f"{run['candidates_each']} candidates",
                    f"{run['wall_s']} s (network floor {run['network_floor_s']} s, CPU floor "
                    f"{run['cpu_floor_s']} s)",
                    f"{run['over_floor']} (<= 1.3)",
                )
            )
    served = result.get("api")
    if served is not None:
        rows.append(
            (
                f"search through the API at {served['docs']:,} documents, "
                f"{served['clients']} clients",
                f"{served['requests_per_s']} requests/s, p50 {served['p50_ms']} ms, "
                f"p95 {served['p95_ms']} ms (one client: p95 {served['one_client_p95_ms']} ms)",
                "p95 < 50 ms",
            )
        )
    if "ocr" in result:
        o = result["ocr"]
        rows.append(
            (
                f"OCR, {o['documents']} scans and photos, {o['pages']} pages",
                f"{o['ocr_pages_per_s_one_core']} pages/s on one core, "
                f"{o['ocr_pages_per_s_every_core']} on {o['cores']}; pdftotext "
                f"{o['pdftotext_pages_per_s_twins']} pages/s on the born-digital twins",
                f"{o['ocr_share_of_run_cpu_one_in_twenty']:.0%} of a run's CPU at 1 scan in 20",
            )
        )
    rows.append(
        (
            f"peak RSS, {e2e['small_candidates']} vs {e2e['candidates']} candidates",
            f"{e2e['peak_rss_small_mb']} MB vs {e2e['peak_rss_full_mb']} MB (largest helper "
            f"process {e2e.get('peak_rss_helpers_small_mb')} vs "
            f"{e2e.get('peak_rss_helpers_full_mb')} MB)",
            f"{e2e['peak_rss_ratio']} (<= 1.3)",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a laptop's size")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["e2e", "extraction", "index", "integrations", "api", "ocr"],
        help="sections to leave out (their figures from the last run of this size are kept)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "sandbox-cache")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "run.json")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    size = SIZES["quick" if args.quick else "full"]
    previous: dict = {}
    if args.skip and args.json.exists():
        # Sections skipped now keep their figures from the last run of the same size.
        previous = json.loads(args.json.read_text())
        if previous.get("size") != ("quick" if args.quick else "full"):
            previous = {}
    result: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "size": "quick" if args.quick else "full",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "targets": TARGETS,
    }
    for section in ("end_to_end", "extraction", "index", "integrations", "api", "ocr"):
        if section in previous:
            result[section] = previous[section]
    if "e2e" not in args.skip:
        result["end_to_end"] = end_to_end(size, args.cache)
        print(json.dumps(result["end_to_end"]), flush=True)
    if "extraction" not in args.skip:
        files, root = pdfs(args.cache)
        result["extraction"] = extraction.measure(files, root)
        result["extraction"].pop("rows")
        print(json.dumps(result["extraction"]), flush=True)
    if "index" not in args.skip:
        result["index"] = []
        for count in size["docs"]:
            result["index"].append(index_search.measure(count, size["rounds"]))
            print(json.dumps(result["index"][-1]), flush=True)
    if "integrations" not in args.skip:
        sized = integrations.SIZES["quick" if args.quick else "full"]
        result["integrations"] = integrations.measure(sized, args.cache)
        print(json.dumps(result["integrations"]), flush=True)
    if "api" not in args.skip:
        result["api"] = api.measure(size["docs"][-1])
        print(json.dumps(result["api"]), flush=True)
    if "ocr" not in args.skip:
        result["ocr"] = ocr.measure(size["scans"], ocr.RUN_CPU_PER_CANDIDATE)
        print(json.dumps(result["ocr"]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    if all(section in result for section in ("end_to_end", "extraction", "index")):
        print(f"\n{result['size']} size, {result['date']}, {result['machine']}")
        rows = table(result)
        width = max(len(r[0]) for r in rows)
        for what, figures, ratio in rows:
            print(f"{what:<{width}}  {figures}  ->  {ratio}")


if __name__ == "__main__":
    main()
