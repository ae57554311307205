"""A rebuild: the index made again from nothing, from the database's documents.

A bulk load through the array segment writer: a segment per REBUILD_SEGMENT_DOCS or
REBUILD_SEGMENT_WORDS, written by a process per core when there are many documents, all
committed at once at the end (the writer processes are ``child.ChildProxy`` children: a
batch is a call). On the fence's fallback it is Whoosh's own writer, in this process.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .. import child
from ..errors import IndexBuildError
from ._doc import IndexDoc
from ._schema import _fields, locked_writer, open_index, writer_options
from ._whoosh import fast_paths

# A bulk load writes a segment per this many documents, or fewer when they hold this many
# words: a writer process's memory grows with its segment's words (some 30 bytes a word at
# the flush's peak; 7,500,000 words took a process to 322 MB in all), and CVs run from 200
# words to thousands. Fewer, larger segments make searches a little faster.
REBUILD_SEGMENT_DOCS = 34_000
REBUILD_SEGMENT_WORDS = 8_000_000
# A bulk load of at least this many documents is shared by a writer process per core (at
# most two), each analysing its documents and writing its own segments. Below it, starting
# the processes costs more than they save.
PARALLEL_REBUILD_DOCS = 5_000
# Documents go to the writer processes in batches of this many, at most two batches ahead.
REBUILD_BATCH_DOCS = 250
# A writer process that sends nothing for this long while it has work is taken as hung.
REBUILD_SILENCE_SECONDS = 600.0


def rebuild(directory: Path, docs: Iterable[IndexDoc]) -> int:
    """Write ``docs`` into a new index in ``directory`` (whatever was there goes); the
    number written."""
    if directory.exists():
        shutil.rmtree(directory)
    if not fast_paths():
        return _rebuild_through_whoosh(directory, docs)
    from ._whoosh._segments import SegmentBuilder, commit_segments

    stream = iter(docs)
    head = list(itertools.islice(stream, PARALLEL_REBUILD_DOCS))
    procs = min(2, os.cpu_count() or 1) if len(head) == PARALLEL_REBUILD_DOCS else 1
    stream = itertools.chain(head, stream)
    ix = open_index(directory)
    try:
        # This writer only holds the lock and commits the segments the builders wrote.
        holder = locked_writer(ix)
        try:
            if procs == 1:
                builder = SegmentBuilder(
                    ix,
                    REBUILD_SEGMENT_DOCS,
                    REBUILD_SEGMENT_WORDS,
                    fields=_fields,
                    options=writer_options(),
                )
                for doc in stream:
                    builder.add(doc)
                segments, added = builder.finish(), builder.added
            else:
                segments, added = _build_in_processes(directory, stream, procs)
        except BaseException:
            holder.cancel()
            raise
        commit_segments(holder, segments)
    finally:
        ix.close()
    return added


def _rebuild_through_whoosh(directory: Path, docs: Iterable[IndexDoc]) -> int:
    ix = open_index(directory)
    try:
        writer = locked_writer(ix)
        added = 0
        try:
            for doc in docs:
                writer.add_document(**_fields(doc))
                added += 1
        except BaseException:
            writer.cancel()
            raise
        writer.commit()
    finally:
        ix.close()
    return added


def serve_segments(fd: int) -> None:
    """A rebuild's writer process (a ``child.ChildProxy``): set up with (directory, segment
    documents, segment words), it takes calls ("add", documents), answered with their count,
    and ("finish", None), answered with the segments it wrote; a failure answers with the
    IndexBuildError."""
    from ._whoosh._segments import SegmentBuilder

    conn, (directory, segment_docs, segment_words) = child.accept(fd)
    builder: SegmentBuilder | None = None

    def handle(request: tuple[str, Any]) -> object:
        nonlocal builder
        kind, batch = request
        if builder is None:
            builder = SegmentBuilder(
                open_index(Path(directory)),
                segment_docs,
                segment_words,
                fields=_fields,
                options=writer_options(),
            )
        if kind == "add":
            for doc in batch:
                builder.add(doc)
            return len(batch)
        return builder.finish()

    def failed(_request: object, exc: Exception) -> BaseException:
        return IndexBuildError(f"a writer process failed: {type(exc).__name__}: {exc}")

    child.serve_calls(conn, handle, failed)
    conn.close()


def _stopped(
    workers: list[child.ChildProxy], number: int, _request: object, _reason: str
) -> IndexBuildError:
    """What a rebuild's call fails with when its writer process is gone."""
    code = workers[number].exit_code()
    return IndexBuildError(
        f"a writer process stopped (exit code {code}): run `pipeline reindex` again"
    )


def _build_in_processes(
    directory: Path, docs: Iterator[IndexDoc], procs: int
) -> tuple[list[object], int]:
    """Share the documents between ``procs`` writer processes; their segments and the count.

    Each batch is a call to one of them, at most two batches ahead each; whichever answers
    first gets the next. A process that dies, fails or falls silent fails the rebuild."""
    setup = (str(directory), REBUILD_SEGMENT_DOCS, REBUILD_SEGMENT_WORDS)
    workers: list[child.ChildProxy] = []

    for number in range(procs):
        workers.append(
            child.ChildProxy(
                serve_segments,
                setup,
                label="a rebuild's writer process",
                failure=functools.partial(_stopped, workers, number),
            )
        )
    ahead: list[list[Future[Any]]] = [[] for _ in range(procs)]  # calls not yet answered
    segments: list[object] = []
    added = 0
    failed = True

    def wait_for_answers() -> None:
        waiting = [future for calls in ahead for future in calls]
        done, _ = futures.wait(
            waiting, timeout=REBUILD_SILENCE_SECONDS, return_when=futures.FIRST_COMPLETED
        )
        if not done:
            raise IndexBuildError(
                f"a writer process sent nothing for {REBUILD_SILENCE_SECONDS:.0f} s: "
                "run `pipeline reindex` again"
            )
        for calls in ahead:
            for future in [f for f in calls if f in done]:
                calls.remove(future)
                future.result()  # raises the process's IndexBuildError

    try:
        while batch := list(itertools.islice(docs, REBUILD_BATCH_DOCS)):
            while min(map(len, ahead)) >= 2:
                wait_for_answers()
            number = min(range(procs), key=lambda n: len(ahead[n]))
            ahead[number].append(workers[number].call(("add", batch)))
            added += len(batch)
        while any(ahead):
            wait_for_answers()
        finishing = [worker.call(("finish", None)) for worker in workers]
        for future in finishing:
            try:
                segments.extend(future.result(timeout=REBUILD_SILENCE_SECONDS))
            except futures.TimeoutError:
                raise IndexBuildError(
                    "a writer process did not finish: run `pipeline reindex` again"
                ) from None
        failed = False
    finally:
        for worker in workers:
            worker.close(cancel=failed, timeout=10)
    return segments, added
