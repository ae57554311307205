"""The application layer: one method per command, the one way in for every front end.

The CLI (:mod:`pipeline.cli`) parses, calls an :class:`App` method and prints what it
returns; a future HTTP server calls the same methods. The App holds one data directory's
settings and opens what a command needs when it first needs it:

- read-only commands (search, similar, export, status, check) open the database and the
  index and nothing else: no extractor pool, no HTTP client, no download process (those
  are one run's, built by :mod:`pipeline.engine` for that run and closed after it); search
  and similar on a SQLite file at this code's schema read it through
  :mod:`pipeline.sqlite_reader` (the standard library's sqlite3: SQLAlchemy is not imported);
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .config import (
    DataSettings,
    IntegrationPaths,
    KomboSettings,
    registered_ids,
    validate_integration_id,
)
from .errors import (
    IndexDamagedError,
    IntegrationChoiceError,
    IntegrationError,
    KomboError,
    LockedError,
    PipelineError,
)
from .filestore import private_folder, private_umask
from .states import AttachmentState, IntegrationState, utcnow

if TYPE_CHECKING:
    # The database layer (SQLAlchemy) is imported by what opens it: a search on a SQLite file
    # reads it through pipeline.sqlite_reader, without SQLAlchemy (tests/test_startup.py).
    from .database import ExportSelection, Failures, Run, Store
    from .engine import ExtractLimits, Progress, RunEngine, RunSummary, SharedStages, Workspace
    from .extract.pool import Extractor
    from .filestore import LocalFileStore
    from .search import CandidateHit, PostgresSearchIndex, SearchIndex, SearchResults
    from .sqlite_reader import SQLiteReader

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

# Kombo deletes a deleted integration's data 14 days after (KOMBO.md): so do we.
DELETION_GRACE = timedelta(days=14)
# The reason an integration Kombo answered INTEGRATION.INACTIVE for is paused with starts so;
# ``nightly --all`` probes such an integration once, and takes it back when it answers.
PAUSED_BY_KOMBO = "Kombo: "
PAUSED_BY_HAND = "paused by hand"

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


@dataclass(frozen=True)
class IntegrationReport:
    """One line of ``integrations list``."""

    integration_id: str
    name: str | None
    state: str  # active or paused
    paused_reason: str | None
    candidates: int
    attachments: dict[str, int]  # state -> count
    last_nightly: Run | None
    deleted_at: datetime | None  # when Kombo reported it deleted


@dataclass
class IntegrationOutcome:
    """What ``nightly --all`` did with one integration."""

    integration_id: str
    summary: RunSummary | None = None
    skipped: str | None = None  # why it did not run (paused, a run going, erased)
    error: str | None = None  # what stopped it before its run could start

    @property
    def stopped_code(self) -> str | None:
        """Kombo's code, when an integration-wide error stopped its run."""
        fatal = self.summary.fatal if self.summary is not None else None
        return fatal.code if isinstance(fatal, KomboError) else None

    @property
    def exit_code(self) -> int:
        if self.skipped is not None:
            return 0
        if self.summary is None:
            return 1
        return self.summary.exit_code

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.integration_id}: skipped: {self.skipped}"
        if self.summary is None:
            return f"{self.integration_id}: failed: {self.error}"
        line = f"{self.integration_id}: {self.summary.line()}"
        fatal = self.summary.fatal
        if fatal is not None:
            code = self.stopped_code
            line += f"; stopped by {code}: {fatal.message}" if code else f"; {fatal.message}"
        return line


@dataclass
class NightlyAll:
    """``nightly --all``: one outcome per integration, and the whole."""

    outcomes: list[IntegrationOutcome]
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        ran = [o for o in self.outcomes if o.skipped is None]
        stopped = [o for o in ran if o.stopped_code is not None]
        if ran and len(stopped) == len(ran):
            return 2
        return 1 if any(o.exit_code for o in ran) else 0

    def line(self) -> str:
        ran = [o for o in self.outcomes if o.skipped is None]
        good = sum(1 for o in ran if o.exit_code == 0)
        stopped = [o for o in ran if o.stopped_code is not None]
        codes = ", ".join(sorted({o.stopped_code or "" for o in stopped}))
        failed = len(ran) - good - len(stopped)
        return (
            f"nightly --all {'succeeded' if self.exit_code == 0 else 'finished'}: "
            f"{len(self.outcomes)} integrations: {good} succeeded, {failed} with failures, "
            f"{len(stopped)} stopped{f' ({codes})' if codes else ''}, "
            f"{len(self.outcomes) - len(ran)} skipped; {self.seconds:.1f}s"
        )


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
        shared: SharedStages | None = None,
    ) -> None:
        self.data = data
        # nightly --all's download process, extraction workers and index writer, which its
        # runs share (engine.SharedStages)
        self._shared = shared
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
        from .database import Store

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
        from .database import reading_store

        store = reading_store(self.data.database_url)
        if not store.read_only:  # it was behind and has been brought forward
            adopt_legacy_folders(self.data, store)
        return store

    @cached_property
    def integration(self) -> str:
        """The one integration every method acts on (see the module's docstring)."""
        named = self._named
        if named is not None:
            registered = self._registered()
            validate_integration_id(named, registered)
            if self.kombo is not None:
                # A command that calls Kombo with an id not yet registered registers it.
                if self.database.register_integration(named):
                    log.info("integration %s registered", named)
                    adopt_legacy_folders(self.data, self.database)
                return named
            if named not in registered:
                raise IntegrationChoiceError(
                    f"unknown integration {named!r}{registered_ids(registered)}"
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
        light = self.__dict__.get("_light")
        if light is not None and "database" not in self.__dict__:
            return light.integration_ids()
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
    def _light(self) -> SQLiteReader | None:
        """The database for search and similar when it is a SQLite file at this code's
        schema and nothing else has opened it: read through the standard library's sqlite3,
        without SQLAlchemy (:mod:`pipeline.sqlite_reader`): importing it was more than half of
        a search's start. None: the Store's path (:attr:`reader`)."""
        if self.data.search == "postgres" or {"database", "reading_database"} & set(self.__dict__):
            return None
        from .sqlite_reader import SQLiteReader

        return SQLiteReader.open(self.data.database_url)

    @cached_property
    def _search_records(self) -> Store | SQLiteReader:
        """This integration's records for search and similar: texts for the snippets, and
        the counts that tell a missing index from an empty one."""
        light = self._light
        if light is None or "reader" in self.__dict__:
            return self.reader
        return light.for_integration(self.integration)

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
        light = self.__dict__.get("_light")
        if light is not None:
            light.close()
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
            shared=self._shared,
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
            self._rebuild_outdated_index()
            return engine.ingest(candidate_ids, application_ids)

    def nightly(
        self,
        *,
        full: bool = False,
        candidate_ids: Iterable[str] | None = None,
        wait_for_lock: bool = False,
        not_run_after: int | None = None,
    ) -> RunSummary:
        """A nightly run of this integration, once it is claimed (its writer lock: on
        PostgreSQL, held in the database against every machine; LockedError when another
        process holds it). ``not_run_after``: a run id; if a nightly run of this
        integration began after it (another machine's pass got there first), LockedError
        instead of a second run. The server's webhook runs call this too."""
        engine = self._engine()
        with self.workspace.lock(wait=wait_for_lock):
            if not_run_after is not None:
                # Claimed, but another machine's pass may have run it since this pass began.
                done = self.store.run_since(not_run_after, "nightly")
                if done is not None:
                    raise LockedError(
                        f"integration {self.integration}: already run during this pass "
                        f"(run {done.id} on {done.host or 'another machine'}, {done.status})"
                    )
            self._rebuild_outdated_index()
            return engine.nightly(full=full, candidate_ids=candidate_ids)

    def _rebuild_outdated_index(self) -> None:
        """An index written by an older analysis (its ``ANALYSIS_VERSION``) is rebuilt by the
        next run, at its start, as ``reindex`` would (the caller holds this integration's
        writer lock): until then it answers as it was written, and says to reindex."""
        from .engine import no_progress

        try:
            outdated = self.index.analysis_outdated()  # never on the PostgreSQL search
        except PipelineError:
            return  # an index that cannot be read is the run's to report, as before
        if outdated:
            try:  # an index of another schema is damage, not older words: the run reports it
                self.index.search("*", texts=lambda ids: dict.fromkeys(ids, ""), limit=1)
            except PipelineError:
                return
            log.warning(
                "search index of %s: written by an older analysis; rebuilding it before the run",
                self.integration,
            )
            self._detect_languages_again()
            self.workspace.reindex(self._progress or no_progress)

    def _detect_languages_again(self) -> int:
        """Detect each stored text's language again when it was detected by an older
        detector (``pipeline.extract.language.DETECTOR_VERSION``), and store it where it
        changed, so that the rebuild after stems it as today's extraction would (a German
        LaTeX CV stored as English before version 2). Once per detector version and
        integration (a setting records it): 1.5 ms a short CV, 13 ms a long one. Returns
        the attachments whose language changed. The caller holds the writer lock."""
        from .extract.language import DETECTOR_VERSION, detect_language, load_model

        key = f"language_detector:{self.integration}"
        if self.store.get_setting(key) == str(DETECTOR_VERSION):
            return 0
        load_model()
        changed: dict[str, str | None] = {}
        for sha256, stored, text in self.store.texts_with_languages():
            detected = detect_language(text)
            if detected != stored:
                changed[sha256] = detected
        updated = self.store.set_languages(changed) if changed else 0
        self.store.set_setting(key, str(DETECTOR_VERSION))
        if updated:
            log.info(
                "%s: language detected again for %d stored texts (%d attachments changed)",
                self.integration,
                len(changed),
                updated,
            )
        return updated

    def candidate_ids_at_kombo(self) -> list[str]:
        """Every candidate Kombo lists now (not deleted), in its order."""
        from .fetch import KomboClient

        if self.kombo is None:
            raise PipelineError("listing candidates needs Kombo settings")
        with KomboClient(self.kombo) as client:
            return [
                c.id for page in client.candidate_pages() for c in page.candidates if not c.deleted
            ]

    # -- the registry of integrations ---------------------------------------------------------

    def integrations_list(self) -> list[IntegrationReport]:
        database = self.reading_database
        reports = []
        for found in database.integrations():
            counts = database.for_integration(found.integration_id).integration_counts()
            reports.append(
                IntegrationReport(
                    found.integration_id,
                    found.name,
                    found.state,
                    found.paused_reason,
                    counts.candidates,
                    counts.attachments,
                    counts.last_nightly,
                    found.deleted_at,
                )
            )
        return reports

    def add_integration(self, integration_id: str, name: str | None = None) -> bool:
        """Register an integration (or rename it); whether it was new."""
        validate_integration_id(integration_id)
        new = self.database.register_integration(integration_id, name)
        adopt_legacy_folders(self.data, self.database)
        return new

    def _registered_one(self, integration_id: str) -> str:
        validate_integration_id(integration_id, self._registered())
        if self.database.integration(integration_id) is None:
            raise IntegrationChoiceError(
                f"unknown integration {integration_id!r}{registered_ids(self._registered())}"
            )
        return integration_id

    def remove_integration(
        self, integration_id: str, *, wait: bool = False, reason: str = "integration removed"
    ) -> int:
        """Erase every record, text, index document and file of an integration, keep a
        record of each candidate's erasure (no personal data), and unregister it. Refused
        while a run of it holds its writer lock, unless ``wait``. Returns the candidates
        erased."""
        import shutil

        from .lock import IntegrationClaim, WriterLock

        self._registered_one(integration_id)
        paths = self.data.integration(integration_id)
        store = self.database.for_integration(integration_id)
        claim = None
        if store.engine.dialect.name == "postgresql":
            claim = IntegrationClaim(store.engine, integration_id, wait=wait)
        try:
            lock = WriterLock(paths.lock_dir, wait=wait, claim=claim).__enter__()
        except LockedError as exc:
            raise LockedError(
                f"integration {integration_id}: a run is going ({exc.message}); "
                "removal refused: try again after it, or pass --wait"
            ) from None
        try:
            before = store.erasure_count()
            store.erase_integration(reason)
            erased = store.erasure_count() - before
            if self.data.search == "postgres":
                from .search import PostgresSearchIndex

                PostgresSearchIndex(self.database.engine, integration_id).erase_all()
            shutil.rmtree(paths.root, ignore_errors=True)
            self.database.compact()
        finally:
            lock.__exit__(None, None, None)
        log.info("integration %s removed: %d candidates erased", integration_id, erased)
        return erased

    def pause_integration(self, integration_id: str, reason: str = PAUSED_BY_HAND) -> None:
        self._registered_one(integration_id)
        self.database.set_integration_state(integration_id, IntegrationState.PAUSED, reason)

    def resume_integration(self, integration_id: str) -> None:
        self._registered_one(integration_id)
        self.database.set_integration_state(integration_id, IntegrationState.ACTIVE)
        self.database.mark_integration_deleted(integration_id, None)

    def integration_deleted(self, integration_id: str, when: datetime | None = None) -> None:
        """Kombo reported the integration deleted (its webhook ``integration-deleted``):
        paused now, erased by ``nightly --all`` once the grace period has passed."""
        when = when or utcnow()
        self.database.register_integration(integration_id)
        self.database.set_integration_state(
            integration_id,
            IntegrationState.PAUSED,
            f"{PAUSED_BY_KOMBO}deleted at Kombo on {when.date().isoformat()}: erased "
            f"{DELETION_GRACE.days} days later",
        )
        self.database.mark_integration_deleted(integration_id, when)

    def integration_state_changed(self, integration_id: str, state: str) -> None:
        """Kombo's ``integration-state-changed``: INACTIVE or INVALID pauses, ACTIVE takes
        back an integration Kombo had paused (not one paused by hand)."""
        found = self.database.integration(integration_id)
        if state.upper() == "ACTIVE":
            reason = found.paused_reason if found is not None else None
            if found is not None and reason and reason.startswith(PAUSED_BY_KOMBO):
                self.database.set_integration_state(integration_id, IntegrationState.ACTIVE)
                # Active again: a deletion Kombo reported before no longer stands, so the
                # grace-period erasure must not come for it.
                self.database.mark_integration_deleted(integration_id, None)
            return
        self.database.register_integration(integration_id)
        self.database.set_integration_state(
            integration_id,
            IntegrationState.PAUSED,
            f"{PAUSED_BY_KOMBO}integration state {state.upper()}",
        )

    def nightly_all(
        self,
        *,
        full: bool = False,
        parallel: int | None = None,
        downloads_in_flight: int | None = None,
        wait_for_lock: bool = False,
        on_done: Callable[[IntegrationOutcome], None] | None = None,
    ) -> NightlyAll:
        """A nightly run of every active integration, several at once (at most ``parallel``,
        by default one per core), each within its own Kombo limit, the downloads in flight
        shared out (``downloads_in_flight`` in all). An integration-wide error stops that
        integration alone; INTEGRATION.INACTIVE pauses it. Integrations Kombo paused are
        probed with one call first and taken back when they answer; those paused by hand are
        skipped; those Kombo deleted are erased once the grace period has passed."""
        import time

        if self.kombo is None:
            raise PipelineError("nightly --all needs Kombo settings")
        started = time.perf_counter()
        outcomes: list[IntegrationOutcome] = []
        runnable: list[str] = []
        now = utcnow()
        # Runs begun after this one (by any machine) are this pass's: an integration one of
        # them ran is not run twice (App.nightly's not_run_after).
        pass_began = self.database.newest_run_id()
        self._remove_erased_folders()
        registered = self.database.integrations()
        if not registered:
            raise IntegrationChoiceError(
                "nightly --all: no integration is registered: `pipeline integrations add ID`"
            )
        for found in registered:
            iid = found.integration_id
            if found.deleted_at is not None and now - found.deleted_at >= DELETION_GRACE:
                try:
                    erased = self.remove_integration(iid, reason="deleted at Kombo")
                    skipped = (
                        f"erased ({erased} candidates): deleted at Kombo "
                        f"{(now - found.deleted_at).days} days ago"
                    )
                except LockedError as exc:
                    skipped = exc.message
                outcomes.append(IntegrationOutcome(iid, skipped=skipped))
            elif found.state == IntegrationState.ACTIVE:
                runnable.append(iid)
            elif found.deleted_at is None and (found.paused_reason or "").startswith(
                PAUSED_BY_KOMBO
            ):
                answer = self._probe(iid)
                if answer is None:
                    log.info("integration %s answers again: taken back", iid)
                    self.database.set_integration_state(iid, IntegrationState.ACTIVE)
                    runnable.append(iid)
                else:
                    outcomes.append(IntegrationOutcome(iid, skipped=f"paused: {answer}"))
            else:
                outcomes.append(IntegrationOutcome(iid, skipped=f"paused: {found.paused_reason}"))
        for outcome in outcomes:
            if on_done is not None:
                on_done(outcome)
        workers = max(1, min(len(runnable), parallel or (os.cpu_count() or 1)))
        total = downloads_in_flight or self.kombo.download_concurrency * workers
        per_run = max(1, total // workers)

        kombo = self.kombo
        shared: SharedStages | None = None

        def one(iid: str) -> IntegrationOutcome:
            settings = dataclasses.replace(
                kombo,
                integration_id=iid,
                download_concurrency=min(kombo.download_concurrency, per_run),
            )
            try:
                with App(
                    self.data,
                    settings,
                    extract=self._extract,
                    max_run_minutes=self.max_run_minutes,
                    shared=shared,
                ) as app:
                    summary = app.nightly(
                        full=full, wait_for_lock=wait_for_lock, not_run_after=pass_began
                    )
            except LockedError as exc:
                outcome = IntegrationOutcome(iid, skipped=exc.message)
            except PipelineError as exc:
                outcome = IntegrationOutcome(iid, error=exc.message)
            else:
                outcome = IntegrationOutcome(iid, summary)
                if outcome.stopped_code == "INTEGRATION.INACTIVE":
                    assert summary.fatal is not None
                    self.database.set_integration_state(
                        iid,
                        IntegrationState.PAUSED,
                        f"{PAUSED_BY_KOMBO}INTEGRATION.INACTIVE: {summary.fatal.message}",
                    )
            if on_done is not None:
                on_done(outcome)
            return outcome

        if runnable:
            from .engine import ExtractLimits, SharedStages

            # One download process, one pool of extraction workers and one index writer for
            # the whole pass (engine.SharedStages): one set per integration cost more CPU
            # than twenty small integrations' own work.
            shared = SharedStages(
                kombo, downloads_in_flight=total, extract=self._extract or ExtractLimits()
            )
        cancel = True
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="integration") as pool:
                outcomes += list(pool.map(one, runnable))
            cancel = False
        finally:
            if shared is not None:
                shared.close(cancel=cancel)
        return NightlyAll(outcomes, time.perf_counter() - started)

    def _remove_erased_folders(self) -> None:
        """Integrations another machine removed (`integrations remove`, or deleted at
        Kombo): this machine's folder of each (its index and files) goes too."""
        import shutil

        for iid in self.database.erased_integrations():
            root = self.data.integration(iid).root
            if root.exists():
                shutil.rmtree(root, ignore_errors=True)
                log.info("integration %s was removed: this machine's folder of it erased", iid)

    def _probe(self, integration_id: str) -> str | None:
        """One cheap call (a page of one candidate) for an integration Kombo paused: None
        when it answers, else what it answered."""
        from .fetch import KomboClient

        assert self.kombo is not None
        settings = dataclasses.replace(self.kombo, integration_id=integration_id)
        try:
            with KomboClient(settings) as client:
                next(iter(client.candidate_pages(page_size=1)), None)
        except IntegrationError as exc:
            return f"{exc.code}: {exc.message}" if exc.code else exc.message
        except PipelineError as exc:
            return exc.message
        return None

    # -- erasure and repair -----------------------------------------------------------------------

    def forget(self, candidate_ids: Iterable[str], *, reason: str = "forget") -> int:
        """Erase candidates completely: rows, text, index documents and files."""
        workspace = self._writing()
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            workspace.apply_erasures()
            return workspace.erase(list(candidate_ids), reason)

    def purge(self, *, not_seen_days: int) -> int:
        """Erase candidates Kombo has not returned for ``not_seen_days`` days."""
        asked_at = utcnow()  # the days count from the request, not from the lock's turn
        workspace = self._writing()
        with workspace.lock(wait=True, timeout=ERASE_LOCK_TIMEOUT):
            workspace.apply_erasures()
            return workspace.erase_not_seen(not_seen_days, now=asked_at)

    def reindex(self) -> int:
        """Rebuild the index from the database; pending texts become indexed. Stored files
        that went missing are marked to be fetched again by the next run (their text stays
        in the index). Texts detected by an older language detector are detected again
        first (:meth:`_detect_languages_again`)."""
        from .engine import no_progress

        workspace = self._writing()
        with workspace.lock():
            workspace.apply_erasures()
            self._detect_languages_again()
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
        records = self._search_records  # first: the integration is chosen through it
        results = self.index.search(
            request.query,
            texts=records.texts_for,
            type=request.type,
            candidate_id=request.candidate_id,
            language=request.language,
            since=request.since,
            limit=min(wanted, 5000),
            offset=offset,
        )
        if not results.total:
            # A missing index answers no hits: only then is it asked whether one was
            # expected (opening the index's TOC to tell was a tenth of every search's CPU).
            self._index_expected()
        return self._without_erased(results)

    def _without_erased(self, results: SearchResults) -> SearchResults:
        """On a shared database, a machine's own Whoosh index may still hold documents
        another machine erased (its next writing command removes them): their hits are
        dropped here, so a read never names an erased candidate. The PostgreSQL search
        and SQLite (one machine) need no such check."""
        if self.data.search == "postgres" or self.__dict__.get("_light") is not None:
            return results
        from .database import sqlite_path

        if sqlite_path(self.data.database_url) is not None:
            return results
        ids = [hit.attachment_id for hit in results.hits]
        present = self.reader.present_attachments(ids) if ids else set()
        if len(present) == len(set(ids)):
            return results
        kept = [hit for hit in results.hits if hit.attachment_id in present]
        gone = len(results.hits) - len(kept)
        return dataclasses.replace(results, hits=kept, total=max(0, results.total - gone))

    def similar(
        self, attachment_id: str, *, type: str | None = None, limit: int = 10
    ) -> SearchResults:
        """Documents of other candidates most like this one."""
        records = self._search_records  # first: the integration is chosen through it
        self._index_expected()
        return self._without_erased(
            self.index.similar(attachment_id, texts=records.texts_for, type=type, limit=limit)
        )

    def _index_expected(self) -> None:
        """No index where the database says documents were indexed is damage, not "no
        match": say so (a fresh data directory, with nothing indexed yet, answers 0 hits)."""
        if self.data.search == "postgres":
            # Switched to the PostgreSQL search without a reindex: its table is empty.
            if not self.index.doc_count() and self.reader.counts_by_status().get(
                AttachmentState.INDEXED
            ):
                raise IndexDamagedError(
                    "search index: the PostgreSQL search holds none of this integration's "
                    "indexed documents: run `pipeline reindex` (once, after switching to "
                    "PIPELINE_SEARCH=postgres)"
                )
            return
        if not self.index.exists() and self._search_records.counts_by_status().get(
            AttachmentState.INDEXED
        ):
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


__all__ = [
    "REPAIRS",
    "App",
    "CandidatePage",
    "IntegrationOutcome",
    "IntegrationReport",
    "NightlyAll",
    "SearchRequest",
    "StatusReport",
]
