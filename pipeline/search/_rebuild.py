"""A rebuild: the index made again from nothing, from the database's documents.

A bulk load through the array segment writer: a segment per REBUILD_SEGMENT_DOCS or
REBUILD_SEGMENT_WORDS, written by a process per core when there are many documents, all
committed at once at the end. On the fence's fallback it is Whoosh's own writer, in this
process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait as wait_for
from pathlib import Path

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
    """A rebuild's writer process: (directory, segment documents, segment words), then
    batches of documents, each answered with ("added", count); None answers ("done",
    segments) and stops. An error answers ("error", the IndexBuildError)."""
    from ._whoosh._segments import SegmentBuilder

    conn, (directory, segment_docs, segment_words) = child.accept(fd)
    try:
        ix = open_index(Path(directory))
        builder = SegmentBuilder(
            ix, segment_docs, segment_words, fields=_fields, options=writer_options()
        )
        while (batch := conn.recv()) is not None:
            for doc in batch:
                builder.add(doc)
            conn.send(("added", len(batch)))
        conn.send(("done", builder.finish()))
    except (EOFError, OSError):
        os._exit(0)  # the parent is gone
    except Exception as exc:
        failed = IndexBuildError(f"a writer process failed: {type(exc).__name__}: {exc}")
        conn.send(("error", failed))
    conn.close()


def _build_in_processes(
    directory: Path, docs: Iterator[IndexDoc], procs: int
) -> tuple[list[object], int]:
    """Share the documents between ``procs`` writer processes; their segments and the count.

    Not a ``child.ChildProxy``: the parent feeds several children at once, at most two
    batches ahead each, and waits on whichever answers first, with a bound on silence."""
    workers = [child.start(serve_segments) for _ in range(procs)]
    ahead = dict.fromkeys(range(procs), 0)  # batches sent and not yet answered
    segments: list[object] = []
    added = 0

    def stopped(number: int) -> IndexBuildError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers[number][0].wait(timeout=5)
        code = workers[number][0].poll()
        return IndexBuildError(
            f"a writer process stopped (exit code {code}): run `pipeline reindex` again"
        )

    def tell(number: int, message: object) -> None:
        try:
            workers[number][1].send(message)
        except OSError:
            raise stopped(number) from None

    def answer(number: int) -> tuple[str, object]:
        try:
            kind, value = workers[number][1].recv()
        except (EOFError, OSError):
            raise stopped(number) from None
        if kind == "error":
            assert isinstance(value, IndexBuildError)
            raise value
        return kind, value

    def wait_for_answers() -> None:
        conns = {workers[n][1]: n for n, count in ahead.items() if count}
        ready = wait_for(list(conns), timeout=REBUILD_SILENCE_SECONDS)
        if not ready:
            raise IndexBuildError(
                f"a writer process sent nothing for {REBUILD_SILENCE_SECONDS:.0f} s: "
                "run `pipeline reindex` again"
            )
        for conn in ready:
            number = conns[conn]  # type: ignore[index]
            answer(number)
            ahead[number] -= 1

    try:
        for number in range(procs):
            tell(number, (str(directory), REBUILD_SEGMENT_DOCS, REBUILD_SEGMENT_WORDS))
        while batch := list(itertools.islice(docs, REBUILD_BATCH_DOCS)):
            while min(ahead.values()) >= 2:
                wait_for_answers()
            number = min(ahead, key=ahead.__getitem__)
            tell(number, batch)
            ahead[number] += 1
            added += len(batch)
        while any(ahead.values()):
            wait_for_answers()
        for number in range(procs):
            tell(number, None)
        for number in range(procs):
            if not wait_for([workers[number][1]], timeout=REBUILD_SILENCE_SECONDS):
                raise IndexBuildError(
                    "a writer process did not finish: run `pipeline reindex` again"
                )
            _, value = answer(number)
            segments.extend(value)  # type: ignore[arg-type]
    finally:
        for process, conn in workers:
            with contextlib.suppress(OSError):
                conn.close()
            if process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
    return segments, added
