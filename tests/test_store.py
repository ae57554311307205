"""The store's direct SQLite statements (``_Direct``) leave the same rows, value for value,
and read the same answers, as SQLAlchemy's ``Connection.execute``, which every other
database keeps using."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from pipeline.database import Store
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
            state=AttachmentState.PENDING,
            sha256="a" * 64,
            size_bytes=1234,
            detected_type="application/pdf",
            parser="pypdf",
            parser_version="5.0",
            page_count=2,
            text="Python Berlin Kubernetes",
            language="en",
        )
        store.save_outcome("att-1", state=AttachmentState.FAILED, error="unreadable: broken")
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
    direct = Store(f"sqlite:///{tmp_path / 'direct.db'}")
    portable = Store(f"sqlite:///{tmp_path / 'portable.db'}")
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
