"""What a search reads from a SQLite database, through the standard library's ``sqlite3``.

`pipeline search` and `pipeline similar` need four reads from the database: the schema's
version, the registered integrations (to choose one), and for the hits shown their texts
(snippets), or, with no index, the counts by status. SQLAlchemy costs a search 0.3-0.45 s of
CPU to import (its core, its ORM, the table models: more than the whole search), so on a
SQLite file at this code's schema :class:`SQLiteReader` runs those four statements on a
``sqlite3`` connection opened read-only; anything else (another database, a URL with
options, a missing or older file, one that does not open) takes :mod:`pipeline.database`'s
path, which migrates or explains.

The tables are declared once, by :mod:`pipeline.database`'s models. :data:`STATEMENTS` is
the SQL SQLAlchemy compiles for ``pipeline.database.sqlite_read_statements()`` (built from
those models' tables): ``tests/test_startup.py`` compiles them and compares, so a renamed
column fails that test instead of drifting, and it compares this reader's answers with the
Store's. The storage faults of SQLite are translated here, for both paths (the Store imports
:func:`storage_fault`), so a search says "database: ... is damaged" the same way on each.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DatabaseCorruptError, DataDirectoryError, DiskFullError, StorageError

# = pipeline.database.SCHEMA_VERSION (tests/test_startup.py holds them equal): a database at
# an older version is left to the Store, which migrates it or says to.
SCHEMA_VERSION = 4
SCHEMA_KEY = "schema_version"

# Each read: SQLAlchemy's SQLite SQL for the statement, and its parameters in order. An
# expanding parameter (a list) stands as ``__[POSTCOMPILE_name]``, as SQLAlchemy writes it.
STATEMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "schema_version": (
        'SELECT settings.value \nFROM settings \nWHERE settings."key" = ?',
        ("key",),
    ),
    "integration_ids": (
        "SELECT integrations.integration_id \nFROM integrations "
        "ORDER BY integrations.integration_id",
        (),
    ),
    "texts": (
        "SELECT attachments.id, texts.text \nFROM attachments "
        "JOIN texts ON texts.sha256 = attachments.sha256 "
        "AND texts.integration_id = attachments.integration_id \n"
        "WHERE attachments.integration_id = ? AND attachments.id IN (__[POSTCOMPILE_ids])",
        ("iid", "ids"),
    ),
    "counts_by_status": (
        "SELECT attachments.status, count(*) AS count_1 \nFROM attachments \n"
        "WHERE attachments.integration_id = ? GROUP BY attachments.status",
        ("iid",),
    ),
}

# A SQLite URL this reader takes: the driver SQLAlchemy uses by default, a file, no options
# and nothing percent-encoded (what ``pipeline.database.sqlite_path`` would make of anything
# else is left to it).
_PLAIN_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?#%]+)")


def plain_sqlite_file(database_url: str) -> Path | None:
    """The file of a plain SQLite URL (``sqlite:///data/pipeline.db``), or None."""
    found = _PLAIN_URL.fullmatch(database_url)
    if found is None or found["path"] == ":memory:" or found["path"].startswith("file:"):
        return None
    return Path(found["path"])


def read_only_uri(path: Path) -> str:
    """SQLite's URI for reading ``path`` without writing anything next to it.

    ``mode=ro`` still needs the WAL index (``-shm``) beside the database, which a read-only
    folder without one cannot give: there, with no write-ahead log left to read (a writer
    that closed cleanly folds it back and deletes it), ``immutable=1`` reads the file alone.
    """
    quoted = urllib.parse.quote(str(path.resolve()))
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not wal.exists():
        return f"file:{quoted}?immutable=1"
    return f"file:{quoted}?mode=ro"


# SQLite's messages for storage faults, in the words its C library uses (sqlite3 gives only
# the message and, since 3.11, the extended code).
_SQLITE_FAULTS: tuple[tuple[str, type[StorageError], str], ...] = (
    ("database or disk is full", DiskFullError, "no space left on the device holding {path}"),
    ("file is not a database", DatabaseCorruptError, "{path} is not a database"),
    ("malformed", DatabaseCorruptError, "{path} is damaged (database disk image is malformed)"),
    ("readonly database", DataDirectoryError, "{path} or its folder is read-only"),
    ("unable to open database file", DataDirectoryError, "cannot open {path}"),
    ("disk i/o error", StorageError, "disk I/O error on {path}"),
)


def storage_fault(exc: BaseException, where: str) -> StorageError | None:
    """The one-line storage error for a database library's error, or None if it is not
    one (a constraint, a bug of ours: those keep their own type)."""
    orig = getattr(exc, "orig", exc)
    message = str(orig).lower()
    if "disk i/o error" in message and _nearly_full(where):
        # SQLite says SQLITE_FULL only where it checks; a write to the WAL or its index
        # that meets ENOSPC comes back as an I/O error.
        message = "database or disk is full"
    for words, cls, text in _SQLITE_FAULTS:
        if words in message:
            return cls(f"database: {text.format(path=where)}", path=where)
    return None


def _nearly_full(where: str) -> bool:
    folder = Path(where).parent
    try:
        found = os.statvfs(folder)
    except (OSError, ValueError):
        return False
    return found.f_bavail * found.f_frsize < 1 << 20


def _sql(name: str, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """A statement's SQL and positional values, each list given as that many ``?``."""
    sql, names = STATEMENTS[name]
    params: list[Any] = []
    for key in names:
        value = values[key]
        if isinstance(value, list):
            sql = sql.replace(f"__[POSTCOMPILE_{key}]", ", ".join("?" * len(value)), 1)
            params.extend(value)
        else:
            params.append(value)
    return sql, params


class SQLiteReader:
    """A SQLite database at this code's schema, read-only, for search and similar.

    Made by :meth:`open`; scoped to one integration by :meth:`for_integration`, as a
    :class:`~pipeline.database.Store` is, with the same answers for the methods it has.
    One connection, used by one thread at a time (a lock), never written through.
    """

    def __init__(self, connection: sqlite3.Connection, where: str) -> None:
        self._connection = connection
        self._where = where
        self._lock = threading.Lock()
        self.integration_id: str | None = None
        self._owner = True

    @classmethod
    def open(cls, database_url: str) -> SQLiteReader | None:
        """The reader, or None where the Store must open the database instead: not a plain
        SQLite file, missing (a writing command creates it), behind this code's schema (the
        Store migrates it, or says a writing command must), or not opening (the Store names
        the fault the way every command does)."""
        path = plain_sqlite_file(database_url)
        if path is None or not path.is_file():
            return None
        connection: sqlite3.Connection | None = None
        try:
            # timeout: SQLite's busy timeout, 30 s as the Store's; a reader of a WAL database
            # rarely waits (only while a writer recovers or resets the log).
            connection = sqlite3.connect(
                read_only_uri(path), uri=True, check_same_thread=False, timeout=30
            )
            row = connection.execute(*_sql("schema_version", {"key": SCHEMA_KEY})).fetchone()
            version = int(row[0]) if row is not None else 0
        except (sqlite3.Error, ValueError, TypeError):
            if connection is not None:
                connection.close()
            return None
        if version < SCHEMA_VERSION:
            connection.close()
            return None
        return cls(connection, str(path))

    def for_integration(self, integration_id: str) -> SQLiteReader:
        """This database scoped to one integration (shares the connection)."""
        scoped = SQLiteReader(self._connection, self._where)
        scoped._lock = self._lock
        scoped.integration_id = integration_id
        scoped._owner = False
        return scoped

    def close(self) -> None:
        if self._owner:
            self._connection.close()

    def _rows(self, name: str, **values: Any) -> list[Any]:
        sql, params = _sql(name, values)
        try:
            with self._lock:
                return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            found = storage_fault(exc, self._where)
            if found is None:
                raise
            raise found from exc

    @property
    def _iid(self) -> str:
        if self.integration_id is None:
            raise RuntimeError("a record method of a reader not scoped to an integration")
        return self.integration_id

    # -- the Store's methods a search uses, with its answers -------------------------------------

    def integration_ids(self) -> list[str]:
        """The registered integrations' ids, in byte order (``Store.integrations``'s)."""
        return [row[0] for row in self._rows("integration_ids")]

    def texts_for(self, attachment_ids: Sequence[str]) -> dict[str, str]:
        if not attachment_ids:
            return {}
        rows = self._rows("texts", iid=self._iid, ids=list(attachment_ids))
        return {attachment_id: text for attachment_id, text in rows}

    def counts_by_status(self) -> dict[str, int]:
        return {status: count for status, count in self._rows("counts_by_status", iid=self._iid)}


__all__ = [
    "SCHEMA_VERSION",
    "STATEMENTS",
    "SQLiteReader",
    "plain_sqlite_file",
    "read_only_uri",
    "storage_fault",
]
