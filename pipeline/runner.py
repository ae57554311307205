"""A run: fetch -> download -> extract -> index, with the database as the one writer's log.

Concurrency is threads, not asyncio: the work is network waits (httpx's sync client is
thread-safe and pools connections) and every write goes through this module's main thread,
which is the only one to touch the database and the index. That keeps SQLite and Whoosh
single-writer without locks of our own, and keeps the stage modules plain functions.

Order of a run:
1. take the writer lock, sweep temporary files, mark runs that died as ``killed``;
2. finish what a killed run left (text extracted but not yet indexed);
3. for each candidate (given ones, plus those with unfinished or failed work): list its
   attachments, record every one, mark the ones gone from Kombo ``deleted``;
4. download and extract the new or changed ones, in a bounded pool;
5. write each outcome in its own transaction and each text to the index, committing the index
   in batches and only then marking the rows ``indexed``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx

from .config import DataSettings, KomboSettings
from .download import Downloaded, Downloader
from .errors import (
    DownloadError,
    IntegrationError,
    LinkExpiredError,
    PipelineError,
    TooLargeError,
)
from .extract import Extraction, extract_file
from .fetch import AttachmentList, KomboClient, RemoteAttachment
from .index import SearchIndex
from .lock import WriterLock
from .states import FINAL_STATES, AttachmentState
from .storage import LocalFileStore
from .store import IndexDoc, KnownAttachment, Store, utcnow

log = logging.getLogger(__name__)

INDEX_BATCH = 500


@dataclass
class RunSummary:
    kind: str
    run_id: int | None = None
    candidates: int = 0
    candidate_errors: int = 0
    unchanged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    status: str = "running"
    fatal: IntegrationError | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return 2
        if self.candidate_errors or self.outcomes.get(AttachmentState.FAILED, 0):
            return 1
        return 0

    def counts(self) -> dict[str, int]:
        return {
            "candidates": self.candidates,
            "candidate_errors": self.candidate_errors,
            "unchanged": self.unchanged,
            **{str(k): v for k, v in sorted(self.outcomes.items())},
        }

    def line(self) -> str:
        done = sum(self.outcomes.values())
        states = ", ".join(
            f"{self.outcomes.get(s, 0)} {s}"
            for s in AttachmentState
            if s != AttachmentState.PENDING and (self.outcomes.get(s, 0) or s in _ALWAYS_SHOWN)
        )
        return (
            f"{self.kind} {self.status}: {self.candidates} candidates "
            f"({self.candidate_errors} failed), {done} attachments processed: {states}; "
            f"{self.unchanged} unchanged; {len(self.warnings)} warnings; {self.seconds:.1f}s"
        )


_ALWAYS_SHOWN = {AttachmentState.INDEXED, AttachmentState.FAILED}


@dataclass(frozen=True)
class _Work:
    """One attachment to download and extract."""

    item: RemoteAttachment


@dataclass(frozen=True)
class _Result:
    item: RemoteAttachment
    state: AttachmentState
    error: str | None = None
    downloaded: Downloaded | None = None
    extraction: Extraction | None = None


def _needs_work(
    item: RemoteAttachment, known: KnownAttachment | None, files: LocalFileStore
) -> bool:
    if known is None or known.status not in FINAL_STATES:
        return True
    if known.status == AttachmentState.DELETED:
        return True
    if (
        known.remote_updated_at != item.remote_updated_at
        or known.content_type != item.content_type
        or known.file_name != item.file_name
    ):
        return True
    # Unchanged at Kombo: download again only if our copy of the file is gone.
    return known.sha256 is None or not files.exists(known.sha256)


class Pipeline:
    """Everything a run needs, opened once; use as a context manager."""

    def __init__(
        self,
        kombo: KomboSettings | None,
        data: DataSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        download_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.kombo = kombo
        self.data = data
        data.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(data.database_url)
        self.store.create()
        self.files = LocalFileStore(data.files_dir)
        self.index = SearchIndex(data.index_dir)
        self._transport = transport
        self._download_transport = download_transport

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry points ------------------------------------------------------------------------

    def ingest(
        self, candidate_ids: Iterable[str], *, kind: str = "ingest", wait_for_lock: bool = False
    ) -> RunSummary:
        if self.kombo is None:
            raise PipelineError("ingest needs Kombo settings")
        summary = RunSummary(kind=kind)
        started = time.monotonic()
        with WriterLock(self.data.data_dir, wait=wait_for_lock):
            self._recover()
            summary.run_id = self.store.begin_run(kind)
            try:
                self._run(list(dict.fromkeys(candidate_ids)), summary)
                summary.status = "failed" if summary.exit_code else "succeeded"
            except IntegrationError as exc:
                summary.fatal = exc
                summary.status = "aborted"
                summary.errors.append(exc.message)
            except KeyboardInterrupt:
                summary.status = "interrupted"
                raise
            finally:
                summary.seconds = time.monotonic() - started
                self.store.finish_run(
                    summary.run_id,
                    status=summary.status,
                    counts=summary.counts(),
                    errors=summary.errors,
                    warnings=summary.warnings,
                    summary=summary.line(),
                )
        return summary

    def reindex(self) -> int:
        """Rebuild the index from the database; pending texts become indexed."""
        with WriterLock(self.data.data_dir):
            count = self.index.rebuild(self.store.index_docs(only_pending=False))
            self.store.mark_indexed(list(self.store.attachment_ids([AttachmentState.PENDING])))
            return count

    # -- the run -----------------------------------------------------------------------------

    def _recover(self) -> None:
        swept = self.files.sweep_temporary()
        killed = self.store.close_abandoned_runs()
        if swept or killed:
            log.info(
                "recovered from an interrupted run: %d temporary files removed, "
                "%d runs marked killed",
                swept,
                killed,
            )
        # Text that was extracted but never reached the index.
        docs = list(self.store.index_docs(only_pending=True))
        if docs:
            self.index.write(docs)
            self.store.mark_indexed([d.attachment_id for d in docs])

    def _run(self, candidate_ids: list[str], summary: RunSummary) -> None:
        assert self.kombo is not None
        retry = [cid for _, cid in self.store.unfinished()] + self.store.failed_candidates()
        extra = [cid for cid in dict.fromkeys(retry) if cid not in set(candidate_ids)]
        if extra:
            log.info("also retrying %d candidates with unfinished work", len(extra))
        everyone = candidate_ids + extra
        summary.candidates = len(everyone)
        client = KomboClient(self.kombo, transport=self._transport)
        downloader = Downloader(self.kombo, self.files, transport=self._download_transport)
        # Fetches are bounded by the client's action semaphore; downloads by their own pool.
        fetch_pool = ThreadPoolExecutor(self.kombo.concurrency, thread_name_prefix="fetch")
        work_pool = ThreadPoolExecutor(
            self.kombo.download_concurrency, thread_name_prefix="download"
        )
        batch = _IndexBatch(self.index, self.store)
        try:
            for kind, outcome in self._drive(everyone, client, downloader, fetch_pool, work_pool):
                if kind == "list":
                    self._record_list(outcome, summary, batch, work_pool, client, downloader)
                else:
                    self._record_result(outcome, summary, batch)
                if batch.size >= INDEX_BATCH:
                    batch.flush()
        finally:
            fetch_pool.shutdown(wait=True, cancel_futures=True)
            work_pool.shutdown(wait=True, cancel_futures=True)
            client.close()
            downloader.close()
            # Whatever finished is made searchable, even when the run stops early.
            batch.flush()

    def _drive(self, candidate_ids, client, downloader, fetch_pool, work_pool):  # type: ignore[no-untyped-def]
        """Yield ("list", AttachmentList | error) and ("result", _Result) as they complete.

        Candidates are submitted a bounded number at a time so that memory stays flat
        whatever the length of the list.
        """
        self._inflight: set[Future[object]] = set()
        self._kinds: dict[Future[object], str] = {}
        pending_ids = iter(candidate_ids)
        window = self.kombo.concurrency * 2 if self.kombo else 8

        def top_up() -> None:
            fetching = sum(1 for f in self._inflight if self._kinds[f] == "list")
            while fetching < window:
                cid = next(pending_ids, None)
                if cid is None:
                    return
                future = fetch_pool.submit(_fetch_candidate, client, cid)
                self._kinds[future] = "list"
                self._inflight.add(future)
                fetching += 1

        top_up()
        while self._inflight:
            done, _ = wait(self._inflight, return_when=FIRST_COMPLETED)
            for future in done:
                self._inflight.discard(future)
                kind = self._kinds.pop(future)
                yield kind, future.result()
            top_up()

    def _submit_work(self, work_pool, client, downloader, item: RemoteAttachment) -> None:  # type: ignore[no-untyped-def]
        future = work_pool.submit(_download_and_extract, client, downloader, self.files, item)
        self._kinds[future] = "result"
        self._inflight.add(future)

    def _record_list(
        self,
        outcome,
        summary,
        batch: _IndexBatch,
        work_pool,
        client,  # type: ignore[no-untyped-def]
        downloader,
    ) -> None:
        candidate_id, listing = outcome
        assert self.kombo is not None
        if isinstance(listing, IntegrationError):
            raise listing
        if isinstance(listing, PipelineError):
            summary.candidate_errors += 1
            summary.errors.append(listing.message)
            log.error("%s", listing.message)
            self.store.candidate_fetched(candidate_id, self.kombo.integration_id, listing.message)
            return
        assert isinstance(listing, AttachmentList)
        summary.warnings.extend(f"{listing.subject}: {w}" for w in listing.warnings)
        self.store.candidate_fetched(candidate_id, self.kombo.integration_id, None)
        known = self.store.known_attachments(candidate_id)
        now = utcnow()
        listed = set()
        for item in listing.attachments:
            listed.add(item.id)
            previous = known.get(item.id)
            needs = _needs_work(item, previous, self.files)
            self.store.upsert_seen(self.kombo.integration_id, item, now)
            if needs:
                self._submit_work(work_pool, client, downloader, item)
            else:
                summary.unchanged += 1
        gone = [a for a, k in known.items() if a not in listed and k.status != "deleted"]
        if gone:
            self.store.mark_deleted(gone)
            for attachment_id in gone:
                batch.delete(attachment_id)
            summary.outcomes[AttachmentState.DELETED] += len(gone)

    def _record_result(self, result: _Result, summary: RunSummary, batch: _IndexBatch) -> None:
        item = result.item
        extraction = result.extraction
        downloaded = result.downloaded
        state = result.state
        if state == AttachmentState.FAILED:
            log.error(
                "attachment %s of candidate %s failed: %s", item.id, item.candidate_id, result.error
            )
            summary.errors.append(f"attachment {item.id}: {result.error}")
        self.store.save_outcome(
            item.id,
            state=state,
            error=result.error,
            sha256=downloaded.sha256 if downloaded else None,
            size_bytes=downloaded.size_bytes if downloaded else None,
            detected_type=extraction.detected_type if extraction else None,
            parser=extraction.parser if extraction else None,
            parser_version=extraction.parser_version if extraction else None,
            page_count=extraction.page_count if extraction else None,
            text=extraction.text if extraction else None,
        )
        if state == AttachmentState.PENDING and extraction and extraction.text:
            summary.outcomes[AttachmentState.INDEXED] += 1
            batch.upsert(
                IndexDoc(
                    attachment_id=item.id,
                    candidate_id=item.candidate_id,
                    application_id=item.application_id,
                    type=item.type,
                    file_name=item.file_name,
                    text=extraction.text,
                )
            )
            return
        # Whatever else it became, an older version of it must not stay searchable.
        batch.delete(item.id)
        summary.outcomes[state] += 1


class _IndexBatch:
    """Index changes gathered on the writer thread and committed together.

    Rows become ``indexed`` only after the index commit that holds them, so a run killed in
    between leaves them ``pending`` with their text, and the next run indexes them first.
    """

    def __init__(self, index: SearchIndex, store: Store) -> None:
        self._index = index
        self._store = store
        self._docs: dict[str, IndexDoc] = {}
        self._deletions: set[str] = set()

    @property
    def size(self) -> int:
        return len(self._docs) + len(self._deletions)

    def upsert(self, doc: IndexDoc) -> None:
        self._deletions.discard(doc.attachment_id)
        self._docs[doc.attachment_id] = doc

    def delete(self, attachment_id: str) -> None:
        self._docs.pop(attachment_id, None)
        self._deletions.add(attachment_id)

    def flush(self) -> None:
        if not self.size:
            return
        self._index.write(self._docs.values(), self._deletions)
        self._store.mark_indexed(list(self._docs))
        self._docs.clear()
        self._deletions.clear()


# -- worker-thread functions: no database, no index ------------------------------------------


def _fetch_candidate(
    client: KomboClient, candidate_id: str
) -> tuple[str, AttachmentList | PipelineError]:
    try:
        return candidate_id, client.candidate_attachments(candidate_id)
    except PipelineError as exc:
        return candidate_id, exc


def _download_and_extract(
    client: KomboClient, downloader: Downloader, files: LocalFileStore, item: RemoteAttachment
) -> _Result:
    subject = f"attachment {item.id}"
    try:
        try:
            downloaded = downloader.download(item.data_url, subject=subject)
        except LinkExpiredError:
            # data_url lives 7 days: ask Kombo for a fresh one, once.
            fresh = _fresh_link(client, item)
            if fresh is None:
                return _Result(item, AttachmentState.DELETED, "gone from Kombo")
            downloaded = downloader.download(fresh.data_url, subject=subject)
    except TooLargeError as exc:
        return _Result(item, AttachmentState.TOO_LARGE, exc.message)
    except DownloadError as exc:
        return _Result(item, AttachmentState.FAILED, exc.message)
    except IntegrationError:
        raise
    except PipelineError as exc:
        return _Result(item, AttachmentState.FAILED, exc.message)
    extraction = extract_file(files.path(downloaded.sha256), item.content_type, item.file_name)
    return _Result(item, extraction.state, extraction.error, downloaded, extraction)


def _fresh_link(client: KomboClient, item: RemoteAttachment) -> RemoteAttachment | None:
    listing = client.candidate_attachments(item.candidate_id)
    for candidate in listing.attachments:
        if candidate.id == item.id:
            return candidate
    return None


__all__ = ["Pipeline", "RunSummary"]
