"""Start-up: `pipeline --help` and `pipeline search --help` answer without importing the
database layer, the search engine or the HTTP client (each costs a tenth of a second or more
at every start; figures in benchmarks/README.md), and a search imports no run machinery."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# What --help must not import (the search may: the test below says which).
_HEAVY_AT_START = ("sqlalchemy", "whoosh", "httpx", "numpy", "pipeline.extract", "pipeline.child")


def _imported(args: list[str], data_dir: Path) -> list[str]:
    code, err, modules = _probe(args, data_dir)
    assert code == 0, err
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in _HEAVY_AT_START)]


def test_help_imports_neither_the_database_nor_the_search_engine(tmp_path: Path) -> None:
    for args in (["--help"], ["search", "--help"], ["ingest", "--help"], ["serve", "--help"]):
        assert _imported(args, tmp_path / "data") == [], args


def test_a_search_imports_the_database_and_index_but_no_extraction(tmp_path: Path) -> None:
    imported = _imported(["search", "python"], tmp_path / "data")
    assert "sqlalchemy" in imported  # the probe did open the database
    run_only = ("httpx", "pipeline.extract", "pipeline.child")
    assert not [m for m in imported if m.startswith(run_only)]
    # SQLite's users do not pay for the PostgreSQL dialect.
    assert "sqlalchemy.dialects.postgresql" not in imported


# -- a search on a SQLite file reads it without SQLAlchemy ---------------------------------------

ACME = "sandbox:8Xi6iZrwusZqJmDGXs49GBmJ"  # the demo's two customers
BOLT = "sandbox:BoLtDemoSecondCustomer2"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `pipeline demo` data directory: two integrations, their documents indexed."""
    parent = tmp_path_factory.mktemp("startup")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--candidates", "6", "--data-dir", str(parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return parent / "demo"


def _probe(args: list[str], data_dir: Path) -> tuple[int, str, list[str]]:
    """Exit code, stderr and the heavy modules imported of `pipeline ARGS` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE_ANY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PIPELINE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    found = json.loads(lines[-1])
    return found["code"], done.stderr, found["modules"]


_PROBE_ANY = """
import json, sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code or 0
heavy = ("sqlalchemy", "whoosh", "httpx", "numpy", "pipeline.extract", "pipeline.child",
         "pipeline.database", "py3langid", "rapidfuzz")
found = {m for m in sys.modules for h in heavy if m == h or m.startswith(h + ".")}
print(json.dumps({"code": code, "modules": sorted(found)}))
"""


def test_a_search_on_sqlite_imports_no_sqlalchemy_httpx_or_language_model(demo_dir: Path) -> None:
    # "team": a word in more than three of the documents, so no correction is looked for
    # (a rarer word is compared with its neighbours, through rapidfuzz).
    code, err, imported = _probe(["search", "team", "--integration-id", ACME], demo_dir)
    assert code == 0, err
    assert "whoosh" in imported and "numpy" in imported  # it did search and rank
    unwanted = ("sqlalchemy", "pipeline.database", "httpx", "pipeline.extract", "py3langid")
    assert not [m for m in imported if m.startswith(unwanted)], imported
    assert "rapidfuzz" not in imported
    # A misspelled word brings in rapidfuzz for its correction, and nothing else.
    code, err, imported = _probe(["search", "pyhton", "--integration-id", ACME], demo_dir)
    assert code == 0, err
    assert "rapidfuzz" in imported and not [m for m in imported if m.startswith(unwanted)]
    # The integration choice is read the same way: its usage error (exit 2) too.
    code, err, imported = _probe(["search", "python"], demo_dir)
    assert code == 2 and "several integrations are registered" in err, err
    assert ACME in err and BOLT in err
    assert not [m for m in imported if m.startswith(unwanted)]
    code, err, imported = _probe(["similar", "nothing-like-it", "--integration-id", BOLT], demo_dir)
    assert not [m for m in imported if m.startswith(unwanted)], (code, err)


def test_the_reader_runs_the_sql_sqlalchemy_compiles_from_the_models() -> None:
    """One declaration of the tables (the models): the reader's SQL is what SQLAlchemy
    compiles for the Store's own statements, parameters in the same order."""
    from sqlalchemy.dialects import sqlite

    from pipeline import database, sqlite_reader

    assert sqlite_reader.SCHEMA_VERSION == database.SCHEMA_VERSION
    assert sqlite_reader.STATEMENTS.keys() == database.SEARCH_READS.keys()
    for name, statement in database.SEARCH_READS.items():
        compiled = statement.compile(dialect=sqlite.dialect())
        assert (compiled.string, tuple(compiled.positiontup or ())) == (
            sqlite_reader.STATEMENTS[name]
        ), f"paste into pipeline/sqlite_reader.py STATEMENTS[{name!r}]: {compiled.string!r}"


def test_the_reader_answers_as_the_store_does(demo_dir: Path, tmp_path: Path) -> None:
    from pipeline.database import Store, sqlite_path
    from pipeline.sqlite_reader import SQLiteReader, plain_sqlite_file

    url = f"sqlite:///{demo_dir / 'pipeline.db'}"
    reader = SQLiteReader.open(url)
    store = Store(url, read_only=True)
    assert reader is not None
    try:
        assert reader.integration_ids() == [i.integration_id for i in store.integrations()]
        assert reader.integration_ids() == [ACME, BOLT]
        for iid in (ACME, BOLT, "sandbox:unknown"):
            ours, theirs = reader.for_integration(iid), store.for_integration(iid)
            assert ours.counts_by_status() == theirs.counts_by_status()
            # Every id of both integrations, and one of none: only this one's texts.
            ids = [
                *sorted(store.for_integration(ACME).all_attachment_ids()),
                *sorted(store.for_integration(BOLT).all_attachment_ids()),
                "att-none",
            ]
            assert ours.texts_for(ids) == theirs.texts_for(ids)
            assert ours.texts_for([]) == {}
        assert reader.for_integration(ACME).texts_for(ids)
    finally:
        reader.close()
        store.close()
    # URLs: what the reader takes is the file the Store reads; the rest is the Store's.
    for plain in ("sqlite:///data/pipeline.db", "sqlite:////srv/p.db", "sqlite+pysqlite:///x.db"):
        assert plain_sqlite_file(plain) == sqlite_path(plain)
    for other in (
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:x.db?mode=ro&uri=true",
        "sqlite:///a%20b.db",
        "postgresql://u:p@h/db",
        "sqlite+aiosqlite:///x.db",
    ):
        assert plain_sqlite_file(other) is None, other
    # A database behind this code's schema, or not one, is the Store's to migrate or name.
    behind = tmp_path / "behind.db"
    shutil.copyfile(demo_dir / "pipeline.db", behind)
    with sqlite3.connect(behind) as db:
        db.execute("UPDATE settings SET value = '3' WHERE key = 'schema_version'")
    db.close()
    assert SQLiteReader.open(f"sqlite:///{behind}") is None
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    assert SQLiteReader.open(f"sqlite:///{tmp_path / 'garbage.db'}") is None
    assert SQLiteReader.open(f"sqlite:///{tmp_path / 'missing.db'}") is None


def test_a_search_answers_the_same_through_the_reader_and_the_store(demo_dir: Path) -> None:
    from pipeline.app import App, SearchRequest
    from pipeline.config import DataSettings
    from pipeline.errors import IntegrationChoiceError
    from pipeline.json_answers import people_json, results_json
    from pipeline.sqlite_reader import SQLiteReader

    data = DataSettings(data_dir=demo_dir, database_url=f"sqlite:///{demo_dir / 'pipeline.db'}")

    def answers(light: bool, integration_id: str | None) -> list[Any]:
        with App(data, integration_id=integration_id) as app:
            if not light:
                app.reader  # noqa: B018 - the Store opened first: the path of status and export
            got: list[Any] = []
            for query in ("python", "pyhton kubernetes", '"machine learning"', "zzzqqq"):
                got.append(results_json(app.search(SearchRequest(query, limit=5)), app.integration))
            request = SearchRequest("python OR java", limit=3, offset=1, type="CV")
            got.append(people_json(app.search_by_candidate(request), app.integration))
            first = got[0]["hits"][0]["attachment_id"] if got[0]["hits"] else "none"
            got.append(results_json(app.similar(first, limit=3), app.integration))
            assert isinstance(app._search_records, SQLiteReader) is light
            return got

    for iid in (ACME, BOLT):
        light = answers(True, iid)
        assert light == answers(False, iid)
        assert light[0]["total"] > 0 and light[1].get("did_you_mean")
    # The integration choice: the same usage errors, the same words.
    for iid in (None, "sandbox:unknown", "bad id!"):
        messages = []
        for light in (True, False):
            with pytest.raises(IntegrationChoiceError) as caught:
                answers(light, iid)
            messages.append(str(caught.value))
        assert messages[0] == messages[1]
