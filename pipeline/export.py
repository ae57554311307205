"""Export's output formats: attachment records as JSON lines, CSV or Parquet, written as they
stream, with constant memory.

Each record has the fields of INTERFACE.md's export record (``schemas/export_record.schema.json``)
and validates against that schema. The rows come from the database in batches
(:meth:`pipeline.database.Store.export_records`, the one place export's SQL lives), so the
size of the export does not matter.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .config import EXPORT_FORMATS
from .database import EXPORT_COLUMNS, ExportSelection, Store
from .errors import UsageError

COLUMNS = EXPORT_COLUMNS


def iter_records(
    store: Store,
    *,
    type: str | None = None,
    status: str | None = "indexed",
    candidate_id: str | None = None,
    since: datetime | None = None,
    with_text: bool = True,
) -> Iterator[dict[str, Any]]:
    """Records in a stable order (candidate, then attachment id), streamed from the database
    (the query is :meth:`~pipeline.database.Store.export_records`)."""
    return store.export_records(
        ExportSelection(
            type=type, status=status, candidate_id=candidate_id, since=since, with_text=with_text
        )
    )


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


FORMATS = EXPORT_FORMATS
WRITERS: dict[str, Callable[..., int]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
    "parquet": write_parquet,
}


def write_file(
    fmt: str, records: Iterator[dict[str, Any]], target: Path, *, with_text: bool
) -> int:
    """Write ``records`` in ``fmt`` to ``target`` atomically: a reader sees the old file or
    the whole new one, never a part, and the file is the owner's alone (0600)."""
    writer = WRITERS[fmt]
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=".export-")
    try:
        handle: IO[Any] = (
            os.fdopen(fd, "wb")
            if fmt == "parquet"
            else os.fdopen(fd, "w", encoding="utf-8", newline="")
        )
        with handle:
            count = writer(records, handle, with_text=with_text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
