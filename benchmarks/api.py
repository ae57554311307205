"""Search through the HTTP API at size: requests per second and p50/p95 latency with 10
clients at once, against a real ``pipeline serve`` over a data directory of N documents
(one integration; records, texts and index as a run leaves them).

    python benchmarks/api.py                   # 100,000 documents (building them takes minutes)
    python benchmarks/api.py --docs 10000      # smaller, for a shared machine
    python benchmarks/api.py --search-workers 0   # searches on the server's threads, as before

Beside the latencies it prints the CPU each request cost (Linux: from /proc), split between
the server process, its search workers and the benchmark's own clients, and the floor that
puts under the 10 clients' latency: a closed loop of C clients on K cores waits at least
C x (CPU per request) / K per request, however the work is spread.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from index_search import INTEGRATION, QUERIES, app_data, documents  # noqa: E402

from pipeline.config import DataSettings  # noqa: E402
from pipeline.database import Store  # noqa: E402
from pipeline.search import SearchIndex  # noqa: E402
from pipeline.server import new_token  # noqa: E402

CLIENTS = 10
TARGET_P95_MS = 50.0


def build(root: Path, count: int) -> tuple[DataSettings, str, float, list[str]]:
    """A data directory holding ``count`` indexed CVs (records and texts as
    ``index_search.app_data`` writes them, and their index); (its settings, a read token,
    seconds, the fresh queries)."""
    started = time.perf_counter()
    data, docs = app_data(root, documents(count))
    SearchIndex(data.integration(INTEGRATION).index_dir).rebuild(docs)
    store = Store(data.database_url)
    made = new_token(store, integration_id=INTEGRATION, name="bench", admin=False)
    store.close()
    assert made is not None
    return data, made[1], time.perf_counter() - started, fresh_queries(docs)


def start(data: DataSettings, *args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", "0", "-q",
         "--data-dir", str(data.data_dir), *args],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if "serving on http://" in line:
            return process, line.split("serving on ", 1)[1].strip()
    raise RuntimeError("the server did not start")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc; 0 where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The server's child processes (its search workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def fresh_queries(docs: list[Any], count: int = 50_000, seed: int = 5) -> list[str]:
    """Queries no earlier request asked, in the shapes of the repeated ten and in their
    proportions (half one word, then two words, a phrase, OR, a prefix, a misspelt word, a
    tenth each), from words of the documents themselves: the searcher's kept term scores and
    the snippets' cache answer the repeated ten after their first round, not these."""
    rng = random.Random(seed)
    made: dict[str, None] = {}
    while len(made) < count:
        words = [w for w in rng.choice(docs).text.split() if w.isalpha() and len(w) >= 5]
        if len(words) < 3:
            continue
        a, b = rng.sample(words, 2)
        i = rng.randrange(len(words) - 1)
        j = rng.randrange(1, len(a) - 2)
        shape = rng.randrange(10)
        if shape < 5:
            query = a
        elif shape == 5:
            query = f"{a} {b}"
        elif shape == 6:
            query = f'"{words[i]} {words[i + 1]}"'
        elif shape == 7:
            query = f"{a} OR {b}"
        elif shape == 8:
            query = f"{a[:5]}*"
        else:  # two letters swapped, as "Kubernets" is a typing slip
            query = a[:j] + a[j + 1] + a[j] + a[j + 2 :]
        made.setdefault(query, None)
    return list(made)


def load(
    url: str,
    token: str,
    seconds: float,
    clients: int = CLIENTS,
    server: int = 0,
    queries: tuple[str, ...] | list[str] = QUERIES,
) -> dict:
    """``clients`` at once for ``seconds`` after one warm-up round; with ``server`` (its
    pid), the CPU per request of the server, its children and these clients. With more
    queries than requests (the fresh mix), each client takes its own, none asked twice."""
    parts = urllib.parse.urlsplit(url)
    # The repeated ten: each client cycles through all of them; the fresh: client i takes
    # i, i + clients, ... so that no two requests ask the same.
    step = clients if len(queries) > len(QUERIES) else 1
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        mine, n = [], offset
        while time.monotonic() < stop:
            query = urllib.parse.quote(queries[n % len(queries)])
            n += step
            began = time.perf_counter()
            connection.request("GET", f"/api/v1/search?q={query}&limit=10", headers=headers)
            answer = connection.getresponse()
            answer.read()
            mine.append(time.perf_counter() - began)
            if answer.status != 200:
                with lock:
                    errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    # Warm up: each query once (the index's first open, the caches), not counted.
    warm = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    for query in QUERIES:
        warm.request("GET", f"/api/v1/search?q={urllib.parse.quote(query)}",
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        warm.getresponse().read()
    warm.close()
    workers = children(server) if server else []
    cpu_before = [cpu_seconds(server), sum(map(cpu_seconds, workers)), time.process_time()]
    started = time.perf_counter()
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu_after = [cpu_seconds(server), sum(map(cpu_seconds, workers)), time.process_time()]
    latencies.sort()
    figures = {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
    }
    if server:
        spent = [
            (b - a) * 1000 / len(latencies) for a, b in zip(cpu_before, cpu_after, strict=True)
        ]
        figures["cpu_ms_per_request"] = {
            "server": round(spent[0], 2),
            "search_workers": round(spent[1], 2),
            "clients": round(spent[2], 2),
            "total": round(sum(spent), 2),
        }
    return figures


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure(count: int, seconds: float = 20.0, search_workers: int | None = None) -> dict:
    """10 clients at once, and one alone (the server's own cost beside the search's)."""
    args = () if search_workers is None else ("--search-workers", str(search_workers))
    with tempfile.TemporaryDirectory() as tmp:
        data, token, built_s, fresh = build(Path(tmp) / "data", count)
        process, url = start(data, *args)
        try:
            figures = load(url, token, seconds, server=process.pid)
            alone = load(url, token, seconds / 2, clients=1)
            # The last quarter of the fresh queries for the one client: none asked before.
            cut = len(fresh) * 3 // 4
            fresh_figures = load(url, token, seconds, server=process.pid, queries=fresh[:cut])
            fresh_alone = load(url, token, seconds / 2, clients=1, queries=fresh[cut:])
        finally:
            process.terminate()
            process.wait(60)
    spent = figures.get("cpu_ms_per_request", {}).get("total", 0.0)
    return {
        "docs": count,
        "build_s": round(built_s, 1),
        "search_workers": "default" if search_workers is None else search_workers,
        **figures,
        "one_client_p50_ms": alone["p50_ms"],
        "one_client_p95_ms": alone["p95_ms"],
        "fresh": {
            **{k: v for k, v in fresh_figures.items() if k != "clients"},
            "one_client_p50_ms": fresh_alone["p50_ms"],
            "one_client_p95_ms": fresh_alone["p95_ms"],
            "closed_loop_floor_ms": round(
                CLIENTS * fresh_figures.get("cpu_ms_per_request", {}).get("total", 0.0) / cores(), 1
            ),
        },
        "cores": cores(),
        # A closed loop of CLIENTS on these cores cannot wait less than this on average.
        "closed_loop_floor_ms": round(CLIENTS * spent / cores(), 1),
        "target_p95_ms": TARGET_P95_MS,
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--search-workers", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(args.docs, args.seconds, args.search_workers)))


if __name__ == "__main__":
    main()
