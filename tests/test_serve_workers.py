"""``pipeline serve``'s search worker processes over real HTTP: a search a worker answers is
the JSON of ``search --json``; a worker holds no secret; a full queue is 429 with
Retry-After; a worker that dies fails its own search with 503 and is replaced, and the next
search is answered. One worker and no queue, so each of these is certain, not a race."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from tests.serving import WEBHOOK_SECRET, Answer, Served, http, serve, served_world, wait_for

API_KEY = "sk-test-worker-never-sees-this-0123"


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    args = ("--search-workers", "1", "--search-queue", "0")
    with served_world(12, *args, env={"KOMBO_API_KEY": API_KEY}) as served:
        yield served


def _worker_pids(served: Served) -> list[int]:
    """The search workers' pids in the order the server started them (its log says)."""
    pids = []
    for line in served.lines:
        with_json = line.startswith("{")
        message = json.loads(line)["message"] if with_json else line
        found = re.search(r"search worker \d+ started \(pid (\d+)\)", message)
        if found:
            pids.append(int(found.group(1)))
    return pids


def _search(world: dict[str, Any], query: str = "Python") -> Answer:
    server: Served = world["server"]
    return http(f"{server.url}/api/v1/search?q={query}&limit=20", token=world["tokens"]["read"])


def _cli_json(world: dict[str, Any], query: str) -> Any:
    out = io.StringIO()
    where = ["--integration-id", world["integration"], "--data-dir", str(world["data"].data_dir)]
    with redirect_stdout(out), redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as done:
        main(["search", query, "--json", "--limit", "20", *where])
    assert done.value.code in (0, None)
    return json.loads(out.getvalue())


def _page_session(world: dict[str, Any]) -> str:
    """Signed in on the page with the read token, as a browser is: the session's cookie."""
    url = world["server"].url
    form = http(url + "/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.body.decode())
    cookie = form.headers["set-cookie"].split(";", 1)[0]
    assert csrf, form.body[:300]
    body = urllib.parse.urlencode({"token": world["tokens"]["read"], "csrf": csrf[1]})
    parts = urllib.parse.urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    connection.request("POST", "/signin", body=body, headers=headers)
    answer = connection.getresponse()
    connection.close()
    assert answer.status == 303, answer.status
    return str(answer.getheader("set-cookie")).split(";", 1)[0]


def _alive(pid: int) -> bool:
    """Whether any thread of the process is still alive: a killed process's first thread
    is a zombie while its other threads (numpy's) are still ending, and only then is it
    gone for its parent."""
    states = []
    for task in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(task.read_text().rsplit(")", 1)[1].split()[0])
    return any(state not in ("Z", "X") for state in states)


def test_a_worker_answers_the_cli_json_and_holds_no_secret(world: dict[str, Any]) -> None:
    answer = _search(world)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == _cli_json(world, "Python")
    [pid] = _worker_pids(world["server"])
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert API_KEY.encode() not in environ
    assert WEBHOOK_SECRET.encode() not in environ


def test_without_workers_the_server_answers_the_same(world: dict[str, Any]) -> None:
    # PIPELINE_SEARCH_WORKERS=0: searches on the server's own threads, as before the workers.
    plain = serve(world["data"], {"PIPELINE_SEARCH_WORKERS": "0"})
    try:
        assert any("searches in-process" in line for line in plain.lines)
        assert not _worker_pids(plain)
        token = world["tokens"]["read"]
        for path in ("/api/v1/search?q=Python&limit=20",
                     "/api/v1/search?q=Python&by_candidate=true&limit=3",
                     f"/api/v1/similar/{world['hostile']}?limit=3"):  # fmt: skip
            ours = http(world["server"].url + path, token=token)
            theirs = http(plain.url + path, token=token)
            assert ours.status == theirs.status == 200, path
            assert ours.body == theirs.body, path  # byte for byte
    finally:
        assert plain.stop() == 0


def test_a_full_queue_is_429_and_a_dead_worker_503_then_replaced(world: dict[str, Any]) -> None:
    server: Served = world["server"]
    [first] = _worker_pids(server)
    expected = _search(world).json()
    session = _page_session(world)
    # The worker is stopped with a search in hand: with no queue, the next search is
    # refused at once; killed, it fails that search with 503 and another takes its place.
    os.kill(first, signal.SIGSTOP)
    held: list[Answer] = []
    thread = threading.Thread(target=lambda: held.append(_search(world)))
    started = time.monotonic()
    try:
        thread.start()
        time.sleep(0.5)  # the held search reaches the stopped worker
        refused = _search(world)
        assert refused.status == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_searches"
        assert time.monotonic() - started < 5  # refused at once, not after a wait
        page = http(server.url + "/?q=Python", headers={"Cookie": session})
        assert page.status == 429 and page.headers["retry-after"] == "1"
    finally:
        os.kill(first, signal.SIGKILL)
    thread.join(30)
    assert held and held[0].status == 503
    assert held[0].json()["error"]["code"] == "unavailable"
    again = _search(world)
    assert again.status == 200 and again.json() == expected
    pids = wait_for(lambda: _worker_pids(server) if len(_worker_pids(server)) == 2 else None)
    assert pids and pids[0] == first and pids[1] != first and _alive(pids[1])

    # Killed while idle: found dead when the next search comes, replaced, and that search
    # answered.
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: not _alive(pids[1]), timeout=10)
    last = _search(world)
    assert last.json() == expected, server.log()
    assert len(_worker_pids(server)) == 3
    assert not _alive(first)
    metrics = http(f"{server.url}/metrics").body.decode()
    assert "pipeline_search_worker_restarts_total 2.0" in metrics
    assert "pipeline_search_waiting 0.0" in metrics

    # Killed while idle and no search comes: the health check replaces it.
    third = _worker_pids(server)[2]
    os.kill(third, signal.SIGKILL)
    wait_for(lambda: not _alive(third), timeout=10)
    health = http(f"{server.url}/healthz")
    assert health.status == 200 and health.json() == {"status": "ok", "search_workers": 1}
    # (The server's log is read as it comes: its line for the new worker may follow.)
    fourth = wait_for(lambda: _worker_pids(server) if len(_worker_pids(server)) == 4 else None)
    assert fourth and _alive(fourth[3])
    assert _search(world).json() == expected
    assert "Traceback" not in server.log()
