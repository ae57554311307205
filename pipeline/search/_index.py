"""Index stage: full-text search over extracted text, behind an interface of our own.

The engine is Whoosh (the ``whoosh-reloaded`` fork; see the README for why); queries are
scored by ``pipeline.ranking`` over its posting lists, and segments are written by
``pipeline.segments`` from arrays. Nothing outside these three modules imports ``whoosh``,
so the engine can change (paperless-ngx moved to tantivy) without touching the rest. The
index keeps no text: snippets are made from the database's copy, so the database stays the
one place personal text lives.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import TYPE_CHECKING

from whoosh import index as whoosh_index
from whoosh.analysis import CharsetFilter, LowercaseFilter, RegexTokenizer
from whoosh.codec import whoosh3 as _whoosh3
from whoosh.codec.whoosh3 import W3Codec
from whoosh.fields import DATETIME, ID, STORED, TEXT, Schema
from whoosh.formats import Positions
from whoosh.lang import stemmer_for_language
from whoosh.qparser import AndGroup, MultifieldParser, QueryParser
from whoosh.query import And, ConstantScoreQuery, DateRange, Or, Query, Term
from whoosh.spelling import ReaderCorrector
from whoosh.support.charset import accent_map
from whoosh.writing import IndexWriter as _WhooshWriter

from . import child
from .errors import IndexBuildError, QueryError
from .indexdoc import IndexDoc

if TYPE_CHECKING:
    from .segments import ArraySegmentWriter

log = logging.getLogger(__name__)


def _dumps(obj: object, protocol: int | None = None) -> bytes:
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


# Whoosh's segment writer pickles each block of postings with protocol 2, under which every
# bytes value (a posting's positions) becomes a call to _codecs.encode when read back. The
# newest protocol reads nine times faster and is half the size (measured on a block of
# "python" at 100,000 CVs: 80 us against 9 us). Readers take any protocol, so segments
# written before this mix freely with those written after.
if getattr(_whoosh3, "dumps", None) is not None:
    _whoosh3.dumps = _dumps

INDEX_NAME = "attachments"
# Words, plus the shapes skills take: "node.js", "c++", "c#", "ci/cd" stays two words.
_TOKEN_PATTERN = r"\w+(?:[.'’]\w+)*(?:\+\+|#)?"


STEMMED = ("en", "de", "fr", "es")  # languages whose documents are stemmed too
FIELDS = ("text", "file_name", "candidate_title")
# A match in the file name ("Lebenslauf Müller") weighs double, one in the candidate's
# current job title one and a half; a match through a shared stem weighs 0.6 of an exact one.
BOOSTS = {"text": 1.0, "file_name": 2.0, "candidate_title": 1.5}
STEM_BOOST = 0.6
# Stems live in the text field itself, marked so that no word can be mistaken for one: a
# document in a stemmed language holds "~develop" for "developing" (only where the stem
# differs from the word). One field instead of one per language halves the postings to
# write and the terms a query visits; the stems come after the words, so phrase positions
# stay those of the words.
STEM_MARK = "~"


def _analyzer(pattern: str = _TOKEN_PATTERN):  # type: ignore[no-untyped-def]
    # Folding accents makes "Müller" find "Muller" and the reverse; case is folded too.
    return RegexTokenizer(pattern) | LowercaseFilter() | CharsetFilter(accent_map)


# File names break at dots and underscores too: "Lebenslauf_Max_Müller.pdf" is four words,
# so "Müller" finds it (the text's pattern would keep "müller.pdf" whole, as "node.js").
_FILE_NAME_PATTERN = r"[^\W_]+(?:\+\+|#)?"


_WORD = re.compile(_TOKEN_PATTERN)


@cache
def _stemmer(lang: str) -> Callable[[str], str]:
    return lru_cache(maxsize=100_000)(stemmer_for_language(lang))


def _fold(word: str) -> str:
    return word.translate(accent_map)


class _WordMap(dict[str, str]):
    """A word's analysed form, worked out once and then found by a lookup.

    ``map(words.__getitem__, ...)`` stays in C for every word seen before; a CV's words are
    mostly words other CVs have. Bounded: emptied when full (the next documents refill it
    with the words that are common).
    """

    LIMIT = 50_000

    def __init__(self, make: Callable[[str], str]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, word: str) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        made = self[word] = self._make(word)
        return made


# A word as the text field holds it: lowercased, then accents folded. Translating through
# Whoosh's accent map costs a dictionary miss per unaccented character, so each distinct
# word is folded once.
_FOLDED = _WordMap(lambda word: _fold(word.lower()))


@cache
def _folded_stems(lang: str) -> _WordMap:
    """Word -> its stem in ``lang``, folded (a snippet's test for a word matched by stem)."""
    stem = _stemmer(lang)
    return _WordMap(lambda word: _fold(stem(word.lower())))


@cache
def _marked_stems(lang: str) -> _WordMap:
    """Word -> its marked stem, or "" where the stem is the folded word itself.

    Stems are taken before folding (the German and French stemmers know their accented
    suffixes)."""
    stems = _folded_stems(lang)

    def marked(word: str) -> str:
        stemmed = stems[word]
        return "" if stemmed == _FOLDED[word] else STEM_MARK + stemmed

    return _WordMap(marked)


def _terms(text: str, language: str | None) -> list[str]:
    """The text field's terms for a document: its folded words, then the marked stems.

    Whoosh takes a list of words as already analyzed; one regex scan and a lookup per word
    are many times cheaper than its chain of token generators. The words are what the
    field's analyzer makes of a query.
    """
    words = _WORD.findall(text)
    folded = list(map(_FOLDED.__getitem__, words))
    if language not in STEMMED:
        return folded
    return folded + list(filter(None, map(_marked_stems(language).__getitem__, words)))


def _query_stems(lowered: str) -> set[str]:
    return {_fold(_stemmer(lang)(lowered)) for lang in STEMMED}


class WordPositions(Positions):  # type: ignore[misc]
    """The text field's postings format: Whoosh's positions, stored as an array of
    little-endian 32-bit numbers instead of a pickled list of differences.

    Search reads the positions of thousands of documents at once for a phrase
    (``pipeline.ranking`` joins the values and reads them as one numpy array), where the
    pickled lists took a call each. The field is fed lists of words (``_terms``): a word's
    position is its place in the list, as Whoosh's own reading of a list gives.
    """

    positions_dtype = "<u4"

    def word_values(self, value, analyzer, **kwargs):  # type: ignore[no-untyped-def]
        if not isinstance(value, list | tuple):
            yield from super().word_values(value, analyzer, **kwargs)
            return
        places: dict[str, list[int]] = {}
        for place, word in enumerate(value):
            places.setdefault(word, []).append(place)
        boost = self.field_boost
        for word, where in places.items():
            yield word, len(where), len(where) * boost, _pack_positions(where)

    def encode(self, poslist):  # type: ignore[no-untyped-def]
        return _pack_positions(poslist)

    def decode_positions(self, valuestring):  # type: ignore[no-untyped-def]
        numbers = array("I")
        numbers.frombytes(valuestring)
        if sys.byteorder == "big":
            numbers.byteswap()
        return numbers.tolist()

    def decode_frequency(self, valuestring):  # type: ignore[no-untyped-def]
        return len(valuestring) // 4


def _pack_positions(positions: list[int]) -> bytes:
    numbers = array("I", positions)
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers.tobytes()


def _schema() -> Schema:
    analyzer = _analyzer()
    text = TEXT(analyzer=analyzer, phrase=True)
    text.format = WordPositions(field_boost=text.format.field_boost)
    return Schema(
        attachment_id=ID(stored=True, unique=True),
        candidate_id=ID(stored=True),
        application_id=STORED(),
        type=ID(stored=True),
        language=ID(stored=True),
        updated=DATETIME(stored=True),
        file_name=TEXT(stored=True, analyzer=_analyzer(_FILE_NAME_PATTERN)),
        candidate_title=TEXT(analyzer=analyzer),
        text=text,
    )


@dataclass(frozen=True)
class SearchHit:
    attachment_id: str
    candidate_id: str
    application_id: str | None
    type: str
    file_name: str | None
    score: float
    snippet: str
    language: str | None = None


@dataclass(frozen=True)
class SearchResults:
    query: str
    total: int
    hits: list[SearchHit]
    # When a word of the query is not in the index and its correction finds at least as much:
    # the corrected spelling, whose hits these are (or the suggestion, when nothing matched).
    did_you_mean: str | None = None


@dataclass(frozen=True)
class CandidateHit:
    candidate_id: str
    score: float
    hits: list[SearchHit]


def group_by_candidate(hits: list[SearchHit]) -> list[CandidateHit]:
    """People, not files: each candidate once, at the rank of their best file."""
    grouped: dict[str, list[SearchHit]] = {}
    for hit in hits:
        grouped.setdefault(hit.candidate_id, []).append(hit)
    return [CandidateHit(cid, files[0].score, files) for cid, files in grouped.items()]


class IndexWriter:
    """Adds and removes documents; everything becomes visible at ``commit``."""

    def __init__(self, writer: _WhooshWriter) -> None:
        self._writer = writer
        self.pending = 0

    def upsert(self, doc: IndexDoc) -> None:
        self._writer.update_document(**_fields(doc))
        self.pending += 1

    def add(self, doc: IndexDoc) -> None:
        """Add without looking for an older version: for a bulk load into an empty index."""
        self._writer.add_document(**_fields(doc))
        self.pending += 1

    def delete(self, attachment_id: str) -> None:
        self._writer.delete_by_term("attachment_id", attachment_id)
        self.pending += 1


def _codec() -> W3Codec:
    # Postings blocks are left uncompressed: inflating them was a third of a search's time
    # at 100,000 CVs, and saved disk only (the postings file is 3.4 times as large: 190 MB
    # against 55 MB at 100,000 CVs). Blocks of 512 postings instead of 128: a search reads
    # whole posting lists, and each block costs a seek and a pickle.
    return W3Codec(blocklimit=512, compression=0)


def _fields(doc: IndexDoc) -> dict[str, object]:
    fields: dict[str, object] = {
        "attachment_id": doc.attachment_id,
        "candidate_id": doc.candidate_id,
        "application_id": doc.application_id,
        "type": doc.type,
        "language": doc.language or "",
        "file_name": doc.file_name or "",
        "candidate_title": doc.candidate_title or "",
        "text": _terms(doc.text, doc.language),
    }
    if doc.updated_at is not None:
        fields["updated"] = doc.updated_at.replace(tzinfo=None)
    return fields


def _check_syntax(query: str) -> None:
    if not query.strip():
        raise QueryError("empty query: give at least one word")
    if query.count('"') % 2:
        raise QueryError(f"cannot read query {query!r}: a quote is not closed")
    depth = 0
    for char in query:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0:
        raise QueryError(f"cannot read query {query!r}: parentheses do not match")


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


def _writer_options() -> dict[str, object]:
    # Segments are left as separate files: Whoosh reads a file of a compound segment by
    # copying it whole into memory, on every search (90 ms at 100,000 CVs).
    return {"limitmb": 256, "compound": False, "codec": _codec()}


def _array_writer(ix: whoosh_index.Index, **options: object) -> ArraySegmentWriter:
    # Imported when an index is written: numpy takes 0.1 s to import, and most commands
    # (status, export, erase) write no index.
    from .segments import ArraySegmentWriter

    return ArraySegmentWriter(ix, **options, **_writer_options())


def _locked_writer(ix: whoosh_index.Index) -> ArraySegmentWriter:
    # Wait for the lock a while: a writer process of a run that was killed may still be
    # finishing its last batch.
    return _array_writer(ix, timeout=120, delay=0.1)


class _SegmentBuilder:
    """Analyses documents and writes them into segments of at most ``segment_docs``
    documents and about ``segment_words`` words."""

    def __init__(self, ix: whoosh_index.Index, segment_docs: int, segment_words: int) -> None:
        self._ix = ix
        self._segment_docs = segment_docs
        self._segment_words = segment_words
        self._writer: ArraySegmentWriter | None = None
        self._segments: list[object] = []
        self.added = 0

    def add(self, doc: IndexDoc) -> None:
        if self._writer is None:
            # No lock: the process that commits the segments holds it.
            self._writer = _array_writer(self._ix, _lk=False)
        self._writer.add_document(**_fields(doc))
        self.added += 1
        if (
            self._writer.doc_count() >= self._segment_docs
            or self._writer.word_count >= self._segment_words
        ):
            self._close()

    def finish(self) -> list[object]:
        if self._writer is not None:
            self._close()
        return self._segments

    def _close(self) -> None:
        assert self._writer is not None
        self._segments.append(self._writer._finalize_segment())
        self._writer = None


def serve_segments(fd: int) -> None:
    """A rebuild's writer process: (directory, segment documents, segment words), then
    batches of documents, each answered with ("added", count); None answers ("done",
    segments) and stops. An error answers ("error", message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    conn = Connection(fd)
    directory, segment_docs, segment_words = conn.recv()
    try:
        ix = whoosh_index.open_dir(directory, indexname=INDEX_NAME)
        builder = _SegmentBuilder(ix, segment_docs, segment_words)
        while (batch := conn.recv()) is not None:
            for doc in batch:
                builder.add(doc)
            conn.send(("added", len(batch)))
        conn.send(("done", builder.finish()))
    except (EOFError, OSError):
        os._exit(0)  # the parent is gone
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.close()


def _build_in_processes(
    directory: Path, docs: Iterator[IndexDoc], procs: int
) -> tuple[list[object], int]:
    """Share the documents between ``procs`` writer processes; their segments and the count."""
    workers = [child.start("pipeline.index", "serve_segments") for _ in range(procs)]
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
            raise IndexBuildError(f"a writer process failed: {value}")
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


class SearchIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _open(self) -> whoosh_index.Index:
        if whoosh_index.exists_in(str(self.directory), indexname=INDEX_NAME):
            return whoosh_index.open_dir(str(self.directory), indexname=INDEX_NAME)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return whoosh_index.create_in(str(self.directory), _schema(), indexname=INDEX_NAME)

    def exists(self) -> bool:
        return whoosh_index.exists_in(str(self.directory), indexname=INDEX_NAME)

    @contextmanager
    def writer(self, *, purge: bool = False, merge: bool = True) -> Iterator[IndexWriter]:
        """One writer; committed on a clean exit, cancelled (and the error re-raised) if not.

        ``purge`` merges every segment on commit: a deleted document's terms otherwise stay
        in its old segment file until a later merge, and an erasure must not wait for that.
        """
        ix = self._open()
        raw = _locked_writer(ix)
        wrapped = IndexWriter(raw)
        try:
            yield wrapped
        except BaseException:
            raw.cancel()
            raise
        else:
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
        """Start again from nothing: the database is the source of truth.

        A bulk load through ``pipeline.segments``' array writer: a segment per
        REBUILD_SEGMENT_DOCS or REBUILD_SEGMENT_WORDS, written by a process per core when
        there are many documents,
        all committed at once at the end. The index is counted after the commit: a writer
        process that failed fails the rebuild instead of leaving documents out.
        """
        if self.directory.exists():
            shutil.rmtree(self.directory)
        stream = iter(docs)
        head = list(itertools.islice(stream, PARALLEL_REBUILD_DOCS))
        procs = min(2, os.cpu_count() or 1) if len(head) == PARALLEL_REBUILD_DOCS else 1
        stream = itertools.chain(head, stream)
        ix = self._open()
        try:
            # This writer only holds the lock and commits the segments the builders wrote.
            holder = _locked_writer(ix)
            try:
                if procs == 1:
                    builder = _SegmentBuilder(ix, REBUILD_SEGMENT_DOCS, REBUILD_SEGMENT_WORDS)
                    for doc in stream:
                        builder.add(doc)
                    segments, added = builder.finish(), builder.added
                else:
                    segments, added = _build_in_processes(self.directory, stream, procs)
            except BaseException:
                holder.cancel()
                raise
            holder._close_segment()
            holder._commit_toc(segments)
            holder._finish()
        finally:
            ix.close()
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
            with ix.searcher() as searcher:
                return {fields["attachment_id"] for fields in searcher.all_stored_fields()}
        finally:
            ix.close()

    def doc_count(self) -> int:
        if not self.exists():
            return 0
        ix = self._open()
        try:
            return int(ix.doc_count())
        finally:
            ix.close()

    def _check_schema(self, ix: whoosh_index.Index) -> None:
        if set(ix.schema.names()) != set(_schema().names()):
            raise QueryError(
                "the search index was built by an older version: run `pipeline reindex`"
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

        Words the index does not hold are spelled again from its own words; when that finds
        more, those hits come back with ``did_you_mean`` set.
        """
        _check_syntax(query)
        if not self.exists():
            return SearchResults(query, 0, [])
        ix = self._open()
        try:
            self._check_schema(ix)
            filters = _filters(type, candidate_id, language, since)
            with ix.searcher() as searcher:
                parsed = _parse(ix.schema, query)
                ranker = _ranker(searcher)
                found, total = _collect(searcher, ranker, parsed, filters, offset + limit)
                # A word the index does not hold is likely a typo even when its stem matched
                # a few documents ("Kubernets"): the corrected query wins if it finds as many
                # or more (the stems of a typo often find the same documents). Snippets are
                # made only for the page that is returned.
                corrected = _correct(searcher, ix.schema, query)
                if corrected is not None:
                    reparsed = _parse(ix.schema, corrected)
                    again, again_total = _collect(
                        searcher, ranker, reparsed, filters, offset + limit
                    )
                    if again_total >= total and again_total:
                        hits = _page(searcher, reparsed, again[offset:], texts)
                        return SearchResults(query, again_total, hits, corrected)
                    if total == 0:
                        return SearchResults(query, 0, [], corrected)
                hits = _page(searcher, parsed, found[offset:], texts)
                return SearchResults(query, total, hits)
        finally:
            ix.close()

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
            with ix.searcher() as searcher:
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
                hits = _page(searcher, terms, wanted[:limit], texts)
            return SearchResults(f"similar:{attachment_id}", len(hits), hits)
        finally:
            ix.close()


def _ranker(searcher):  # type: ignore[no-untyped-def]
    from . import ranking  # numpy: the index writer process never needs it

    try:
        return ranking.Ranker(searcher)
    except ranking.Unsupported as exc:
        log.debug("searching through Whoosh's matchers: %s", exc)
        return None


def _collect(searcher, ranker, parsed: Query, filters: list[Query], limit: int):  # type: ignore[no-untyped-def]
    """The best ``limit`` (document number, score) pairs, best first, and the number of
    matches. Scored a posting list at a time (``pipeline.ranking``); through Whoosh's own
    matchers only if the index is of a shape that module does not read."""
    from . import ranking

    query = And([parsed, *filters]) if filters else parsed
    if ranker is not None:
        try:
            ranked = ranker.rank(query, limit)
            return ranked.top, ranked.total
        except ranking.Unsupported as exc:
            log.debug("searching through Whoosh's matchers: %s", exc)
    results = searcher.search(query, limit=max(1, limit))
    # Whoosh's top-N skips blocks by their best possible score and can miss a document
    # that ties; it counts the matches again for len().
    return [(hit.docnum, hit.score) for hit in results], len(results)


def _parse(schema: Schema, query: str) -> Query:
    parser = MultifieldParser(list(FIELDS), schema, fieldboosts=BOOSTS, group=AndGroup)
    try:
        parsed = parser.parse(query)
    except Exception as exc:  # whoosh's parser raises assorted errors
        raise QueryError(f"cannot read query {query!r}: {exc}") from exc
    # The parser folded the words; stems need them as typed (lower-cased, accents kept).
    typed = {_fold(word): word for word in (w.lower() for w in _WORD.findall(query))}
    return _with_stems(parsed, typed)


def _with_stems(query: Query, typed: dict[str, str]) -> Query:
    """Each word of the text field also matches the documents that share one of its stems
    (in any stemmed language: the query's own language is unknown)."""
    if type(query) is Term and query.fieldname == "text":
        word = query.text
        stems = _query_stems(typed.get(word, word))
        boost = query.boost * STEM_BOOST
        alternatives: list[Query] = [query]
        alternatives += [Term("text", STEM_MARK + s, boost=boost) for s in sorted(stems)]
        alternatives += [Term("text", s, boost=boost) for s in sorted(stems) if s != word]
        return Or(alternatives)
    if query.is_leaf():
        return query
    return query.apply(lambda sub: _with_stems(sub, typed))


def _filters(
    type: str | None, candidate_id: str | None, language: str | None, since: datetime | None
) -> list[Query]:
    # Filters join the query with no score of their own (Whoosh's filter= argument leaves
    # len(results) counting unfiltered matches).
    filters: list[Query] = []
    if type:
        filters.append(ConstantScoreQuery(Term("type", type), 0.0))
    if candidate_id:
        filters.append(ConstantScoreQuery(Term("candidate_id", candidate_id), 0.0))
    if language:
        filters.append(ConstantScoreQuery(Term("language", language), 0.0))
    if since is not None:
        start = since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since
        filters.append(ConstantScoreQuery(DateRange("updated", start, None), 0.0))
    return filters


def _correct(searcher, schema: Schema, query: str) -> str | None:  # type: ignore[no-untyped-def]
    """The query spelled with words the index holds ("Kubernets" -> "kubernetes")."""
    try:
        plain = QueryParser("text", schema).parse(query)
        corrected = searcher.correct_query(
            plain,
            query,
            maxdist=2,
            prefix=1,  # a typo in the first letter is rare; a whole-lexicon scan is not cheap
            correctors={"text": _WordCorrector(searcher.reader(), "text", schema["text"])},
        )
    except Exception:  # a suggestion is a nicety: never fail a search for it
        return None
    if corrected.query == plain or not corrected.string.strip():
        return None
    return str(corrected.string)


class _WordCorrector(ReaderCorrector):  # type: ignore[misc]
    """Suggests words of the text field, never its marked stems."""

    def _suggestions(self, text, maxdist, prefix):  # type: ignore[no-untyped-def]
        for score, suggestion in super()._suggestions(text, maxdist, prefix):
            if not suggestion.startswith(STEM_MARK):
                yield score, suggestion


def _page(
    searcher,  # type: ignore[no-untyped-def]
    query: Query,
    found: list[tuple[int, float]],
    texts: Callable[[Sequence[str]], dict[str, str]],
) -> list[SearchHit]:
    """Hits for the (document number, score) pairs, with snippets of the words that
    matched."""
    stored = [(searcher.stored_fields(docnum), score) for docnum, score in found]
    bodies = texts([fields["attachment_id"] for fields, _score in stored])
    words, stems = _highlighted(searcher, query)
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


def _highlighted(searcher, query: Query) -> tuple[frozenset[str], frozenset[str]]:  # type: ignore[no-untyped-def]
    """The text field's words the query matches (patterns expanded) and its marked stems."""
    words, stems = set(), set()
    for fieldname, btext in query.existing_terms(searcher.reader(), phrases=True, expand=True):
        if fieldname != "text":
            continue
        term = btext.decode("utf-8") if isinstance(btext, bytes) else str(btext)
        if term.startswith(STEM_MARK):
            stems.add(term[len(STEM_MARK) :])
        else:
            words.add(term)
    return frozenset(words), frozenset(stems)


SNIPPET_CHARS = 240  # at most, per fragment
SNIPPET_CONTEXT = 60  # characters of context before the first match and after the last
SNIPPET_FRAGMENTS = 2


def _snippet(body: str, words: frozenset[str], stems: frozenset[str], language: str | None) -> str:
    """Up to two fragments of ``body`` around the words that matched, in text order, each
    word in ``<b>`` and the rest HTML-escaped; "" when no word of the query is found.

    A word matched through its stem ("developing" for "development") is marked as well:
    the document's own language stems it as the index did.
    """
    # Each word's folded form through the analysis cache: lookups in C, not a fold a word.
    tokens = _WORD.findall(body)
    folded = list(map(_FOLDED.__getitem__, tokens))
    hits = list(map(words.__contains__, folded))
    if stems and language in STEMMED:
        stem_of = _folded_stems(language)
        # A stem begins as its word does (Snowball changes endings): only words that begin
        # as one of the stems are stemmed.
        starts = tuple({s[:2] for s in stems})
        for place, word in enumerate(folded):
            if not hits[place] and word.startswith(starts):
                hits[place] = stem_of[tokens[place]] in stems
    if not any(hits):
        return ""
    marks = [
        (match.start(), match.end(), word)
        for match, word in zip(
            itertools.compress(_WORD.finditer(body), hits),
            itertools.compress(folded, hits),
            strict=True,
        )
    ]
    fragments: list[list[tuple[int, int, str]]] = []
    for mark in marks:
        current = fragments[-1] if fragments else None
        if current and mark[1] - current[0][0] <= SNIPPET_CHARS - 2 * SNIPPET_CONTEXT:
            current.append(mark)
        else:
            fragments.append([mark])
    # The fragments with the most different words (then the most matches), shown in order.
    best = sorted(
        range(len(fragments)),
        key=lambda i: (-len({m[2] for m in fragments[i]}), -len(fragments[i]), i),
    )[:SNIPPET_FRAGMENTS]
    return " ... ".join(_fragment(body, fragments[i]) for i in sorted(best))


def _fragment(body: str, marks: list[tuple[int, int, str]]) -> str:
    start = max(0, marks[0][0] - SNIPPET_CONTEXT)
    end = min(len(body), marks[-1][1] + SNIPPET_CONTEXT)
    # Start and end on whole words: after a space, before one (at most the context's length
    # to walk).
    while start < marks[0][0] and start > 0 and not body[start - 1].isspace():
        start += 1
    while end > marks[-1][1] and end < len(body) and not body[end].isspace():
        end -= 1
    parts, position = [], start
    for mark_start, mark_end, _word in marks:
        parts.append(_escape(body[position:mark_start]))
        parts.append("<b>" + _escape(body[mark_start:mark_end]) + "</b>")
        position = mark_end
    parts.append(_escape(body[position:end]))
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the index writer process ---------------------------------------------------------------
#
# Writing the index is pure Python and costs a few milliseconds a document. On the run's
# writer thread it held the interpreter for a second or more per batch, and the run loop,
# which feeds the extraction workers, stood still meanwhile. In a process of its own the
# documents are added while the run goes on, in the order they were sent, into one open
# Whoosh writer that commits every COMMIT_DOCS documents or COMMIT_SECONDS seconds (each
# commit merges segments, so committing every small batch cost half as much again). A batch
# is answered only by the commit that holds it: rows are marked indexed after that, never
# before.

COMMIT_DOCS = 2000
COMMIT_SECONDS = 20.0


def serve_writer(fd: int) -> None:
    """The child's entry point: add (number, docs, deletions) batches to the index, answer
    each with (number, error or None, CPU seconds) once committed; None means commit and
    stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    conn = Connection(fd)
    index = SearchIndex(Path(conn.recv()))
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
            conn.send((number, error, cpu))
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
        number, docs, deletions = message
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
    the batch took, done when the batch is committed."""

    def __init__(self, directory: Path) -> None:
        self._process, self._conn = child.start("pipeline.index", "serve_writer")
        self._conn.send(str(directory))
        self._waiting: dict[int, Future[float]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._numbers = itertools.count()
        self._reader = threading.Thread(target=self._read, name="index-results", daemon=True)
        self._reader.start()

    def submit(self, docs: list[IndexDoc], deletions: list[str]) -> Future[float]:
        future: Future[float] = Future()
        with self._lock:
            number = next(self._numbers)
            self._waiting[number] = future
        try:
            # A batch can fill the socket while the writer commits: the results reader must
            # not wait behind this send, so sending has a lock of its own.
            with self._send_lock:
                self._conn.send((number, docs, deletions))
        except OSError:
            with self._lock:
                self._waiting.pop(number, None)
            future.set_exception(RuntimeError("the index writer process is gone"))
        return future

    def _read(self) -> None:
        while True:
            try:
                number, error, cpu = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._waiting.pop(number, None)
            if future is None:
                continue
            if error is None:
                future.set_result(cpu)
            else:
                future.set_exception(RuntimeError(f"writing the search index failed: {error}"))
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("the index writer process ended"))

    def close(self, *, cancel: bool = False) -> None:
        child.stop(
            self._process, self._conn, self._send_lock, self._reader, cancel=cancel, timeout=600
        )
