"""The whole pipeline through the real CLI, the real sandbox over HTTP, real SQLite and Whoosh."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.sandbox.generator import SKILLS
from pipeline.sandbox.server import SandboxServer
from pipeline.schemas import validator
from tests.helpers import CliResult, integration_root


def _ids(sandbox: SandboxServer) -> list[str]:
    return [c.id for c in sandbox.world.ordered()]


def _ingest(cli, sandbox: SandboxServer, *ids: str) -> CliResult:  # type: ignore[no-untyped-def]
    return cli("ingest", *(ids or _ids(sandbox)), env=sandbox.env())


def _search(cli, query: str, *extra: str) -> dict:  # type: ignore[no-untyped-def]
    result = cli("search", query, "--json", "--limit", "1000", *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)


def _export(cli, *extra: str) -> list[dict]:  # type: ignore[no-untyped-def]
    result = cli("export", *extra)
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def test_ingest_then_search_finds_exactly_the_right_candidates(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    result = _ingest(cli, sandbox)
    assert result.code == 0, result.err
    last = result.out.strip().splitlines()[-1]
    assert last.startswith("ingest succeeded: 16 candidates (0 failed)")
    assert "0 failed" in last and "no_text" in last  # the photo of a face: OCR finds none

    world = sandbox.world
    rare = min(SKILLS, key=lambda s: len(world.with_skill(s)) or 99)
    for skill in ("Python", "Kubernetes", "Docker", rare):
        expected = world.with_skill(skill)
        assert expected, f"the sandbox world should have someone with {skill}"
        found = {hit["candidate_id"] for hit in _search(cli, skill)["hits"]}
        assert found == expected, skill
    pair = world.with_skill("Python") & world.with_skill("Kubernetes")
    assert pair
    both = {hit["candidate_id"] for hit in _search(cli, "Python Kubernetes")["hits"]}
    assert both == pair
    assert world.with_phrase("machine learning")
    phrase = {hit["candidate_id"] for hit in _search(cli, '"machine learning"')["hits"]}
    assert phrase == world.with_phrase("machine learning")
    # Accents folded both ways: a German city with an umlaut, searched without it.
    city = next(
        c.city
        for c in world.ordered()
        if c.city in ("München", "Köln", "Nürnberg", "Düsseldorf", "Zürich")
    )
    folded = city.replace("ü", "u").replace("ö", "o")
    found_city = {hit["candidate_id"] for hit in _search(cli, folded)["hits"]}
    assert world.in_city(city) <= found_city


def test_search_json_shape_and_ranking(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    _ingest(cli, sandbox)
    payload = _search(cli, "Python")
    assert payload["query"] == "Python"
    assert payload["total"] == len(payload["hits"]) > 0
    hit = payload["hits"][0]
    assert {
        "attachment_id",
        "candidate_id",
        "application_id",
        "type",
        "file_name",
        "score",
        "snippet",
    } <= set(hit)
    assert "<b>Python</b>" in hit["snippet"]
    scores = [h["score"] for h in payload["hits"]]
    assert scores == sorted(scores, reverse=True)
    only_letters = _search(cli, "Python", "--type", "COVER_LETTER")
    assert {h["type"] for h in only_letters["hits"]} <= {"COVER_LETTER"}
    one = payload["hits"][0]["candidate_id"]
    mine = _search(cli, "Python", "--candidate", one)
    assert {h["candidate_id"] for h in mine["hits"]} == {one}


def test_search_table_and_bad_query(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    _ingest(cli, sandbox)
    table = cli("search", "Kubernetes", "--limit", "2")
    assert table.code == 0
    assert 'for "Kubernetes"' in table.out
    assert "[Kubernetes]" in table.out
    bad = cli("search", '"unclosed')
    assert bad.code == 2
    assert bad.err.startswith("pipeline: error: cannot read query")
    assert "Traceback" not in bad.err


def test_ingesting_twice_changes_nothing(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    assert _ingest(cli, sandbox).code == 0
    first = _export(cli, "--status", "all")
    hits_before = _search(cli, "Python")["total"]
    second_run = _ingest(cli, sandbox)
    assert second_run.code == 0
    assert "0 indexed" in second_run.out.splitlines()[-1]
    second = _export(cli, "--status", "all")

    def stable(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "fetched_at"} for r in records]

    assert stable(first) == stable(second)
    assert _search(cli, "Python")["total"] == hits_before
    assert len({r["attachment_id"] for r in second}) == len(second)


def test_export_records_validate_and_csv_has_the_columns(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ingest(cli, sandbox)
    records = _export(cli, "--status", "all")
    assert len(records) == len(sandbox.world.attachments)
    schema = validator("export_record.schema.json")
    for record in records:
        schema.validate(record)
    states = {r["status"] for r in records}
    assert states == {"indexed", "no_text"}
    indexed = [r for r in records if r["status"] == "indexed"]
    assert all(r["text"] and r["sha256"] and r["parser"] for r in indexed)
    cv = next(r for r in indexed if r["type"] == "CV" and r["file_name"].endswith(".pdf"))
    assert cv["page_count"] >= 1 and cv["detected_type"] == "application/pdf"

    no_text = _export(cli, "--no-text", "--type", "CV")
    assert no_text and all("text" not in r and r["type"] == "CV" for r in no_text)

    out = tmp_path / "records.csv"
    assert cli("export", "--format", "csv", "--output", str(out)).code == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["integration_id", "attachment_id", "candidate_id"]
    assert "text" in header and "indexed_at" in header


def test_the_api_key_leaks_nowhere(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = "sk_sandbox_Zq8d7Vt3LEAKCHECK"
    sandbox.state.api_key = secret
    sandbox.add_fault(kind="error", status=429, code="PLATFORM.RATE_LIMIT_EXCEEDED", times=1)
    result = cli("-vv", "ingest", *_ids(sandbox), env={**sandbox.env(), "KOMBO_API_KEY": secret})
    assert result.code == 0, result.err
    assert secret not in result.out and secret not in result.err
    export = cli("export", "--status", "all", "--format", "jsonl")
    assert secret not in export.out
    data_dir = tmp_path / "data"
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert sandbox.stats.auth_headers_on_files == 0
    wrong = cli("ingest", _ids(sandbox)[0], env={"KOMBO_API_KEY": "sk_wrong_" + secret})
    assert secret not in wrong.err and secret not in wrong.out


def test_wrong_key_stops_the_run_with_exit_2_and_the_code(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "ingest",
        "--concurrency",
        "2",
        *_ids(sandbox),
        env={**sandbox.env(), "KOMBO_API_KEY": "wrong"},
    )
    assert result.code == 2
    assert "PLATFORM.AUTHENTICATION_INVALID" in result.err
    assert result.out.strip().splitlines()[-1].startswith("ingest aborted")
    # Stopped at once: with 2 in flight and 2 queued, at most 4 of the 16 were asked for.
    assert sandbox.stats.requests.get("action", 0) <= 4


def test_missing_configuration_is_a_usage_error_before_any_request(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    env = sandbox.env()
    del env["KOMBO_API_KEY"]
    result = cli("ingest", _ids(sandbox)[0], env=env)
    assert result.code == 2
    assert result.err.strip() == "pipeline: error: no API key: set KOMBO_API_KEY or pass --api-key"
    assert sandbox.stats.requests == {}


@pytest.mark.parametrize("bad", ["../etc", "a/b", "x" * 65, "a?b=c"])
def test_invalid_candidate_id_is_refused_before_any_request(cli, sandbox, bad: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("ingest", _ids(sandbox)[0], bad, env=sandbox.env())
    assert result.code == 2
    assert "invalid candidate id" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert sandbox.stats.requests == {}


def test_an_unknown_candidate_fails_alone(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(sandbox)
    result = _ingest(cli, sandbox, "UnknownCandidate12345678", *ids)
    assert result.code == 1
    assert "UnknownCandidate12345678" in result.err
    assert "(1 failed)" in result.out.splitlines()[-1]
    found = {h["candidate_id"] for h in _search(cli, "Python")["hits"]}
    assert found == sandbox.world.with_skill("Python")


def test_a_corrupt_file_ends_alone_and_is_read_again_once_it_changes(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    victim = next(
        a
        for a in sandbox.world.attachments.values()
        if a.type == "CV" and a.kind == "pdf" and not a.same_as
    )
    sandbox.add_fault(kind="corrupt", match=victim.id, times=1)
    first = _ingest(cli, sandbox)
    # Whole but unreadable (issue 17): final, skipped with its reason like unsupported.
    assert first.code == 0, first.out
    assert "1 unreadable (" in first.out.splitlines()[-1]
    records = {r["attachment_id"]: r for r in _export(cli, "--status", "all")}
    assert records[victim.id]["status"] == "unreadable"
    assert records[victim.id]["error"]
    assert sum(r["status"] == "indexed" for r in records.values()) > 10
    # Unchanged at Kombo, the next run leaves it; changed, it is fetched and read again.
    second = _ingest(cli, sandbox)
    assert second.code == 0, second.out
    records = {r["attachment_id"]: r for r in _export(cli, "--status", "all")}
    assert records[victim.id]["status"] == "unreadable"
    sandbox.world.touch(victim.candidate_id, datetime.now(UTC))
    third = _ingest(cli, sandbox)
    assert third.code == 0, third.out
    records = {r["attachment_id"]: r for r in _export(cli, "--status", "all")}
    assert records[victim.id]["status"] == "indexed"


def test_text_with_broken_unicode_is_stored_and_found(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    # An RTF whose \uN escapes leave a lone UTF-16 surrogate and a split pair (pypdf can do
    # the same from a hostile font map): no UTF-8 database takes such text as it is. The
    # run goes on, the pair becomes its emoji, the lone half U+FFFD.
    victim = next(
        a
        for a in sandbox.world.attachments.values()
        if a.type == "CV" and a.kind == "pdf" and not a.same_as
    )
    hostile = rb"{\rtf1\ansi Zyxquorb engineer \u-10240? here \u-10179?\u-8704? smiles\par}"
    sandbox.add_fault(kind="replace", match=victim.id, body=hostile, times=None)
    result = _ingest(cli, sandbox)
    assert result.code == 0, result.out + result.err
    record = next(r for r in _export(cli) if r["attachment_id"] == victim.id)
    assert record["status"] == "indexed"
    assert record["text"] == "Zyxquorb engineer \ufffd here \U0001f600 smiles"
    assert [h["attachment_id"] for h in _search(cli, "Zyxquorb")["hits"]] == [victim.id]
    assert sum(r["status"] == "indexed" for r in _export(cli)) > 10


def test_a_lone_surrogate_from_kombo_does_not_stop_the_run(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(sandbox)[:4]
    sandbox.add_fault(kind="bad_unicode", match=ids[0], times=None)
    result = _ingest(cli, sandbox, *ids)
    assert result.code == 0, result.out + result.err
    names = [r["file_name"] for r in _export(cli) if r["candidate_id"] == ids[0]]
    assert any(name.endswith("\ufffd") for name in names)
    assert {r["candidate_id"] for r in _export(cli)} == set(ids)


def test_a_wrong_content_type_does_not_fool_the_parser(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    victim = next(
        a
        for a in sandbox.world.attachments.values()
        if a.type == "CV" and a.kind == "pdf" and not a.same_as
    )
    sandbox.add_fault(kind="content_type", match=victim.id, content_type="text/plain", times=None)
    assert _ingest(cli, sandbox, victim.candidate_id).code == 0
    record = next(r for r in _export(cli) if r["attachment_id"] == victim.id)
    assert record["content_type"] == "text/plain"
    assert record["detected_type"] == "application/pdf"
    assert sandbox.world.candidates[victim.candidate_id].skills[0] in record["text"]


def test_ids_file_from_stdin(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(sandbox)[:3]
    stdin = "# three candidates\n" + "\n".join(ids) + "\n\n"
    result = cli("ingest", "--ids-file", "-", env=sandbox.env(), stdin=stdin)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("ingest succeeded: 3 candidates")


def test_reindex_rebuilds_search_from_the_database(cli, sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    _ingest(cli, sandbox)
    before = _search(cli, "Kubernetes")
    shutil.rmtree(integration_root(tmp_path / "data") / "index")
    # A deleted index is damage, not "no match" (issue 14): one line saying to reindex.
    lost = cli("search", "Kubernetes")
    assert lost.code != 0 and lost.out == ""
    assert "run `pipeline reindex`" in lost.err and len(lost.err.splitlines()) == 1
    result = cli("reindex")
    assert result.code == 0
    assert result.out.startswith("reindex succeeded")
    after = _search(cli, "Kubernetes")
    assert after["total"] == before["total"] > 0
    assert [(h["attachment_id"], h["snippet"]) for h in after["hits"]] == [
        (h["attachment_id"], h["snippet"]) for h in before["hits"]
    ]


def test_a_vanished_attachment_becomes_deleted_and_leaves_search(cli, sandbox) -> None:  # type: ignore[no-untyped-def]
    from pipeline.sandbox.generator import EPOCH

    _ingest(cli, sandbox)
    candidate = sandbox.world.ordered()[0]
    cv = next(a for a in candidate.attachments if a.type == "CV")
    sandbox.world.remove_attachment(cv.id, EPOCH)
    assert _ingest(cli, sandbox, candidate.id).code == 0
    record = next(r for r in _export(cli, "--status", "all") if r["attachment_id"] == cv.id)
    assert record["status"] == "deleted"
    hits = _search(cli, candidate.skills[0], "--candidate", candidate.id)["hits"]
    assert cv.id not in {h["attachment_id"] for h in hits}


def test_demo_runs_on_a_fresh_directory(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("demo", "--candidates", "8", "--data-dir", str(tmp_path / "demo"))
    assert result.code == 0, result.err
    assert "matches for" in result.out
    assert "<b>" not in result.out  # the table shows highlights for a terminal, not HTML
    assert result.out.strip().splitlines()[-1].startswith("ingest succeeded: 8 candidates")
