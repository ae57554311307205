"""Search inside PostgreSQL (``PIPELINE_SEARCH=postgres``) on a real throwaway cluster: the
recruiter's searches of tests/test_search.py and the relevance floors of
tests/test_relevance.py, run as they are, and what the PostgreSQL engine adds (rows kept
apart by integration, escaped snippets, totals, NULs)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy

from pipeline.cli import main
from pipeline.errors import QueryError
from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from pipeline.search import IndexDoc, PostgresSearchIndex
from tests import postgres
from tests import test_relevance as relevance
from tests import test_search as searches
from tests.conftest import WORLD_SIZE

pytestmark = pytest.mark.postgres


def _env(url: str, data_dir: Path) -> dict[str, str]:
    return {
        "PIPELINE_DATABASE_URL": url,
        "PIPELINE_SEARCH": "postgres",
        "PIPELINE_DATA_DIR": str(data_dir),
    }


@pytest.fixture(scope="module")
def ingested_world(
    postgres_cluster: postgres.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """The conftest world, ingested once into a PostgreSQL database searched there."""
    url = postgres_cluster.database("search")
    env = _env(url, tmp_path_factory.mktemp("pgsearch") / "data")
    world = World(candidates=WORLD_SIZE, seed=7)
    with SandboxServer(world) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in {**env, **server.env(), "PIPELINE_RETRY_BASE_DELAY": "0.01"}.items():
            patch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as done:
            main(["ingest", *world.candidates])
        assert done.value.code == 0, err.getvalue()
    yield SimpleNamespace(world=world, env=env)
    postgres_cluster.drop(url)


@pytest.fixture
def pg_cli(cli, ingested_world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name, value in ingested_world.env.items():
        monkeypatch.setenv(name, value)
    return cli


@pytest.mark.parametrize(
    "case",
    [
        searches.test_paging_walks_the_same_ranking,
        searches.test_language_filter_and_detected_language,
        searches.test_since_filters_by_update_time,
        searches.test_did_you_mean,
        searches.test_by_candidate_lists_people_once,
        searches.test_similar_finds_other_candidates_with_the_same_skills,
    ],
    ids=lambda case: case.__name__.removeprefix("test_"),
)
def test_the_recruiters_searches_on_postgres(pg_cli, ingested_world, case) -> None:  # type: ignore[no-untyped-def]
    case(pg_cli, ingested_world)


def test_relevance_floors_hold_on_postgres(  # type: ignore[no-untyped-def]
    cli, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(postgres_url, tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    relevance.test_relevance(cli, World(candidates=48, seed=5))


def test_postgres_search_needs_a_postgres_database(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("search", "Python", "--search", "postgres")
    assert result.code == 2
    assert "PIPELINE_SEARCH=postgres" in result.err and "postgresql+psycopg" in result.err
    unknown = cli("search", "Python", env={"PIPELINE_SEARCH": "elastic"})
    assert unknown.code == 2 and "unknown search engine 'elastic'" in unknown.err


# -- the engine itself, over documents written directly ---------------------------------------


def _doc(number: int, text: str, **fields: object) -> IndexDoc:
    values: dict[str, object] = {
        "attachment_id": f"att-{number:02}",
        "candidate_id": f"cand-{number:02}",
        "application_id": None,
        "type": "CV",
        "file_name": f"CV {number}.pdf",
        "text": text,
        "language": "en",
        "updated_at": datetime(2026, 5, number, tzinfo=UTC),
    }
    values.update(fields)
    return IndexDoc(**values)  # type: ignore[arg-type]


def _no_texts(ids: object) -> dict[str, str]:
    return {}


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    made = sqlalchemy.create_engine(postgres_url)
    yield made
    made.dispose()


def test_one_integrations_rows_never_answer_another(engine: sqlalchemy.Engine) -> None:
    mine, theirs = PostgresSearchIndex(engine, "int:a"), PostgresSearchIndex(engine, "int:b")
    mine.write([_doc(1, "Senior Python developer"), _doc(2, "Python and Kafka")])
    theirs.write([_doc(1, "Python in another company"), _doc(3, "Python again")])
    found = mine.search("python", texts=_no_texts)
    assert found.total == 2 and {h.attachment_id for h in found.hits} == {"att-01", "att-02"}
    assert theirs.attachment_ids() == {"att-01", "att-03"}
    # Deleting one's document leaves the other's with the same id.
    mine.write(deletions=["att-01"], purge=True)
    assert mine.attachment_ids() == {"att-02"} and theirs.doc_count() == 2
    assert theirs.search("company", texts=_no_texts).total == 1
    assert mine.search("company", texts=_no_texts).total == 0
    # Spelling is corrected from this integration's words only.
    assert mine.search("compny", texts=_no_texts).did_you_mean is None
    assert theirs.search("compny", texts=_no_texts).did_you_mean == "company"


def test_syntax_weights_filters_and_paging(engine: sqlalchemy.Engine) -> None:
    index = PostgresSearchIndex(engine, "int:a")
    index.write(
        [
            _doc(1, "Machine learning engineer, Kubernetes", file_name="Lebenslauf_Müller.pdf"),
            _doc(2, "Learning machine shop; Kubernetes", type="COVER_LETTER"),
            _doc(3, "Entwicklung von Software in München", language="de"),
            _doc(4, "Développement logiciel à Genève", language="fr"),
            _doc(5, "Python developer", candidate_title="Kubernetes administrator"),
            *[_doc(n, f"Kubernetes operator number {n}") for n in range(6, 20)],
        ]
    )

    def ids(query: str, **filters: object) -> list[str]:
        return [
            h.attachment_id
            for h in index.search(query, texts=_no_texts, limit=50, **filters).hits  # type: ignore[arg-type]
        ]

    assert ids('"machine learning"') == ["att-01"]
    assert set(ids("machine learning")) == {"att-01", "att-02"}
    assert set(ids("kubernetes NOT operator")) == {"att-01", "att-02", "att-05"}
    assert ids("Entwicklungen") == ["att-03"]  # German stem
    assert ids("munchen") == ids("München") == ["att-03"]
    assert ids("developpement") == ["att-04"] and ids("Geneve") == ["att-04"]
    assert ids("mull*") == ["att-01"] and ids("file_name:muller") == ["att-01"]
    assert set(ids("pyth* OR Entwicklung")) == {"att-03", "att-05"}
    assert set(ids("(munchen OR geneve) AND NOT logiciel")) == {"att-03"}
    assert ids("kubernetes type:COVER_LETTER") == ["att-02"]
    assert ids("kubernetes", type="COVER_LETTER") == ["att-02"]
    assert ids("kubernetes", since=datetime(2026, 5, 18, tzinfo=UTC)) == ["att-18", "att-19"]
    # A match in the candidate's title weighs more than one in the text.
    assert ids("kubernetes")[0] == "att-05"
    # Paging walks one ranking, with the exact total on every page.
    everything = index.search("kubernetes", texts=_no_texts, limit=100)
    assert everything.total == 17
    pages = [index.search("kubernetes", texts=_no_texts, limit=5, offset=o) for o in (0, 5, 10, 15)]
    assert [h.attachment_id for p in pages for h in p.hits] == [
        h.attachment_id for h in everything.hits
    ]
    assert {p.total for p in pages} == {17}
    assert index.search("kubernetes", texts=_no_texts, limit=5, offset=40).total == 17
    with pytest.raises(QueryError, match="not closed"):
        index.search('"machine', texts=_no_texts)
    with pytest.raises(QueryError, match="filters only the whole query"):
        index.search("python OR type:CV", texts=_no_texts)


def test_snippets_mark_the_matches_and_escape_the_rest(engine: sqlalchemy.Engine) -> None:
    index = PostgresSearchIndex(engine, "int:a")
    body = "Intro <script>alert(1)</script> & then: senior Python developer\x00 in Berlin"
    index.write([_doc(1, body, file_name="Name\x00.pdf")])
    hit = index.search("python", texts=lambda ids: {i: body for i in ids}).hits[0]
    assert "<b>Python</b>" in hit.snippet
    assert "<script>" not in hit.snippet
    assert hit.snippet.replace("<b>", "").replace("</b>", "").count("<") == 0
    assert hit.file_name == "Name.pdf"  # the NUL PostgreSQL refuses is dropped
    # Rebuilt from the database's documents: the same answers.
    assert index.rebuild([_doc(1, body), _doc(2, "Python too")]) == 2
    assert index.search("python", texts=_no_texts).total == 2


def test_a_process_that_is_not_first_finds_the_schema_made(postgres_url: str) -> None:
    """Two processes setting the search schema up at once: one waits for the other."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        assert pool.map(_make_schema, [postgres_url] * 4) == [True] * 4


def _make_schema(url: str) -> bool:
    made = sqlalchemy.create_engine(url)
    try:
        PostgresSearchIndex(made, "int:a").ensure_schema()
        return True
    finally:
        made.dispose()


def test_forget_and_reindex_on_postgres(cli, sandbox, postgres_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every writing command keeps the search table right: a run fills it, a forgotten
    candidate is no longer found (nor counted), reindex rebuilds the same answers."""
    env = {**_env(postgres_url, tmp_path / "data"), **sandbox.env()}
    world = sandbox.world
    assert cli("ingest", *world.candidates, env=env).code == 0
    assert not (tmp_path / "data" / "index").exists()  # no Whoosh index was made

    def found(query: str) -> set[str]:
        result = cli("search", query, "--json", "--limit", "100")
        assert result.code == 0, result.err
        return {hit["candidate_id"] for hit in json.loads(result.out)["hits"]}

    pythonistas = found("Python")
    assert pythonistas == world.with_skill("Python")
    gone = sorted(pythonistas)[0]
    assert cli("forget", gone).code == 0
    assert found("Python") == pythonistas - {gone}
    with sqlalchemy.create_engine(postgres_url).connect() as conn:
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM search_documents WHERE candidate_id = %(c)s", {"c": gone}
        ).scalar_one()
    assert left == 0
    assert cli("reindex").code == 0
    assert found("Python") == pythonistas - {gone}
    status = cli("status")
    assert "postgres" in status.out, status.out
    check = cli("check")
    assert check.code == 0, check.out + check.err


def test_removing_an_integration_removes_its_search_rows(  # type: ignore[no-untyped-def]
    cli, sandbox, postgres_url: str, tmp_path: Path
) -> None:
    second = "int:second"
    sandbox.add_integration(second, candidates=3, seed=5)
    env = {**_env(postgres_url, tmp_path / "data"), **sandbox.env()}
    assert cli("ingest", *sorted(sandbox.world.candidates)[:3], env=env).code == 0
    theirs = sorted(sandbox.integration(second).world.candidates)
    assert cli("ingest", *theirs, env={**env, "KOMBO_INTEGRATION_ID": second}).code in (0, 1)
    engine = sqlalchemy.create_engine(postgres_url)

    def rows(table: str) -> dict[str, int]:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                f"SELECT integration_id, count(*) FROM {table} GROUP BY integration_id"
            )
            return dict(found.all())

    assert set(rows("search_documents")) == {sandbox.integration_id, second}
    assert cli("integrations", "remove", second, "--yes").code == 0
    assert set(rows("search_documents")) == set(rows("search_words")) == {sandbox.integration_id}
    engine.dispose()


def test_switching_to_the_postgres_search_asks_for_a_reindex(  # type: ignore[no-untyped-def]
    cli, sandbox, postgres_url: str, tmp_path: Path
) -> None:
    env = _env(postgres_url, tmp_path / "data")
    whoosh = {**env, **sandbox.env(), "PIPELINE_SEARCH": "whoosh"}
    assert cli("ingest", *sorted(sandbox.world.candidates)[:3], env=whoosh).code == 0
    switched = cli("search", "Python", env={"PIPELINE_SEARCH": "postgres"})
    assert switched.code == 2 and "run `pipeline reindex`" in switched.err
    assert cli("reindex").code == 0
    assert cli("search", "Python").code == 0


def test_the_correction_follows_the_whoosh_indexs_policy(engine: sqlalchemy.Engine) -> None:
    """One policy (``_query.corrected_query``) over each back end's words: distance first,
    frequency second, the first letter kept, a budget by length, none for symbol tokens,
    every misspelled word; tests/test_relevance.py checks the same on the Whoosh index."""
    index = PostgresSearchIndex(engine, "int:a")
    shipped = relevance.SHIPPED
    index.write(
        [IndexDoc(n, f"c-{n}", None, "CV", n, t, language=lang) for n, (t, lang) in shipped.items()]
    )

    def texts(ids: object) -> dict[str, str]:
        return {i: shipped[i][0] for i in ids}  # type: ignore[attr-defined]

    # The Levenshtein correction this replaced made ".NET" ".nell" here.
    for query in ("C++", "C#", ".NET", "Go", "R", "SQL", "Straße", "Joerg", "Fuerst", "python"):
        assert index.search(query, texts=texts).did_you_mean is None, query
    typo = index.search("pyhton pyhton", texts=texts)
    assert (typo.did_you_mean, typo.corrected) == ("python python", True)
    assert [h.attachment_id for h in typo.hits] == ["python-en"]
    assert index.search("Kubernets", texts=texts).did_you_mean == "kubernetes"
