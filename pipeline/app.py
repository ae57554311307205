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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .config import DataSettings, KomboSettings
from .database import WATERMARK, ExportSelection, Failures, Run, Store, reading_store, utcnow
from .errors import IndexDamagedError, PipelineError
from .filestore import private_folder, private_umask
from .states import AttachmentState

if TYPE_CHECKING:
    from .engine import ExtractLimits, Progress, RunEngine, RunSummary, Workspace
    from .extract.pool import Extractor
    from .filestore import LocalFileStore
    from .search import CandidateHit, SearchIndex, SearchResults

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


class App:
    """One data directory (and, for runs, one Kombo integration); use as a context manager."""

    def __init__(
        self,
        data: DataSettings,
        kombo: KomboSettings | None = None,
        *,
        extract: ExtractLimits | None = None,
        extractor: Extractor | None = None,
        progress: Progress | None = None,
        max_run_minutes: float | None = None,
    ) -> None:
        self.data = data
        self.max_run_minutes = max_run_minutes
        self.kombo = kombo
        self._extract = extract
        self._extractor = extractor
        self._progress = progress
        # Every file the pipeline writes is private (0600, folders 0700), whatever the umask.
        private_umask()

    # -- what commands open, when they first need it -------------------------------------------

    @cached_property
    def store(self) -> Store:
        private_folder(self.data.data_dir)  # the clone's data/ ships 0755
        store = Store(self.data.database_url)
        store.ensure_schema()
        return store

    @cached_property
    def reader(self) -> Store:
        """The database for read-only commands: read-only SQLite, no lock, no migration."""
        if "store" in self.__dict__:
            return self.store
        return reading_store(self.data.database_url)

    @cached_property
    def index(self) -> SearchIndex:
        from .search import SearchIndex

        return SearchIndex(self.data.index_dir)

    @cached_property
    def files(self) -> LocalFileStore:
        from .filestore import LocalFileStore

        return LocalFileStore(self.data.files_dir)

    @property
    def workspace(self) -> Workspace:
        from .engine import Workspace

        return Workspace(self.data.data_dir, self.store, self.files, self.index)

    def close(self) -> None:
        if "reader" in self.__dict__ and self.reader is not self.__dict__.get("store"):
            self.reader.close()
        if "store" in self.__dict__:
            self.store.close()

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
        workspace = self.workspace
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            return workspace.erase(list(candidate_ids), reason)

    def purge(self, *, not_seen_days: int) -> int:
        """Erase candidates Kombo has not returned for ``not_seen_days`` days."""
        asked_at = utcnow()  # the days count from the request, not from the lock's turn
        workspace = self.workspace
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            return workspace.erase_not_seen(not_seen_days, now=asked_at)

    def reindex(self) -> int:
        """Rebuild the index from the database; pending texts become indexed. Stored files
        that went missing are marked to be fetched again by the next run (their text stays
        in the index)."""
        from .engine import no_progress

        workspace = self.workspace
        with workspace.lock():
            return workspace.reindex(self._progress or no_progress)

    # -- read-only --------------------------------------------------------------------------------

    def status(self, *, limit: int = 10) -> StatusReport:
        store = self.reader
        return StatusReport(
            attachments=store.counts_by_status(),
            nightly_watermark=store.get_setting(WATERMARK),
            erasures=store.erasure_count(),
            runs=store.recent_runs(limit),
            search_engine=self.search_engine(),
            failures=store.failures(),
        )

    def search_engine(self) -> str:
        """Which paths search runs on in this process: the fast ones, or the fallback and
        why (``status`` and ``check`` say it; see ``pipeline.search.engine_paths``)."""
        from .search import engine_paths

        # An index written by an older analysis answers, and says to run `reindex`.
        outdated = self.index.outdated_reason()
        return engine_paths() + (f"; {outdated}" if outdated else "")

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
                f"search index: {self.data.index_dir} is missing but the database holds "
                "indexed documents: run `pipeline reindex`",
                path=str(self.data.index_dir),
            )

    def export_records(self, selection: ExportSelection) -> Iterator[dict[str, Any]]:
        """Export records, streamed from the database (write them with :mod:`pipeline.export`)."""
        return self.reader.export_records(selection)


__all__ = ["REPAIRS", "App", "CandidatePage", "SearchRequest", "StatusReport"]
