"""Whoosh segments written from arrays: the index stage's bulk writer.

Whoosh's own writer makes a tuple of every posting (a word in a document), pools and sorts
the tuples, and hands them to its codec one at a time, asking the new segment for the
document's length at each: several microseconds a posting in Python, most of a bulk load's
time. This writer keeps a document's words as numbers in one array, sorts a segment's
postings at once with numpy, and gives the codec whole blocks. The files it writes are the
ones Whoosh's writer writes for the same documents, byte for byte (``tests/test_segments.py``
compares them; the one difference, chosen, is ``offsets_always``), so every reader, Whoosh's
and ``_ranker``, takes them as they are.

Beside a segment's Whoosh files the writer leaves its common words' array postings (the
format is ``_postings``').

Fields fed a list of words whose format stores positions as 32-bit numbers (the text field,
``_positions.WordPositions``) take the array path. The other fields (ids, the date, the
file name) have a few postings a document and go through Whoosh's ``field.index`` as before,
pooled per term here instead of sorted.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from whoosh.codec.whoosh3 import W3PostingsWriter
from whoosh.util.numeric import _length_byte_cache, byte_to_length
from whoosh.writing import SegmentWriter

from ...errors import FastPathUnsupportedError
from ._pickle import use_newest_protocol_for_postings
from ._postings import (
    ARRAY_POSTINGS_EXT,
    ARRAY_POSTINGS_MIN,
    ArrayPostingsWriter,
    read_postings,
)

log = logging.getLogger(__name__)

# This writer is a fast path, and so is the newest pickle protocol for its blocks: a rebuild's
# writer processes import this module without passing the fence's check (their parent did).
use_newest_protocol_for_postings()

# A field length's byte, as Whoosh's length_to_byte makes it (a logarithmic scale).
_LENGTH_STEPS = np.asarray(_length_byte_cache, dtype=np.int64)
_LONGEST = 106_374  # this length and longer all take byte 255


def _length_bytes(lengths: np.ndarray) -> np.ndarray:
    found = np.searchsorted(_LENGTH_STEPS, lengths, side="left")
    return np.where(lengths >= _LONGEST, 255, found).astype(np.uint8)


def _is_word_list_format(field: Any) -> bool:
    return getattr(field.format, "positions_dtype", None) == "<u4"


class _Words:
    """One list-valued field's words in a segment, as numbers in document order."""

    def __init__(self) -> None:
        # A word's number is its order of first appearance: a dict lookup per word, all in C.
        self.numbers: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        self.words = array("i")
        self.docnums = array("i")
        self.counts = array("i")

    def __len__(self) -> int:
        return len(self.words)

    def add(self, docnum: int, words: list[str]) -> None:
        self.words.extend(map(self.numbers.__getitem__, words))
        self.docnums.append(docnum)
        self.counts.append(len(words))


class _BlockPostings(W3PostingsWriter):
    """Whoosh's postings writer, fed a term's postings as arrays, a block at a time."""

    def write(
        self, ids: list[int], weights: list[float], values: list[bytes], length_bytes: list[int]
    ) -> None:
        # Whoosh writes a block when the next posting finds it full, and the last block at
        # finish_postings (marked last there): the same split.
        limit = self._blocklimit
        for start in range(0, len(ids), limit):
            if start:
                self._write_block()
            block = slice(start, start + limit)
            self._fill(ids[block], weights[block], values[block], length_bytes[block])

    def _fill(
        self, ids: list[int], weights: list[float], values: list[bytes], length_bytes: list[int]
    ) -> None:
        self._ids = ids
        self._weights = array("f", weights)
        self._values = [value for value in values if value]
        self._maxweight = max(0, max(weights))
        # The block's shortest and longest document, as Whoosh's writer reads them back from
        # the segment's length column: byte-rounded, and documents without a length left out.
        known = [b for b in length_bytes if b]
        if known:
            self._minlength = byte_to_length(min(known))
            self._maxlength = byte_to_length(max(known))


def offsets_always(writer: SegmentWriter) -> None:
    """Have a new segment's stored-fields column record where each document's fields start.

    Whoosh writes these offsets only for segments of more than 32,768 documents; for smaller
    ones every search that opens the segment rebuilds them in a Python loop over its
    documents (2 ms for 16,000), and a run commits a segment per 2,000 documents. Whoosh's
    own reader reads either layout (it is the layout of its large segments).
    """
    stored = getattr(writer.perdocwriter, "_colwriters", {}).get("_stored")
    column = getattr(stored, "_child", None)
    if column is not None and hasattr(column, "cutoff"):
        column.cutoff = 0


class ArraySegmentWriter(SegmentWriter):
    """A segment writer whose postings are built from arrays at flush.

    It takes documents as Whoosh's ``SegmentWriter`` does (``add_document``, and
    ``update_document`` through it) and writes the same segment, except that its stored
    fields always carry their offsets (``offsets_always``). When a commit merges other
    segments into this one, their postings come through Whoosh's pool, and so do this
    writer's: that flush is as slow as Whoosh's. Custom boosts (``_boost``), custom stored
    values, spelling fields and term vectors are not supported.
    """

    def __init__(self, ix: Any, **kwargs: Any) -> None:
        super().__init__(ix, **kwargs)
        for name, field in self.schema.items():
            if field.vector or field.separate_spelling():
                raise ValueError(f"field {name!r}: vectors and spelling fields are not supported")
        offsets_always(self)
        self._word_fields: dict[str, _Words] = {}
        self._postings: dict[str, dict[bytes, list[tuple[int, float, bytes]]]] = {}
        self._lengths: dict[str, dict[int, int]] = {}

    def add_document(self, **fields: Any) -> None:
        self._check_state()
        if any(name.startswith("_") for name in fields):
            raise ValueError("boosts and custom stored values are not supported")
        schema = self.schema
        names = sorted(fields)
        self._check_fields(schema, names)
        docnum = self.docnum
        perdoc = self.perdocwriter
        perdoc.start_doc(docnum)
        try:
            for name in names:
                value = fields[name]
                if value is None:
                    continue
                field = schema[name]
                length = 0
                if field.indexed:
                    length = self._index(name, field, docnum, value)
                    if length:
                        self._lengths.setdefault(name, {})[docnum] = length
                perdoc.add_field(name, field, value if field.stored else None, length)
                column = field.column_type
                if column:
                    perdoc.add_column_value(name, column, field.to_column_value(value))
        except BaseException:
            perdoc.cancel_doc()
            raise
        perdoc.finish_doc()
        self._added = True
        self.docnum += 1

    @property
    def word_count(self) -> int:
        """Words held for the array path so far: what the flush's memory grows with."""
        return sum(map(len, self._word_fields.values()))

    def _index(self, name: str, field: Any, docnum: int, value: Any) -> int:
        if isinstance(value, list) and _is_word_list_format(field):
            words = self._word_fields.get(name)
            if words is None:
                words = self._word_fields[name] = _Words()
            words.add(docnum, value)
            return len(value) if field.scorable else 0
        length = 0
        terms = self._postings.setdefault(name, {})
        for text, freq, weight, encoded in field.index(value):
            if field.scorable:
                length += freq
            found = terms.get(text)
            if found is None:
                terms[text] = [(docnum, weight, encoded)]
            else:
                found.append((docnum, weight, encoded))
        return length

    def per_document_reader(self) -> Any:
        # Only a merging flush reads it (through Whoosh's add_postings), asking the new
        # segment for a document's length at every posting, a seek and an unpack each: the
        # lengths are read whole instead, a column at a time.
        return _WholeLengths(super().per_document_reader())

    def _flush_segment(self) -> None:
        merged = bool(self.pool.current or self.pool.runs)
        if merged:
            # Segments were merged into this one (add_reader put their postings in Whoosh's
            # pool): ours join them there, and Whoosh writes the lot as it always does.
            for name, terms in self._terms():
                for text, docs, weights, values, _, _ in terms:
                    for posting in zip(docs, weights, values, strict=True):
                        self.pool.add((name, text, *posting))
            super()._flush_segment()
            self._array_postings_from_blocks()
            return
        self.perdocwriter.close()
        writer = self.fieldwriter
        codec = self.codec
        common = ArrayPostingsWriter()
        for name, terms in self._terms():
            writer.start_field(name, self.schema[name])
            postings = writer._postwriter = _BlockPostings(
                writer._postfile,
                blocklimit=codec._blocklimit,
                compression=codec._compression,
                inlinelimit=codec._inlinelimit,
            )
            for text, docs, weights, values, length_bytes, arrays in terms:
                writer.start_term(text)
                postings.write(docs, weights, values, length_bytes)
                if arrays is not None and len(docs) >= ARRAY_POSTINGS_MIN:
                    # Where the term's postings start: the key its term info holds too.
                    common.add(postings._startoffset, *arrays, values)
                writer.finish_term()
            writer.finish_field()
        writer.close()
        if common.offsets:
            common.write(self.newsegment.create_file(self.storage, ARRAY_POSTINGS_EXT))

    def _array_postings_from_blocks(self) -> None:
        """The array postings of a segment Whoosh wrote (a merging commit, a purge): its
        common words' blocks are read back once, so that the merged segment is searched as
        quickly as the ones it replaces."""
        common = ArrayPostingsWriter()
        terms = self.codec.terms_reader(self.storage, self.newsegment)
        try:
            for name in sorted(terms.indexed_field_names()):
                if name not in self.schema or not _is_word_list_format(self.schema[name]):
                    continue
                field = self.schema[name]
                for (fieldname, text), info in terms.items_from(name, b""):
                    if fieldname != name:
                        break
                    if info.doc_frequency() < ARRAY_POSTINGS_MIN or info.is_inlined():
                        continue
                    matcher = terms.matcher(name, text, field.format)
                    values: list[bytes] = []
                    common.add(info.extent()[0], *read_postings(matcher, values), values)
        except FastPathUnsupportedError as exc:
            # Blocks of a kind the reader does not know: the segment is searched from them.
            log.debug("no array postings for the merged segment: %s", exc)
            return
        finally:
            terms.close()
        if common.offsets:
            common.write(self.newsegment.create_file(self.storage, ARRAY_POSTINGS_EXT))

    def _terms(self) -> Iterator[tuple[str, Iterator[_TermPostings]]]:
        """Each field with postings, in name order, with its terms in the order of their
        bytes: (text, documents, weights, values, documents' length bytes)."""
        # A field without a posting gets no entry (Whoosh numbers the fields it writes).
        filled = {name for name, words in self._word_fields.items() if len(words)}
        filled |= {name for name, terms in self._postings.items() if terms}
        for name in sorted(filled):
            length_bytes = np.zeros(self.docnum, dtype=np.uint8)
            lengths = self._lengths.get(name)
            if lengths:
                docs = np.fromiter(lengths.keys(), dtype=np.int64, count=len(lengths))
                length_bytes[docs] = _length_bytes(
                    np.fromiter(lengths.values(), dtype=np.int64, count=len(lengths))
                )
            if name in self._word_fields:
                field = self.schema[name]
                yield name, _word_postings(self._word_fields[name], field, length_bytes)
            else:
                yield name, _pooled_postings(self._postings[name], length_bytes.tolist())


class _WholeLengths:
    """A per-document reader whose field lengths come from one read of each column."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._columns: dict[str, list[int]] = {}

    def doc_field_length(self, docnum: int, fieldname: str, default: int = 0) -> int:
        # Called once per posting: kept to a lookup and an index.
        column = self._columns.get(fieldname)
        if column is None:
            count = self._reader.doc_count_all()
            column = [self._reader.doc_field_length(n, fieldname, 0) for n in range(count)]
            self._columns[fieldname] = column
        return column[docnum]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


# A term's postings: (text, documents, weights, values, the documents' length bytes, and
# for the array path the documents and weights as arrays).
_TermPostings = tuple[
    bytes, list[int], list[float], list[bytes], list[int], tuple[np.ndarray, np.ndarray] | None
]


def _pooled_postings(
    terms: dict[bytes, list[tuple[int, float, bytes]]], length_bytes: list[int]
) -> Iterator[_TermPostings]:
    for text in sorted(terms):
        postings = terms[text]
        docs = [p[0] for p in postings]
        yield (
            text,
            docs,
            [p[1] for p in postings],
            [p[2] for p in postings],
            [length_bytes[d] for d in docs],
            None,
        )


def _stable_order(keys: np.ndarray, span: int) -> np.ndarray:
    """argsort(keys, kind="stable"), in passes of 16 bits: numpy sorts 16-bit keys by radix,
    in linear time, where wider ones take a merge sort."""
    order = np.argsort(keys.astype(np.uint16), kind="stable")
    shift = 16
    while span >> shift:
        high = (keys[order] >> shift).astype(np.uint16)
        order = order[np.argsort(high, kind="stable")]
        shift += 16
    return order


# The postings of a segment's words become Python objects (a bytes value, numbers) this
# many at a time, so that the flush's memory does not grow with the segment.
_CHUNK_POSTINGS = 100_000


def _word_postings(words: _Words, field: Any, length_bytes: np.ndarray) -> Iterator[_TermPostings]:
    texts = [word.encode("utf-8") for word in words.numbers]
    # Terms go to the file in the order of their bytes.
    by_text = sorted(range(len(texts)), key=texts.__getitem__)
    rank = np.empty(len(texts), dtype=np.int32)
    rank[by_text] = np.arange(len(texts), dtype=np.int32)

    # Memory: about 24 bytes a word at the peak, each array let go as soon as it has served
    # (the builder bounds a segment's words: REBUILD_SEGMENT_WORDS in ``_rebuild``).
    counts = np.frombuffer(words.counts, dtype=np.int32)
    term_of = rank[np.frombuffer(words.words, dtype=np.int32)]
    words.words = array("i")
    # Words are in document order and, within one, in place order: a stable sort by term
    # leaves each term's postings in document order with their positions ascending.
    order = _stable_order(term_of, len(texts))
    term_of = term_of[order]
    starts = np.repeat((np.cumsum(counts, dtype=np.int64) - counts).astype(np.int32), counts)
    place = np.arange(len(term_of), dtype=np.int32)
    place -= starts
    del starts
    place = place[order]
    if sys.byteorder != "little":
        place.byteswap(inplace=True)
    positions = place.tobytes()  # as little-endian 32-bit numbers (WordPositions)
    del place
    doc_of = np.repeat(np.frombuffer(words.docnums, dtype=np.int32), counts)[order]
    del order

    # A posting begins where the term or the document changes.
    begins = np.empty(len(term_of), dtype=bool)
    begins[:1] = True
    np.not_equal(term_of[1:], term_of[:-1], out=begins[1:])
    begins[1:] |= doc_of[1:] != doc_of[:-1]
    first = np.flatnonzero(begins)
    del begins
    if len(term_of) < 2**31 // 4:
        first = first.astype(np.int32)
    post_term = term_of[first]
    post_doc = doc_of[first]
    del term_of, doc_of
    # Each posting's words run from its first to the next posting's first (or the end).
    bounds = np.append(first, len(positions) // 4)
    del first
    boost = float(field.format.field_boost)

    term_edge = np.flatnonzero(post_term[1:] != post_term[:-1]) + 1
    term_first = np.concatenate(([0], term_edge)).tolist()
    term_end = np.concatenate((term_edge, [len(post_term)])).tolist()
    term = 0
    while term < len(term_first):
        # A chunk of whole terms, of at least one term and about _CHUNK_POSTINGS postings.
        low = term_first[term]
        last = max(term + 1, bisect.bisect_left(term_first, low + _CHUNK_POSTINGS, lo=term))
        high = term_end[last - 1]
        chunk_docs = post_doc[low:high]
        docs = chunk_docs.tolist()
        lengths = length_bytes[chunk_docs].tolist()
        edges = bounds[low : high + 1].astype(np.int64)
        weights = np.diff(edges) * boost
        scores = weights.tolist()
        offsets = (edges * 4).tolist()  # in bytes: 4 a position
        values = [positions[a:b] for a, b in itertools.pairwise(offsets)]
        for a, b in zip(term_first[term:last], term_end[term:last], strict=True):
            text = texts[by_text[int(post_term[a])]]
            a, b = a - low, b - low
            arrays = (chunk_docs[a:b], weights[a:b])
            yield text, docs[a:b], scores[a:b], values[a:b], lengths[a:b], arrays
        term = last


class SegmentBuilder:
    """A rebuild's segments: documents written into segments of at most ``segment_docs``
    documents and about ``segment_words`` words, left uncommitted for ``commit_segments``.

    ``fields`` makes a document's fields; ``options`` are the segment writer's."""

    def __init__(
        self,
        ix: Any,
        segment_docs: int,
        segment_words: int,
        *,
        fields: Callable[[Any], dict[str, object]],
        options: dict[str, Any],
    ) -> None:
        self._ix = ix
        self._segment_docs = segment_docs
        self._segment_words = segment_words
        self._make_fields = fields
        self._options = options
        self._writer: ArraySegmentWriter | None = None
        self._segments: list[object] = []
        self.added = 0

    def add(self, doc: Any) -> None:
        if self._writer is None:
            # No lock: the process that commits the segments holds it.
            self._writer = ArraySegmentWriter(self._ix, _lk=False, **self._options)
        self._writer.add_document(**self._make_fields(doc))
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


def commit_segments(holder: ArraySegmentWriter, segments: list[object]) -> None:
    """Commit the segments builders wrote, through the writer that holds the index's lock
    (and wrote none itself)."""
    holder._close_segment()
    holder._commit_toc(segments)
    holder._finish()
