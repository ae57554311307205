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
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future
from pathlib import Path

from .. import child
from ..errors import IndexWriteError
from ._doc import IndexDoc
from ._index import IndexWriter, SearchIndex

COMMIT_DOCS = 2000
COMMIT_SECONDS = 20.0


def serve_writer(fd: int) -> None:
    """The child's entry point: add each call's (docs, deletions) to the index, answer it
    with the CPU seconds it took once committed; None means commit and stop."""
    conn, directory = child.accept(fd)
    index = SearchIndex(Path(directory))
    stack = contextlib.ExitStack()
    writer: IndexWriter | None = None
    uncommitted: list[int] = []
    # Whoosh replaces or deletes a document only in committed segments: one that comes again
    # before the commit would stand twice. Such a batch waits for a commit first.
    touched: set[str] = set()
    added = 0
    opened_at = cpu = 0.0

    def settle(error: str | None) -> None:
        nonlocal stack, writer, added, cpu
        started = time.process_time()
        try:
            stack.close()  # commits (or, after an error, cancels) the open writer
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
        cpu += time.process_time() - started
        for number in uncommitted:
            if error is None:
                conn.send(child.answer_message(number, cpu))
            else:
                failed = IndexWriteError(f"writing the search index failed: {error}")
                conn.send(child.answer_message(number, error=failed))
            cpu = 0.0
        uncommitted.clear()
        touched.clear()
        stack, writer, added = contextlib.ExitStack(), None, 0

    while True:
        if uncommitted:
            wait = max(0.0, opened_at + COMMIT_SECONDS - time.monotonic())
            if not conn.poll(wait):
                settle(None)
                continue
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: nothing uncommitted is ever visible
        if message is None:
            break
        number, (docs, deletions) = message
        ids = {doc.attachment_id for doc in docs}.union(deletions)
        if uncommitted and not touched.isdisjoint(ids):
            settle(None)
        started = time.process_time()
        try:
            if writer is None:
                writer = stack.enter_context(index.writer())
                opened_at = time.monotonic()
            for attachment_id in deletions:
                writer.delete(attachment_id)
            for doc in docs:
                writer.upsert(doc)
            added += len(docs) + len(deletions)
            touched.update(ids)
            uncommitted.append(number)
            cpu += time.process_time() - started
        except Exception as exc:
            # The open writer is cancelled: this batch and the uncommitted ones before it
            # stay pending in the database, and the next run indexes them.
            uncommitted.append(number)
            with contextlib.suppress(Exception):
                stack.__exit__(type(exc), exc, exc.__traceback__)
            stack = contextlib.ExitStack()
            settle(f"{type(exc).__name__}: {exc}")
            continue
        if added >= COMMIT_DOCS:
            settle(None)
    if uncommitted:
        settle(None)
    conn.close()


class IndexWriterProcess:
    """Sends batches to a writer process; each ``submit`` gives a future of the CPU seconds
    the batch took, done when the batch is committed (or failed with ``IndexWriteError``)."""

    def __init__(self, directory: Path) -> None:
        self._child = child.ChildProxy(
            serve_writer,
            str(directory),
            label="the index writer process",
            failure=lambda request, reason: IndexWriteError(reason),
        )

    def submit(self, docs: list[IndexDoc], deletions: list[str]) -> Future[float]:
        return self._child.call((docs, deletions))

    def close(self, *, cancel: bool = False) -> None:
        self._child.close(cancel=cancel, timeout=600)
