"""The array-postings file: a segment's common words as plain arrays, beside Whoosh's files.

Beside a segment's Whoosh files the array segment writer (``_segments``) leaves one of its
own, ``<segment>.apx``: the document numbers and weights of the text field's common words
(``ARRAY_POSTINGS_MIN`` postings or more) as plain arrays, so that a search (``_ranker``)
reads a common word's postings with one slice instead of unpickling its blocks. A segment
without the file is read from its blocks. Whoosh ignores the file and deletes it with its
segment.

This module is the format, both ways (written at a flush, read at a search), and the
reading of Whoosh's own postings blocks into arrays that both sides need: so the writer and
the ranker import it, and not each other.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from whoosh.codec.whoosh3 import W3LeafMatcher

from ...errors import FastPathUnsupportedError

if TYPE_CHECKING:
    from whoosh.matching import Matcher
    from whoosh.reading import SegmentReader

ARRAY_POSTINGS_EXT = ".apx"
ARRAY_POSTINGS_MIN = 1024  # a word's postings in a segment: fewer are quick to unpickle
ARRAY_POSTINGS_MAGIC = b"KCVAPX01"
# After the magic: the number of words and of postings, then per word the offset of its
# postings in the segment's .pst file (ascending), its first posting and its count, then
# every posting's document number (int32), then every weight (float32, as Whoosh's blocks
# hold them). All little-endian.
ARRAY_POSTINGS_HEADER = len(ARRAY_POSTINGS_MAGIC) + 16


class ArrayPostingsWriter:
    """The common words' postings of a segment being flushed, written at its end."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.docs: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []

    def add(self, offset: int, docs: np.ndarray, weights: np.ndarray) -> None:
        self.offsets.append(offset)
        self.docs.append(docs.astype("<i4"))
        self.weights.append(weights.astype("<f4"))

    def write(self, file: Any) -> None:
        # The reader finds a word by binary search over the offsets. Terms are written one
        # after another, so they ascend already; sorting costs nothing and promises it.
        order = np.argsort(np.asarray(self.offsets, dtype="<i8"), kind="stable")
        offsets = np.asarray(self.offsets, dtype="<i8")[order]
        docs = [self.docs[i] for i in order]
        weights = [self.weights[i] for i in order]
        counts = np.fromiter(map(len, docs), dtype="<i8", count=len(docs))
        firsts = np.cumsum(counts) - counts
        file.write(ARRAY_POSTINGS_MAGIC)
        file.write(np.array([len(counts), int(counts.sum())], dtype="<i8").tobytes())
        file.write(offsets.tobytes())
        file.write(firsts.astype("<i8").tobytes())
        file.write(counts.tobytes())
        for column in (*docs, *weights):
            file.write(column.tobytes())
        file.close()


class ArrayPostings:
    """A segment's array postings: its common words' document numbers and weights, mapped
    read-only. A segment without the file, or with one that does not read as written, has
    none, and its words are read from their blocks."""

    NONE: ArrayPostings

    def __init__(self, buffer: mmap.mmap | None = None, words: int = 0, postings: int = 0) -> None:
        self._buffer = buffer
        if buffer is None:
            return
        at = ARRAY_POSTINGS_HEADER
        self._offsets = np.frombuffer(buffer, "<i8", words, at)
        self._firsts = np.frombuffer(buffer, "<i8", words, at + 8 * words)
        self._counts = np.frombuffer(buffer, "<i8", words, at + 16 * words)
        self._ids_at = at + 24 * words
        self._weights_at = self._ids_at + 4 * postings

    @classmethod
    def open(cls, reader: SegmentReader) -> ArrayPostings:
        try:
            folder = reader._storage.folder
            name = reader._segment.make_filename(ARRAY_POSTINGS_EXT)
        except AttributeError:  # not a segment of files in a folder
            return cls.NONE
        try:
            with open(os.path.join(folder, name), "rb") as file:
                buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # no such file (an older segment, a merged one), empty
            return cls.NONE
        size = len(buffer)
        if size < ARRAY_POSTINGS_HEADER or buffer[: len(ARRAY_POSTINGS_MAGIC)] != (
            ARRAY_POSTINGS_MAGIC
        ):
            return cls.NONE
        words, postings = np.frombuffer(buffer, "<i8", 2, len(ARRAY_POSTINGS_MAGIC)).tolist()
        if words < 0 or postings < 0 or size != ARRAY_POSTINGS_HEADER + 24 * words + 8 * postings:
            return cls.NONE
        return cls(buffer, words, postings)

    def find(self, info: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The document numbers (int64, within the segment) and weights (float64) of the
        term whose term info is ``info``, if the segment holds them as arrays."""
        if self._buffer is None:
            return None
        try:
            offset = info.extent()[0]
        except AttributeError:
            return None
        if offset is None:
            return None
        place = int(np.searchsorted(self._offsets, offset))
        if place == len(self._offsets) or int(self._offsets[place]) != offset:
            return None
        first, count = int(self._firsts[place]), int(self._counts[place])
        ids = np.frombuffer(self._buffer, "<i4", count, self._ids_at + 4 * first)
        weights = np.frombuffer(self._buffer, "<f4", count, self._weights_at + 4 * first)
        return ids.astype(np.int64), weights.astype(np.float64)


ArrayPostings.NONE = ArrayPostings()


def read_postings(
    matcher: Matcher,
    raw_values: list[bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A segment's postings of one term from its blocks: its document numbers (within the
    segment) and weights; the values join ``raw_values`` when it is given."""
    # A block's ids are stored as differences, its first counted from 0 in the segment:
    # joined, one running sum gives every id once each block's first difference is lowered
    # by the last id of the block before.
    deltas: list[int] = []
    weights: list[float] = []
    starts: list[int] = []  # where each block begins in the joined differences
    lowered: list[int] = []
    last = 0
    for block_deltas, block_weights, block_values, last_id in _blocks(matcher):
        starts.append(len(deltas))
        lowered.append(last)
        deltas.extend(block_deltas)
        weights.extend(block_weights)
        if raw_values is not None:
            raw_values.extend(block_values)
        last = last_id
    differences = np.array(deltas, dtype=np.int64)
    differences[starts] -= lowered
    return np.cumsum(differences), np.array(weights, dtype=np.float64)


def _blocks(matcher: Matcher) -> Iterable[tuple[Sequence[int], Sequence[float], list[bytes], int]]:
    """A term's postings a block at a time: (id differences, weights, values, last id).

    Reads the blocks as Whoosh's own matcher does (its whoosh3 codec: a pickled tuple of
    delta-encoded ids, weights and values per block), without a Python call per posting.
    """
    if type(matcher) is not W3LeafMatcher:
        raise FastPathUnsupportedError(f"postings of type {type(matcher).__name__}")
    try:
        while True:
            matcher._read_data()
            deltas, weights, values = matcher._data
            count = matcher._blocklength
            if weights is None:
                weights = (1.0,) * count
            elif isinstance(weights, float):
                weights = (weights,) * count
            yield deltas, weights, values, matcher._maxid
            if matcher._lastblock:
                return
            matcher._goto(matcher._nextoffset)
    except AttributeError as exc:
        raise FastPathUnsupportedError(f"postings blocks: {exc}") from exc
