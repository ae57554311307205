"""The search index behind an interface of our own: ``SearchIndex``.

The engine is Whoosh (the ``whoosh-reloaded`` fork); queries are scored by the numpy ranker
over its posting lists and segments are written from arrays (both in ``_whoosh``, behind
the version fence), or through Whoosh's own matchers and writer on the fallback. Nothing
outside ``pipeline.search`` imports ``whoosh``, so the engine can change (paperless-ngx
moved to tantivy) without touching the rest. The index keeps no text: snippets are made
from the database's copy, so the database stays the one place personal text lives.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pickle
import re
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoosh import index as whoosh_index
from whoosh.query import And, Or, Query, Term

from ..errors import (
    FastPathUnsupportedError,
    IndexBuildError,
    IndexDamagedError,
    PipelineError,
    QueryError,
    StorageError,
)
from ..filestore import storage_error
from ._analysis import ANALYSIS_VERSION
from ._doc import IndexDoc
from ._query import (
    Budget,
    Lexicon,
    PlainWords,
    _check_syntax,
    _correct,
    _filters,
    _parse,
    check_expansions,
    parser,
)
from ._results import SearchHit, SearchResults
from ._schema import (
    INDEX_NAME,
    _fields,
    _schema,
    analysis_version,
    index_exists,
    locked_writer,
    open_index,
)
from ._snippets import _escape, _highlighted, _snippet
from ._whoosh import ranker as _ranker

if TYPE_CHECKING:
    from whoosh.searching import Searcher

    from ._whoosh._ranker import Ranker

log = logging.getLogger(__name__)


# What Whoosh raises reading a TOC or segment that is missing, cut short or overwritten.
_DAMAGE = (OSError, EOFError, struct.error, zlib.error, pickle.UnpicklingError)
_REINDEX = "run `pipeline reindex` to rebuild it from the database"
# Index folders whose older analysis has been warned about in this process.
_WARNED_OUTDATED: set[Path] = set()


@contextmanager
def _translated(directory: Path, doing: str) -> Iterator[None]:
    """Whoosh's and the OS's errors on the index as one line naming the index folder: the
    facade's one place for them."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise storage_error(exc, f"search index: cannot {doing}", directory) from exc
        raise _damaged(directory, exc) from exc
    except _DAMAGE as exc:
        raise _damaged(directory, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("whoosh"):
            raise _damaged(directory, exc) from exc
        raise


def _damaged(directory: Path, exc: BaseException) -> IndexDamagedError:
    if directory.exists() and not directory.is_dir():
        what = f"{directory} is a file, not the index folder"
    elif isinstance(exc, FileNotFoundError):
        missing = Path(exc.filename).name if exc.filename else "a segment file"
        what = f"{directory} is missing {missing}"
    else:
        what = f"{directory} is damaged ({type(exc).__name__}: {exc})".splitlines()[0]
    return IndexDamagedError(f"search index: {what}: {_REINDEX}", path=str(directory))


def _cancel(raw: Any) -> None:
    """Cancel a writer whose batch failed; on a full disk cancelling can fail too (it flushes
    what it held), and that must not hide the error that stopped the batch."""
    try:
        raw.cancel()
    except Exception as exc:
        log.debug("cancelling the index writer failed too: %s", exc)
        lock = getattr(raw, "writelock", None)
        with suppress(Exception):
            if lock is not None:
                lock.release()


# Open searchers not in use, by index folder: a search takes one (or opens one) and gives it
# back. One searcher serves one search at a time (Whoosh's readers seek shared file
# objects); the idle ones are bounded, so a server's threads never hold more open files
# than its concurrent searches need.
_IDLE: dict[Path, list[_Opened]] = {}
_IDLE_LOCK = threading.Lock()
_IDLE_PER_FOLDER = 2
_IDLE_FOLDERS = 8  # one per integration searched lately; a test run opens hundreds


# The TOC of each generation of the index: Whoosh writes a new one per commit (a deletion
# and an optimize are commits too), then deletes the older ones.
_TOC_NAME = re.compile(rf"_{re.escape(INDEX_NAME)}_(\d+)\.toc\Z")


# A folder unchanged for this long when it was listed has settled: any later change gets
# a later modification time, even on a file clock that ticks coarsely (4 ms on many
# kernels, 1 s on older file systems) or a file server's clock a little apart.
_SETTLED_NS = 2_000_000_000


@dataclasses.dataclass(frozen=True)
class _FolderState:
    """What tells an open searcher's index from a changed one.

    A search compares the folder's inode and modification time and the names in it (any
    file added or removed: a commit's segments, a purge, a rebuild's new folder and segment
    names), and its newest TOC's name, inode, size and modification time (a commit writes
    a new TOC and removes the old one; a TOC written over): two stats and a listing. Once
    the folder has ``settled`` (listed long after its last change) the two stats alone tell
    (a change since would have moved its modification time).

    ``files`` (every file's size, inode and modification time: a stat per file, 0.35 ms a
    search at 100,000 documents) is read when a searcher is opened and on the first search
    through each ``SearchIndex`` (each command, each App), so that a file damaged in place
    (cut short, written over) is noticed there too; a long-lived App notices that when a
    search reads the damaged part."""

    folder: tuple[int, int]
    names: frozenset[str]
    toc: tuple[str, int, int, int] | None
    files: frozenset[tuple[str, int, int, int]] | None = None
    seen: int = 0  # time.time_ns() before the folder was listed

    def holds(self, now: _FolderState) -> bool:
        """Whether ``now`` (a later look) finds the index as this state saw it."""
        return (self.folder, self.names, self.toc) == (now.folder, now.names, now.toc) and (
            now.files is None or now.files == self.files
        )

    @property
    def settled(self) -> bool:
        return self.toc is not None and self.folder[1] < self.seen - _SETTLED_NS

    def unchanged(self, directory: Path) -> bool:
        """For a settled state: the folder's and its TOC's stats as they were."""
        if self.toc is None:
            return False
        try:
            folder = os.stat(directory)
            toc = os.stat(os.path.join(directory, self.toc[0]))
        except OSError:
            return False
        return (folder.st_ino, folder.st_mtime_ns) == self.folder and (
            self.toc[0],
            toc.st_ino,
            toc.st_size,
            toc.st_mtime_ns,
        ) == self.toc


def _folder_state(directory: Path, *, files: bool = False) -> _FolderState | None:
    """The index folder's state now (with every file's stats if ``files``); None when
    there is no folder. A file where the folder belongs is damage."""
    seen = time.time_ns()
    try:
        folder = os.stat(directory)
        if not stat.S_ISDIR(folder.st_mode):
            raise _damaged(directory, NotADirectoryError(str(directory)))
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    tocs = [(int(m[1]), name) for name in names if (m := _TOC_NAME.match(name))]
    toc = None
    if tocs:
        name = max(tocs)[1]
        with suppress(FileNotFoundError):  # a commit removed it meanwhile: names differ too
            info = os.stat(os.path.join(directory, name))
            toc = (name, info.st_ino, info.st_size, info.st_mtime_ns)
    stats = None
    if files:
        found = set()
        for name in names:
            with suppress(FileNotFoundError):
                info = os.stat(os.path.join(directory, name))
                found.add((name, info.st_size, info.st_ino, info.st_mtime_ns))
        stats = frozenset(found)
    folder_now = (folder.st_ino, folder.st_mtime_ns)
    return _FolderState(folder_now, frozenset(names), toc, stats, seen)


def _take_settled(directory: Path) -> _Opened | None:
    """The most recently used idle searcher, if its state has settled and two stats show
    it still holds (else it stays idle, for ``_take`` to compare with a full look)."""
    with _IDLE_LOCK:
        idle = _IDLE.get(directory, [])
        opened = idle.pop() if idle and idle[-1].state.settled else None
    if opened is None or opened.state.unchanged(directory):
        return opened
    _give_back(directory, opened)
    return None


def _take(directory: Path, state: _FolderState) -> _Opened | None:
    """An idle searcher whose state ``state`` (a full look) still finds; those it does not,
    closed."""
    stale = []
    found = None
    with _IDLE_LOCK:
        idle = _IDLE.get(directory, [])
        while idle and found is None:
            opened = idle.pop()
            if opened.state.holds(state):
                found = opened
            else:
                stale.append(opened)
    for opened in stale:
        opened.close()
    if found is not None:
        # The later look, which may have settled; the files as compared when it opened.
        found.state = dataclasses.replace(state, files=found.state.files)
    return found


def _give_back(directory: Path, opened: _Opened) -> None:
    evicted = []
    with _IDLE_LOCK:
        idle = _IDLE.pop(directory, [])  # re-inserted last: the most recently used
        if len(idle) < _IDLE_PER_FOLDER:
            idle.append(opened)
        else:
            evicted.append(opened)
        _IDLE[directory] = idle
        while len(_IDLE) > _IDLE_FOLDERS:
            evicted += _IDLE.pop(next(iter(_IDLE)))
    for old in evicted:
        old.close()


class _Opened:
    """An open index, its searcher and query parser, and the corrections made on it."""

    def __init__(self, state: _FolderState, ix: Any, searcher: Any):
        self.state = state
        self.ix = ix
        self.searcher = searcher
        self.schema = ix.schema
        self._parser = parser(self.schema)
        self._words = PlainWords(self.schema)
        # Parsed queries and corrections, by query: a server asked the same query again, a
        # page after the first, pays for neither twice.
        self._parsed: dict[str, Query] = {}
        self._corrections: dict[str, str | None] = {}
        self._lexicon = Lexicon(searcher.reader())
        # A query's highlighted words (its patterns expanded against the index's terms) and
        # a document's stored fields: both read from the index once while it is unchanged.
        self._highlighted: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._stored: dict[int, dict[str, Any]] = {}
        # The numpy ranker, with the scores of the terms it read (or None: Whoosh's matchers).
        self.ranker = _ranker(searcher)

    def highlighted(self, query: str, parsed: Query) -> tuple[frozenset[str], frozenset[str]]:
        if query not in self._highlighted:
            if len(self._highlighted) > 1_000:
                self._highlighted.clear()
            self._highlighted[query] = _highlighted(self.searcher, parsed)
        return self._highlighted[query]

    def stored_fields(self, docnum: int) -> dict[str, Any]:
        fields = self._stored.get(docnum)
        if fields is None:
            if len(self._stored) > 20_000:
                self._stored.clear()
            fields = self._stored[docnum] = self.searcher.stored_fields(docnum)
        return fields

    def parse(self, query: str) -> Query:
        if query not in self._parsed:
            if len(self._parsed) > 1_000:
                self._parsed.clear()
            self._parsed[query] = _parse(self.schema, query, self._parser, self._words)
        return self._parsed[query]

    def correct(self, query: str, budget: Budget) -> str | None:
        if query not in self._corrections:
            if len(self._corrections) > 1_000:
                self._corrections.clear()
            self._corrections[query] = _correct(
                self.searcher.reader(), self.schema, query, budget, self._lexicon
            )
        return self._corrections[query]

    def close(self) -> None:
        with suppress(Exception):
            self.searcher.close()
        with suppress(Exception):
            self.ix.close()


class IndexWriter:
    """Adds and removes documents; everything becomes visible at ``commit``."""

    def __init__(self, writer: Any, directory: Path | None = None) -> None:
        self._writer = writer
        self._directory = directory
        self.pending = 0

    def _guard(self) -> AbstractContextManager[None]:
        if self._directory is None:
            return nullcontext()
        return _translated(self._directory, "write to it")

    def upsert(self, doc: IndexDoc) -> None:
        with self._guard():
            self._writer.update_document(**_fields(doc))
        self.pending += 1

    def add(self, doc: IndexDoc) -> None:
        """Add without looking for an older version: for a bulk load into an empty index."""
        with self._guard():
            self._writer.add_document(**_fields(doc))
        self.pending += 1

    def delete(self, attachment_id: str) -> None:
        with self._guard():
            self._writer.delete_by_term("attachment_id", attachment_id)
        self.pending += 1


class SearchIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Whether a search through this object compared every file of the folder yet
        # (``_FolderState``).
        self._files_checked = False

    def _open(self) -> whoosh_index.Index:
        self._check_folder()
        with _translated(self.directory, "open it"):
            return open_index(self.directory)

    def _check_folder(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise _damaged(self.directory, NotADirectoryError(str(self.directory)))

    def exists(self) -> bool:
        self._check_folder()
        with _translated(self.directory, "read it"):
            return index_exists(self.directory)

    @contextmanager
    def writer(self, *, purge: bool = False, merge: bool = True) -> Iterator[IndexWriter]:
        """One writer; committed on a clean exit, cancelled (and the error re-raised) if not.

        ``purge`` merges every segment on commit: a deleted document's terms otherwise stay
        in its old segment file until a later merge, and an erasure must not wait for that.
        """
        ix = self._open()
        with _translated(self.directory, "write to it"):
            raw = locked_writer(ix)
        wrapped = IndexWriter(raw, self.directory)
        try:
            yield wrapped
        except BaseException:
            _cancel(raw)
            raise
        else:
            with _translated(self.directory, "write to it"):
                raw.commit(optimize=purge, merge=merge or purge)
        finally:
            ix.close()

    def write(
        self, docs: Iterable[IndexDoc] = (), deletions: Iterable[str] = (), *, purge: bool = False
    ) -> int:
        with self.writer(purge=purge) as writer:
            for attachment_id in deletions:
                writer.delete(attachment_id)
            for doc in docs:
                writer.upsert(doc)
            return writer.pending

    def rebuild(self, docs: Iterable[IndexDoc]) -> int:
        """Start again from nothing: the database is the source of truth (``_rebuild``).

        The index is counted after the commit: a writer process that failed fails the
        rebuild instead of leaving documents out.
        """
        if self.directory.exists() and not self.directory.is_dir():
            # An index folder that became a file: a rebuild makes the folder again.
            log.warning("replacing %s, a file where the index folder belongs", self.directory)
            with _translated(self.directory, "replace it"):
                self.directory.unlink()
        # Imported here: a rebuild's writer processes bring the child-process machinery,
        # which a search does not need.
        from . import _rebuild

        with _translated(self.directory, "rebuild it"):
            added = _rebuild.rebuild(self.directory, docs)
        held = self.doc_count()
        if held != added:
            raise IndexBuildError(
                f"the index holds {held} of the {added} documents written "
                "(a writer process failed): run `pipeline reindex` again"
            )
        return added

    def attachment_ids(self) -> set[str]:
        if not self.exists():
            return set()
        ix = self._open()
        try:
            with _translated(self.directory, "read it"), ix.searcher() as searcher:
                return {fields["attachment_id"] for fields in searcher.all_stored_fields()}
        finally:
            ix.close()

    def doc_count(self) -> int:
        if not self.exists():
            return 0
        ix = self._open()
        try:
            with _translated(self.directory, "read it"):
                return int(ix.doc_count())
        finally:
            ix.close()

    def _check_schema(self, ix: whoosh_index.Index) -> None:
        if set(ix.schema.names()) != set(_schema().names()):
            raise QueryError(
                "the search index was built by an older version: run `pipeline reindex`"
            )
        if self.analysis_outdated() and self.directory not in _WARNED_OUTDATED:
            _WARNED_OUTDATED.add(self.directory)
            log.warning("%s", self.outdated_reason())

    def analysis_outdated(self) -> bool:
        """Whether the index's words were written by an older analysis than this version's
        (it still answers, as it was written; ``reindex`` brings in what changed)."""
        return self.exists() and analysis_version(self.directory) < ANALYSIS_VERSION

    def outdated_reason(self) -> str | None:
        """One line for ``status``/``check`` when the index's analysis is older, else None
        (also when the index cannot be read: that is said by the commands that read it)."""
        try:
            if not self.analysis_outdated():
                return None
        except PipelineError:
            return None
        return (
            f"the search index in {self.directory} was written with analysis version "
            f"{analysis_version(self.directory)} (this version writes {ANALYSIS_VERSION}: "
            "ß = ss, split elisions, dotted words by their parts): run `pipeline reindex`"
        )

    def search(
        self,
        query: str,
        *,
        texts: Callable[[Sequence[str]], dict[str, str]],
        type: str | None = None,
        candidate_id: str | None = None,
        language: str | None = None,
        since: datetime | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> SearchResults:
        """Ranked hits (BM25F) with snippets made from ``texts`` (attachment id -> text).

        Misspelled words are spelled again from the index's own words: the correction is
        ``did_you_mean`` beside the literal query's hits, and only when the literal query
        finds nothing are the corrected query's hits returned (``corrected``). A query past
        the caps raises ``QueryTooCostly``; one that cannot be read, ``QueryError``.
        """
        _check_syntax(query)
        budget = Budget.start()
        opened = self._opened()
        if opened is None:
            return SearchResults(query, 0, [])
        filters = _filters(type, candidate_id, language, since)
        searcher = opened.searcher
        try:
            with _translated(self.directory, "read it"):
                parsed = opened.parse(query)
                check_expansions(parsed, searcher.reader(), query)
                budget.check(query)
                ranker = opened.ranker
                found, total = _collect(searcher, ranker, parsed, filters, offset + limit)
                budget.check(query)
                corrected = opened.correct(query, budget)
                if corrected is not None and not total:
                    reparsed = opened.parse(corrected)
                    again, again_total = _collect(
                        searcher, ranker, reparsed, filters, offset + limit
                    )
                    if again_total:
                        marked = opened.highlighted(corrected, reparsed)
                        hits = _page(opened.stored_fields, marked, again[offset:], texts)
                        results = SearchResults(query, again_total, hits, corrected, corrected=True)
                        _give_back(self.directory, opened)
                        return results
                marked = opened.highlighted(query, parsed)
                hits = _page(opened.stored_fields, marked, found[offset:], texts)
        except BaseException:
            # Whatever failed (a damaged segment, a query past its time), the next search
            # opens the index afresh.
            opened.close()
            raise
        _give_back(self.directory, opened)
        return SearchResults(query, total, hits, corrected)

    def _opened(self) -> _Opened | None:
        """An open searcher on the index, reused while the index is unchanged (a search on
        a small index was mostly opening it: reading the TOC, the segments, the schema),
        or None when there is no index yet. Given back by the search."""
        if self._files_checked:
            opened = _take_settled(self.directory)
            if opened is not None:
                return opened
        with _translated(self.directory, "read it"):
            state = _folder_state(self.directory, files=not self._files_checked)
        if state is None:
            return None
        opened = _take(self.directory, state)
        if opened is not None:
            self._files_checked = True
            return opened
        if not self.exists():
            return None
        if state.files is None:
            # Taken before the index is opened: a commit in between makes the next search
            # open it again, never keeps an older searcher for a newer state.
            with _translated(self.directory, "read it"):
                state = _folder_state(self.directory, files=True)
            if state is None:
                return None
        ix = self._open()
        try:
            self._check_schema(ix)
            with _translated(self.directory, "read it"):
                opened = _Opened(state, ix, ix.searcher())
            self._files_checked = True
            return opened
        except BaseException:
            ix.close()
            raise

    def similar(
        self,
        attachment_id: str,
        *,
        texts: Callable[[Sequence[str]], dict[str, str]],
        type: str | None = None,
        limit: int = 10,
    ) -> SearchResults:
        """Documents most like this one (by its key terms), other candidates' first."""
        body = texts([attachment_id]).get(attachment_id)
        if body is None or not self.exists():
            raise QueryError(f"attachment {attachment_id} is not in the index")
        ix = self._open()
        try:
            self._check_schema(ix)
            with _translated(self.directory, "read it"), ix.searcher() as searcher:
                docnum = searcher.document_number(attachment_id=attachment_id)
                if docnum is None:
                    raise QueryError(f"attachment {attachment_id} is not in the index")
                own = searcher.stored_fields(docnum)["candidate_id"]
                keys = searcher.key_terms_from_text("text", body, numterms=25)
                terms = Or([Term("text", word, boost=weight) for word, weight in keys])
                found, _total = _collect(searcher, _ranker(searcher), terms, [], (limit + 1) * 4)
                wanted = []
                for docnum, score in found:
                    fields = searcher.stored_fields(docnum)
                    if (
                        fields["attachment_id"] != attachment_id
                        and fields["candidate_id"] != own
                        and (type is None or fields["type"] == type)
                    ):
                        wanted.append((docnum, score))
                marked = _highlighted(searcher, terms)
                hits = _page(searcher.stored_fields, marked, wanted[:limit], texts)
            return SearchResults(f"similar:{attachment_id}", len(hits), hits)
        finally:
            ix.close()


def _collect(
    searcher: Searcher, ranker: Ranker | None, parsed: Query, filters: list[Query], limit: int
) -> tuple[list[tuple[int, float]], int]:
    """The best ``limit`` (document number, score) pairs, best first, and the number of
    matches. Scored a posting list at a time (``_whoosh._ranker``); through Whoosh's own
    matchers on the fence's fallback, or if the index is of a shape the ranker does not
    read."""

    query = And([parsed, *filters]) if filters else parsed
    if ranker is not None:
        try:
            ranked = ranker.rank(query, limit)
            return ranked.top, ranked.total
        except FastPathUnsupportedError as exc:
            log.debug("searching through Whoosh's matchers: %s", exc)
    results = searcher.search(query, limit=max(1, limit))
    # Whoosh's top-N skips blocks by their best possible score and can miss a document
    # that ties; it counts the matches again for len().
    return [(hit.docnum, hit.score) for hit in results], len(results)


def _page(
    stored_fields: Callable[[int], dict[str, Any]],
    highlighted: tuple[frozenset[str], frozenset[str]],
    found: list[tuple[int, float]],
    texts: Callable[[Sequence[str]], dict[str, str]],
) -> list[SearchHit]:
    """Hits for the (document number, score) pairs, with snippets of the words that
    matched (``highlighted``: the text field's words and marked stems)."""
    stored = [(stored_fields(docnum), score) for docnum, score in found]
    bodies = texts([fields["attachment_id"] for fields, _score in stored])
    words, stems = highlighted
    hits = []
    for fields, score in stored:
        body = bodies.get(fields["attachment_id"], "")
        language = fields.get("language") or None
        snippet = _snippet(body, words, stems, language) if body else ""
        hits.append(
            SearchHit(
                attachment_id=fields["attachment_id"],
                candidate_id=fields["candidate_id"],
                application_id=fields.get("application_id"),
                type=fields["type"],
                file_name=fields.get("file_name"),
                score=round(float(score), 4),
                snippet=" ".join((snippet or _escape(body[:200])).split()),
                language=language,
            )
        )
    # Equal scores come back in segment order, which a rebuild changes: break ties by id so
    # the same data always gives the same page.
    hits.sort(key=lambda h: (-h.score, h.attachment_id))
    return hits
