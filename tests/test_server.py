"""``pipeline serve`` over real HTTP: a real server process on a free port over a data
directory ingested from the sandbox; tokens through the real CLI."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.schemas import validator
from tests.serving import HOSTILE_TEXT, OTHER_INTEGRATION, Served, http, served_world


def _pipeline(*args: str) -> tuple[int, str, str]:
    """The real command in its own process, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items()
                                                       if not k.startswith("KOMBO_")})  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    with served_world() as served:
        yield served


def _get(w: dict[str, Any], path: str, who: str | None = "read", **params: Any) -> Any:
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    server: Served = w["server"]
    return http(server.url + path + query, token=w["tokens"][who] if who else None)


def test_every_api_route_needs_a_token(world: dict[str, Any]) -> None:
    some = next(iter(world["sandbox"].world.attachments))
    for path in ("/api/v1/search?q=python", f"/api/v1/attachments/{some}", "/api/v1/status",
                 f"/api/v1/attachments/{some}/file", "/api/v1/export"):  # fmt: skip
        missing = http(world["server"].url + path)
        wrong = http(world["server"].url + path, token="pk_abcdef012345_wrongsecret")
        for answer in (missing, wrong):
            assert answer.status == 401, path
            assert answer.json()["error"]["code"] == "unauthorized"


def test_search_answers_the_same_json_as_the_cli(world: dict[str, Any]) -> None:
    answer = _get(world, "/api/v1/search", q="Python", limit=50)
    assert answer.status == 200
    where = ["--integration-id", world["integration"], "--data-dir", str(world["data"].data_dir)]
    code, out, _ = _cli("search", "Python", "--json", "--limit", "50", *where)
    assert code == 0
    assert answer.json() == json.loads(out)
    assert answer.json()["total"] > 0
    grouped = _get(world, "/api/v1/search", q="Python", by_candidate="true", limit=3).json()
    people = [c["candidate_id"] for c in grouped["candidates"]]
    assert len(people) == len(set(people)) == 3
    assert grouped["total"] == len({h["candidate_id"] for h in answer.json()["hits"]})
    second = _get(world, "/api/v1/search", q="Python", by_candidate="true", limit=3, offset=3)
    assert not set(people) & {c["candidate_id"] for c in second.json()["candidates"]}


def test_queries_that_cannot_be_used_are_400_with_the_reason(world: dict[str, Any]) -> None:
    long = _get(world, "/api/v1/search", q="zzqx " * 400)
    assert long.status == 400
    assert long.json()["error"]["code"] == "query_too_long"
    assert "characters" in long.json()["error"]["message"]
    broken = _get(world, "/api/v1/search", q='"unclosed AND (')
    assert broken.status in (200, 400)  # the parser forgives what it can
    for params in ({"q": "x", "limit": "0"}, {"q": "x", "type": "PHOTO"}, {"q": ""},
                   {"q": "x", "since": "yesterday"}):  # fmt: skip
        answer = _get(world, "/api/v1/search", **params)
        assert answer.status == 400, params
        assert set(answer.json()["error"]) == {"code", "message"}


def test_an_attachment_its_record_text_and_file(world: dict[str, Any]) -> None:
    hostile = world["hostile"]
    record = _get(world, f"/api/v1/attachments/{hostile}").json()
    assert record["attachment_id"] == hostile and "text" not in record
    validator("export_record.schema.json").validate({**record, "text": None})
    text = _get(world, f"/api/v1/attachments/{hostile}/text")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert "<script>window.pwned=1;" in text.body.decode()
    original = _get(world, f"/api/v1/attachments/{hostile}/file")
    assert original.body == HOSTILE_TEXT
    disposition = original.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "filename=" in disposition
    assert original.headers["x-content-type-options"] == "nosniff"
    assert original.headers["content-type"] == "application/octet-stream"
    for path in ("/api/v1/attachments/nosuchattachment", "/api/v1/attachments/nosuch/file",
                 "/api/v1/similar/nosuch"):  # fmt: skip
        answer = _get(world, path)
        assert answer.status == 404 and answer.json()["error"]["code"] == "not_found"
    similar = _get(world, f"/api/v1/similar/{hostile}", limit=3).json()
    assert similar["hits"] and all(h["attachment_id"] != hostile for h in similar["hits"])


def test_another_integrations_token_sees_nothing_of_this_one(world: dict[str, Any]) -> None:
    hostile = world["hostile"]
    ours = {c.id for c in world["sandbox"].world.ordered()}
    theirs = {c.id for c in world["sandbox"].integration(OTHER_INTEGRATION).world.ordered()}
    assert theirs and not ours & theirs
    found = _get(world, "/api/v1/search", who="other", q="Python OR Profile", limit=100).json()
    assert {h["candidate_id"] for h in found["hits"]} <= theirs
    assert found["hits"], "the other integration finds its own"
    for path in (f"/api/v1/attachments/{hostile}", f"/api/v1/attachments/{hostile}/text",
                 f"/api/v1/attachments/{hostile}/file", f"/api/v1/similar/{hostile}"):  # fmt: skip
        assert _get(world, path, who="other").status == 404, path
    exported = _get(world, "/api/v1/export", who="other", status="all")
    records = [json.loads(line) for line in exported.body.decode().splitlines()]
    assert records and {r["candidate_id"] for r in records} <= theirs
    assert {r["integration_id"] for r in records} == {OTHER_INTEGRATION}
    status = _get(world, "/api/v1/status", who="other").json()
    assert status["integration_id"] == OTHER_INTEGRATION
    assert sum(status["attachments"].values()) == len(records)
    candidate = world["sandbox"].world.ordered()[0].id
    erase = http(world["server"].url + f"/api/v1/candidates/{candidate}", method="DELETE",
                 token=world["tokens"]["other"])  # fmt: skip
    assert erase.status == 404
    mine = _get(world, "/api/v1/search", q="Python", limit=100).json()
    assert mine["total"] > 0 and {h["candidate_id"] for h in mine["hits"]} <= ours
    assert candidate in {
        h["candidate_id"]
        for h in _get(world, "/api/v1/search", q="Profile OR Profil OR Perfil", limit=100).json()[
            "hits"
        ]
    }
    # A token of an integration that is not registered reaches nothing.
    code, out, err = _pipeline("tokens", "create", "--integration-id", "nobody:here",
                               "--data-dir", str(world["data"].data_dir))  # fmt: skip
    assert code == 0 and "not registered" in err
    stranger = out.strip().splitlines()[-1]
    assert http(world["server"].url + "/api/v1/search?q=Python", token=stranger).status == 404


def test_status_export_and_erasure_by_scope(world: dict[str, Any]) -> None:
    status = _get(world, "/api/v1/status").json()
    assert status["attachments"]["indexed"] > 0 and status["runs"][0]["kind"] == "ingest"
    assert _get(world, "/api/v1/export").status == 403
    exported = _get(world, "/api/v1/export", who="admin", status="all")
    assert exported.status == 200
    records = [json.loads(line) for line in exported.body.decode().splitlines()]
    assert len(records) == sum(status["attachments"].values())
    for record in records:
        validator("export_record.schema.json").validate(record)
    # Erasure: admin only; then the candidate is gone from search and records.
    victim = world["sandbox"].world.ordered()[1].id
    url = world["server"].url + f"/api/v1/candidates/{victim}"
    assert http(url, method="DELETE", token=world["tokens"]["read"]).status == 403
    erased = http(url, method="DELETE", token=world["tokens"]["admin"])
    assert erased.status == 200 and erased.json()["candidate_id"] == victim
    assert http(url, method="DELETE", token=world["tokens"]["admin"]).status == 404
    hits = _get(world, "/api/v1/search", q="Python", limit=100).json()["hits"]
    assert victim not in {h["candidate_id"] for h in hits}


def test_health_metrics_openapi_and_headers(world: dict[str, Any]) -> None:
    url = world["server"].url
    health = http(url + "/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    _get(world, "/api/v1/search", q="Python")
    metrics = http(url + "/metrics").body.decode()
    assert "pipeline_search_seconds_bucket" in metrics
    assert f'pipeline_attachments{{integration_id="{world["integration"]}",state="indexed"}}' in (
        metrics
    )
    assert f'pipeline_runs{{integration_id="{world["integration"]}",outcome="succeeded"}}' in (
        metrics
    )
    assert "pipeline_http_requests_total" in metrics
    assert http(url + "/api/v1/openapi.json").status == 401
    document = _get(world, "/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.") and "/api/v1/search" in document["paths"]
    page = http(url + "/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert http(url + "/nosuch").json()["error"]["code"] == "not_found"
    # --log-format json: one JSON object a line, one line per request (no query string).
    lines = [json.loads(line) for line in world["server"].lines if line.startswith("{")]
    requests = [r["message"] for r in lines if r["logger"] == "pipeline.server"]
    assert any(m.startswith("GET /api/v1/search 200 ") and "token=reader" in m for m in requests)
    assert not any("q=" in m for m in requests)


def test_tokens_are_shown_once_kept_as_hashes_and_revoked(world: dict[str, Any]) -> None:
    data_dir = str(world["data"].data_dir)
    code, out, _ = _pipeline("tokens", "create", "--integration-id", world["integration"],
                        "--name", "temp", "--data-dir", data_dir)  # fmt: skip
    assert code == 0
    made = out.strip().splitlines()[-1]
    assert made.startswith("pk_") and " " not in made
    assert _get(world, "/api/v1/status", who=None).status == 401
    assert http(world["server"].url + "/api/v1/status", token=made).status == 200
    code, out, _ = _pipeline("tokens", "list", "--json", "--data-dir", data_dir)
    listed = {t["name"]: t for t in json.loads(out)["tokens"]}
    assert listed["temp"]["scope"] == "read" and listed["admin"]["scope"] == "admin"
    assert made not in out and made.split("_", 2)[2] not in out
    code, _, err = _pipeline("tokens", "create", "--integration-id", "x", "--name", "temp",
                        "--data-dir", data_dir)  # fmt: skip
    assert code == 2 and "exists" in err
    # Only a hash is stored: the secret is in no row of the database.
    db = sqlite3.connect(world["data"].data_dir / "pipeline.db")
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert made.split("_", 2)[2] not in dump
    assert _pipeline("tokens", "revoke", "temp", "--data-dir", data_dir)[0] == 0
    assert _pipeline("tokens", "revoke", "temp", "--data-dir", data_dir)[0] == 2
    time.sleep(5.5)  # a verified token is trusted for 5 seconds at most
    assert http(world["server"].url + "/api/v1/status", token=made).status == 401
    # Never in the server's log, by any route.
    assert made not in world["server"].log()
    for secret in world["tokens"].values():
        assert secret not in world["server"].log()
