"""Export: attachment records as JSON lines or CSV, streamed with constant memory.

Each record has the fields of INTERFACE.md's export record (``schemas/export_record.schema.json``)
and validates against that schema. Rows come from the database in batches (``yield_per``)
and are written as they come, so the size of the export does not matter.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import select

from .errors import UsageError
from .store import Attachment, ExtractedText, Store

COLUMNS = (
    "integration_id",
    "attachment_id",
    "candidate_id",
    "application_id",
    "type",
    "remote_id",
    "file_name",
    "content_type",
    "detected_type",
    "remote_created_at",
    "remote_updated_at",
    "sha256",
    "size_bytes",
    "status",
    "error",
    "parser",
    "page_count",
    "parser_version",
    "char_count",
    "language",
    "text",
    "fetched_at",
    "extracted_at",
    "indexed_at",
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def iter_records(
    store: Store,
    *,
    type: str | None = None,
    status: str | None = "indexed",
    candidate_id: str | None = None,
    since: datetime | None = None,
    with_text: bool = True,
) -> Iterator[dict[str, Any]]:
    """Records in a stable order (candidate, then attachment id), streamed from the database.

    Plain Core rows, not ORM objects, fetched in batches: memory does not grow with the
    number of records.
    """
    a, t = Attachment.__table__, ExtractedText.__table__
    columns = [a.c[name] for name in _ATTACHMENT_COLUMNS]
    if with_text:
        columns.append(t.c.text)
    query = select(*columns)
    if with_text:
        query = query.select_from(a.outerjoin(t, t.c.sha256 == a.c.sha256))
    if type:
        query = query.where(a.c.type == type)
    if status and status != "all":
        query = query.where(a.c.status == status)
    if candidate_id:
        query = query.where(a.c.candidate_id == candidate_id)
    if since is not None:
        query = query.where(a.c.remote_updated_at >= since)
    query = query.order_by(a.c.candidate_id, a.c.id)
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=500).execute(query)
        for row in result:
            values = row._mapping
            record: dict[str, Any] = {
                "integration_id": values["integration_id"],
                "attachment_id": values["id"],
            }
            for name in _ATTACHMENT_COLUMNS[2:]:
                value = values[name]
                record[name] = _iso(value) if isinstance(value, datetime) else value
            if with_text:
                # Text is kept only for attachments whose state has text to give.
                has_text = values["status"] in ("indexed", "pending")
                record["text"] = values["text"] if has_text else None
            yield record


# The attachments table's columns, in the record's order (the text comes from its own table).
_ATTACHMENT_COLUMNS = tuple("id" if c == "attachment_id" else c for c in COLUMNS if c != "text")


def write_jsonl(records: Iterator[dict[str, Any]], out: IO[str], *, with_text: bool = True) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(records: Iterator[dict[str, Any]], out: IO[str], *, with_text: bool = True) -> int:
    fields = [c for c in COLUMNS if with_text or c != "text"]
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
        count += 1
    return count


def write_parquet(
    records: Iterator[dict[str, Any]], out: IO[bytes], *, with_text: bool = True, batch: int = 2000
) -> int:
    """Parquet in row groups of ``batch`` records (needs the ``parquet`` extra: pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError("Parquet needs pyarrow: pip install 'kombo-cv-pipeline[parquet]'") from exc
    integers = {"size_bytes", "page_count", "char_count"}
    fields = [c for c in COLUMNS if with_text or c != "text"]
    schema = pa.schema([(name, pa.int64() if name in integers else pa.string()) for name in fields])
    count = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        rows: list[dict[str, Any]] = []
        for record in records:
            rows.append(record)
            count += 1
            if len(rows) == batch:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows or count == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return count


FORMATS = ("jsonl", "csv", "parquet")
WRITERS: dict[str, Callable[..., int]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
    "parquet": write_parquet,
}
