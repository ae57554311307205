"""The application layer: one method per command, the one way in for every front end.

The CLI (:mod:`pipeline.cli`) parses, calls an :class:`App` method and prints what it
returns; a future HTTP server calls the same methods. The App holds one data directory's
settings and opens what a command needs when it first needs it:

- read-only commands (search, similar, export, status, check) open the database and the
  index and nothing else: no extractor pool, no HTTP client, no download process (those
  are one run's, built by :mod:`pipeline.engine` for that run and closed after it);
- the database checks its schema version once when opened (one row read) and migrates
  only when it is behind, whichever command opens it: a data directory made by an older
  version keeps working with no step by hand, and is brought forward once;
- commands that write (ingest, nightly, forget, purge, reindex) take the writer lock.

Every method acts on ONE integration (:attr:`App.integration`): the one named (or the
Kombo settings' own), else the only one registered; several registered and none named, or
an unknown one named to a read command, is an :class:`~pipeline.errors.IntegrationChoiceError`
naming the registered ids. Its records come from a store scoped to it, its index, files
and writer lock from its own folder (:meth:`pipeline.config.DataSettings.integration`), so
nothing of another integration is within reach of the method.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .config import (
    DataSettings,
    IntegrationPaths,
    KomboSettings,
    registered_ids,
    validate_integration_id,
)
from .database import ExportSelection, Failures, Run, Store, reading_store, utcnow
from .errors import IndexDamagedError, IntegrationChoiceError, PipelineError
from .filestore import private_folder, private_umask
from .states import AttachmentState

if TYPE_CHECKING:
    from .engine import ExtractLimits, Progress, RunEngine, RunSummary, Workspace
    from .extract.pool import Extractor
    from .filestore import LocalFileStore
    from .search import CandidateHit, PostgresSearchIndex, SearchIndex, SearchResults

log = logging.getLogger(__name__)

# What repairs each kind of drift ``check`` finds (the keys of its answer).
REPAIRS = {
    "missing from the index": "run `pipeline reindex`",
    "in the index but not in the database": "run `pipeline reindex`",
    "files missing from the store": (
        "run `pipeline reindex`: it marks their candidates to be fetched again, and the next "
        "`pipeline nightly` (or an ingest of them) downloads the files again"
    ),
    "stored files nothing refers to": "run `pipeline reindex` (it removes them)",
}

# What a read command on a data directory with no integration registered acts on: nothing.
NO_INTEGRATION = ""

# forget and purge wait this long for a run in progress to finish.
ERASE_LOCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class SearchRequest:
    """A search as a user asks it (the ``search`` command's arguments)."""

    query: str
    type: str | None = None
    candidate_id: str | None = None
    language: str | None = None
    since: datetime | None = None  # aware, UTC
    limit: int = 10
    offset: int = 0


@dataclass(frozen=True)
class CandidatePage:
    """A search by candidate: the people on the page asked for, and how many there are."""

    results: SearchResults
    people: list[CandidateHit]
    total: int


@dataclass(frozen=True)
class StatusReport:
    attachments: dict[str, int]  # state -> count
    nightly_watermark: str | None
    erasures: int
    runs: list[Run]  # the most recent first
    search_engine: str  # which paths search runs on: "fast (...)" or "fallback: ..."
    failures: Failures  # what failed, why, and whether the next run retries it
    integration_id: str = ""


class App:
    """One integration of a data directory; use as a context manager."""

    def __init__(
        self,
        data: DataSettings,
        kombo: KomboSettings | None = None,
        *,
        integration_id: str | None = None,
        extract: ExtractLimits | None = None,
        extractor: Extractor | None = None,
        progress: Progress | None = None,
        max_run_minutes: float | None = None,
    ) -> None:
        self.data = data
        self.max_run_minutes = max_run_minutes
        if kombo is not None and integration_id and integration_id != kombo.integration_id:
            kombo = dataclasses.replace(kombo, integration_id=integration_id)
        self.kombo = kombo
        self._named = integration_id or (kombo.integration_id if kombo is not None else None)
        self._extract = extract
        self._extractor = extractor
        self._progress = progress
        # Every file the pipeline writes is private (0600, folders 0700), whatever the umask.
        private_umask()

    # -- what commands open, when they first need it -------------------------------------------

    @cached_property
    def database(self) -> Store:
        """The whole database, for writing (the registry; records through :attr:`store`)."""
        private_folder(self.data.data_dir)  # the clone's data/ ships 0755
        store = Store(self.data.database_url)
        store.ensure_schema()
        adopt_legacy_folders(self.data, store)
        return store

    @cached_property
    def reading_database(self) -> Store:
        """The database for read-only commands: read-only SQLite, no lock, no migration."""
        if "database" in self.__dict__:
            return self.database
        store = reading_store(self.data.database_url)
        if not store.read_only:  # it was behind and has been brought forward
            adopt_legacy_folders(self.data, store)
        return store

    @cached_property
    def integration(self) -> str:
        """The one integration every method acts on (see the module's docstring)."""
        named = self._named
        if named is not None:
            validate_integration_id(named, self._registered())
            if self.kombo is not None:
                # A command that calls Kombo with an id not yet registered registers it.
                if self.database.register_integration(named):
                    log.info("integration %s registered", named)
                    adopt_legacy_folders(self.data, self.database)
                return named
            if self.reading_database.integration(named) is None:
                raise IntegrationChoiceError(
                    f"unknown integration {named!r}{registered_ids(self._registered())}"
                )
            return named
        registered = self._registered()
        if len(registered) == 1:
            return registered[0]
        if not registered:
            # A fresh data directory: read commands answer as for an empty integration
            # (0 hits, nothing to export); commands that write refuse (:meth:`_writing`).
            return NO_INTEGRATION
        raise IntegrationChoiceError(
            "several integrations are registered: name one with --integration-id "
            f"(or KOMBO_INTEGRATION_ID){registered_ids(registered)}"
        )

    def _writing(self) -> Workspace:
        """The workspace of a command that writes without calling Kombo (forget, purge,
        reindex): it needs a registered integration."""
        if self.integration == NO_INTEGRATION:
            raise IntegrationChoiceError(
                "no integration is registered: run `pipeline integrations add ID` or a run "
                "with --integration-id"
            )
        return self.workspace

    def _registered(self) -> list[str]:
        database = self.__dict__.get("database") or self.reading_database
        return [i.integration_id for i in database.integrations()]

    @property
    def paths(self) -> IntegrationPaths:
        """Where this integration's index, files and writer lock live."""
        return self.data.integration(self.integration)

    @cached_property
    def store(self) -> Store:
        """This integration's records, for writing."""
        return self.database.for_integration(self.integration)

    @cached_property
    def reader(self) -> Store:
        """This integration's records, for read-only commands."""
        if "store" in self.__dict__:
            return self.store
        return self.reading_database.for_integration(self.integration)

    @cached_property
    def index(self) -> SearchIndex | PostgresSearchIndex:
        if self.data.search == "postgres":
            from .search import PostgresSearchIndex

            # One table for every integration, each row keyed by its integration.
            return PostgresSearchIndex(self.reader.engine, self.integration)
        from .search import SearchIndex

        return SearchIndex(self.paths.index_dir)

    @cached_property
    def files(self) -> LocalFileStore:
        from .filestore import LocalFileStore

        return LocalFileStore(self.paths.files_dir)

    @property
    def workspace(self) -> Workspace:
        from .engine import Workspace

        return Workspace(
            self.data.data_dir, self.store, self.files, self.index, lock_dir=self.paths.lock_dir
        )

    def close(self) -> None:
        for name in ("store", "reader"):
            scoped = self.__dict__.get(name)
            if scoped is not None:
                scoped.close()
        reading = self.__dict__.get("reading_database")
        if reading is not None and reading is not self.__dict__.get("database"):
            reading.close()
        if "database" in self.__dict__:
            self.database.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _engine(self) -> RunEngine:
        from .engine import ExtractLimits, RunEngine, no_progress

        if self.kombo is None:
            raise PipelineError("ingest needs Kombo settings")
        given, self._extractor = self._extractor, None  # a given extractor serves one run
        return RunEngine(
            self.kombo,
            self.workspace,
            extract=self._extract or ExtractLimits(),
            new_extractor=None if given is None else lambda: given,
            progress=self._progress or no_progress,
            max_run_minutes=self.max_run_minutes,
        )

    # -- runs -----------------------------------------------------------------------------------

    def ingest(
        self,
        candidate_ids: Iterable[str] = (),
        *,
        application_ids: Iterable[str] = (),
        wait_for_lock: bool = False,
    ) -> RunSummary:
        engine = self._engine()
        with self.workspace.lock(wait=wait_for_lock):
            return engine.ingest(candidate_ids, application_ids)

    def nightly(
        self,
        *,
        full: bool = False,
        candidate_ids: Iterable[str] | None = None,
        wait_for_lock: bool = False,
    ) -> RunSummary:
        engine = self._engine()
        with self.workspace.lock(wait=wait_for_lock):
            return engine.nightly(full=full, candidate_ids=candidate_ids)

    def candidate_ids_at_kombo(self) -> list[str]:
        """Every candidate Kombo lists now (not deleted), in its order."""
        from .fetch import KomboClient

        if self.kombo is None:
            raise PipelineError("listing candidates needs Kombo settings")
        with KomboClient(self.kombo) as client:
            return [
                c.id for page in client.candidate_pages() for c in page.candidates if not c.deleted
            ]

    # -- erasure and repair -----------------------------------------------------------------------

    def forget(self, candidate_ids: Iterable[str], *, reason: str = "forget") -> int:
        """Erase candidates completely: rows, text, index documents and files."""
        workspace = self._writing()
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            return workspace.erase(list(candidate_ids), reason)

    def purge(self, *, not_seen_days: int) -> int:
        """Erase candidates Kombo has not returned for ``not_seen_days`` days."""
        asked_at = utcnow()  # the days count from the request, not from the lock's turn
        workspace = self._writing()
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            return workspace.erase_not_seen(not_seen_days, now=asked_at)

    def reindex(self) -> int:
        """Rebuild the index from the database; pending texts become indexed. Stored files
        that went missing are marked to be fetched again by the next run (their text stays
        in the index)."""
        from .engine import no_progress

        workspace = self._writing()
        with workspace.lock():
            return workspace.reindex(self._progress or no_progress)

    # -- read-only --------------------------------------------------------------------------------

    def status(self, *, limit: int = 10) -> StatusReport:
        store = self.reader
        return StatusReport(
            attachments=store.counts_by_status(),
            nightly_watermark=store.watermark(),
            erasures=store.erasure_count(),
            runs=store.recent_runs(limit),
            search_engine=self.search_engine(),
            failures=store.failures(),
            integration_id=self.integration,
        )

    def search_engine(self) -> str:
        """Which paths search runs on in this process: the fast ones, or the fallback and
        why (``status`` and ``check`` say it; see ``pipeline.search.engine_paths``)."""
        if self.data.search == "postgres":
            return "postgres (PostgreSQL text search in the database)"
        from .search import engine_paths

        return engine_paths()

    def check(self) -> dict[str, list[str]]:
        """Drift between the database, the index and the file store (empty lists: none)."""
        expected = {doc.attachment_id for doc in self.reader.index_docs(only_pending=False)}
        indexed = self.index.attachment_ids()
        live = self.reader.live_hashes()
        stored = set(self.files.hashes())
        return {
            "missing from the index": sorted(expected - indexed),
            "in the index but not in the database": sorted(indexed - expected),
            "files missing from the store": sorted(live - stored),
            "stored files nothing refers to": sorted(stored - live),
        }

    def search(self, request: SearchRequest) -> SearchResults:
        return self._search(request, request.limit, request.offset)

    def search_by_candidate(self, request: SearchRequest) -> CandidatePage:
        """One entry per candidate, at the rank of their best document."""
        from .search import group_by_candidate

        # Grouping needs more files than people shown.
        results = self._search(request, (request.offset + request.limit) * 5, 0)
        people = group_by_candidate(results.hits)
        page = people[request.offset : request.offset + request.limit]
        return CandidatePage(results, page, len(people))

    def _search(self, request: SearchRequest, wanted: int, offset: int) -> SearchResults:
        self._index_expected()
        return self.index.search(
            request.query,
            texts=self.reader.texts_for,
            type=request.type,
            candidate_id=request.candidate_id,
            language=request.language,
            since=request.since,
            limit=min(wanted, 5000),
            offset=offset,
        )

    def similar(
        self, attachment_id: str, *, type: str | None = None, limit: int = 10
    ) -> SearchResults:
        """Documents of other candidates most like this one."""
        self._index_expected()
        return self.index.similar(
            attachment_id, texts=self.reader.texts_for, type=type, limit=limit
        )

    def _index_expected(self) -> None:
        """No index where the database says documents were indexed is damage, not "no
        match": say so (a fresh data directory, with nothing indexed yet, answers 0 hits)."""
        if not self.index.exists() and self.reader.counts_by_status().get(AttachmentState.INDEXED):
            raise IndexDamagedError(
                f"search index: {self.paths.index_dir} is missing but the database holds "
                "indexed documents: run `pipeline reindex`",
                path=str(self.paths.index_dir),
            )

    def export_records(self, selection: ExportSelection) -> Iterator[dict[str, Any]]:
        """Export records, streamed from the database (write them with :mod:`pipeline.export`)."""
        return self.reader.export_records(selection)


def adopt_legacy_folders(data: DataSettings, store: Store) -> None:
    """A data directory from before integrations kept one index and one file store at its
    top (``data/index``, ``data/files``): they are moved under the folder of the one
    integration it holds, once that integration is known (read from the rows, or registered
    by the first run). With several registered, which owns them cannot be told: they stay,
    and a warning says so. Skipped while an older version's run holds the old writer lock."""
    legacy = [p for p in (data.index_dir, data.files_dir) if p.exists()]
    if not legacy:
        return
    registered = [i.integration_id for i in store.integrations()]
    if len(registered) != 1:
        if registered:
            log.warning(
                "%s and %s predate integrations and several are registered: they stay where "
                "they are (see docs/operations.md)",
                data.index_dir,
                data.files_dir,
            )
        return
    paths = data.integration(registered[0])
    lock_path = data.data_dir / ".writer.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # an older version is writing: the next command moves them
        private_folder(paths.root)
        for old, new in ((data.index_dir, paths.index_dir), (data.files_dir, paths.files_dir)):
            if old.exists() and not new.exists():
                os.replace(old, new)
                log.info("moved %s to %s (integration %s)", old, new, registered[0])
    finally:
        os.close(fd)  # closing drops the lock


__all__ = ["REPAIRS", "App", "CandidatePage", "SearchRequest", "StatusReport"]
