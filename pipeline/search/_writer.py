"""The index writer process: a run's index writes, off the run's interpreter.

Writing the index is pure Python and costs a few milliseconds a document. On the run's
writer thread it held the interpreter for a second or more per batch, and the run loop,
which feeds the extraction workers, stood still meanwhile. In a process of its own the
documents are added while the run goes on, in the order they were sent, into one open
Whoosh writer that commits every COMMIT_DOCS documents or COMMIT_SECONDS seconds (each
commit merges segments, so committing every small batch cost half as much again). A batch
is answered only by the commit that holds it: rows are marked indexed after that, never
before. The process is a ``pipeline.child.ChildProxy``: a batch is a call, its answer the
CPU seconds it took or the ``IndexWriteError`` that failed it.

One process can serve several indexes (``nightly --all``: one per integration): each batch
names its index, each index has its own open writer and commit schedule, and a run's end
commits its own index alone (:meth:`IndexWriterProcess.for_index`). A process per
integration had cost its interpreter and Whoosh's import, most of a second of CPU, twenty
times over in a pass of twenty small integrations.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path

from .. import child
from ..errors import IndexWriteError
from ._doc import IndexDoc
from ._index import IndexWriter, SearchIndex

COMMIT_DOCS = 2000
COMMIT_SECONDS = 20.0


class _OpenIndex:
    """One index in the writer process: its open writer and the batches it holds."""

    def __init__(self, conn: Connection, directory: str) -> None:
        self.conn = conn
        self.directory = Path(directory)
        self.stack = contextlib.ExitStack()
        self.writer: IndexWriter | None = None
        self.uncommitted: list[int] = []
        # Whoosh replaces or deletes a document only in committed segments: one that comes
        # again before the commit would stand twice. Such a batch waits for a commit first.
        self.touched: set[str] = set()
        self.added = 0
        self.opened_at = 0.0
        self.cpu = 0.0

    @property
    def due(self) -> float | None:
        """When the open writer is to commit (None: nothing uncommitted)."""
        return self.opened_at + COMMIT_SECONDS if self.uncommitted else None

    def settle(self, error: str | None) -> None:
        """Commit (or, after an error, cancel) the open writer and answer its batches."""
        started = time.process_time()
        try:
            self.stack.close()
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
        self.cpu += time.process_time() - started
        for number in self.uncommitted:
            if error is None:
                self.conn.send(child.answer_message(number, self.cpu))
            else:
                failed = IndexWriteError(f"writing the search index failed: {error}")
                self.conn.send(child.answer_message(number, error=failed))
            self.cpu = 0.0
        self.uncommitted.clear()
        self.touched.clear()
        self.stack, self.writer, self.added = contextlib.ExitStack(), None, 0

    def discard(self) -> None:
        """Cancel the open writer unanswered: nothing of it becomes visible (its rows stay
        pending, and the next run indexes them)."""
        with contextlib.suppress(Exception):
            self.stack.__exit__(IndexWriteError, IndexWriteError("cancelled"), None)
        self.uncommitted.clear()
        self.touched.clear()
        self.stack, self.writer, self.added = contextlib.ExitStack(), None, 0

    def add(self, number: int, docs: list[IndexDoc], deletions: list[str]) -> None:
        ids = {doc.attachment_id for doc in docs}.union(deletions)
        if self.uncommitted and not self.touched.isdisjoint(ids):
            self.settle(None)
        started = time.process_time()
        try:
            if self.writer is None:
                self.writer = self.stack.enter_context(SearchIndex(self.directory).writer())
                self.opened_at = time.monotonic()
            for attachment_id in deletions:
                self.writer.delete(attachment_id)
            for doc in docs:
                self.writer.upsert(doc)
            self.added += len(docs) + len(deletions)
            self.touched.update(ids)
            self.uncommitted.append(number)
            self.cpu += time.process_time() - started
        except Exception as exc:
            # The open writer is cancelled: this batch and the uncommitted ones before it
            # stay pending in the database, and the next run indexes them.
            self.uncommitted.append(number)
            with contextlib.suppress(Exception):
                self.stack.__exit__(type(exc), exc, exc.__traceback__)
            self.stack = contextlib.ExitStack()
            self.settle(f"{type(exc).__name__}: {exc}")
            return
        if self.added >= COMMIT_DOCS:
            self.settle(None)


# What a call asks of an index: add a batch, commit now (a run's end), or drop what is open.
_WRITE, _COMMIT, _CANCEL = "write", "commit", "cancel"


def serve_writer(fd: int) -> None:
    """The child's entry point: add each call's batch to the index it names, answer it with
    the CPU seconds it took once committed; a commit call commits its index at once and is
    answered after that index's batches; None means commit everything and stop."""
    conn, _ = child.accept(fd)
    indexes: dict[str, _OpenIndex] = {}
    while True:
        dues = [(index.due, index) for index in indexes.values() if index.due is not None]
        if dues:
            due = min(d for d, _ in dues)
            if not conn.poll(max(0.0, due - time.monotonic())):
                for when, index in dues:
                    if when <= time.monotonic():
                        index.settle(None)
                continue
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: nothing uncommitted is ever visible
        if message is None:
            break
        number, (op, directory, docs, deletions) = message
        named = indexes.get(directory)
        if named is None:
            named = indexes[directory] = _OpenIndex(conn, directory)
        if op == _WRITE:
            named.add(number, docs, deletions)
        elif op == _COMMIT:
            named.settle(None)
            conn.send(child.answer_message(number, 0.0))
            del indexes[directory]  # its run is over: its writer is closed
        else:
            named.discard()
            conn.send(child.answer_message(number, 0.0))
            del indexes[directory]
    for index in indexes.values():
        if index.uncommitted:
            index.settle(None)
    conn.close()


class IndexWriterProcess:
    """Sends batches to a writer process; each ``submit`` gives a future of the CPU seconds
    the batch took, done when the batch is committed (or failed with ``IndexWriteError``).

    ``directory``: the index its batches go to; None for a process several runs share, each
    through its own :meth:`for_index`."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = None if directory is None else str(directory)
        self._child = child.ChildProxy(
            serve_writer,
            None,
            label="the index writer process",
            failure=lambda request, reason: IndexWriteError(reason),
        )

    def submit(self, docs: list[IndexDoc], deletions: list[str]) -> Future[float]:
        if self._directory is None:
            raise ValueError("a shared index writer process takes batches through for_index")
        return self._child.call((_WRITE, self._directory, docs, deletions))

    def for_index(self, directory: Path) -> IndexWriterView:
        """One run's view of this process: its batches go to the index at ``directory``."""
        return IndexWriterView(self._child, str(directory))

    def close(self, *, cancel: bool = False) -> None:
        self._child.close(cancel=cancel, timeout=600)


class IndexWriterView:
    """A run's batches through an index writer process other runs share: into the run's
    own index. ``close`` commits this index alone (and waits for it); with ``cancel``, drops
    its uncommitted batches unanswered. The process stays for the others."""

    def __init__(self, process: child.ChildProxy, directory: str) -> None:
        self._child = process
        self._directory = directory

    def submit(self, docs: list[IndexDoc], deletions: list[str]) -> Future[float]:
        return self._child.call((_WRITE, self._directory, docs, deletions))

    def close(self, *, cancel: bool = False) -> None:
        done = self._child.call((_CANCEL if cancel else _COMMIT, self._directory, None, None))
        if not cancel:
            with contextlib.suppress(Exception):
                done.result(timeout=600)
