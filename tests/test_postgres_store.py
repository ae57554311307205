"""PostgreSQL as a store that several processes (on several machines) share, on a real
throwaway cluster: the schema made once while they all start, rows another machine wrote
meanwhile, a deadlock run again, NULs from Kombo, and orders that ignore the collation."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy

from pipeline.database import SCHEMA_VERSION, ExportSelection, Store
from pipeline.fetch import RemoteAttachment
from tests import postgres

pytestmark = pytest.mark.postgres


def _item(attachment_id: str, candidate_id: str = "cand-1", **fields: object) -> RemoteAttachment:
    values: dict[str, object] = {
        "id": attachment_id,
        "candidate_id": candidate_id,
        "application_id": None,
        "type": "CV",
        "remote_id": f"r-{attachment_id}",
        "data_url": "https://files.example/x",
        "file_name": f"{attachment_id}.pdf",
        "content_type": "application/pdf",
        "remote_created_at": None,
        "remote_updated_at": datetime(2026, 5, 1, tzinfo=UTC),
    }
    values.update(fields)
    return RemoteAttachment(**values)  # type: ignore[arg-type]


def _store(url: str) -> Store:
    whole = Store(url)
    whole.ensure_schema()
    whole.register_integration("int-1")
    return whole.for_integration("int-1")


def _migrate(url: str) -> int:
    store = Store(url)
    try:
        store.ensure_schema()
        return store.schema_version()
    finally:
        store.close()


def test_processes_starting_at_once_make_the_schema_once(postgres_url: str) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_migrate, [postgres_url] * 4)
    assert versions == [SCHEMA_VERSION] * 4


def test_a_row_another_machine_wrote_meanwhile_is_updated_not_refused(postgres_url: str) -> None:
    here, there = _store(postgres_url), _store(postgres_url)
    listed_at = datetime(2026, 6, 1, tzinfo=UTC)
    known_here = here.known_attachments("cand-1")  # nothing yet, as far as this one knows
    with there.batch():
        there.candidate_fetched("cand-1", "int-1", None)
        there.record_listing("int-1", [_item("att-1")], {}, listed_at)
    with here.batch():
        here.candidate_fetched("cand-1", "int-1", None)
        here.candidate_listed("cand-1", "int-1", "Data engineer")
        renamed = _item("att-1", file_name="renamed.pdf")
        here.record_listing("int-1", [renamed], known_here, listed_at)
    here.set_setting("some", "1")
    there.set_setting("some", "2")
    assert here.get_setting("some") == "2"
    (record,) = here.export_records(ExportSelection(status="all"))
    assert record["file_name"] == "renamed.pdf" and record["status"] == "pending"
    whole = Store(postgres_url)
    assert not whole.register_integration("int-1")  # there already: not an error either


def test_nuls_from_kombo_are_dropped(postgres_url: str) -> None:
    store = _store(postgres_url)
    with store.batch():
        store.candidate_fetched("cand-1", "int-1", "Kombo said \x00 something")
        store.candidate_listed("cand-1", "int-1", "Data\x00 engineer")
        store.record_listing(
            "int-1", [_item("att-1", file_name="Lebens\x00lauf.pdf")], {}, datetime.now(UTC)
        )
    (record,) = store.export_records(ExportSelection(status="all"))
    assert record["file_name"] == "Lebenslauf.pdf"


def test_a_transaction_aborted_by_a_deadlock_runs_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(postgres_url)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with store.batch():
        store.candidate_fetched("cand-1", "int-1", None)
        store.record_listing("int-1", [_item("att-x"), _item("att-y")], {}, now)
    known = store.known_attachments("cand-1")
    other = sqlalchemy.create_engine(postgres_url).connect()
    # The other session waits long before it looks for deadlocks: ours is the one aborted.
    other.exec_driver_sql("SET deadlock_timeout = '20s'")
    other.exec_driver_sql("UPDATE attachments SET error = 'other' WHERE id = 'att-y'")
    listing = [_item("att-x", file_name="x2.pdf"), _item("att-y", file_name="y2.pdf")]
    failures: list[BaseException] = []

    def ours() -> None:
        try:
            store.record_listing("int-1", listing, known, now)  # locks x, then waits for y
        except BaseException as exc:
            failures.append(exc)

    caplog.set_level(logging.INFO, logger="pipeline.database")
    worker = threading.Thread(target=ours)
    worker.start()
    time.sleep(0.5)
    other.exec_driver_sql("UPDATE attachments SET error = 'other' WHERE id = 'att-x'")
    other.commit()  # reached once PostgreSQL aborted ours, which then runs again
    worker.join(30)
    other.close()
    assert not failures
    assert "deadlock detected in record_listing, trying again" in caplog.text
    names = {
        r["attachment_id"]: r["file_name"]
        for r in store.export_records(ExportSelection(status="all"))
    }
    assert names == {"att-x": "x2.pdf", "att-y": "y2.pdf"}


def test_export_order_does_not_depend_on_the_collation(
    postgres_cluster: postgres.Cluster, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A database whose collation sorts "a" before "B" (ICU's) exports in byte order, as
    SQLite does: "B..." first."""
    name = "icu_collated"
    postgres_cluster.execute(
        f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
        "LOCALE 'C.UTF-8'"
    )
    url = postgres_cluster.url(name)
    try:
        orders = []
        for database in (url, f"sqlite:///{tmp_path / 'pipeline.db'}"):
            store = _store(database)
            items = [_item("att-b", "b-2"), _item("att-B", "B-1"), _item("att-a", "a-3")]
            with store.batch():
                for candidate in ("b-2", "B-1", "a-3"):
                    store.candidate_fetched(candidate, "int-1", None)
                store.record_listing("int-1", items, {}, datetime.now(UTC))
            exported = store.export_records(ExportSelection(status="all", with_text=False))
            orders.append([r["candidate_id"] for r in exported])
            store.close()
        assert orders[0] == orders[1] == ["B-1", "a-3", "b-2"]
        with sqlalchemy.create_engine(url).connect() as conn:
            plain = conn.exec_driver_sql("SELECT id FROM candidates ORDER BY id").scalars()
            assert list(plain) == ["a-3", "B-1", "b-2"]  # the collation's own order
    finally:
        postgres_cluster.drop(url)


def test_a_nul_in_kombos_answers_does_not_stop_a_run(cli, sandbox, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    world = sandbox.world
    candidate = world.ordered()[0]
    for attachment in candidate.attachments:
        world.body(attachment.id)  # rendered before the names change
        attachment.file_name = "Lebens\x00lauf " + attachment.file_name
    candidate.title = "Data\x00 engineer"
    env = {**sandbox.env(), "PIPELINE_DATABASE_URL": postgres_url, "PIPELINE_SEARCH": "postgres"}
    result = cli("nightly", env=env)
    assert result.code == 0, result.err
    names = [
        json.loads(line)["file_name"] for line in cli("export", "--status", "all").out.splitlines()
    ]
    assert names and not any("\x00" in name for name in names)
    hits = json.loads(cli("search", "Lebenslauf", "--json").out)["hits"]
    assert candidate.id in {hit["candidate_id"] for hit in hits}


# -- an integration claimed by one process at a time, on any machine ----------------------------

_HOLD_CLAIM = """
import sys, time
import sqlalchemy
from pipeline.lock import IntegrationClaim
claim = IntegrationClaim(sqlalchemy.create_engine(sys.argv[1]), sys.argv[2]).__enter__()
print("held", flush=True)
time.sleep(120)
"""


def test_an_integration_claimed_elsewhere_is_refused_until_its_process_dies(
    postgres_url: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from pipeline.errors import LockedError
    from pipeline.lock import IntegrationClaim, WriterLock

    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLAIM, postgres_url, "int-1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        # Another data directory (another machine): its file lock is free, the claim is not.
        with pytest.raises(LockedError, match="int-1: another pipeline process"):
            WriterLock(tmp_path, claim=IntegrationClaim(engine, "int-1")).__enter__()
        with WriterLock(tmp_path, claim=IntegrationClaim(engine, "int-2")):
            pass  # another integration is free meanwhile
        other.kill()  # the process dies holding it: PostgreSQL drops the claim
        other.wait()
        taken = IntegrationClaim(engine, "int-1", wait=True, timeout=10)
        with WriterLock(tmp_path, claim=taken), pytest.raises(LockedError):
            IntegrationClaim(engine, "int-1").__enter__()  # this process holds it now
    finally:
        other.kill()
        other.wait()
        engine.dispose()


def test_a_postgresql_database_searches_in_postgresql_unless_told_otherwise() -> None:
    from pipeline.config import Options, resolve_data

    url = "postgresql+psycopg://pipeline@db.internal/cv"
    assert resolve_data(Options(), env={"PIPELINE_DATABASE_URL": url}).search == "postgres"
    kept = {"PIPELINE_DATABASE_URL": url, "PIPELINE_SEARCH": "whoosh"}
    assert resolve_data(Options(), env=kept).search == "whoosh"
    assert resolve_data(Options(), env={}).search == "whoosh"


def test_a_live_run_of_another_machine_is_not_marked_killed(  # type: ignore[no-untyped-def]
    cli, sandbox, postgres_url: str
) -> None:
    import subprocess
    import sys

    iid = sandbox.integration_id
    env = {**sandbox.env(), "PIPELINE_DATABASE_URL": postgres_url}
    assert cli("integrations", "add", iid, env=env).code == 0
    database = Store(postgres_url)
    store = database.for_integration(iid)
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLAIM, postgres_url, iid], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        live = store.begin_run("nightly")  # the other machine's run, going on
        refused = cli("nightly", env=env)
        assert refused.code != 0 and "another pipeline process" in refused.err
        assert {r.id: r.status for r in store.recent_runs()} == {live: "running"}
        other.kill()  # it dies mid-run: the claim goes with it
        other.wait()
        assert cli("nightly", env=env).code == 0
        statuses = {r.id: r.status for r in store.recent_runs()}
        assert statuses.pop(live) == "killed" and set(statuses.values()) == {"succeeded"}
    finally:
        other.kill()
        other.wait()
        database.close()
