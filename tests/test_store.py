"""The schema version (a database made before it opens, and is brought forward once), and
the store's direct SQLite statements (``_Direct``) leave the same rows, value for value,
and read the same answers, as SQLAlchemy's ``Connection.execute``, which every other
database keeps using."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.database import SCHEMA_VERSION, Outcome, Store
from pipeline.fetch import RemoteAttachment
from pipeline.states import AttachmentState

# Stamped by the store itself (the time of the call): compared by shape, not value.
STAMPED = {"first_seen_at", "last_seen_at", "last_fetched_at", "fetched_at", "extracted_at"}


def _item(number: int, updated: datetime) -> RemoteAttachment:
    return RemoteAttachment(
        id=f"att-{number}",
        candidate_id="cand-1",
        application_id=None if number % 2 else "app-9",
        type="CV",  # type: ignore[arg-type]
        remote_id=f"r{number}",
        data_url="https://files.example/x",
        file_name=f"Lebenslauf Müller {number}.pdf",
        content_type="application/pdf",
        remote_created_at=None,
        remote_updated_at=updated,
    )


def _exercise(store: Store) -> None:
    store.create()
    berlin = timezone(timedelta(hours=2))
    first = [_item(n, datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=berlin)) for n in range(3)]
    with store.batch():
        store.candidate_fetched("cand-1", "int-1", None)
        store.candidate_fetched("cand-2", "int-1", "503 from Kombo")
        store.record_listing("int-1", first, {}, datetime(2026, 5, 2, tzinfo=UTC))
    known = store.known_attachments("cand-1")
    # Listed again: one changed at Kombo (back to pending), the others only seen.
    again = [*first[:2], _item(2, datetime(2026, 6, 1, tzinfo=UTC))]
    with store.batch():
        store.record_listing("int-1", again, known, datetime(2026, 6, 2, tzinfo=UTC))
        store.save_outcome(
            "att-0",
            Outcome(
                state=AttachmentState.PENDING,
                sha256="a" * 64,
                size_bytes=1234,
                detected_type="application/pdf",
                parser="pypdf",
                parser_version="5.0",
                page_count=2,
                text="Python Berlin Kubernetes",
                language="en",
            ),
        )
        store.save_outcome(
            "att-1", Outcome(state=AttachmentState.FAILED, error="unreadable: broken")
        )
        store.candidate_fetched("cand-2", "int-1", None)


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    dumped = {}
    for table in tables:
        cursor = db.execute(f"SELECT * FROM {table} ORDER BY 1")
        names = [d[0] for d in cursor.description]
        dumped[table] = [
            tuple(
                re.sub(r"\d", "9", value) if name in STAMPED and isinstance(value, str) else value
                for name, value in zip(names, row, strict=True)
            )
            for row in cursor
        ]
    db.close()
    return dumped


def test_direct_statements_store_and_read_what_sqlalchemy_does(tmp_path: Path) -> None:
    direct = Store(f"sqlite:///{tmp_path / 'direct.db'}").for_integration("int-1")
    portable = Store(f"sqlite:///{tmp_path / 'portable.db'}").for_integration("int-1")
    assert direct._direct is not None
    portable._direct = None  # the path every other database takes
    _exercise(direct)
    _exercise(portable)
    ours, theirs = _rows(tmp_path / "direct.db"), _rows(tmp_path / "portable.db")
    assert len(ours["attachments"]) == 3 and len(ours["candidates"]) == 2
    assert ours == theirs
    # The Berlin time was stored as UTC, in SQLAlchemy's own format.
    assert any("2026-05-01 10:30:15.123456" in row for row in ours["attachments"])
    for ids in ([], ["att-0"], ["att-1", "elsewhere", "att-2"]):
        assert direct.known_attachments("cand-1", ids) == portable.known_attachments("cand-1", ids)
    assert direct.known_attachments("nobody", ["att-1"]).keys() == {"att-1"}
    prior = direct.prior_extraction("a" * 64)
    assert prior is not None and prior.text == "Python Berlin Kubernetes"
    assert prior == portable.prior_extraction("a" * 64)
    assert direct.prior_extraction("b" * 64) is None
    known = direct.known_attachments("cand-1")
    assert known["att-2"].status == "pending" and known["att-1"].status == "failed"
    assert known["att-2"].remote_updated_at == datetime(2026, 6, 1, tzinfo=UTC)


# The schema as 0.1.0 (main before schema versions) created it: no version row. Older data
# directories lack the columns and index marked below, which later versions added in place.
MAIN_SCHEMA = """
CREATE TABLE candidates (id VARCHAR(64) NOT NULL, integration_id VARCHAR(200) NOT NULL,
    first_seen_at DATETIME NOT NULL, last_seen_at DATETIME, last_fetched_at DATETIME,
    fetch_error TEXT, remote_deleted_at DATETIME, {title} PRIMARY KEY (id));
CREATE TABLE texts (sha256 VARCHAR(64) NOT NULL, text TEXT NOT NULL, PRIMARY KEY (sha256));
CREATE TABLE runs (id INTEGER NOT NULL, kind VARCHAR(20) NOT NULL, started_at DATETIME NOT NULL,
    finished_at DATETIME, status VARCHAR(20) NOT NULL, counts JSON NOT NULL,
    errors JSON NOT NULL, warnings JSON NOT NULL, summary TEXT, PRIMARY KEY (id));
CREATE TABLE erasures (id INTEGER NOT NULL, candidate_id VARCHAR(64) NOT NULL,
    erased_at DATETIME NOT NULL, reason VARCHAR(100) NOT NULL, attachments INTEGER NOT NULL,
    PRIMARY KEY (id));
CREATE INDEX ix_erasures_candidate_id ON erasures (candidate_id);
CREATE TABLE settings ("key" VARCHAR(100) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE attachments (id VARCHAR(64) NOT NULL, integration_id VARCHAR(200) NOT NULL,
    candidate_id VARCHAR(64) NOT NULL, application_id VARCHAR(64), type VARCHAR(20) NOT NULL,
    remote_id TEXT, file_name TEXT, content_type TEXT, detected_type VARCHAR(200),
    remote_created_at DATETIME, remote_updated_at DATETIME, sha256 VARCHAR(64),
    size_bytes INTEGER, status VARCHAR(20) NOT NULL, error TEXT, parser VARCHAR(100),
    parser_version VARCHAR(100), page_count INTEGER, char_count INTEGER, {language}
    fetched_at DATETIME, extracted_at DATETIME, indexed_at DATETIME, PRIMARY KEY (id),
    FOREIGN KEY(candidate_id) REFERENCES candidates (id) ON DELETE CASCADE);
CREATE INDEX ix_attachments_type ON attachments (type);
CREATE INDEX ix_attachments_sha256 ON attachments (sha256);
CREATE INDEX ix_attachments_candidate_id ON attachments (candidate_id);
CREATE INDEX ix_attachments_status ON attachments (status);
{order_index}
INSERT INTO candidates (id, integration_id, first_seen_at) VALUES
    ('cand-1', 'int-1', '2026-05-01 10:00:00.000000');
INSERT INTO attachments (id, integration_id, candidate_id, type, status, fetched_at) VALUES
    ('att-1', 'int-1', 'cand-1', 'CV', 'no_text', '2026-05-01 10:00:00.000000');
INSERT INTO runs (id, kind, started_at, finished_at, status, counts, errors, warnings, summary)
    VALUES (1, 'ingest', '2026-05-01 10:00:00.000000', '2026-05-01 10:00:01.000000',
    'succeeded', '{{}}', '[]', '[]', 'ingest succeeded: ...');
"""


def _older_database(path: Path, *, current: bool) -> None:
    added = {
        "title": "title TEXT," if current else "",
        "language": "language VARCHAR(16)," if current else "",
        "order_index": "CREATE INDEX ix_attachments_candidate_order ON attachments "
        "(candidate_id, id);"
        if current
        else "",
    }
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(MAIN_SCHEMA.format(**added))
    db.close()


def _columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    names = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    db.close()
    return names


@pytest.mark.parametrize("current", [True, False], ids=["main's schema", "an older one"])
def test_a_database_made_before_schema_versions_opens_with_no_step_by_hand(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, current: bool
) -> None:
    path = tmp_path / "data" / "pipeline.db"
    _older_database(path, current=current)
    store = Store(f"sqlite:///{path}")
    assert store.schema_version() == 0
    # A read-only command brings it forward once, and shows what was there.
    status = cli("status")
    assert status.code == 0, status.err
    assert status.out.startswith("attachments: 1, 1 no_text\n")
    assert "run    1 ingest   succeeded" in status.out
    assert store.schema_version() == SCHEMA_VERSION
    assert {"title"} <= _columns(path, "candidates")
    assert {"language"} <= _columns(path, "attachments")
    assert not store.ensure_schema()  # at the version now: nothing more to do
    search = cli("search", "Python")
    assert search.code == 0, search.err
    assert '0 matches for "Python"' in search.out
    exported = cli("export", "--status", "all")
    assert exported.code == 0, exported.err
    assert json.loads(exported.out)["attachment_id"] == "att-1"
    store.close()


def test_a_new_database_starts_at_the_current_version(database_url: str) -> None:
    store = Store(database_url)
    assert store.schema_version() == 0
    assert store.ensure_schema()
    assert store.schema_version() == SCHEMA_VERSION
    assert not store.ensure_schema()
    store.close()


def _dump(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows as the store's own types read them, stamped times as their shape."""
    from pipeline.database import Base

    dumped = {}
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name == "settings":
                continue
            rows = conn.execute(table.select().order_by(*table.primary_key.columns))
            dumped[table.name] = [
                tuple(
                    "stamped" if name in STAMPED and value is not None else value
                    for name, value in row._mapping.items()
                )
                for row in rows
            ]
    return dumped


def test_the_same_records_on_each_database(database_url: str, tmp_path: Path) -> None:
    """A listing, outcomes and fetch errors leave the same rows on SQLite and PostgreSQL,
    and read back the same (times in UTC, JSON as JSON)."""
    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}").for_integration("int-1")
    store = Store(database_url).for_integration("int-1")
    _exercise(reference)
    _exercise(store)
    ours = _dump(store)
    assert len(ours["attachments"]) == 3 and len(ours["candidates"]) == 2
    assert ours == _dump(reference)
    known = store.known_attachments("cand-1")
    assert known == reference.known_attachments("cand-1")
    assert known["att-2"].remote_updated_at == datetime(2026, 6, 1, tzinfo=UTC)
    prior = store.prior_extraction("a" * 64)
    assert prior is not None and prior.text == "Python Berlin Kubernetes"
    store.close()
    reference.close()
