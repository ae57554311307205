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
    """Records in a stable order (candidate, then attachment id)."""
    columns: list[Any] = [Attachment]
    if with_text:
        columns.append(ExtractedText.text)
    query = select(*columns)
    if with_text:
        query = query.outerjoin(ExtractedText, ExtractedText.sha256 == Attachment.sha256)
    if type:
        query = query.where(Attachment.type == type)
    if status and status != "all":
        query = query.where(Attachment.status == status)
    if candidate_id:
        query = query.where(Attachment.candidate_id == candidate_id)
    if since is not None:
        query = query.where(Attachment.remote_updated_at >= since)
    query = query.order_by(Attachment.candidate_id, Attachment.id).execution_options(yield_per=500)
    with store.session() as session:
        for row in session.execute(query):
            attachment: Attachment = row[0]
            record: dict[str, Any] = {
                "integration_id": attachment.integration_id,
                "attachment_id": attachment.id,
                "candidate_id": attachment.candidate_id,
                "application_id": attachment.application_id,
                "type": attachment.type,
                "remote_id": attachment.remote_id,
                "file_name": attachment.file_name,
                "content_type": attachment.content_type,
                "detected_type": attachment.detected_type,
                "remote_created_at": _iso(attachment.remote_created_at),
                "remote_updated_at": _iso(attachment.remote_updated_at),
                "sha256": attachment.sha256,
                "size_bytes": attachment.size_bytes,
                "status": attachment.status,
                "error": attachment.error,
                "parser": attachment.parser,
                "page_count": attachment.page_count,
                "parser_version": attachment.parser_version,
                "char_count": attachment.char_count,
                "language": attachment.language,
                "fetched_at": _iso(attachment.fetched_at),
                "extracted_at": _iso(attachment.extracted_at),
                "indexed_at": _iso(attachment.indexed_at),
            }
            if with_text:
                # Text is kept only for attachments whose state has text to give.
                record["text"] = row[1] if attachment.status in ("indexed", "pending") else None
            session.expunge(attachment)
            yield record


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
