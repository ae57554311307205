"""Kombo's webhooks against a real ``pipeline serve``: the signature first, coalesced runs of
the real engine against the sandbox, duplicates, unknown integrations, and SIGTERM with a
run in flight."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from pipeline.server import signature
from tests.serving import WEBHOOK_SECRET, Answer, data_settings, http, ingest, serve, wait_for


@pytest.fixture(scope="module")
def hooked() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = data_settings(Path(tmp) / "data")
        with SandboxServer(World(candidates=6, seed=11)) as sandbox:
            ingest(sandbox, data)
            env = {"KOMBO_API_KEY": sandbox.api_key, "KOMBO_BASE_URL": sandbox.base_url}
            served = serve(data, env)
            try:
                yield {"data": data, "sandbox": sandbox, "server": served}
            finally:
                served.stop()


def _event(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    body = {"id": event_id or uuid.uuid4().hex, "type": kind, "data": data}
    return json.dumps(body).encode()


def _changed(integration_id: str, event_id: str | None = None) -> bytes:
    data = {
        "integration_id": integration_id,
        "integration_tool": "personio",
        "integration_category": "ATS",
        "changed_models": [{"name": "ats_candidates"}, {"name": "ats_attachments"}],
    }
    return _event("data-changed", data, event_id)


def _post(w: dict[str, Any], body: bytes, sign: str | None = WEBHOOK_SECRET) -> Answer:
    headers = {"Content-Type": "application/json"}
    if sign is not None:
        headers["X-Kombo-Signature"] = signature(sign.encode(), body)
    started = time.monotonic()
    answer = http(w["server"].url + "/webhooks/kombo", method="POST", body=body, headers=headers)
    assert time.monotonic() - started < 1.0, "a webhook is answered within a second"
    return answer


def _runs(w: dict[str, Any]) -> list[tuple[str, str]]:
    db = sqlite3.connect(w["data"].data_dir / "pipeline.db")
    try:
        return [tuple(r) for r in db.execute("SELECT kind, status FROM runs ORDER BY id")]
    finally:
        db.close()


def _settled(w: dict[str, Any], count: int, timeout: float = 120) -> list[tuple[str, str]]:
    def done() -> list[tuple[str, str]] | None:
        runs = _runs(w)
        if len(runs) < count or any(status == "running" for _, status in runs):
            return None
        metrics = http(w["server"].url + "/metrics").body.decode()
        going = [line for line in metrics.splitlines()
                 if line.startswith("pipeline_server_runs_in_flight{")]  # fmt: skip
        return runs if all(line.endswith(" 0.0") for line in going) else None

    runs = wait_for(done, timeout, 0.2)
    assert runs, f"runs did not settle: {_runs(w)}\n{w['server'].log()}"
    return runs


def test_unsigned_or_wrongly_signed_webhooks_are_refused_and_change_nothing(hooked) -> None:  # type: ignore[no-untyped-def]
    before = _runs(hooked)
    integration = hooked["sandbox"].integration_id
    body = _changed(integration)
    for answer in (
        _post(hooked, body, sign=None),
        _post(hooked, body, sign="another-secret"),
        http(hooked["server"].url + "/webhooks/kombo", method="POST", body=body,
             headers={"X-Kombo-Signature": signature(WEBHOOK_SECRET.encode(), body + b" ")}),
    ):  # fmt: skip
        assert answer.status == 401
        assert answer.json()["error"]["code"] == "unauthorized"
    time.sleep(1)
    assert _runs(hooked) == before
    # The refused id is not spent: signed properly it is acted on.
    assert _post(hooked, body).json()["outcome"] == "run_started"
    runs = _settled(hooked, len(before) + 1)
    assert runs[-1] == ("nightly", "succeeded")


def test_a_burst_of_a_hundred_means_one_run_going_and_one_waiting(hooked) -> None:  # type: ignore[no-untyped-def]
    before = len(_settled(hooked, 0))
    integration = hooked["sandbox"].integration_id
    # The first run's listing takes a while, so that the burst arrives while it goes.
    hooked["sandbox"].add_fault(kind="slow", seconds=3, match="/ats/candidates", times=1)
    first = _post(hooked, _changed(integration)).json()["outcome"]
    assert first == "run_started"
    assert wait_for(lambda: len(_runs(hooked)) > before, 20)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: _post(hooked, _changed(integration)), range(100)))
    outcomes = [a.json()["outcome"] for a in answers]
    assert all(a.status == 200 for a in answers)
    assert outcomes.count("run_queued") == 1
    assert outcomes.count("run_coalesced") == 99
    _settled(hooked, before + 2)
    time.sleep(1)  # nothing more follows
    assert _runs(hooked)[before:] == [("nightly", "succeeded")] * 2


def test_the_same_event_twice_is_acted_on_once(hooked) -> None:  # type: ignore[no-untyped-def]
    before = len(_settled(hooked, 0))
    body = _changed(hooked["sandbox"].integration_id, event_id="evt-duplicate-1")
    assert _post(hooked, body).json()["outcome"] == "run_started"
    _settled(hooked, before + 1)
    assert _post(hooked, body).json()["outcome"] == "duplicate"
    time.sleep(1)
    assert len(_runs(hooked)) == before + 1


def test_unknown_integrations_and_other_events_do_nothing(hooked) -> None:  # type: ignore[no-untyped-def]
    before = _settled(hooked, 0)
    unknown = _post(hooked, _changed("never:registered"))
    assert unknown.status == 200 and unknown.json()["outcome"] == "unknown_integration"
    integration = hooked["sandbox"].integration_id
    jobs_only = _event("data-changed", {"integration_id": integration,
                                        "changed_models": [{"name": "ats_jobs"}]})  # fmt: skip
    assert _post(hooked, jobs_only).json()["outcome"] == "ignored"
    assert _post(hooked, _event("sync-finished", {})).json()["outcome"] == "ignored"
    assert _post(hooked, b"not json").status == 400
    time.sleep(1)
    assert _runs(hooked) == before
    assert "never:registered" in hooked["server"].log()
    metrics = http(hooked["server"].url + "/metrics").body.decode()
    assert 'pipeline_webhooks_total{outcome="unknown_integration",type="data-changed"}' in metrics
    assert 'pipeline_webhooks_total{outcome="bad_signature",type="unknown"}' in metrics


def _state(w: dict[str, Any], integration_id: str) -> tuple[str, str | None]:
    db = sqlite3.connect(w["data"].data_dir / "pipeline.db")
    try:
        row = db.execute("SELECT state, paused_reason FROM integrations WHERE integration_id = ?",
                         (integration_id,)).fetchone()  # fmt: skip
    finally:
        db.close()
    return row[0], row[1]


def test_lifecycle_events_pause_resume_and_mark_deleted(hooked) -> None:  # type: ignore[no-untyped-def]
    integration = hooked["sandbox"].integration_id
    before = _settled(hooked, 0)
    inactive = {"id": integration, "state": "INACTIVE", "setup_status": "COMPLETED"}
    assert _post(hooked, _event("integration-state-changed", inactive)).json()["outcome"] == (
        "paused"
    )
    assert wait_for(lambda: _state(hooked, integration)[0] == "paused", 10)
    assert "INACTIVE" in str(_state(hooked, integration)[1])
    # A paused integration is not run by its webhooks either.
    assert _post(hooked, _changed(integration)).json()["outcome"] == "run_paused"
    active = {**inactive, "state": "ACTIVE"}
    assert _post(hooked, _event("integration-state-changed", active)).json()["outcome"] == (
        "resumed"
    )
    assert wait_for(lambda: _state(hooked, integration)[0] == "active", 10)
    deleted = {"id": integration, "tool": "personio", "end_user": {"organization_name": "Acme"}}
    assert _post(hooked, _event("integration-deleted", deleted)).json()["outcome"] == "deleted"
    assert wait_for(lambda: _state(hooked, integration)[0] == "paused", 10)
    assert "deleted" in str(_state(hooked, integration)[1])
    time.sleep(0.5)
    assert _runs(hooked) == before
    assert _post(hooked, _event("integration-state-changed", active)).json()["outcome"] == (
        "resumed"
    )
    assert wait_for(lambda: _state(hooked, integration)[0] == "active", 10)


def test_sigterm_stops_the_server_and_records_the_run_interrupted(hooked) -> None:  # type: ignore[no-untyped-def]
    before = len(_settled(hooked, 0))
    hooked["sandbox"].add_fault(kind="slow", seconds=30, match="/ats/candidates", times=1)
    assert _post(hooked, _changed(hooked["sandbox"].integration_id)).json()["outcome"] == (
        "run_started"
    )
    assert wait_for(lambda: len(_runs(hooked)) > before, 20)
    time.sleep(1)
    started = time.monotonic()
    assert hooked["server"].stop() == 0
    assert time.monotonic() - started < 25
    assert _runs(hooked)[-1] == ("nightly", "interrupted")
    # The API key never reached the server's log.
    assert hooked["sandbox"].api_key not in hooked["server"].log()
