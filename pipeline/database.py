"""The database, source of truth for every candidate, attachment, text and run, and the one
way into it: every statement the pipeline runs (export's included) is a method of
:class:`Store`.

SQLAlchemy 2.0 models; SQLite by default (WAL, foreign keys on), any SQLAlchemy URL works.
Only the pipeline's writer thread calls the mutating methods, each in its own transaction,
so a killed process leaves whole rows or none.

Every record is keyed by its integration (``integration_id`` is part of each primary key):
the same candidate id, attachment id or bytes under two integrations are two rows. A
:class:`Store` is opened for the whole database and scoped to one integration with
:meth:`Store.for_integration`; every record method of a scoped store reads and writes only
that integration's rows (an unscoped store only reaches the registry and the settings).

The schema carries its version (:data:`SCHEMA_VERSION`, in the settings row
``schema_version``): :meth:`Store.ensure_schema` reads that one row and migrates only when
the database is behind (a database made before the version existed reads as 0). Migrations
are additive (new tables, columns and indexes), so an older database is brought forward in
place, with no step by hand; version 3 rebuilds the three tables whose primary key gained
``integration_id`` (copied through a temporary table, in one transaction).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.functions import FunctionElement

from .errors import (
    DatabaseUnavailableError,
    DataDirectoryError,
    SchemaBehindError,
)
from .filestore import private_file, private_folder, tighten
from .search import IndexDoc
from .sqlite_reader import read_only_uri, storage_fault
from .states import FINAL_STATES, AttachmentState, IntegrationState, RunStatus, utcnow

log = logging.getLogger(__name__)

# Bump when a release adds tables, columns or indexes (``Store.create`` adds them in place).
# 1: the tables of 0.1.0 with every column added since.
# 2: candidates.not_found_at (a candidate Kombo said it does not know).
# 3: integrations: the registry table; integration_id in the primary keys of candidates,
#    attachments and texts, a column of runs and erasures; the watermark per integration.
# 4: runs record the host and process that ran them (issue 19: the sweep per host).
SCHEMA_VERSION = 4
_SCHEMA_KEY = "schema_version"
# Why a candidate is fetched again though nothing changed at Kombo (``Store.refetch_files``).
MISSING_FILE_REASON = "a stored file went missing: the next run fetches it again"
# The settings row that holds when the last complete nightly run began.
WATERMARK = "nightly_watermark"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    # Every model here is mapped to a Table (DeclarativeBase types it as any FromClause).
    __table__: ClassVar[Table]


class Integration(Base):
    """The registry: one row per Kombo integration this deployment serves."""

    __tablename__ = "integrations"

    integration_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default=IntegrationState.ACTIVE)
    # Why it is paused: "INTEGRATION.INACTIVE: ..." from Kombo, or "paused by hand".
    paused_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When the last complete nightly run of this integration began (ISO 8601).
    nightly_watermark: Mapped[str | None] = mapped_column(Text)
    # When Kombo reported the integration deleted: its data is erased 14 days later.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Candidate(Base):
    __tablename__ = "candidates"

    integration_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetch_error: Mapped[str | None] = mapped_column(Text)
    remote_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When Kombo last answered "not found" for the candidate (PLATFORM.INPUT_INVALID or 404):
    # later runs do not retry it unless it is named again. Cleared by a listing that works.
    not_found_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Candidate-level text for search (their current job title, from GET /ats/candidates).
    title: Mapped[str | None] = mapped_column(Text)


class ExtractedText(Base):
    """Text keyed by the file's sha256: identical files share one row."""

    __tablename__ = "texts"

    integration_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)


class Attachment(Base):
    __tablename__ = "attachments"
    # Export and the index walk attachments in this order: an index, so no sort in memory.
    __table_args__ = (
        Index("ix_attachments_integration_order", "integration_id", "candidate_id", "id"),
        Index("ix_attachments_integration_status", "integration_id", "status"),
        ForeignKeyConstraint(
            ["integration_id", "candidate_id"],
            ["candidates.integration_id", "candidates.id"],
            ondelete="CASCADE",
        ),
    )

    integration_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(64), index=True)
    application_id: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(20), index=True)
    remote_id: Mapped[str | None] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(Text)
    detected_type: Mapped[str | None] = mapped_column(String(200))
    remote_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    remote_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    parser: Mapped[str | None] = mapped_column(String(100))
    parser_version: Mapped[str | None] = mapped_column(String(100))
    page_count: Mapped[int | None] = mapped_column(Integer)
    char_count: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(16), index=True)
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extracted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    indexed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # OCR (issue 17): the pages Tesseract read and its mean word confidence (0-100) over them;
    # and how often a parser timed out or ran out of memory on these bytes (the third time
    # makes the attachment ``unreadable``).
    ocr_pages: Mapped[int | None] = mapped_column(Integer)
    ocr_confidence: Mapped[float | None] = mapped_column(Float)
    parse_failures: Mapped[int | None] = mapped_column(Integer)


_ATTACHMENTS = Attachment.__table__
_TEXTS = ExtractedText.__table__


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    integration_id: Mapped[str | None] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20))  # running, succeeded, failed, ...
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    summary: Mapped[str | None] = mapped_column(Text)
    # Which machine and process ran it: several machines share one database (issue 19).
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)


class Erasure(Base):
    """That a candidate was erased, and when: no personal data, only Kombo's id."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    integration_id: Mapped[str | None] = mapped_column(String(200), index=True)
    candidate_id: Mapped[str] = mapped_column(String(64), index=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(100))
    attachments: Mapped[int] = mapped_column(Integer)


class Setting(Base):
    """Small named values such as the nightly watermark."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- API tokens (``pipeline tokens``, ``pipeline serve``) ----------------------------------------


class ApiToken(Base):
    """An API token of ``pipeline serve``: it belongs to one integration and is kept as a
    hash only (the token itself is shown once, when made).

    A token reads ``pk_<token_id>_<secret>``: ``token_id`` finds the row, and the SHA-256
    of the secret is compared in constant time. The secret is 32 random bytes, so a plain
    hash is enough (a slow password hash guards guessable secrets, which these are not).
    """

    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    integration_id: Mapped[str] = mapped_column(String(200), index=True)
    scope: Mapped[str] = mapped_column(String(10))  # "read" or "admin"
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What download and extraction found for one attachment (``save_outcome``)."""

    state: AttachmentState
    error: str | None = None
    # the file, when one was downloaded
    sha256: str | None = None
    size_bytes: int | None = None
    # what extraction found in it
    detected_type: str | None = None
    parser: str | None = None
    parser_version: str | None = None
    page_count: int | None = None
    text: str | None = None
    language: str | None = None
    ocr_pages: int | None = None
    ocr_confidence: float | None = None


@dataclass(frozen=True)
class FailedCandidate:
    candidate_id: str
    reason: str
    retried: bool  # whether the next run asks Kombo again (not when Kombo does not know it)


@dataclass(frozen=True)
class FailedAttachment:
    attachment_id: str
    candidate_id: str
    status: str
    reason: str
    retried: bool


@dataclass(frozen=True)
class Failures:
    candidates: list[FailedCandidate]
    candidate_total: int
    attachments: list[FailedAttachment]
    attachment_total: int


@dataclass(frozen=True)
class FinishedRun:
    """What a run's row keeps when it ends (``finish_run``)."""

    status: RunStatus
    counts: dict[str, Any]
    errors: list[str]
    warnings: list[str]
    summary: str  # the run's one-line summary


@dataclass(frozen=True)
class KnownAttachment:
    id: str
    application_id: str | None
    status: str
    sha256: str | None
    remote_updated_at: datetime | None
    content_type: str | None
    file_name: str | None
    size_bytes: int | None
    # the parser (and version) of the last extraction: an ``unreadable`` file is tried again
    # when that parser is upgraded
    parser: str | None = None
    parser_version: str | None = None

    def changed_at_kombo(self, item: Any) -> bool:
        """Whether Kombo's listing (a RemoteAttachment) says the file is not the one on
        record: changed at Kombo, or listed again after being deleted. The one statement of
        the rule: the listing reopens such a row, and a run downloads it again."""
        return (
            self.remote_updated_at != item.remote_updated_at
            or self.content_type != item.content_type
            or self.file_name != item.file_name
            or self.status == AttachmentState.DELETED
        )


def _sqlite_pragmas(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not read_only:  # a reader keeps the journal mode the writer chose
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # Erased rows are overwritten, not left readable in free pages (GDPR erasure).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()


class _Direct:
    """Statements run on SQLite's DB-API connection, compiled once by SQLAlchemy.

    ``Connection.execute`` spends some 40 us of Python on each statement (its execution
    context, the parameters' and rows' processing), and a run makes three or four statements
    per attachment on the thread that feeds the extraction workers. Here the SQL is what
    SQLAlchemy compiles for the statement and the keys given, each value goes through its
    column type's own bind processor (UTC datetimes as SQLAlchemy stores them) and each
    column of a row through its result processor; only the execution context is skipped.

    For SQLite only: with any other database ``Store`` keeps to ``Connection.execute``. For
    statements without column defaults, RETURNING or expanding parameters (``in_`` of a list:
    give each value a parameter of its own).
    """

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._prepared: dict[tuple[int, tuple[str, ...]], _Prepared] = {}

    def write(self, conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
        prepared = self._prepare(statement, tuple(rows[0]))
        driver = conn.connection.driver_connection
        assert driver is not None
        if len(rows) == 1:
            driver.execute(prepared.sql, prepared.values(rows[0]))
        else:
            driver.executemany(prepared.sql, [prepared.values(row) for row in rows])

    def read(self, conn: Connection, statement: Any, params: dict[str, Any]) -> list[Any]:
        prepared = self._prepare(statement, tuple(params))
        driver = conn.connection.driver_connection
        assert driver is not None
        rows = driver.execute(prepared.sql, prepared.values(params)).fetchall()
        results = prepared.results
        if not any(results):
            return rows
        return [
            tuple(v if r is None or v is None else r(v) for r, v in zip(results, row, strict=True))
            for row in rows
        ]

    def _prepare(self, statement: Any, keys: tuple[str, ...]) -> _Prepared:
        found = self._prepared.get((id(statement), keys))
        if found is not None:
            return found
        dialect = self._dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        binds: list[tuple[str | None, Any, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if isinstance(bind.type, UTCDateTime) and _same_text(process, _utc_text):
                process = _utc_text
            if name in keys:
                binds.append((name, process, None))
            else:  # a value the statement itself holds (``.values(status=...)``, a limit)
                fixed = bind.effective_value
                binds.append((None, None, fixed if process is None else process(fixed)))
        results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in getattr(statement, "selected_columns", ())
        ]
        found = _Prepared(statement, compiled.string, binds, results)
        self._prepared[(id(statement), keys)] = found
        return found


def _utc_text(value: datetime | None) -> str | None:
    """What ``UTCDateTime`` and SQLite's DATETIME bind together make of an aware datetime,
    in one C call: their two Python processors (a timezone step, then a dictionary formatted
    with ``%``) were a tenth of a run's database time."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_PROBES = (
    datetime(2026, 11, 29, 19, 52, 50, 123456, UTC),
    datetime(987, 1, 2, 3, 4, 5, tzinfo=UTC),  # a short year, no microseconds
    datetime.fromisoformat("2026-03-29T02:30:00.000001+02:00"),
)


def _same_text(process: Any, fast: Any) -> bool:
    # Used only where it writes what SQLAlchemy would (another storage format would differ).
    return process is not None and all(process(probe) == fast(probe) for probe in _PROBES)


@dataclass(frozen=True)
class _Prepared:
    statement: Any  # kept, so that no other statement can take its id
    sql: str
    binds: list[tuple[str | None, Any, Any]]  # (parameter or None, bind processor, fixed value)
    results: list[Any]  # each column's result processor, or None

    def values(self, row: dict[str, Any]) -> list[Any]:
        return [
            fixed if name is None else row[name] if process is None else process(row[name])
            for name, process, fixed in self.binds
        ]


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database or an in-memory one."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("uri") or str(url.database).startswith("file:"):
        return None  # a URI the caller built: its options are the caller's
    return Path(str(url.database))


# -- PostgreSQL as a first-class store (issue 19) ----------------------------------------------
# Several processes, on several machines, may share one PostgreSQL database: the schema is
# made under an advisory lock each takes in turn, rows that may already be there are
# upserted, a transaction PostgreSQL aborts to break a deadlock is run again, the NULs it
# refuses are dropped from what comes in, and orders do not depend on its collation.

# The advisory lock the schema's creation and migration are made under ("PIPESCHM").
SCHEMA_LOCK = 0x5049_5045_5343_484D
# SQLSTATEs of a transaction PostgreSQL aborted so that another could go on: run it again.
_RETRIED_STATES = {"40P01": "deadlock detected", "40001": "serialization failure"}
RETRY_ATTEMPTS = 5

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def _aborted_to_go_on(exc: BaseException) -> str | None:
    """Why PostgreSQL aborted the transaction for another's sake, or None if it did not."""
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return _RETRIED_STATES.get(state) if isinstance(state, str) else None


def retried(method: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """A store method that is one transaction of its own, run again (after a short random
    wait) when PostgreSQL aborts it to break a deadlock or a serialization conflict.

    Inside a ``batch`` the transaction is the batch's: it is not retried here, the error
    reaches whoever holds the batch (its writes are lost with the aborted transaction).
    """

    @functools.wraps(method)
    def run(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        store = args[0]
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except DBAPIError as exc:
                why = _aborted_to_go_on(exc)
                in_batch = getattr(store, "_batch", None) is not None
                if why is None or in_batch or attempt == RETRY_ATTEMPTS:
                    raise
                log.info("database: %s in %s, trying again", why, method.__name__)
                time.sleep(random.uniform(0.01, 0.05 * 2**attempt))
        raise AssertionError("unreachable")  # the loop returns or raises

    return run


def mend_for_postgres(value: Any) -> Any:
    """A value as PostgreSQL takes it: NUL characters, which its text type refuses (and
    which a Kombo string or a parsed document may hold), dropped from strings."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [mend_for_postgres(v) for v in value]
    if isinstance(value, dict):
        return {k: mend_for_postgres(v) for k, v in value.items()}
    return value


class bytewise(FunctionElement[str]):
    """An ORDER BY term compared byte by byte, whatever the database's collation: export
    order, and which of identical copies is the lowest id, are the same on every database
    (SQLite compares bytes already; PostgreSQL is told ``COLLATE "C"``)."""

    inherit_cache = True
    name = "bytewise"


@compiles(bytewise)
def _bytewise_plain(element: bytewise, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(bytewise, "postgresql")
def _bytewise_postgres(element: bytewise, compiler: Any, **kw: Any) -> str:
    return f'{compiler.process(element.clauses, **kw)} COLLATE "C"'


class Store:
    def __init__(self, database_url: str, *, read_only: bool = False) -> None:
        """``read_only``: open SQLite read-only (``mode=ro``): nothing is written, not even
        a WAL or lock file, so a read-only data directory can be searched and exported."""
        self.url = database_url
        self.read_only = read_only
        path = sqlite_path(database_url)
        self._where = str(path) if path is not None else _safe_url(database_url)
        options: dict[str, Any] = {}
        if path is not None and read_only:
            if not path.is_file():
                raise DataDirectoryError(
                    f"database: {path} does not exist (a run creates it)", path=str(path)
                )
            uri = read_only_uri(path)
            options["creator"] = lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
        elif path is not None:
            # SQLite creates its -wal and -shm files with the database file's mode: made 0600
            # here, before the first connection, they are private too.
            private_folder(path.parent)
            # Only a missing file is created: opening and closing one that this process has
            # open already would drop every POSIX lock the process holds on it, SQLite's
            # own connections' included (a long-lived server opens several stores).
            if path.exists() and os.access(path, os.W_OK):
                tighten(path, 0o600)
            else:
                private_file(path)  # creates it, or fails naming why it cannot be written
            for suffix in ("-wal", "-shm"):
                tighten(path.with_name(path.name + suffix), 0o600)
        self.engine = create_engine(database_url, **options)
        event.listen(self.engine, "handle_error", self._handle_error)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine, read_only=read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._batch: Connection | None = None
        self._held: Connection | None = None
        self._upserts = _upserts(self.engine.dialect.name)
        sqlite = self.engine.dialect.name == "sqlite"
        self._direct = _Direct(self.engine.dialect) if sqlite else None
        self._postgres = self.engine.dialect.name == "postgresql"
        # None: the whole database (registry and settings only); else one integration's rows.
        self.integration_id: str | None = None
        self._owns_engine = True

    def for_integration(self, integration_id: str) -> Store:
        """This database, scoped to one integration: every record method reads and writes
        only its rows. Shares the engine (and the compiled statements); has its own batch
        connection, so that several integrations' runs write at once."""
        scoped = copy.copy(self)
        scoped.integration_id = integration_id
        scoped._owns_engine = False
        scoped._batch = None
        scoped._held = None
        return scoped

    @property
    def _iid(self) -> str:
        if self.integration_id is None:
            # A programming error, not a user's: records are reached through a scoped store.
            raise RuntimeError("a record method of a store not scoped to an integration")
        return self.integration_id

    def _ours(self, integration_id: str) -> str:
        """The integration a caller says a record is of must be this store's: nothing is
        ever recorded under another integration than the one the store was opened for."""
        if integration_id != self._iid:
            raise RuntimeError(
                f"a record of integration {integration_id!r} given to the store of {self._iid!r}"
            )
        return integration_id

    def _handle_error(self, context: ExceptionContext) -> BaseException | None:
        """SQLAlchemy's one hook for every error a statement or a connection attempt meets:
        storage faults become one line naming the database (``raise ... from`` the
        library's error, which SQLAlchemy does with what this returns)."""
        sqlite = self.engine.dialect.name == "sqlite"
        found = storage_fault(context.original_exception, self._where)
        if found is not None:
            return found
        if not sqlite and context.connection is None and not context.is_pre_ping:
            # No connection was made: the server is down, refused, or not resolvable.
            reason = str(context.original_exception).strip().splitlines()
            return DatabaseUnavailableError(
                f"database server {self._where} unreachable: {reason[0] if reason else ''}",
                path=self._where,
            )
        return None

    def _direct_error(self, exc: sqlite3.Error) -> BaseException:
        found = storage_fault(exc, self._where)
        return exc if found is None else found

    def schema_version(self) -> int:
        """The version the database is at: 0 when it predates versions, or is empty."""
        try:
            with self.engine.connect() as conn:
                value = conn.execute(SEARCH_READS["schema_version"], {"key": _SCHEMA_KEY}).scalar()
        except DBAPIError:  # no settings table yet: a new database
            return 0
        return int(value) if value is not None else 0

    def check_readable(self) -> None:
        """For a read-only store: refuse a database behind this code (it cannot migrate)."""
        found = self.schema_version()
        if found < SCHEMA_VERSION:
            raise SchemaBehindError(
                f"database: {self._where} is at schema version {found}, this version needs "
                f"{SCHEMA_VERSION}: run a writing command (`pipeline reindex` or any run) "
                "where the data directory is writable first",
                path=self._where,
            )

    def ensure_schema(self) -> bool:
        """Migrate if the database is behind this code (one row read when it is not).
        Returns whether it migrated."""
        found = self.schema_version()
        if found >= SCHEMA_VERSION:
            return False
        with self._schema_lock():
            # Another process may have migrated while this one waited for the lock.
            found = self.schema_version()
            if found >= SCHEMA_VERSION:
                return False
            self.create()
        if found:
            log.info("database schema migrated from version %d to %d", found, SCHEMA_VERSION)
        return True

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """On PostgreSQL, the schema is made by one process at a time: the others wait for
        this session-level advisory lock (released with its connection if a process dies),
        then find the schema made."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%(key)s)", {"key": SCHEMA_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": SCHEMA_LOCK})
                conn.commit()

    def create(self) -> None:
        """Create what is missing (tables, columns, indexes) and record the version."""
        rebuilt = self._key_by_integration()
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        if rebuilt:
            self._register_found_integrations()
        with self.engine.begin() as conn:
            migrate_unreadable(conn)
        self.set_setting(_SCHEMA_KEY, str(SCHEMA_VERSION))

    def _key_by_integration(self) -> bool:
        """Version 3: rebuild the tables whose primary key lacks ``integration_id``
        (candidates, attachments, texts), keeping every row. Each is copied to a temporary
        table, dropped (with its indexes and constraints, whose names the new table takes)
        and created anew; texts take the integration of the attachments that point at them.
        One transaction: a crash leaves the old tables or the new ones."""
        from sqlalchemy import inspect

        inspector = inspect(self.engine)
        present = set(inspector.get_table_names())
        old = [
            name
            for name in ("attachments", "texts", "candidates")
            if name in present
            and "integration_id"
            not in inspector.get_pk_constraint(name).get("constrained_columns", [])
        ]
        if not old:
            return False
        columns = {name: [c["name"] for c in inspector.get_columns(name)] for name in old}
        with self.engine.begin() as conn:
            for name in old:  # attachments first: it refers to candidates
                conn.exec_driver_sql(f'CREATE TABLE "_v2_{name}" AS SELECT * FROM "{name}"')
                conn.exec_driver_sql(f'DROP TABLE "{name}"')
            tables = [Base.metadata.tables[name] for name in ("candidates", "attachments", "texts")]
            Base.metadata.create_all(conn, tables=tables)
            for name in ("candidates", "attachments"):
                if name in old:
                    shared = [c for c in columns[name] if c in Base.metadata.tables[name].c]
                    names = ", ".join(f'"{c}"' for c in shared)
                    conn.exec_driver_sql(
                        f'INSERT INTO "{name}" ({names}) SELECT {names} FROM "_v2_{name}"'
                    )
            if "texts" in old:
                conn.exec_driver_sql(
                    "INSERT INTO texts (integration_id, sha256, text) "
                    "SELECT owners.integration_id, t.sha256, t.text FROM _v2_texts t JOIN "
                    "(SELECT DISTINCT integration_id, sha256 FROM attachments "
                    "WHERE sha256 IS NOT NULL) owners ON owners.sha256 = t.sha256"
                )
            for name in old:
                conn.exec_driver_sql(f'DROP TABLE "_v2_{name}"')
        log.info("database: records keyed by integration (%s rebuilt)", ", ".join(old))
        return True

    def _register_found_integrations(self) -> None:
        """After the rebuild: the integrations the rows name become registered; where there
        is one, the runs, erasures and the watermark of before are its own."""
        c, a, r, e = Candidate.__table__, _ATTACHMENTS, Run.__table__, Erasure.__table__
        with self.engine.begin() as conn:
            found = sorted(
                set(conn.execute(select(c.c.integration_id).distinct()).scalars())
                | set(conn.execute(select(a.c.integration_id).distinct()).scalars())
            )
            for integration_id in found:
                _insert_integration(conn, integration_id, None)
            if len(found) != 1:
                return
            only = found[0]
            for table in (r, e):
                conn.execute(
                    update(table)
                    .where(table.c.integration_id.is_(None))
                    .values(integration_id=only)
                )
            watermark = conn.execute(
                select(Setting.__table__.c.value).where(Setting.__table__.c.key == WATERMARK)
            ).scalar()
            if watermark is not None:
                i = Integration.__table__
                conn.execute(
                    update(i).where(i.c.integration_id == only).values(nightly_watermark=watermark)
                )

    def _add_missing_columns(self) -> None:
        """Additive migration: columns a newer version added to a table that already exists."""
        from sqlalchemy import inspect

        inspector = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present:
                        kind = column.type.compile(self.engine.dialect)
                        conn.exec_driver_sql(
                            f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                        )
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None
        if self._owns_engine:
            self.engine.dispose()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside into one transaction (writer thread only).

        A run writes many small outcomes; one commit per batch instead of one per row keeps
        the writer thread from spending its time in transaction overhead.
        """
        if self._batch is not None:
            yield
            return
        # One connection kept for every batch: checking one out of the pool for each cost
        # as much as a statement.
        if self._held is None:
            self._held = self.engine.connect()
        with self._held.begin():
            self._batch = self._held
            try:
                yield
            finally:
                self._batch = None

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        if self._batch is not None:
            yield self._batch
        else:
            with self.engine.begin() as connection:
                yield connection

    def _write(self, conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
        """Run a write statement for one or more rows (all with the same keys)."""
        if self._direct is not None:
            try:
                self._direct.write(conn, statement, rows)
            except sqlite3.Error as exc:  # the direct path bypasses ``handle_error``
                raise self._direct_error(exc) from exc
        else:
            if self._postgres:
                rows = [mend_for_postgres(row) for row in rows]
            conn.execute(statement, rows if len(rows) > 1 else rows[0])

    def _read(self, conn: Connection, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of a SELECT, as tuples in the order of its columns."""
        if self._direct is not None:
            try:
                return self._direct.read(conn, statement, params)
            except sqlite3.Error as exc:
                raise self._direct_error(exc) from exc
        return list(conn.execute(statement, params).all())

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self._batch is not None:
            # Inside a batch, ORM work joins the batch's transaction (SQLite has one writer).
            with Session(bind=self._batch, expire_on_commit=False) as session:
                yield session
                session.flush()
            return
        with self._sessions.begin() as session:
            yield session

    # -- candidates --------------------------------------------------------------------------

    @retried
    def candidate_fetched(
        self,
        candidate_id: str,
        integration_id: str,
        error: str | None,
        *,
        not_found: bool = False,
    ) -> None:
        now = utcnow()
        params = {
            "iid": self._ours(integration_id),
            "key": candidate_id,
            "last_fetched_at": now,
            "fetch_error": error,
            "last_seen_at": now if error is None else None,
            "not_found_at": now if not_found else None,
        }
        row = {
            "id": candidate_id,
            "integration_id": integration_id,
            "first_seen_at": now,
            **{k: v for k, v in params.items() if k not in ("key", "iid")},
        }
        with self._conn() as conn:
            if self._upserts is not None:
                self._write(conn, self._upserts.candidate(error is None), [row])
                return
            statement = _CANDIDATE_SEEN if error is None else _CANDIDATE_FAILED
            if not conn.execute(statement, params).rowcount:
                conn.execute(insert(Candidate.__table__), row)

    @retried
    def candidate_listed(self, candidate_id: str, integration_id: str, title: str | None) -> None:
        """Record what GET /ats/candidates says of a candidate (their title, for search)."""
        table = Candidate.__table__
        now = utcnow()
        ours = table.c.integration_id == self._ours(integration_id)
        with self._conn() as conn:
            if self._postgres:
                # Another machine may record the same candidate meanwhile: one statement.
                row = {"id": candidate_id, "integration_id": integration_id}
                self._write(
                    conn, _pg_statements()[1], [{**row, "first_seen_at": now, "title": title}]
                )
                return
            updated = conn.execute(
                update(table).where(ours, table.c.id == candidate_id).values(title=title)
            )
            if not updated.rowcount:
                conn.execute(
                    insert(table),
                    {
                        "id": candidate_id,
                        "integration_id": integration_id,
                        "first_seen_at": now,
                        "title": title,
                    },
                )

    @retried
    def refetch_files(self, hashes: Iterable[str]) -> list[str]:
        """Mark the candidates whose attachments point at these files (gone from the file
        store) so that the next run, ingest or nightly, fetches them again: their
        ``fetch_error`` says why, which makes them a failed candidate the next run retries;
        listed again, an attachment whose file is gone is downloaded again. The attachments
        keep their state (and stay searchable: their text is in the database)."""
        wanted = sorted(set(hashes))
        if not wanted:
            return []
        a, c = _ATTACHMENTS, Candidate.__table__
        owners: set[str] = set()
        with self._conn() as conn:
            for chunk in _chunks(wanted, 500):
                owners.update(
                    conn.execute(
                        select(a.c.candidate_id).where(
                            a.c.integration_id == self._iid,
                            a.c.sha256.in_(chunk),
                            a.c.status != AttachmentState.DELETED,
                        )
                    ).scalars()
                )
            for chunk in _chunks(sorted(owners), 500):
                conn.execute(
                    update(c)
                    .where(c.c.integration_id == self._iid, c.c.id.in_(chunk))
                    .values(fetch_error=MISSING_FILE_REASON)
                )
        return sorted(owners)

    def failed_candidates(self) -> list[str]:
        """Candidates whose last listing failed, except those Kombo does not know."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(Candidate.id).where(
                        Candidate.integration_id == self._iid,
                        Candidate.fetch_error.is_not(None),
                        Candidate.not_found_at.is_(None),
                    )
                )
            )

    def not_found_candidates(self) -> set[str]:
        with self.session() as s:
            return set(
                s.scalars(
                    select(Candidate.id).where(
                        Candidate.integration_id == self._iid, Candidate.not_found_at.is_not(None)
                    )
                )
            )

    def failures(self, limit: int = 100) -> Failures:
        """What failed and why (``status``): candidates whose listing failed, attachments in
        a state the next run retries, each with its reason, the newest first."""
        c, a = Candidate.__table__, _ATTACHMENTS
        failed = (c.c.integration_id == self._iid) & c.c.fetch_error.is_not(None)
        unfinished = (a.c.integration_id == self._iid) & a.c.status.not_in(
            [str(state) for state in FINAL_STATES]
        )
        # An attachment of a candidate Kombo does not know is not retried (nor its candidate).
        of_known = a.outerjoin(
            c, (a.c.candidate_id == c.c.id) & (a.c.integration_id == c.c.integration_id)
        )
        with self._conn() as conn:
            rows, candidate_total = _newest_and_total(
                conn,
                select(c.c.id, c.c.fetch_error, c.c.not_found_at.is_(None)).where(failed),
                c,
                failed,
                (c.c.last_fetched_at.desc(), c.c.id),
                limit,
            )
            candidates = [
                FailedCandidate(cid, error or "", bool(retried)) for cid, error, retried in rows
            ]
            rows, attachment_total = _newest_and_total(
                conn,
                select(a.c.id, a.c.candidate_id, a.c.status, a.c.error, c.c.not_found_at.is_(None))
                .select_from(of_known)
                .where(unfinished),
                a,
                unfinished,
                (a.c.fetched_at.desc(), a.c.id),
                limit,
            )
            attachments = [
                FailedAttachment(aid, cid, st, err or "", bool(r)) for aid, cid, st, err, r in rows
            ]
        return Failures(candidates, candidate_total, attachments, attachment_total)

    # -- attachments -------------------------------------------------------------------------

    def known_attachments(
        self, candidate_id: str, also_ids: Sequence[str] = ()
    ) -> dict[str, KnownAttachment]:
        """The candidate's attachments on record, and any of ``also_ids`` wherever they are."""
        ids = list(also_ids)
        params = {
            "iid": self._iid,
            "candidate_id": candidate_id,
            **{f"id{n}": i for n, i in enumerate(ids)},
        }
        with self._conn() as conn:
            rows = self._read(conn, _known_statement(len(ids)), params)
        return {row[0]: KnownAttachment(*row) for row in rows}

    @retried
    def record_listing(
        self,
        integration_id: str,
        items: Sequence[Any],
        known: dict[str, KnownAttachment],
        now: datetime,
    ) -> None:
        """Record attachments as Kombo listed them (``items`` are RemoteAttachments).

        New ones start ``pending``; known ones whose file changed at Kombo (or that come back
        after being deleted) go back to ``pending``; the rest keep their state.
        """
        iid = self._ours(integration_id)
        fresh: list[dict[str, Any]] = []
        seen: list[dict[str, Any]] = []
        reopened: list[dict[str, Any]] = []
        for item in items:
            listing = {name: getattr(item, name) for name in _LISTING_COLUMNS}
            listing["fetched_at"] = now
            previous = known.get(item.id)
            if previous is None:
                fresh.append(
                    {
                        "id": item.id,
                        "integration_id": integration_id,
                        "status": AttachmentState.PENDING.value,
                        **listing,
                    }
                )
                continue
            seen.append({"iid": iid, "key": item.id, **listing})
            if previous.changed_at_kombo(item):
                reopened.append({"iid": iid, "key": item.id})
        with self._conn() as conn:
            if fresh:
                # On PostgreSQL another machine may have recorded it meanwhile: upserted.
                fresh_statement = _pg_statements()[0] if self._postgres else _INSERT_ATTACHMENT
                self._write(conn, fresh_statement, fresh)
            if seen:
                self._write(conn, _LISTED, seen)
            if reopened:
                self._write(conn, _REOPENED, reopened)

    @retried
    def save_outcome(self, attachment_id: str, outcome: Outcome) -> None:
        """Store what download and extraction found, in one transaction."""
        now = utcnow()
        state, text, sha256 = outcome.state, outcome.text, outcome.sha256
        values: dict[str, Any] = {
            "status": state.value,
            "error": outcome.error,
            "detected_type": outcome.detected_type,
            "parser": outcome.parser,
            "parser_version": outcome.parser_version,
            "page_count": outcome.page_count,
            "char_count": len(text) if text is not None else None,
            "language": outcome.language,
            "indexed_at": None,
            "ocr_pages": outcome.ocr_pages,
            "ocr_confidence": outcome.ocr_confidence,
        }
        if sha256 is not None:
            values["sha256"] = sha256
            values["size_bytes"] = outcome.size_bytes
        if outcome.parser is not None or state != AttachmentState.FAILED:
            values["extracted_at"] = now
        statement = _outcome_statement(tuple(values))
        with self._conn() as conn:
            iid = self._iid
            self._write(conn, statement, [{"iid": iid, "key": attachment_id, **values}])
            if not (text and sha256):
                return
            row = {"integration_id": iid, "sha256": sha256, "text": text}
            if self._upserts is not None:
                self._write(conn, self._upserts.text, [row])
            elif conn.execute(_TEXT_EXISTS, {"iid": iid, "sha256": sha256}).first() is None:
                conn.execute(_INSERT_TEXT, row)

    @retried
    def count_parse_failure(self, attachment_id: str, sha256: str) -> int:
        """One more timeout or memory limit of a parser on these bytes of the attachment:
        the count so far (a count on other bytes starts again at one)."""
        a = _ATTACHMENTS
        with self._conn() as conn:
            row = conn.execute(
                select(a.c.sha256, a.c.parse_failures).where(
                    a.c.integration_id == self._iid, a.c.id == attachment_id
                )
            ).first()
            same = row is not None and row[0] == sha256
            count = (row[1] or 0) + 1 if same and row is not None else 1
            conn.execute(
                update(a)
                .where(a.c.integration_id == self._iid, a.c.id == attachment_id)
                .values(parse_failures=count)
            )
        return count

    @retried
    def mark_deleted(self, attachment_ids: Sequence[str]) -> None:
        if not attachment_ids:
            return
        with self._conn() as conn:
            for chunk in _chunks(list(attachment_ids), 500):
                conn.execute(
                    update(_ATTACHMENTS)
                    .where(_ATTACHMENTS.c.integration_id == self._iid, _ATTACHMENTS.c.id.in_(chunk))
                    .values(
                        status=AttachmentState.DELETED, error="gone from Kombo", indexed_at=None
                    )
                )

    @retried
    def mark_indexed(self, attachment_ids: Sequence[str]) -> None:
        if not attachment_ids:
            return
        a = _ATTACHMENTS
        now = utcnow()
        with self._conn() as conn:
            for chunk in _chunks(list(attachment_ids), 500):
                conn.execute(
                    update(a)
                    .where(
                        a.c.integration_id == self._iid,
                        a.c.id.in_(chunk),
                        # Status through a function: no index can serve it, so SQLite looks
                        # the ids up by the primary key. On the bare column its planner (no
                        # statistics on a new database) walked every pending row of the
                        # integration for each batch: a first run's rows are all pending.
                        func.coalesce(a.c.status, "") == AttachmentState.PENDING,
                    )
                    .values(status=AttachmentState.INDEXED, indexed_at=now)
                )

    def texts_for(self, attachment_ids: Sequence[str]) -> dict[str, str]:
        if not attachment_ids:
            return {}
        with self._conn() as conn:
            rows = conn.execute(
                SEARCH_READS["texts"], {"iid": self._iid, "ids": list(attachment_ids)}
            )
            return {attachment_id: text for attachment_id, text in rows}

    # -- languages detected again (issue 18: a rebuild re-detects what an older detector said) --

    def texts_with_languages(self) -> Iterator[tuple[str, str | None, str]]:
        """(sha256, language, text) of each of this integration's stored texts an attachment
        refers to, with the language stored for it (the first attachment's, by id)."""
        with self._sessions() as s:
            query = (
                select(Attachment.sha256, Attachment.language, ExtractedText.text)
                .join(ExtractedText, _same_text_row())
                .where(Attachment.integration_id == self._iid)
                .order_by(Attachment.sha256, bytewise(Attachment.id))
                .execution_options(yield_per=500)
            )
            last = None
            for sha256, language, text in s.execute(query):
                if sha256 is not None and sha256 != last:
                    yield sha256, language, text
                last = sha256

    def set_languages(self, languages: dict[str, str | None]) -> int:
        """Store each text's language (sha256 -> language) on every attachment of this
        integration with that text; the attachments changed."""
        a = _ATTACHMENTS
        changed = 0
        with self._conn() as conn:
            for sha256, language in languages.items():
                result = conn.execute(
                    update(a)
                    .where(
                        a.c.integration_id == self._iid,
                        a.c.sha256 == sha256,
                        a.c.language.is_distinct_from(language),
                    )
                    .values(language=language)
                )
                changed += result.rowcount or 0
        return changed

    def index_docs(self, *, only_pending: bool) -> Iterator[IndexDoc]:
        """Attachments whose text belongs in the index (pending ones, or all with text).

        One document per candidate and content: of several attachments with the same bytes
        (a candidate-level and an application-level copy), the lowest id stands for all.
        """
        wanted = (
            [AttachmentState.PENDING]
            if only_pending
            else [AttachmentState.PENDING, AttachmentState.INDEXED]
        )
        with self._sessions() as s:
            query = (
                select(
                    Attachment.id,
                    Attachment.candidate_id,
                    Attachment.application_id,
                    Attachment.type,
                    Attachment.file_name,
                    ExtractedText.text,
                    Attachment.sha256,
                    Attachment.language,
                    func.coalesce(Attachment.remote_updated_at, Attachment.fetched_at),
                    Candidate.title,
                )
                .join(ExtractedText, _same_text_row())
                .outerjoin(Candidate, _same_candidate())
                .where(Attachment.integration_id == self._iid, Attachment.status.in_(wanted))
                .order_by(
                    bytewise(Attachment.candidate_id), Attachment.sha256, bytewise(Attachment.id)
                )
                .execution_options(yield_per=500)
            )
            last: tuple[str, str | None] | None = None
            for row in s.execute(query):
                doc = _index_doc(row)
                key = (doc.candidate_id, doc.sha256)
                if key != last:
                    yield doc
                last = key

    def pending_keys(self) -> list[tuple[str, str]]:
        """(candidate id, sha256) of attachments with text that wait to be indexed."""
        with self.session() as s:
            rows = s.execute(
                select(Attachment.candidate_id, Attachment.sha256)
                .join(ExtractedText, _same_text_row())
                .where(
                    Attachment.integration_id == self._iid,
                    Attachment.status == AttachmentState.PENDING,
                )
                .distinct()
            )
            return [(c, h) for c, h in rows if h is not None]  # always: joined on sha256

    def content_copies(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[IndexDoc]]:
        """For each (candidate id, sha256): the candidate's live attachments with these
        bytes, by id, as index documents. A query per 500 keys: a run asks this for every
        text it indexes."""
        found: dict[tuple[str, str], list[IndexDoc]] = {}
        wanted = set(keys)
        with self._conn() as conn:
            for chunk in _chunks(sorted(wanted), 500):
                rows = conn.execute(
                    _copies_statement(),
                    {
                        "iid": self._iid,
                        "candidates": sorted({c for c, _ in chunk}),
                        "hashes": sorted({h for _, h in chunk}),
                    },
                )
                for row in rows:
                    doc = _index_doc(row)
                    key = (doc.candidate_id, doc.sha256 or "")
                    if key in wanted:
                        found.setdefault(key, []).append(doc)
        for copies in found.values():  # the lowest id first (code points order as UTF-8 does)
            copies.sort(key=lambda doc: doc.attachment_id)
        return found

    def known_hashes(self) -> set[str]:
        """Every sha256 on record: a file whose hash is not here was never extracted."""
        with self._conn() as conn:
            return set(conn.execute(_HASHES, {"iid": self._iid}).scalars())

    def attachment_keys(self, attachment_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(candidate id, sha256) of these attachments, where they have a file."""
        if not attachment_ids:
            return []
        with self.session() as s:
            rows = s.execute(
                select(Attachment.candidate_id, Attachment.sha256).where(
                    Attachment.integration_id == self._iid,
                    Attachment.id.in_(list(attachment_ids)),
                    Attachment.sha256.is_not(None),
                )
            )
            return list({(c, h) for c, h in rows if h is not None})  # always: not None above

    def attachment_ids(self, statuses: Sequence[str]) -> set[str]:
        with self.session() as s:
            return set(
                s.scalars(
                    select(Attachment.id).where(
                        Attachment.integration_id == self._iid, Attachment.status.in_(statuses)
                    )
                )
            )

    def counts_by_status(self) -> dict[str, int]:
        with self._conn() as conn:
            rows = conn.execute(SEARCH_READS["counts_by_status"], {"iid": self._iid})
            return {status: count for status, count in rows}

    def unfinished(self) -> list[tuple[str, str]]:
        """(attachment id, candidate id) of attachments a run left not final."""
        final = [str(s) for s in FINAL_STATES]
        with self.session() as s:
            rows = s.execute(
                select(Attachment.id, Attachment.candidate_id).where(
                    Attachment.integration_id == self._iid, Attachment.status.not_in(final)
                )
            )
            return [(a, c) for a, c in rows]

    # -- erasure -----------------------------------------------------------------------------

    @retried
    def erase_candidate(self, candidate_id: str, reason: str) -> list[str] | None:
        """Delete the candidate and its attachments; keep a record without personal data.

        Returns the attachment ids that were erased, or None when the candidate is unknown.
        Texts and files are removed afterwards by the caller's garbage collection, which
        keeps what another candidate still refers to.
        """
        a, c = _ATTACHMENTS, Candidate.__table__
        of_a = (a.c.integration_id == self._iid) & (a.c.candidate_id == candidate_id)
        of_c = (c.c.integration_id == self._iid) & (c.c.id == candidate_id)
        with self._conn() as conn:
            ids = list(conn.execute(select(a.c.id).where(of_a)).scalars())
            known = conn.execute(select(c.c.id).where(of_c)).first()
            if not ids and known is None:
                return None
            conn.execute(delete(a).where(of_a))
            conn.execute(delete(c).where(of_c))
            conn.execute(
                insert(Erasure.__table__),
                {
                    "integration_id": self._iid,
                    "candidate_id": candidate_id,
                    "erased_at": utcnow(),
                    "reason": reason,
                    "attachments": len(ids),
                },
            )
            return ids

    def candidates_not_seen_since(self, cutoff: datetime) -> list[str]:
        c = Candidate.__table__
        with self._conn() as conn:
            seen = func.coalesce(c.c.last_seen_at, c.c.first_seen_at)
            return list(
                conn.execute(
                    select(c.c.id).where(c.c.integration_id == self._iid, seen < cutoff)
                ).scalars()
            )

    def erasure_count(self) -> int:
        with self.session() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Erasure)
                    .where(Erasure.integration_id == self._iid)
                )
                or 0
            )

    def erasures(self, limit: int = 20) -> list[Erasure]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(Erasure)
                    .where(Erasure.integration_id == self._iid)
                    .order_by(Erasure.id.desc())
                    .limit(limit)
                )
            )

    def compact(self) -> None:
        """Fold the write-ahead log back and empty it, so no erased page lingers there.

        On PostgreSQL: ``VACUUM`` the tables erasure deletes from, so that the dead rows'
        space (and their TOASTed text) is made free for reuse now rather than at
        autovacuum's turn (their bytes stay in the WAL and backups: docs/postgresql.md)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif self._postgres:
            # VACUUM cannot run inside a transaction block.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM attachments, candidates, texts, erasures")

    def newest_erasure_id(self) -> int:
        """The id of this integration's latest erasure (0: none): each machine applies the
        erasures past the last one it applied to its own files and index."""
        e = Erasure.__table__
        with self._conn() as conn:
            found = conn.execute(
                select(func.max(e.c.id)).where(e.c.integration_id == self._iid)
            ).scalar()
        return int(found or 0)

    def erased_integrations(self) -> set[str]:
        """Integrations erased whole (erasure records, no registry row): on the other
        machines their folders are removed too."""
        e, i = Erasure.__table__, Integration.__table__
        with self._conn() as conn:
            return set(
                conn.execute(
                    select(e.c.integration_id)
                    .distinct()
                    .where(
                        e.c.integration_id.is_not(None),
                        e.c.integration_id.not_in(select(i.c.integration_id)),
                    )
                ).scalars()
            )

    def all_attachment_ids(self) -> set[str]:
        """Every attachment row of this integration, whatever its state."""
        a = _ATTACHMENTS
        with self._conn() as conn:
            return set(
                conn.execute(select(a.c.id).where(a.c.integration_id == self._iid)).scalars()
            )

    def present_attachments(self, attachment_ids: Sequence[str]) -> set[str]:
        """Which of these attachments still have a row (search hits from an index another
        machine's erasure has not reached yet are dropped by those that do not)."""
        a = _ATTACHMENTS
        found: set[str] = set()
        with self._conn() as conn:
            for chunk in _chunks(list(attachment_ids), 500):
                found.update(
                    conn.execute(
                        select(a.c.id).where(a.c.integration_id == self._iid, a.c.id.in_(chunk))
                    ).scalars()
                )
        return found

    def newest_run_id(self) -> int:
        """The id of the latest run of any integration (0: none): run ids only grow, on
        every machine, so a later run of an integration has a greater id."""
        r = Run.__table__
        with self._conn() as conn:
            return int(conn.execute(select(func.max(r.c.id))).scalar() or 0)

    def run_since(self, after_id: int, kind: str) -> Run | None:
        """This integration's first run of ``kind`` with an id past ``after_id``, if any."""
        with self.session() as s:
            return s.scalars(
                select(Run)
                .where(Run.integration_id == self._iid, Run.kind == kind, Run.id > after_id)
                .order_by(Run.id)
                .limit(1)
            ).first()

    # -- runs --------------------------------------------------------------------------------

    @retried
    def begin_run(self, kind: str) -> int:
        with self.session() as s:
            run = Run(
                integration_id=self._iid,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                kind=kind,
                started_at=utcnow(),
                status=RunStatus.RUNNING.value,
                counts={},
                errors=[],
                warnings=[],
            )
            s.add(run)
            s.flush()
            return run.id

    @retried
    def finish_run(self, run_id: int, finished: FinishedRun) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                return
            run.finished_at = utcnow()
            run.status = finished.status.value
            run.counts = json.loads(json.dumps(finished.counts))
            run.errors = finished.errors[:1000]
            run.warnings = finished.warnings[:1000]
            run.summary = finished.summary
            if self._postgres:
                run.errors, run.warnings = mend_for_postgres([run.errors, run.warnings])
                run.summary = mend_for_postgres(run.summary)

    @retried
    def close_abandoned_runs(self) -> int:
        """Runs of this integration still 'running' belong to a process that died: say so.

        Called only by the holder of the integration's writer lock, which on PostgreSQL is
        also the integration's claim (:class:`pipeline.lock.IntegrationClaim`) that every
        machine's runs take: while it is held, no live process on any machine runs this
        integration, so another machine's live run is never marked killed."""
        with self.session() as s:
            # An UPDATE's result is a CursorResult (execute() is typed for any statement).
            result = cast(
                "CursorResult[Any]",
                s.execute(
                    update(Run)
                    .where(Run.integration_id == self._iid, Run.status == RunStatus.RUNNING.value)
                    .values(status=RunStatus.KILLED.value, finished_at=utcnow())
                ),
            )
            return result.rowcount or 0

    def recent_runs(self, limit: int = 10) -> list[Run]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(Run)
                    .where(Run.integration_id == self._iid)
                    .order_by(Run.id.desc())
                    .limit(limit)
                )
            )

    # -- what earlier runs left --------------------------------------------------------------

    def prior_extraction(self, sha256: str) -> PriorExtraction | None:
        """The outcome of an earlier extraction of identical bytes, if one is on record."""
        with self._conn() as conn:
            found = self._read(conn, _PRIOR, {"iid": self._iid, "sha256": sha256})
        if not found:
            return None
        status, error, detected_type, parser, parser_version, page_count, text, language = found[0]
        has_text = status in (AttachmentState.INDEXED, AttachmentState.PENDING)
        if has_text and text is None:
            return None
        # In extraction's terms: text read and waiting for the index is "pending".
        state = AttachmentState.PENDING if has_text else status
        text = text if has_text else None
        return PriorExtraction(
            state, error, detected_type, parser, parser_version, page_count, text, language
        )

    def candidate_of_application(self, application_id: str) -> str | None:
        """Kombo's application attachments do not name the candidate: find it in what we
        know."""
        with self.session() as s:
            return s.scalars(
                select(Attachment.candidate_id)
                .where(
                    Attachment.integration_id == self._iid,
                    Attachment.application_id == application_id,
                )
                .limit(1)
            ).first()

    def live_hashes(self) -> set[str]:
        """Hashes of files that an attachment not deleted still points at."""
        with self.session() as s:
            return set(
                s.scalars(
                    select(Attachment.sha256).where(
                        Attachment.integration_id == self._iid,
                        Attachment.sha256.is_not(None),
                        Attachment.status != AttachmentState.DELETED,
                    )
                )
            )

    @retried
    def drop_texts_except(self, keep: set[str]) -> int:
        """Remove extracted texts whose file no live attachment points at any more."""
        with self.session() as s:
            ours = ExtractedText.integration_id == self._iid
            stale = [
                h for h in s.scalars(select(ExtractedText.sha256).where(ours)) if h not in keep
            ]
            for chunk in _chunks(stale, 500):
                s.execute(delete(ExtractedText).where(ours, ExtractedText.sha256.in_(chunk)))
            return len(stale)

    # -- export ------------------------------------------------------------------------------

    def export_records(self, selection: ExportSelection) -> Iterator[dict[str, Any]]:
        """Export records (the fields of :data:`EXPORT_COLUMNS`) in a stable order
        (candidate, then attachment id), streamed from the database.

        Plain Core rows, not ORM objects, fetched in batches: memory does not grow with the
        number of records.
        """
        a, t = _ATTACHMENTS, _TEXTS
        with_text = selection.with_text
        columns = [a.c[name] for name in _EXPORTED_ATTACHMENT_COLUMNS]
        if with_text:
            columns.append(t.c.text)
        query = select(*columns).where(a.c.integration_id == self._iid)
        if with_text:
            query = query.select_from(
                a.outerjoin(
                    t, (t.c.sha256 == a.c.sha256) & (t.c.integration_id == a.c.integration_id)
                )
            )
        if selection.type:
            query = query.where(a.c.type == selection.type)
        if selection.status and selection.status != "all":
            query = query.where(a.c.status == selection.status)
        if selection.candidate_id:
            query = query.where(a.c.candidate_id == selection.candidate_id)
        if selection.since is not None:
            query = query.where(a.c.remote_updated_at >= selection.since)
        query = query.order_by(bytewise(a.c.candidate_id), bytewise(a.c.id))
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=500).execute(query)
            for row in result:
                values = row._mapping
                record: dict[str, Any] = {
                    "integration_id": values["integration_id"],
                    "attachment_id": values["id"],
                }
                for name in _EXPORTED_ATTACHMENT_COLUMNS[2:]:
                    value = values[name]
                    record[name] = _iso(value) if isinstance(value, datetime) else value
                if with_text:
                    # Text is kept only for attachments whose state has text to give.
                    has_text = values["status"] in ("indexed", "pending")
                    record["text"] = values["text"] if has_text else None
                yield record

    # -- the registry of integrations (an unscoped store reaches it) ------------------------

    def integrations(self) -> list[Integration]:
        with self.session() as s:
            return list(
                s.scalars(select(Integration).order_by(bytewise(Integration.integration_id)))
            )

    def integration(self, integration_id: str) -> Integration | None:
        with self.session() as s:
            return s.get(Integration, integration_id)

    def register_integration(self, integration_id: str, name: str | None = None) -> bool:
        """Register an integration (a name given replaces the one on record); returns
        whether it was new."""
        i = Integration.__table__
        with self._conn() as conn:
            new = _insert_integration(conn, integration_id, name)
            if not new and name is not None:
                conn.execute(
                    update(i).where(i.c.integration_id == integration_id).values(name=name)
                )
        return new

    def set_integration_state(
        self, integration_id: str, state: str, reason: str | None = None
    ) -> bool:
        """Pause (with the reason) or make active; returns whether it is registered."""
        i = Integration.__table__
        with self._conn() as conn:
            result = conn.execute(
                update(i)
                .where(i.c.integration_id == integration_id)
                .values(state=state, paused_reason=reason if state != "active" else None)
            )
            return bool(result.rowcount)

    def mark_integration_deleted(self, integration_id: str, when: datetime | None) -> None:
        """Kombo reported the integration deleted (``when``), or it came back (None)."""
        i = Integration.__table__
        with self._conn() as conn:
            conn.execute(
                update(i).where(i.c.integration_id == integration_id).values(deleted_at=when)
            )

    def integration_counts(self) -> IntegrationCounts:
        """Candidates, attachments by state and the last nightly run of this integration."""
        with self.session() as s:
            candidates = s.scalar(
                select(func.count())
                .select_from(Candidate)
                .where(Candidate.integration_id == self._iid)
            )
            last = s.scalars(
                select(Run)
                .where(Run.integration_id == self._iid, Run.kind == "nightly")
                .order_by(Run.id.desc())
                .limit(1)
            ).first()
        return IntegrationCounts(int(candidates or 0), self.counts_by_status(), last)

    def erase_integration(self, reason: str) -> list[str]:
        """Delete every record of this integration (candidates, attachments, texts, runs)
        and its registry row; keep one erasure record per candidate, without personal data.
        Returns the attachment ids erased (their index documents and files go with the
        integration's folder)."""
        iid = self._iid
        a, c, t = _ATTACHMENTS, Candidate.__table__, _TEXTS
        now = utcnow()
        with self._conn() as conn:
            ids = list(conn.execute(select(a.c.id).where(a.c.integration_id == iid)).scalars())
            counts: dict[str, int] = dict(
                conn.execute(
                    select(a.c.candidate_id, func.count())
                    .where(a.c.integration_id == iid)
                    .group_by(a.c.candidate_id)
                ).all()
            )
            candidates = set(
                conn.execute(select(c.c.id).where(c.c.integration_id == iid)).scalars()
            ) | set(counts)
            conn.execute(delete(a).where(a.c.integration_id == iid))
            conn.execute(delete(t).where(t.c.integration_id == iid))
            conn.execute(delete(c).where(c.c.integration_id == iid))
            conn.execute(delete(Run.__table__).where(Run.__table__.c.integration_id == iid))
            if candidates:
                conn.execute(
                    insert(Erasure.__table__),
                    [
                        {
                            "integration_id": iid,
                            "candidate_id": candidate_id,
                            "erased_at": now,
                            "reason": reason,
                            "attachments": counts.get(candidate_id, 0),
                        }
                        for candidate_id in sorted(candidates)
                    ],
                )
            i = Integration.__table__
            conn.execute(delete(i).where(i.c.integration_id == iid))
        return ids

    def watermark(self) -> str | None:
        """When this integration's last complete nightly run began (ISO 8601), if any."""
        found = self.integration(self._iid)
        return found.nightly_watermark if found is not None else None

    @retried
    def set_watermark(self, value: str) -> None:
        i = Integration.__table__
        with self._conn() as conn:
            _insert_integration(conn, self._iid, None)
            conn.execute(
                update(i).where(i.c.integration_id == self._iid).values(nightly_watermark=value)
            )

    # -- settings ----------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Setting, key)
            return row.value if row else None

    @retried
    def set_setting(self, key: str, value: str) -> None:
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            table = Setting.__table__
            statement = pg_insert(table).values(key=key, value=value)
            statement = statement.on_conflict_do_update(
                index_elements=[table.c.key], set_={"value": statement.excluded.value}
            )
            with self._conn() as conn:
                conn.execute(statement)
            return
        with self.session() as s:
            s.merge(Setting(key=key, value=value))

    # -- API tokens (``pipeline tokens``, ``pipeline serve``) ------------------------------------
    # The table is made here when missing (idempotent), so a database at any schema version
    # gets it without a version bump of its own.

    def _tokens_table(self) -> None:
        if not getattr(self, "_tokens_ready", False):
            if not self.read_only:
                ApiToken.__table__.create(self.engine, checkfirst=True)
            self._tokens_ready = True

    def add_api_token(self, token: ApiToken) -> bool:
        """Record a new token; False (nothing written) when its name is taken."""
        self._tokens_table()
        with self.session() as s:
            if s.scalar(select(ApiToken.token_id).where(ApiToken.name == token.name)):
                return False
            s.add(token)
        return True

    def api_tokens(self) -> list[ApiToken]:
        self._tokens_table()
        with self.session() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.created_at)))

    def api_token(self, token_id: str) -> ApiToken | None:
        self._tokens_table()
        with self.session() as s:
            return s.get(ApiToken, token_id)

    def revoke_api_token(self, name: str) -> bool:
        self._tokens_table()
        with self.session() as s:
            result = s.execute(delete(ApiToken).where(ApiToken.name == name))
            return bool(cast(CursorResult[Any], result).rowcount)

    def touch_api_token(self, token_id: str, when: datetime) -> None:
        with self.session() as s:
            s.execute(
                update(ApiToken).where(ApiToken.token_id == token_id).values(last_used_at=when)
            )

    def attachment_candidate(self, attachment_id: str) -> str | None:
        """The candidate an attachment of this store's integration belongs to (None: not
        on record here)."""
        query = select(Attachment.candidate_id).where(
            Attachment.integration_id == self._iid, Attachment.id == attachment_id
        )
        with self.session() as s:
            return s.scalar(query)

    def counts_by_integration_and_status(self) -> dict[tuple[str, str], int]:
        """Attachments per (integration, state), every integration: the server's metrics."""
        query = select(Attachment.integration_id, Attachment.status, func.count()).group_by(
            Attachment.integration_id, Attachment.status
        )
        with self.session() as s:
            return {(i, st): n for i, st, n in s.execute(query).all()}

    def run_counts_by_status(self) -> dict[tuple[str, str], int]:
        """Runs on record per (integration, outcome), every integration: the server's
        metrics ("" for runs older than the integrations registry)."""
        query = select(Run.integration_id, Run.status, func.count()).group_by(
            Run.integration_id, Run.status
        )
        with self.session() as s:
            return {(i or "", st): n for i, st, n in s.execute(query).all()}


def _same_text_row() -> Any:
    """The join of an attachment to its text: same bytes, same integration."""
    return (ExtractedText.sha256 == Attachment.sha256) & (
        ExtractedText.integration_id == Attachment.integration_id
    )


def _same_candidate() -> Any:
    return (Candidate.id == Attachment.candidate_id) & (
        Candidate.integration_id == Attachment.integration_id
    )


def _insert_integration(conn: Connection, integration_id: str, name: str | None) -> bool:
    """Register an integration unless it is; returns whether it was new."""
    i = Integration.__table__
    if conn.execute(select(i.c.integration_id).where(i.c.integration_id == integration_id)).first():
        return False
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # Another machine may register it between the look and the insert.
        statement: Any = pg_insert(i).on_conflict_do_nothing(index_elements=[i.c.integration_id])
    else:
        statement = insert(i)
    result = conn.execute(
        statement,
        {
            "integration_id": integration_id,
            "name": name,
            "state": IntegrationState.ACTIVE,
            "paused_reason": None,
            "created_at": utcnow(),
            "nightly_watermark": None,
            "deleted_at": None,
        },
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class IntegrationCounts:
    """What ``integrations list`` shows of one integration besides its registry row."""

    candidates: int
    attachments: dict[str, int]  # state -> count
    last_nightly: Run | None


def _safe_url(database_url: str) -> str:
    """A database URL fit for a message: no password."""
    return make_url(database_url).render_as_string(hide_password=True)


def reading_store(database_url: str) -> Store:
    """The store a read-only command (search, status, export, check) opens.

    A SQLite file that is there and at this code's schema is opened read-only: no lock, no
    migration, nothing written, so a read-only data directory can be read. A missing or
    older database in a writable folder is opened for writing and brought forward, as
    before; in a read-only folder that is an error saying a writing command must run first.
    Other databases are opened as they always were.
    """
    path = sqlite_path(database_url)
    if path is not None and path.is_file():
        reader = Store(database_url, read_only=True)
        try:
            reader.check_readable()
            return reader
        except SchemaBehindError:
            reader.close()
            if not os.access(path.parent, os.W_OK):
                raise
    elif path is not None and not os.access(_existing_parent(path), os.W_OK):
        raise DataDirectoryError(
            f"database: {path} does not exist and its folder is read-only: "
            "run a writing command (any run) where it is writable first",
            path=str(path),
        )
    store = Store(database_url)
    store.ensure_schema()
    return store


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def _index_doc(row: Sequence[Any]) -> IndexDoc:
    # A row of the ten columns IndexDoc takes, in its order (select() types rows of ten
    # columns and more as of any length).
    return IndexDoc(*row)


_Item = TypeVar("_Item")


def _newest_and_total(
    conn: Connection,
    rows: Select[Any],
    table: Any,
    where: Any,
    newest: tuple[Any, ...],
    limit: int,
) -> tuple[list[Any], int]:
    """The first ``limit`` rows of ``rows`` in ``newest`` order, and how many match in all."""
    listed = list(conn.execute(rows.order_by(*newest).limit(limit)))
    total = conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()
    return listed, int(total)


def _chunks(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The export record's fields, in its order (INTERFACE.md, schemas/export_record.schema.json).
EXPORT_COLUMNS = (
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
# The attachments table's columns, in the record's order (the text comes from its own table).
_EXPORTED_ATTACHMENT_COLUMNS = tuple(
    "id" if c == "attachment_id" else c for c in EXPORT_COLUMNS if c != "text"
)


@dataclass(frozen=True)
class ExportSelection:
    """Which attachment records an export gives."""

    type: str | None = None
    status: str | None = "indexed"  # a state, "all", or None for all
    candidate_id: str | None = None
    since: datetime | None = None  # updated at Kombo at or after this
    with_text: bool = True


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class PriorExtraction:
    """What extracting a file with these bytes gave before (for reuse by sha256), in
    extraction's terms (``pending`` when it gave text)."""

    state: str
    error: str | None
    detected_type: str | None
    parser: str | None
    parser_version: str | None
    page_count: int | None
    text: str | None
    language: str | None = None


def migrate_unreadable(conn: Connection) -> int:
    """Schema step (issue 17): ``failed`` attachments whose error says the bytes could not be
    read (a parser's own verdict, not the network's or a killed run's) become ``unreadable``,
    and stop being retried. Idempotent: it touches only such ``failed`` rows, so running it
    on every ``create()`` changes nothing the second time. Returns the rows moved."""
    a = _ATTACHMENTS
    said_unreadable = or_(
        a.c.error.like("unreadable:%"),
        a.c.error.like("broken container:%"),
        a.c.error == "parser gave up: nested too deep",
        a.c.error == "empty",
    )
    moved = conn.execute(
        update(a)
        .where(a.c.status == AttachmentState.FAILED.value, said_unreadable)
        .values(status=AttachmentState.UNREADABLE.value)
    )
    return moved.rowcount or 0


_REUSABLE = (
    AttachmentState.INDEXED,
    AttachmentState.NO_TEXT,
    AttachmentState.ENCRYPTED,
    AttachmentState.UNSUPPORTED,
)


# -- statements built once: the writer thread runs them thousands of times a run ------------

_a, _t, _c = _ATTACHMENTS, _TEXTS, Candidate.__table__
_CANDIDATE_SEEN = (
    update(_c)
    .where(_c.c.integration_id == bindparam("iid"), _c.c.id == bindparam("key"))
    .values(
        last_fetched_at=bindparam("last_fetched_at"),
        fetch_error=bindparam("fetch_error"),
        last_seen_at=bindparam("last_seen_at"),
        not_found_at=bindparam("not_found_at"),
    )
)
_CANDIDATE_FAILED = (
    update(_c)
    .where(_c.c.integration_id == bindparam("iid"), _c.c.id == bindparam("key"))
    .values(
        last_fetched_at=bindparam("last_fetched_at"),
        fetch_error=bindparam("fetch_error"),
        not_found_at=bindparam("not_found_at"),
    )
)


@lru_cache(maxsize=64)
def _known_statement(count: int) -> Any:
    """``known_attachments``' query for ``count`` more ids: a parameter each, so that the
    statement compiles once per count (``in_`` of a list renders its SQL on every call).
    The candidate's rows and the named ids are two queries in a UNION: as one WHERE with an
    OR, SQLite's planner (no statistics on a new database) walked every attachment of the
    integration for each listing, which made a first run of 2,000 candidates quadratic."""
    columns = (
        _a.c.id,
        _a.c.application_id,
        _a.c.status,
        _a.c.sha256,
        _a.c.remote_updated_at,
        _a.c.content_type,
        _a.c.file_name,
        _a.c.size_bytes,
        _a.c.parser,
        _a.c.parser_version,
    )
    ours = _a.c.integration_id == bindparam("iid")
    of_candidate = select(*columns).where(ours & (_a.c.candidate_id == bindparam("candidate_id")))
    if not count:
        return of_candidate
    named = select(*columns).where(ours & _a.c.id.in_([bindparam(f"id{n}") for n in range(count)]))
    return union(of_candidate, named)


@lru_cache(maxsize=1)
def _copies_statement() -> Select[Any]:
    """``content_copies``' query: ``_COPIES``' columns and joins, looked up by the batch's
    candidates. ``_COPIES`` itself (its ORDER BY id, its status test on the bare column) led
    SQLite's planner to walk every attachment of the integration for each index batch; here
    the status test is kept off any index and the copies are sorted by ``content_copies``
    (by id as bytes, as the ORDER BY did)."""
    return (
        select(*_COPIES.selected_columns)
        .select_from(_COPIES.get_final_froms()[0])
        .where(
            _a.c.integration_id == bindparam("iid"),
            _a.c.candidate_id.in_(bindparam("candidates", expanding=True)),
            _a.c.sha256.in_(bindparam("hashes", expanding=True)),
            func.coalesce(_a.c.status, "").in_(
                [AttachmentState.PENDING.value, AttachmentState.INDEXED.value]
            ),
        )
    )


_INSERT_ATTACHMENT = insert(_a)
# What a listing says of an attachment: the columns it sets, each an attribute of the item.
_LISTING_COLUMNS = [
    "candidate_id",
    "application_id",
    "type",
    "remote_id",
    "file_name",
    "content_type",
    "remote_created_at",
    "remote_updated_at",
]
_LISTED = (
    update(_a)
    .where(_a.c.integration_id == bindparam("iid"), _a.c.id == bindparam("key"))
    .values({name: bindparam(name) for name in [*_LISTING_COLUMNS, "fetched_at"]})
)
_REOPENED = (
    update(_a)
    .where(_a.c.integration_id == bindparam("iid"), _a.c.id == bindparam("key"))
    .values(status=AttachmentState.PENDING.value, error=None)
)


@cache
def _pg_statements() -> tuple[Any, Any]:
    """An attachment and a candidate another machine may record at the same time (PostgreSQL):
    built when first needed, since the PostgreSQL dialect costs a SQLite user's every command
    70 ms to import (benchmarks/README.md, start-up)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    fresh = pg_insert(_a)
    listed = [*_LISTING_COLUMNS, "fetched_at"]
    fresh = fresh.on_conflict_do_update(
        index_elements=[_a.c.integration_id, _a.c.id],
        set_={name: fresh.excluded[name] for name in listed},
    )
    candidate = pg_insert(_c)
    candidate = candidate.on_conflict_do_update(
        index_elements=[_c.c.integration_id, _c.c.id], set_={"title": candidate.excluded.title}
    )
    return fresh, candidate


_TEXT_EXISTS = select(_t.c.sha256).where(
    _t.c.integration_id == bindparam("iid"), _t.c.sha256 == bindparam("sha256")
)
_INSERT_TEXT = insert(_t)


@dataclass(frozen=True)
class _Upserts:
    """Insert-or-update statements, for the dialects that have them."""

    text: Any  # a text row, unless one with the same sha256 is there
    seen: Any  # a candidate listed: insert, or update when fetched, error and seen
    failed: Any  # a candidate whose listing failed: insert, or update when fetched and error

    def candidate(self, listed: bool) -> Any:
        return self.seen if listed else self.failed


def _upserts(dialect: str) -> _Upserts | None:
    """One statement where the portable way takes two (a look, then an insert or update).
    SQLite (3.24 and later) and PostgreSQL share the syntax; other databases take two."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]  # same API as SQLite's
    else:
        return None
    text = dialect_insert(_t).on_conflict_do_nothing(
        index_elements=[_t.c.integration_id, _t.c.sha256]
    )
    candidate = dialect_insert(_c)
    seen = candidate.on_conflict_do_update(
        index_elements=[_c.c.integration_id, _c.c.id],
        set_={
            "last_fetched_at": candidate.excluded.last_fetched_at,
            "fetch_error": candidate.excluded.fetch_error,
            "last_seen_at": candidate.excluded.last_seen_at,
            "not_found_at": candidate.excluded.not_found_at,
        },
    )
    failed = candidate.on_conflict_do_update(
        index_elements=[_c.c.integration_id, _c.c.id],
        set_={
            "last_fetched_at": candidate.excluded.last_fetched_at,
            "fetch_error": candidate.excluded.fetch_error,
            "not_found_at": candidate.excluded.not_found_at,
        },
    )
    return _Upserts(text, seen, failed)


@cache
def _outcome_statement(columns: tuple[str, ...]) -> Update:
    """``save_outcome``'s UPDATE for one set of columns, built once (building a statement
    cost as much as running it)."""
    return (
        update(_a)
        .where(_a.c.integration_id == bindparam("iid"), _a.c.id == bindparam("key"))
        .values({c: bindparam(c) for c in columns})
    )


_COPIES = (
    select(
        _a.c.id,
        _a.c.candidate_id,
        _a.c.application_id,
        _a.c.type,
        _a.c.file_name,
        _t.c.text,
        _a.c.sha256,
        _a.c.language,
        func.coalesce(_a.c.remote_updated_at, _a.c.fetched_at),
        _c.c.title,
    )
    .join(_t, (_t.c.sha256 == _a.c.sha256) & (_t.c.integration_id == _a.c.integration_id))
    .outerjoin(_c, (_c.c.id == _a.c.candidate_id) & (_c.c.integration_id == _a.c.integration_id))
    .where(
        _a.c.integration_id == bindparam("iid"),
        _a.c.candidate_id.in_(bindparam("candidates", expanding=True)),
        _a.c.sha256.in_(bindparam("hashes", expanding=True)),
        _a.c.status.in_([AttachmentState.PENDING.value, AttachmentState.INDEXED.value]),
    )
    .order_by(bytewise(_a.c.id))
)
# What a search reads, on every database: the Store runs these, and on a SQLite file at this
# schema `pipeline search` and `similar` run their SQL through the standard library instead
# (``pipeline.sqlite_reader.STATEMENTS``, compared with these by tests/test_startup.py).
_i, _s = Integration.__table__, Setting.__table__
SEARCH_READS: dict[str, Select[Any]] = {
    "schema_version": select(_s.c.value).where(_s.c.key == bindparam("key")),
    "integration_ids": select(_i.c.integration_id).order_by(bytewise(_i.c.integration_id)),
    "texts": select(_a.c.id, _t.c.text)
    .join(_t, (_t.c.sha256 == _a.c.sha256) & (_t.c.integration_id == _a.c.integration_id))
    .where(_a.c.integration_id == bindparam("iid"), _a.c.id.in_(bindparam("ids", expanding=True))),
    "counts_by_status": select(_a.c.status, func.count())
    .where(_a.c.integration_id == bindparam("iid"))
    .group_by(_a.c.status),
}
_HASHES = (
    select(_a.c.sha256)
    .where(_a.c.integration_id == bindparam("iid"), _a.c.sha256.is_not(None))
    .distinct()
)
_PRIOR = (
    select(
        _a.c.status,
        _a.c.error,
        _a.c.detected_type,
        _a.c.parser,
        _a.c.parser_version,
        _a.c.page_count,
        _t.c.text,
        _a.c.language,
    )
    .outerjoin(_t, (_t.c.sha256 == _a.c.sha256) & (_t.c.integration_id == _a.c.integration_id))
    .where(
        _a.c.integration_id == bindparam("iid"),
        _a.c.sha256 == bindparam("sha256"),
        or_(
            *(_a.c.status == state.value for state in _REUSABLE),
            # pending with a parser on record: extracted, waiting for the index
            (_a.c.status == AttachmentState.PENDING.value) & _a.c.parser.is_not(None),
        ),
    )
    .limit(1)
)
