"""The run engine: one run, fetch -> download -> extract -> index, as bounded stages that
overlap. The commands reach it through :mod:`pipeline.app`.

Where each stage runs, and why:
- listings on threads (the waits are the ATS's; the client is thread-safe and pools
  connections; asyncio measured twice the CPU);
- downloads in a download process (:class:`~pipeline.download.DownloadProcess`): their HTTP
  work and hashing would otherwise compete with the run loop for one interpreter;
- extraction in worker processes behind an :class:`Extractor`, killable when a parser hangs;
- the database on this module's main thread, the only one to touch it (SQLite stays
  single-writer without locks of our own);
- the index in an index writer process (:class:`~pipeline.search.IndexWriterProcess`), fed in
  order from the main thread, so that a commit never holds the run loop still.
The stage modules stay plain functions and classes that can be tested alone.

The objects:
- :class:`Workspace`: one data directory's database, file store and index, and the work on
  them that is not a run (recovery, garbage collection, erasure, rebuild);
- :class:`RunEngine`: what every run with one Kombo integration shares (settings, workspace,
  how to make an extractor, a progress hook); long-lived, it keeps nothing of any run;
- :class:`RunInProgress`: one run's state (its summary, client, download process,
  extractor, stages and index batch), made by the engine for that run and dropped after.

Order of a run (the caller holds the writer lock):
1. sweep temporary files, mark runs that died as ``killed``, and index any text a killed run
   extracted but did not index;
2. for each target (the given candidates or applications, plus candidates whose work is
   unfinished or failed): list its attachments, record every one, mark those gone from Kombo
   ``deleted``;
3. download the new or changed ones; reuse the outcome of identical bytes seen before, or
   extract;
4. write each outcome in its own transaction and send each text to the index writer; rows
   become ``indexed`` only once the commit that holds them is done;
5. remove stored files and texts that nothing points at any more.

Memory stays flat: targets are listed a window at a time, and no new listing starts while
the download stage or the extraction stage holds a full window of work (each has its own, so
that extractions far behind do not stop the downloads).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from .config import KomboSettings
from .database import FinishedRun, IndexDoc, KnownAttachment, Outcome, Store, utcnow
from .download import Downloaded, DownloadProcess, StoreDownloads
from .errors import (
    DiskFullError,
    DownloadError,
    IndexWriteError,
    IntegrationError,
    KomboError,
    LinkExpiredError,
    PipelineError,
    StorageError,
    TooLargeError,
    TransportError,
)
from .extract import RETRIED_ERRORS, Extraction, parser_upgraded
from .extract.pool import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, Extractor, ProcessExtractor
from .faults import EXIT_INTERRUPTED, RunStopped, as_pipeline_error, exit_code
from .fetch import AttachmentList, KomboClient, RemoteAttachment
from .filestore import LocalFileStore, SpaceReserve, private_folder, storage_error
from .lock import IntegrationClaim, WriterLock
from .search import IndexWriterProcess, IndexWriterView, PostgresSearchIndex, SearchIndex
from .states import COMPLETED_RUNS, FINAL_STATES, AttachmentState, RunStatus

log = logging.getLogger(__name__)

# A parser timed out or ran out of memory this many times on the same bytes: the file is
# ``unreadable`` (what may pass has had its chances).
UNREADABLE_AFTER = 3

INDEX_BATCH = 500

# progress(what, done, total): a front end's hook; total is given once, when known.
Progress = Callable[[str, int, int | None], None]


def no_progress(what: str, done: int, total: int | None) -> None:
    """The progress hook of a caller that shows none."""


def _not_found(error: PipelineError) -> bool:
    """Kombo says the candidate does not exist (an unknown or mistyped id)."""
    return isinstance(error, KomboError) and (
        error.code == "PLATFORM.INPUT_INVALID" or (error.code is None and error.status_code == 404)
    )


def _unreachable(error: PipelineError) -> bool:
    """Kombo could not be reached at all (refused, a name that does not resolve, TLS, no
    connection in time), as opposed to an answer that was slow, cut or refused: only a
    connection that never came says something of every other call."""
    import httpcore

    return isinstance(error, TransportError) and isinstance(
        error.__cause__, (httpcore.ConnectError, httpcore.ConnectTimeout)
    )


def _parse_stamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class RunSummary:
    kind: str
    run_id: int | None = None
    candidates: int = 0
    candidate_errors: int = 0
    unchanged: int = 0
    reused: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    status: RunStatus = RunStatus.RUNNING
    # what stopped the whole run: an error of the integration, an unreachable Kombo, a
    # disk, a database (its transient marker decides the exit code)
    fatal: PipelineError | None = None
    stopped: RunStopped | None = None  # SIGTERM or the run budget (None for Ctrl-C)
    not_found: list[str] = field(default_factory=list)  # candidates Kombo does not know
    erased: int = 0
    listed: list[str] = field(default_factory=list)
    # CPU seconds spent parsing (in the workers) and writing the index (in the index writer
    # process, as it reports them)
    extract_cpu: float = 0.0
    index_cpu: float = 0.0
    # documents whose index write failed: they stay pending, and the next run indexes them
    index_errors: int = 0
    # why files ended ``unreadable`` (for the summary line; like ``unsupported``, not an error)
    unreadable_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return exit_code(self.fatal)
        if self.status == RunStatus.INTERRUPTED:
            return self.stopped.exit_code if self.stopped is not None else EXIT_INTERRUPTED
        if (
            self.candidate_errors
            or self.index_errors
            or self.outcomes.get(AttachmentState.FAILED, 0)
        ):
            return 1
        return 0

    def counts(self) -> dict[str, int]:
        return {
            "candidates": self.candidates,
            "candidate_errors": self.candidate_errors,
            "unchanged": self.unchanged,
            "reused": self.reused,
            "erased": self.erased,
            **{str(k): v for k, v in sorted(self.outcomes.items())},
        }

    def finished(self) -> FinishedRun:
        """What the run's row keeps."""
        return FinishedRun(self.status, self.counts(), self.errors, self.warnings, self.line())

    def line(self) -> str:
        done = sum(self.outcomes.values())
        states = ", ".join(
            f"{self.outcomes.get(s, 0)} {s}" + self._reasons(s)
            for s in AttachmentState
            if s != AttachmentState.PENDING and (self.outcomes.get(s, 0) or s in _ALWAYS_SHOWN)
        )
        return (
            f"{self.kind} {self.status}: {self.candidates} candidates "
            f"({self.candidate_errors} failed), {done} attachments processed: {states}; "
            f"{self.unchanged} unchanged; {self.erased} candidates erased; "
            f"{len(self.warnings)} warnings; {self.seconds:.1f}s"
        )

    def _reasons(self, state: AttachmentState) -> str:
        if state != AttachmentState.UNREADABLE or not self.unreadable_reasons:
            return ""
        shown = [reason for reason, _ in self.unreadable_reasons.most_common(3)]
        more = len(self.unreadable_reasons) - len(shown)
        return f" ({'; '.join(shown)}{f'; {more} more' if more > 0 else ''})"


_ALWAYS_SHOWN = {AttachmentState.INDEXED, AttachmentState.FAILED}


@dataclass(frozen=True)
class Target:
    """Something to list attachments for."""

    kind: Literal["candidate", "application"]
    id: str
    candidate_id: str | None = None  # known for applications when we could resolve it


@dataclass(frozen=True)
class ExtractLimits:
    """What one parsing worker may take (the ``--extract-*`` flags)."""

    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB


@dataclass(frozen=True)
class _Listed:
    target: Target
    listing: AttachmentList | None = None
    error: PipelineError | None = None


@dataclass(frozen=True)
class _Fetched:
    item: RemoteAttachment
    downloaded: Downloaded | None = None
    state: AttachmentState | None = None  # set when the download itself decided the outcome
    error: str | None = None
    expired: bool = False  # the link was refused: ask for a fresh one


@dataclass(frozen=True)
class _Extracted:
    item: RemoteAttachment
    downloaded: Downloaded
    extraction: Extraction


def _needs_work(
    item: RemoteAttachment, known: KnownAttachment | None, files: LocalFileStore
) -> bool:
    if known is None or known.status not in FINAL_STATES or known.changed_at_kombo(item):
        return True
    if known.status == AttachmentState.UNREADABLE and parser_upgraded(
        known.parser, known.parser_version
    ):
        return True  # the parser that could not read it is another version now: try again
    # Unchanged at Kombo: download again only if our copy of the file is gone or torn.
    return known.sha256 is None or not files.exists(known.sha256, known.size_bytes)


# -- the data directory ------------------------------------------------------------------------


@dataclass
class Workspace:
    """One integration's world in a data directory: its records (a store scoped to it), its
    file store and search index, and the writing work on them that is not a run (recovery,
    garbage collection, erasure, rebuild), for whoever holds its writer lock (:meth:`lock`).
    ``directory`` is the data directory (the space reserve is shared); ``lock_dir`` the
    integration's own folder, where its writer lock lives."""

    directory: Path
    store: Store
    files: LocalFileStore
    index: SearchIndex | PostgresSearchIndex
    lock_dir: Path | None = None

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> WriterLock:
        """The integration's writer lock; on PostgreSQL also its claim in the database, so
        that no other machine writes it meanwhile (``pipeline.lock``)."""
        claim = None
        if self.store.engine.dialect.name == "postgresql":
            claim = IntegrationClaim(self.store.engine, self.store._iid, wait=wait, timeout=timeout)
        return WriterLock(self.lock_dir or self.directory, wait=wait, timeout=timeout, claim=claim)

    # -- erasures another machine made ---------------------------------------------------------

    @property
    def _erasures_applied_file(self) -> Path:
        return (self.lock_dir or self.directory) / ".erasures-applied"

    def _erasures_applied(self) -> int:
        try:
            return int(self._erasures_applied_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0  # never applied here: every erasure is looked at once

    def _note_erasures_applied(self, newest: int) -> None:
        path = self._erasures_applied_file
        try:
            private_folder(path.parent)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(str(newest))
            tmp.replace(path)
        except OSError as exc:
            raise storage_error(exc, "cannot record the erasures applied", path.parent) from exc

    def apply_erasures(self) -> int:
        """Apply to this machine's own copies (its Whoosh index, its stored files) the
        erasures of this integration made since the last one applied here, by this machine
        or another sharing the database; with the writer lock held, at the start of every
        writing command. The database's rows (and the PostgreSQL search's) went with the
        erasure itself; what is left here is whatever the database no longer has: index
        documents of attachments without a row, files no live attachment points at.
        Returns the index documents removed."""
        newest = self.store.newest_erasure_id()
        if newest <= self._erasures_applied():
            return 0
        removed = 0
        if not isinstance(self.index, PostgresSearchIndex):
            stale = self.index.attachment_ids() - self.store.all_attachment_ids()
            if stale:
                self.index.write(deletions=sorted(stale), purge=True)
                removed = len(stale)
        keep = self.store.live_hashes()
        files = sum(self.files.delete(h) for h in set(self.files.hashes()) - keep)
        if removed or files:
            log.info(
                "applied erasures made elsewhere: %d index documents and %d files removed",
                removed,
                files,
            )
        self._note_erasures_applied(newest)
        return removed

    def recover(self) -> None:
        """Clean up after a run that died: temporary files, its run row, unindexed text;
        and apply the erasures other machines made (:meth:`apply_erasures`)."""
        self.apply_erasures()
        swept = self.files.sweep_temporary()
        SpaceReserve(self.directory).ensure()
        killed = self.store.close_abandoned_runs()
        if swept or killed:
            log.info(
                "recovered from an interrupted run: %d temporary files removed, "
                "%d runs marked killed",
                swept,
                killed,
            )
        # Text that was extracted but never reached the index.
        pending = self.store.pending_keys()
        if pending:
            batch = _IndexBatch(self.index, self.store)
            for candidate_id, sha256 in pending:
                batch.reconcile(candidate_id, sha256)
            batch.flush()

    def collect_garbage(self) -> set[str]:
        """Remove stored files and texts nothing refers to; the hashes of live files that
        are missing from the store (one walk of the store serves both)."""
        keep = self.store.live_hashes()
        stored = set(self.files.hashes())
        removed = sum(self.files.delete(h) for h in stored - keep)
        texts = self.store.drop_texts_except(keep)
        if removed or texts:
            log.info("removed %d stored files and %d texts nothing refers to", removed, texts)
        return keep - stored

    def erase(self, candidate_ids: Iterable[str], reason: str) -> int:
        """Erase candidates completely: rows, text, index documents and files."""
        erased: list[str] = []
        attachment_ids: list[str] = []
        for candidate_id in dict.fromkeys(candidate_ids):
            ids = self.store.erase_candidate(candidate_id, reason)
            if ids is not None:
                erased.append(candidate_id)
                attachment_ids += ids
        if erased:
            # Merge the index so that no segment keeps the erased documents' terms.
            self.index.write(deletions=attachment_ids, purge=True)
            self.collect_garbage()
            self.store.compact()
            # Done here under the claim: no other machine erased meanwhile.
            self._note_erasures_applied(self.store.newest_erasure_id())
            log.info("erased %d candidates (%s)", len(erased), reason)
        return len(erased)

    def erase_not_seen(self, days: int, *, now: datetime) -> int:
        """Erase candidates Kombo had not returned for ``days`` days at ``now``."""
        stale = self.store.candidates_not_seen_since(now - timedelta(days=days))
        return self.erase(stale, f"not seen for {days} days")

    def reindex(self, progress: Progress = no_progress) -> int:
        """Rebuild the index from the database; pending texts become indexed."""

        def counted(docs: Iterable[IndexDoc]) -> Iterable[IndexDoc]:
            for doc in docs:
                progress("documents", 1, None)
                yield doc

        progress("documents", 0, None)
        count = self.index.rebuild(counted(self.store.index_docs(only_pending=False)))
        self.store.mark_indexed(list(self.store.attachment_ids([AttachmentState.PENDING])))
        missing = self.collect_garbage()
        if self.store.engine.dialect.name != "sqlite":
            # A shared database: this machine's files are a cache of what any machine
            # fetched, and one it lacks is no damage (a run that needs it fetches it again).
            missing = set()
        # A stored file that went missing cannot be rebuilt from the database: its candidates
        # are marked so that the next run fetches it again.
        owners = self.store.refetch_files(missing)
        if owners:
            log.warning(
                "%d stored files are missing: the next run fetches them again (candidates %s)",
                len(missing),
                ", ".join(owners[:5]) + (" ..." if len(owners) > 5 else ""),
            )
        return count


# -- runs --------------------------------------------------------------------------------------


class RunInProgress:
    """One run's state, from its first listing to its last index commit: made for the run,
    dropped after it."""

    def __init__(self, engine: RunEngine, summary: RunSummary, client: KomboClient) -> None:
        self.kombo = engine.kombo
        self.store = engine.workspace.store
        self.files = engine.workspace.files
        self.progress = engine.progress
        self.summary = summary
        self.client = client
        # Until Kombo has answered once, a call that cannot reach it stops the run: every
        # other call would fail the same way after the same retries.
        self.kombo_answered = False
        shared = engine.shared
        self.downloader: DownloadProcess | StoreDownloads
        self.extractor: Extractor
        if shared is None:
            self.downloader = DownloadProcess(self.kombo, self.files)
            self.extractor = engine.new_extractor()
        else:  # nightly --all: the pass's download process and extraction workers
            self.downloader = shared.downloads.for_store(self.files)
            self.extractor = _RunExtractions(shared.extractor)
        self.fetch_pool = ThreadPoolExecutor(self.kombo.concurrency, thread_name_prefix="fetch")
        self.batch = _WriterProcessBatch(engine.workspace.index, self.store, shared)
        self.stage = _Stages(self.fetch_pool)
        self.hashes = self.store.known_hashes()
        # sha256 -> attachments waiting for an extraction of the same bytes already under way
        self.extracting: dict[str, list[tuple[RemoteAttachment, Downloaded]]] = {}

    def execute(self, targets: list[Target]) -> None:
        stage, batch, summary = self.stage, self.batch, self.summary
        interrupted = False
        try:
            # Each stage has a window of its own, so that one stage's backlog does not starve
            # the other: four downloads per download slot keep every slot busy, and the
            # extraction queue (files on disk, a few hundred bytes of memory each) absorbs the
            # second the workers take to start, and any spell of large files.
            download_window = 4 * self.kombo.download_concurrency
            extract_window = max(_EXTRACT_WINDOW, 16 * self.extractor.workers)
            pending = iter(targets)
            while True:
                # Start listings while the later stages have room: memory stays flat.
                while (
                    stage.count("list") < self.kombo.concurrency
                    and stage.count("download") < download_window
                    and stage.count("extract") < extract_window
                ):
                    target = next(pending, None)
                    if target is None:
                        break
                    stage.submit("list", _list_target, self.client, target)
                if not stage.inflight:
                    break
                # Everything that completed meanwhile is written in one transaction.
                done = stage.completed()  # waits outside the transaction
                with self.store.batch():
                    for kind, value in done:
                        # Each kind's futures give that kind's result (see _Stages).
                        if kind == "list":
                            self._record_list(cast(_Listed, value))
                        elif kind == "download":
                            self._record_download(cast(_Fetched, value))
                        else:
                            self._record_extraction(cast(_Extracted, value))
                batch.collect(summary)
                if batch.size >= batch.flush_at:
                    batch.flush()
        except BaseException:
            # Ctrl-C, or an error that stops the run (an unreachable Kombo, a full disk):
            # what finished is recorded, the calls in flight are not waited for.
            interrupted = True
            raise
        finally:
            # On Ctrl-C do not wait for calls in flight: what finished is already recorded.
            self.fetch_pool.shutdown(wait=not interrupted, cancel_futures=True)
            self.extractor.close(cancel=interrupted)
            self.downloader.close(cancel=interrupted)
            if not interrupted:
                self.client.close()
            batch.close(summary, cancel=interrupted)
            summary.index_cpu += batch.cpu

    def _record_list(self, listed: _Listed) -> None:
        summary, batch = self.summary, self.batch
        target = listed.target
        if isinstance(listed.error, IntegrationError):
            raise listed.error
        if listed.error is not None and not self.kombo_answered and _unreachable(listed.error):
            raise listed.error
        if listed.error is None or isinstance(listed.error, KomboError):
            self.kombo_answered = True
        self.progress("candidates", 1, None)
        if target.kind == "application" and target.candidate_id is None:
            summary.candidate_errors += 1
            message = (
                f"application {target.id}: its candidate is not known here (Kombo's "
                "application attachments do not name it); ingest the candidate first"
            )
            summary.errors.append(message)
            log.error("%s", message)
            return
        candidate_id = target.candidate_id or target.id
        if listed.error is not None:
            summary.candidate_errors += 1
            summary.errors.append(listed.error.message)
            not_found = target.kind == "candidate" and _not_found(listed.error)
            if not_found:
                summary.not_found.append(candidate_id)
                log.warning(
                    "candidate %s is not known at Kombo (%s); recorded, and not retried "
                    "by later runs unless named again",
                    candidate_id,
                    listed.error.message,
                )
            else:
                log.error("%s", listed.error.message)
            self.store.candidate_fetched(
                candidate_id, self.kombo.integration_id, listed.error.message, not_found=not_found
            )
            return
        assert listed.listing is not None
        listing = listed.listing
        summary.warnings.extend(f"{listing.subject}: {w}" for w in listing.warnings)
        self.store.candidate_fetched(candidate_id, self.kombo.integration_id, None)
        known = self.store.known_attachments(
            candidate_id, [item.id for item in listing.attachments]
        )
        items = listing.attachments
        if target.kind == "application":
            # Items of an application answer carry no owner: keep what we knew.
            items = [
                _with_owner(
                    item,
                    candidate_id,
                    (known[item.id].application_id if item.id in known else None) or target.id,
                )
                for item in items
            ]
        self.store.record_listing(self.kombo.integration_id, items, known, utcnow())
        listed_ids = {item.id for item in items}
        for item in items:
            if _needs_work(item, known.get(item.id), self.files):
                self.extractor.prestart()
                future = self.downloader.submit(item.data_url, subject=f"attachment {item.id}")
                self.stage.track("download", future, partial(_fetched, item))
            else:
                summary.unchanged += 1
        if target.kind != "candidate":
            return  # one application's list says nothing about the candidate's other files
        gone = [
            a
            for a, k in known.items()
            if a not in listed_ids and k.status != AttachmentState.DELETED
        ]
        if gone:
            keys = self.store.attachment_keys(gone)
            self.store.mark_deleted(gone)
            for attachment_id in gone:
                batch.delete(attachment_id)
            for candidate, sha256 in keys:
                batch.reconcile(candidate, sha256)  # a copy may now stand for the content
            summary.outcomes[AttachmentState.DELETED] += len(gone)

    def _record_download(self, fetched: _Fetched) -> None:
        item = fetched.item
        if fetched.expired:
            # data_url lives 7 days: ask Kombo for a fresh one, once (a call, so a fetch thread).
            self.stage.submit("download", _download_fresh, self.client, self.downloader, item)
            return
        if fetched.downloaded is None:
            assert fetched.state is not None
            self._save(item, fetched.state, fetched.error)
            return
        downloaded = fetched.downloaded
        # Only a hash seen before (on record at the start, or earlier in this run) can have
        # an outcome to reuse: new files skip the query.
        seen_before = downloaded.sha256 in self.hashes
        self.hashes.add(downloaded.sha256)
        prior = self.store.prior_extraction(downloaded.sha256) if seen_before else None
        if prior is not None:
            # The same bytes were read before: their outcome holds, no need to parse again.
            self.summary.reused += 1
            extraction = Extraction(
                state=AttachmentState(prior.state),
                detected_type=prior.detected_type,
                parser=prior.parser,
                parser_version=prior.parser_version,
                page_count=prior.page_count,
                text=prior.text,
                error=prior.error,
                language=prior.language,
            )
            self._save(item, extraction.state, extraction.error, downloaded, extraction)
            return
        self.extract(item, downloaded)

    def extract(self, item: RemoteAttachment, downloaded: Downloaded) -> None:
        """Hand new bytes to the extractor (or to the extraction of the same bytes already
        under way)."""
        followers = self.extracting.get(downloaded.sha256)
        if followers is not None:
            # The same bytes are being parsed right now: take that outcome when it comes.
            followers.append((item, downloaded))
            return
        self.extracting[downloaded.sha256] = []
        path = self.files.path(downloaded.sha256)
        future = self.extractor.submit(path, item.content_type, item.file_name)
        self.stage.track("extract", future, lambda f: _Extracted(item, downloaded, f.result()))

    def _record_extraction(self, extracted: _Extracted) -> None:
        extraction = extracted.extraction
        self.summary.extract_cpu += extraction.cpu_seconds
        if extraction.state == AttachmentState.FAILED and extraction.error in RETRIED_ERRORS:
            extraction = self._third_time(extracted.item.id, extracted.downloaded, extraction)
        waiting = self.extracting.pop(extracted.downloaded.sha256, [])
        for item, downloaded in [(extracted.item, extracted.downloaded), *waiting]:
            self._save(item, extraction.state, extraction.error, downloaded, extraction)
        self.summary.reused += len(waiting)

    def _third_time(
        self, attachment_id: str, downloaded: Downloaded, extraction: Extraction
    ) -> Extraction:
        """A timeout or memory limit may pass on a quieter machine, so it is ``failed`` and
        retried; the third on the same bytes is the file's doing: ``unreadable``."""
        count = self.store.count_parse_failure(attachment_id, downloaded.sha256)
        if count < UNREADABLE_AFTER:
            return extraction
        return replace(
            extraction,
            state=AttachmentState.UNREADABLE,
            error=f"unreadable: {extraction.error} {count} times on these bytes",
        )

    def _save(
        self,
        item: RemoteAttachment,
        state: AttachmentState,
        error: str | None,
        downloaded: Downloaded | None = None,
        extraction: Extraction | None = None,
    ) -> None:
        summary, batch = self.summary, self.batch
        self.progress("attachments", 1, None)
        if state == AttachmentState.FAILED:
            log.error("attachment %s of candidate %s failed: %s", item.id, item.candidate_id, error)
            summary.errors.append(f"attachment {item.id}: {error}")
        elif state == AttachmentState.UNREADABLE:
            log.warning("attachment %s of candidate %s: %s", item.id, item.candidate_id, error)
            reason = (error or "unreadable").removeprefix("unreadable: ")
            summary.unreadable_reasons[reason[:80]] += 1
        sha256 = downloaded.sha256 if downloaded else None
        size_bytes = downloaded.size_bytes if downloaded else None
        if extraction is None:
            outcome = Outcome(state, error, sha256, size_bytes)
        else:
            outcome = Outcome(
                state,
                error,
                sha256,
                size_bytes,
                extraction.detected_type,
                extraction.parser,
                extraction.parser_version,
                extraction.page_count,
                extraction.text,
                extraction.language,
                extraction.ocr_pages or None,
                extraction.ocr_confidence,
            )
        self.store.save_outcome(item.id, outcome)
        if state == AttachmentState.PENDING and extraction and extraction.text and downloaded:
            summary.outcomes[AttachmentState.INDEXED] += 1
            batch.reconcile(item.candidate_id, downloaded.sha256)
            return
        # Whatever else it became, an older version of it must not stay searchable.
        batch.delete(item.id)
        summary.outcomes[state] += 1


class RunEngine:
    """Runs with one integration's settings over one workspace (the writer lock held by the
    caller). Each run's state lives in a :class:`RunInProgress` of its own."""

    # What a run is made of; a subclass of RunInProgress changes a stage (the fetch/download
    # benchmark stops after the downloads so).
    run_type: ClassVar[type[RunInProgress]] = RunInProgress

    def __init__(
        self,
        kombo: KomboSettings,
        workspace: Workspace,
        *,
        extract: ExtractLimits = ExtractLimits(),
        new_extractor: Callable[[], Extractor] | None = None,
        progress: Progress = no_progress,
        max_run_minutes: float | None = None,
        shared: SharedStages | None = None,
    ) -> None:
        self.kombo = kombo
        self.max_run_minutes = max_run_minutes
        self.workspace = workspace
        self.extract = extract
        # Runs of several integrations at once share their download process, extraction
        # workers and index writer (nightly --all); None: each run starts its own.
        self.shared = shared
        # Each run starts its own extractor (a run closes it at its end): by default worker
        # processes within the limits.
        self._new_extractor = new_extractor or self._process_extractor
        self.progress = progress

    def _process_extractor(self) -> Extractor:
        return ProcessExtractor(timeout=self.extract.timeout, memory_mb=self.extract.memory_mb)

    def new_extractor(self) -> Extractor:
        return self._new_extractor()

    def ingest(
        self, candidate_ids: Iterable[str] = (), application_ids: Iterable[str] = ()
    ) -> RunSummary:
        return self.run("ingest", list(candidate_ids), list(application_ids))

    def nightly(
        self, *, full: bool = False, candidate_ids: Iterable[str] | None = None
    ) -> RunSummary:
        """Ingest what changed at Kombo since the last successful nightly run, erase what
        Kombo deleted. ``candidate_ids`` runs over a given list instead of asking Kombo."""
        store = self.workspace.store
        started_at = utcnow()
        given = list(candidate_ids) if candidate_ids is not None else None
        watermark = None if full else _parse_stamp(store.watermark())

        def list_changes(summary: RunSummary, client: KomboClient) -> None:
            if given is not None:
                return
            for page in client.candidate_pages(updated_after=watermark, include_deleted=True):
                summary.warnings.extend(f"candidate list: {w}" for w in page.warnings)
                # A page's candidates in one transaction (one per candidate made an unchanged
                # `nightly --full` three times slower on PostgreSQL); erasures after it, each
                # committed before its VACUUM and its index purge.
                deleted = []
                with store.batch():
                    for candidate in page.candidates:
                        if candidate.deleted:
                            deleted.append(candidate.id)
                        else:
                            store.candidate_listed(
                                candidate.id, self.kombo.integration_id, candidate.title
                            )
                            summary.listed.append(candidate.id)
                for candidate_id in deleted:
                    if self.workspace.erase([candidate_id], "deleted at Kombo"):
                        summary.erased += 1

        summary = self.run("nightly", given or [], [], before=list_changes)
        # Every candidate listed and ingested (attachment failures are retried by later
        # runs on their own): the next nightly run asks only for what changed after this
        # run began. An aborted, interrupted, stopped or partly listed run leaves it alone.
        # A run stopped by a fault (its ``fatal``) did not go through every target.
        if (
            given is None
            and summary.status in COMPLETED_RUNS
            and summary.fatal is None
            and not summary.candidate_errors
        ):
            store.set_watermark(started_at.isoformat())
        return summary

    def run(
        self,
        kind: str,
        candidate_ids: list[str],
        application_ids: list[str],
        *,
        before: Callable[[RunSummary, KomboClient], None] | None = None,
    ) -> RunSummary:
        """A run, with the writer lock already held; ``before`` does a step's own first work
        (the nightly listing) inside the run's record.

        A run always ends recorded: whatever stops it (an error of the integration, an
        unreachable Kombo, a disk or database fault, a bug) is the summary's ``fatal`` and
        the run is ``aborted`` or ``failed``; Ctrl-C, SIGTERM and the run budget leave it
        ``interrupted``. Only what happens before its record exists (recovery, the record
        itself) is raised to the caller."""
        workspace = self.workspace
        summary = RunSummary(kind=kind)
        started = time.monotonic()
        # Built before the run's record: settings the client refuses (a proxy URL, a
        # certificate file) are the command's usage error, not a run that failed.
        client = KomboClient(self.kombo)
        try:
            workspace.recover()
            summary.run_id = workspace.store.begin_run(kind)
        except BaseException:
            client.close()
            raise
        try:
            with self._budget():
                if before is not None:
                    before(summary, client)
                    candidate_ids = candidate_ids + summary.listed
                targets = self._targets(candidate_ids, application_ids, summary)
                self.run_type(self, summary, client).execute(targets)
            summary.status = RunStatus.FAILED if summary.exit_code else RunStatus.SUCCEEDED
        except IntegrationError as exc:
            summary.fatal = exc
            summary.status = RunStatus.ABORTED
            summary.errors.append(exc.message)
        except RunStopped as exc:
            summary.stopped = exc
            summary.status = RunStatus.INTERRUPTED
            summary.errors.append(exc.reason)
        except KeyboardInterrupt:
            summary.status = RunStatus.INTERRUPTED
        except Exception as exc:
            fault = as_pipeline_error(exc, database=workspace.store.url)
            log.debug("the run stopped", exc_info=True)
            summary.fatal = fault
            summary.status = RunStatus.FAILED
            summary.errors.append(fault.message)
        finally:
            if summary.status != RunStatus.INTERRUPTED:  # Ctrl-C does not wait for calls
                with contextlib.suppress(Exception):
                    client.close()
            summary.seconds = time.monotonic() - started
            self._record_end(summary)
        if summary.status != RunStatus.INTERRUPTED and summary.fatal is None:
            try:
                workspace.collect_garbage()
            except Exception as exc:
                summary.fatal = as_pipeline_error(exc, database=workspace.store.url)
        return summary

    def _record_end(self, summary: RunSummary) -> None:
        """Write the run's end; a database that cannot take it is the run's fatal error
        (the next run marks the row ``killed``)."""
        assert summary.run_id is not None
        store = self.workspace.store
        try:
            try:
                store.finish_run(summary.run_id, summary.finished())
            except DiskFullError:
                if not SpaceReserve(self.workspace.directory).release():
                    raise
                store.finish_run(summary.run_id, summary.finished())
        except Exception as exc:
            fault = as_pipeline_error(exc, database=store.url)
            log.debug("the run's end could not be recorded", exc_info=True)
            if summary.fatal is None:
                summary.fatal = fault
            log.error("the run's end could not be recorded: %s", fault.message)

    @contextlib.contextmanager
    def _budget(self) -> Iterator[None]:
        """Past ``max_run_minutes`` the run stops as Ctrl-C stops it (a timer signal on the
        main thread, so that a wait anywhere is cut as Ctrl-C would cut it)."""
        minutes = self.max_run_minutes
        if not minutes or threading.current_thread() is not threading.main_thread():
            yield
            return
        fired = False

        def spent(signum: int, frame: object) -> None:
            nonlocal fired
            if fired:  # once: the cleanup that follows must not be cut again
                return
            fired = True
            raise RunStopped(
                f"stopped: the run budget of {minutes:g} minutes (--max-run-minutes) is "
                "spent; what finished is kept and the next run goes on from there",
                exit_code=1,
            )

        previous = signal.signal(signal.SIGALRM, spent)
        signal.setitimer(signal.ITIMER_REAL, minutes * 60)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _targets(
        self, candidate_ids: list[str], application_ids: list[str], summary: RunSummary
    ) -> list[Target]:
        store = self.workspace.store
        targets = [Target("candidate", c) for c in dict.fromkeys(candidate_ids)]
        for application_id in dict.fromkeys(application_ids):
            owner = store.candidate_of_application(application_id)
            targets.append(Target("application", application_id, owner))
        given = set(candidate_ids)
        # Candidates Kombo said it does not know are not asked again unless named again.
        gone = store.not_found_candidates()
        retry = [cid for _, cid in store.unfinished()] + store.failed_candidates()
        extra = [cid for cid in dict.fromkeys(retry) if cid not in given and cid not in gone]
        if extra:
            log.info("also retrying %d candidates with unfinished or failed work", len(extra))
        targets += [Target("candidate", c) for c in extra]
        summary.candidates = len({t.candidate_id or t.id for t in targets})
        self.progress("candidates", 0, len(targets))
        return targets


# Extractions waiting at most (sixteen per worker where there are more than sixteen workers).
_EXTRACT_WINDOW = 256


class SharedStages:
    """The download process, extraction workers and index writer process of a pass over
    several integrations at once (``nightly --all``), started once for the pass and shared
    by its runs.

    Each run had started its own: a download process (an interpreter and its imports, half
    a second of CPU), extraction workers forked per run, and each such set competed with
    the others' for the same cores. Now every run hands its files to the one set: each
    run's files still land in its own file store (the download request names it), its
    outcomes in its own records, and ``downloads_in_flight`` bounds the downloads of all the
    runs together. One run stopping (an error of its integration) cancels its own work
    only; :meth:`close` ends the set, after the last run. One index writer process serves
    every run's index too, each batch naming its index, started with the first batch.
    """

    def __init__(
        self,
        kombo: KomboSettings,
        *,
        downloads_in_flight: int,
        extract: ExtractLimits = ExtractLimits(),
        extractor: Extractor | None = None,
    ) -> None:
        self.extractor = extractor or ProcessExtractor(
            timeout=extract.timeout, memory_mb=extract.memory_mb
        )
        # No file store of its own: each request names its run's.
        try:
            self.downloads = DownloadProcess(
                replace(kombo, download_concurrency=max(1, downloads_in_flight)), None
            )
        except BaseException:
            self.extractor.close(cancel=True)
            raise
        self._writer: IndexWriterProcess | None = None
        self._writer_lock = threading.Lock()

    def index_writer(self, directory: Path) -> IndexWriterView:
        """A run's batches for its index, through the pass's one writer process."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = IndexWriterProcess()
            return self._writer.for_index(directory)

    def close(self, *, cancel: bool = False) -> None:
        try:
            self.extractor.close(cancel=cancel)
        finally:
            self.downloads.close(cancel=cancel)
            if self._writer is not None:
                self._writer.close(cancel=cancel)


class _RunExtractions:
    """One run's hold on extraction workers the pass shares: closing it cancels what this
    run still has waiting (a parse under way finishes, unread) and leaves the workers to
    the other runs."""

    def __init__(self, shared: Extractor) -> None:
        self._shared = shared
        self.workers = shared.workers
        self._waiting: set[Future[Extraction]] = set()

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]:
        future = self._shared.submit(path, content_type, file_name)
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        return future

    def prestart(self) -> None:
        self._shared.prestart()

    def close(self, *, cancel: bool = False) -> None:
        if cancel:
            for future in list(self._waiting):
                future.cancel()


class _Stages:
    """Futures of the three stages, each tagged with its kind, collected as they finish.

    Finished futures land on a queue through their done-callbacks, so collecting costs the
    same whatever the number in flight (``concurrent.futures.wait`` would visit them all).
    """

    def __init__(self, fetch_pool: ThreadPoolExecutor) -> None:
        self._pool = fetch_pool
        self._done: queue.SimpleQueue[tuple[str, Future[object], object]] = queue.SimpleQueue()
        self._counts: Counter[str] = Counter()

    @property
    def inflight(self) -> int:
        return sum(self._counts.values())

    def count(self, kind: str) -> int:
        return self._counts[kind]

    def submit(self, kind: str, fn: Callable[..., object], *args: object) -> None:
        future: Future[object] = self._pool.submit(fn, *args)
        self.track(kind, future, None)

    def track(
        self, kind: str, future: Future[Any], wrap: Callable[[Future[Any]], object] | None
    ) -> None:
        self._counts[kind] += 1
        future.add_done_callback(lambda f: self._done.put((kind, f, wrap)))

    def completed(self) -> list[tuple[str, object]]:
        """Wait for at least one future; return every one that has finished."""
        finished = [self._done.get()]
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                break
        results = []
        for kind, future, wrap in finished:
            self._counts[kind] -= 1
            results.append((kind, wrap(future) if callable(wrap) else future.result()))
        return results


class _IndexBatch:
    """Index changes gathered on the writer thread and committed together, here.

    Rows become ``indexed`` only after the index commit that holds them, so a run killed in
    between leaves them ``pending`` with their text, and the next run indexes them first.

    Identical bytes of one candidate are indexed once: the lowest attachment id among the
    copies stands for all of them (so a CV kept on the candidate and on an application is one
    hit, not two), and the others are marked ``indexed`` with it.
    """

    # Written here, every batch is a commit: fewer, larger.
    flush_at = INDEX_BATCH

    def __init__(self, index: SearchIndex | PostgresSearchIndex, store: Store) -> None:
        self._index = index
        self._store = store
        self._docs: dict[str, IndexDoc] = {}
        self._deletions: set[str] = set()
        self._covered: set[str] = set()
        self._reconcile: set[tuple[str, str]] = set()
        self.cpu = 0.0  # seconds spent in index writes

    @property
    def size(self) -> int:
        return len(self._docs) + len(self._deletions) + len(self._reconcile)

    def upsert(self, doc: IndexDoc) -> None:
        self._deletions.discard(doc.attachment_id)
        self._docs[doc.attachment_id] = doc

    def delete(self, attachment_id: str) -> None:
        self._docs.pop(attachment_id, None)
        self._covered.discard(attachment_id)
        self._deletions.add(attachment_id)

    def reconcile(self, candidate_id: str, sha256: str) -> None:
        """Make the index hold exactly one document for this candidate's content (looked up
        at the next flush, with every other content of the batch in one query)."""
        self._reconcile.add((candidate_id, sha256))

    def _resolve(self) -> None:
        keys, self._reconcile = self._reconcile, set()
        for copies in self._store.content_copies(keys).values():
            self.upsert(copies[0])
            for other in copies[1:]:
                self.delete(other.attachment_id)
                self._covered.add(other.attachment_id)

    def flush(self) -> None:
        """Send what the batch holds (documents, deletions, the rows they make indexed),
        emptied, to :meth:`_send`."""
        if self._reconcile:
            self._resolve()
        if not self.size and not self._covered:
            return
        taken = (list(self._docs.values()), list(self._deletions), [*self._docs, *self._covered])
        self._docs.clear()
        self._deletions.clear()
        self._covered.clear()
        self._send(*taken)

    def _send(self, docs: list[IndexDoc], deletions: list[str], done: list[str]) -> None:
        started = time.thread_time()
        self._index.write(docs, deletions)
        self.cpu += time.thread_time() - started
        self._store.mark_indexed(done)


class _WriterProcessBatch(_IndexBatch):
    """A run's index batch: sent to an index writer process, started with the first batch
    (a run with nothing to index starts none)."""

    # The writer process adds what it gets at once and commits on its own schedule, so it
    # is fed small batches.
    flush_at = INDEX_BATCH // 10

    def __init__(
        self,
        index: SearchIndex | PostgresSearchIndex,
        store: Store,
        shared: SharedStages | None = None,
    ) -> None:
        super().__init__(index, store)
        self._shared = shared
        self._writer: IndexWriterProcess | IndexWriterView | None = None
        # batches sent to the writer process: (its future, the rows it makes indexed)
        self._sent: list[tuple[Future[float], list[str]]] = []

    def _send(self, docs: list[IndexDoc], deletions: list[str], done: list[str]) -> None:
        if isinstance(self._index, PostgresSearchIndex):
            # The search index is the database's (issue 19): each batch is a transaction
            # here, answered as the writer process answers, so a failure leaves its rows
            # pending the same way.
            self._sent.append((_written_here(self._index, docs, deletions), done))
            return
        if self._writer is None:
            if self._shared is not None:
                self._writer = self._shared.index_writer(self._index.directory)
            else:
                self._writer = IndexWriterProcess(self._index.directory)
        self._sent.append((self._writer.submit(docs, deletions), done))

    def collect(self, summary: RunSummary) -> None:
        """Mark the rows of every batch the writer process has committed (in order)."""
        while self._sent and self._sent[0][0].done():
            future, done = self._sent.pop(0)
            try:
                self.cpu += future.result()
            except PipelineError as exc:
                # The rows stay pending: the next run indexes them first.
                summary.index_errors += len(done)
                summary.errors.append(f"{exc}; {len(done)} documents stay pending")
                log.error("%s; %d documents stay pending", exc, len(done))
                continue
            self._store.mark_indexed(done)

    def close(self, summary: RunSummary, *, cancel: bool) -> None:
        """At the end of a run, make whatever finished searchable: send what is left, let the
        writer process commit it, and mark the rows. On a Ctrl-C the writer process is
        stopped at once: its rows stay pending, and the next run indexes them first."""
        if cancel:
            if self._writer is not None:
                self._writer.close(cancel=True)
            return
        self.flush()
        if self._writer is not None:
            self._writer.close()  # commits what it holds, answers, and ends
            for future, _ in self._sent:
                with contextlib.suppress(Exception):
                    future.result()
        self.collect(summary)


def _written_here(
    index: PostgresSearchIndex, docs: list[IndexDoc], deletions: list[str]
) -> Future[float]:
    """A batch written in this thread, as a done future of the CPU seconds it took."""
    written: Future[float] = Future()
    started = time.thread_time()
    try:
        index.write(docs, deletions)
    except PipelineError as exc:
        written.set_exception(exc)
    except Exception as exc:
        written.set_exception(IndexWriteError(f"writing the search index failed: {exc}"))
    else:
        written.set_result(time.thread_time() - started)
    return written


# -- worker-thread functions: no database, no index ------------------------------------------


def _with_owner(
    item: RemoteAttachment, candidate_id: str, application_id: str | None
) -> RemoteAttachment:
    return replace(item, candidate_id=candidate_id, application_id=application_id)


def _list_target(client: KomboClient, target: Target) -> _Listed:
    try:
        if target.kind == "application":
            if target.candidate_id is None:
                return _Listed(target)
            listing = client.application_attachments(target.id, target.candidate_id)
        else:
            listing = client.candidate_attachments(target.id)
        return _Listed(target, listing)
    except PipelineError as exc:
        return _Listed(target, error=exc)


def _fetched(item: RemoteAttachment, future: Future[Downloaded]) -> _Fetched:
    try:
        return _Fetched(item, future.result())
    except LinkExpiredError:
        return _Fetched(item, expired=True)
    except TooLargeError as exc:
        return _Fetched(item, state=AttachmentState.TOO_LARGE, error=exc.message)
    except DownloadError as exc:
        return _Fetched(item, state=AttachmentState.FAILED, error=exc.message)


def _download_fresh(
    client: KomboClient, downloader: DownloadProcess | StoreDownloads, item: RemoteAttachment
) -> _Fetched:
    try:
        fresh = _fresh_link(client, item)
        if fresh is None:
            return _Fetched(item, state=AttachmentState.DELETED, error="gone from Kombo")
        return _Fetched(item, downloader.download(fresh.data_url, subject=f"attachment {item.id}"))
    except TooLargeError as exc:
        return _Fetched(item, state=AttachmentState.TOO_LARGE, error=exc.message)
    except (IntegrationError, StorageError):
        raise  # the run stops: every further attachment would fail the same way
    except PipelineError as exc:
        return _Fetched(item, state=AttachmentState.FAILED, error=exc.message)


def _fresh_link(client: KomboClient, item: RemoteAttachment) -> RemoteAttachment | None:
    listing = client.candidate_attachments(item.candidate_id)
    for candidate in listing.attachments:
        if candidate.id == item.id:
            return candidate
    return None


__all__ = [
    "ExtractLimits",
    "Progress",
    "RunEngine",
    "RunInProgress",
    "RunStopped",
    "RunSummary",
    "SharedStages",
    "Target",
    "Workspace",
    "no_progress",
]
