"""Search features a recruiter uses: paging, filters, did-you-mean, people not files, similar."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pipeline.extract.language import DETECTOR_VERSION
from pipeline.sandbox.server import SandboxServer


@pytest.fixture
def ingested(cli, sandbox: SandboxServer) -> SandboxServer:  # type: ignore[no-untyped-def]
    assert cli("ingest", *sandbox.world.candidates, env=sandbox.env()).code == 0
    return sandbox


def _json(cli, *args: str) -> dict:  # type: ignore[no-untyped-def]
    result = cli(*args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_paging_walks_the_same_ranking(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    everything = _json(cli, "search", "Profil OR Profile OR Perfil", "--limit", "100")
    assert everything["total"] > 6
    ids = [h["attachment_id"] for h in everything["hits"]]
    first = _json(cli, "search", "Profil OR Profile OR Perfil", "--limit", "3")
    second = _json(cli, "search", "Profil OR Profile OR Perfil", "--limit", "3", "--offset", "3")
    assert [h["attachment_id"] for h in first["hits"] + second["hits"]] == ids[:6]
    assert second["total"] == everything["total"]


def test_language_filter_and_detected_language(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    world = ingested.world
    german = _json(cli, "search", "Kenntnisse OR Lebenslauf", "--language", "de", "--limit", "100")
    assert german["hits"]
    assert {h["candidate_id"] for h in german["hits"]} <= world.in_language("de")
    assert {h["language"] for h in german["hits"]} == {"de"}
    records = [json.loads(line) for line in cli("export").out.splitlines()]
    for record in records:
        expected = world.candidates[record["candidate_id"]].language
        assert record["language"] == expected, record["file_name"]


def test_since_filters_by_update_time(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    everyone = _json(cli, "search", "Python OR Kubernetes OR Docker", "--limit", "100")
    assert everyone["total"] > 0
    future = _json(cli, "search", "Python OR Kubernetes OR Docker", "--since", "2030-01-01")
    assert future["total"] == 0
    past = _json(
        cli, "search", "Python OR Kubernetes OR Docker", "--since", "2020-01-01", "--limit", "100"
    )
    assert past["total"] == everyone["total"]


def test_did_you_mean(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    corrected = _json(cli, "search", "Kubernets", "--limit", "100")
    assert corrected["did_you_mean"] == "kubernetes"
    found = {h["candidate_id"] for h in corrected["hits"]}
    env = getattr(ingested, "env", None)
    on_postgres = isinstance(env, dict) and env.get("PIPELINE_SEARCH") == "postgres"
    if on_postgres:  # PostgreSQL's stemmers give the typo the English stem only
        assert found and found <= ingested.world.with_skill("Kubernetes")
    else:
        assert found == ingested.world.with_skill("Kubernetes")
    # The typed word found these through the stem it shares: its hits stay, the correction
    # is offered beside them.
    assert corrected["corrected"] is False
    table = cli("search", "Kubernets")
    assert table.out.startswith('did you mean "kubernetes"?')
    # A typo that finds nothing shows the correction's hits, and says so.
    replaced = cli("search", "Terrafom")
    assert replaced.out.startswith('showing results for "terraform" instead of "Terrafom"')
    assert _json(cli, "search", "Terrafom")["corrected"] is True
    nothing = _json(cli, "search", "Xylophonist")
    assert nothing["total"] == 0 and "did_you_mean" not in nothing


def test_by_candidate_lists_people_once(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    world = ingested.world
    payload = _json(cli, "search", "Kubernetes", "--by-candidate", "--limit", "100")
    people = [c["candidate_id"] for c in payload["candidates"]]
    assert len(people) == len(set(people))
    assert set(people) == world.with_skill("Kubernetes")
    assert payload["total"] == len(people)
    scores = [c["score"] for c in payload["candidates"]]
    assert scores == sorted(scores, reverse=True)
    table = cli("search", "Kubernetes", "--by-candidate")
    assert "candidates for" in table.out or "candidate for" in table.out


def test_similar_finds_other_candidates_with_the_same_skills(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    world = ingested.world
    records = [json.loads(line) for line in cli("export", "--type", "CV").out.splitlines()]
    source = next(r for r in records if r["file_name"].endswith(".pdf"))
    me = world.candidates[source["candidate_id"]]
    payload = _json(cli, "similar", source["attachment_id"], "--limit", "5")
    assert payload["hits"]
    assert me.id not in {h["candidate_id"] for h in payload["hits"]}
    # The best match shares the language or skills of the source CV.
    best = world.candidates[payload["hits"][0]["candidate_id"]]
    assert best.language == me.language or set(best.skills) & set(me.skills)
    missing = cli("similar", "NoSuchAttachment123456789")
    assert missing.code == 2 and "not in the index" in missing.err


QUERY_ERRORS = [
    ("title:python", "there is no field 'title'"),
    ("AND", "AND has nothing on its left"),
    ("python AND", "AND has nothing on its right"),
    ("python OR NOT", "NOT has nothing on its right"),
    ("x" * 1001, "at most 1,000 are read"),
    ("*ython", "a wildcard must begin with a letter"),
]


def test_a_query_that_cannot_mean_what_was_meant_is_exit_2_with_the_reason(cli, ingested) -> None:  # type: ignore[no-untyped-def]
    for query, reason in QUERY_ERRORS:
        result = cli("search", query)
        assert result.code == 2, query
        assert reason in result.err and "Traceback" not in result.err, result.err


def test_reindex_detects_stored_languages_again(cli, ingested, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A data directory whose rows keep an older detector's answer (German CVs stored as
    English) gets today's after `reindex`, and German stems and the filter find them."""
    german = ingested.world.in_language("de")
    marks = ",".join("?" * len(german))
    with sqlite3.connect(tmp_path / "data" / "pipeline.db") as conn:
        conn.execute(
            f"UPDATE attachments SET language = 'en' WHERE candidate_id IN ({marks})", [*german]
        )
        # First as this detector's own rows would be rebuilt: nothing detected again.
        conn.execute(
            "INSERT OR REPLACE INTO settings SELECT 'language_detector:' || integration_id, ? "
            "FROM integrations",
            (str(DETECTOR_VERSION),),
        )
    assert cli("reindex").code == 0
    query = ("search", "Entwicklungen", "--language", "de", "--limit", "100")
    assert not {h["candidate_id"] for h in _json(cli, *query)["hits"]} & german
    # An older detector's data directory: the next reindex detects each text again.
    with sqlite3.connect(tmp_path / "data" / "pipeline.db") as conn:
        conn.execute("DELETE FROM settings WHERE key LIKE 'language_detector:%'")
    assert cli("reindex").code == 0
    found = _json(cli, *query)["hits"]
    assert found and {h["candidate_id"] for h in found} <= german
    assert {h["language"] for h in found} == {"de"}
    records = [json.loads(line) for line in cli("export").out.splitlines()]
    assert {r["language"] for r in records if r["candidate_id"] in german} == {"de"}
