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
ARRAY_POSTINGS_MIN = 64  # a word's postings in a segment: fewer are quick to unpickle
# Two versions, both read. Version 1 (KCVAPX01), after the magic: the number of words and of
# postings, then per word the offset of its postings in the segment's .pst file
# (ascending), its first posting and its count, then every posting's document number
# (int32), then every weight (float32, as Whoosh's blocks hold them). Version 2 (KCVAPX02,
# written since) adds the positions a phrase reads: the number of positions after the
# number of postings, per word where its positions begin (after the counts), per posting
# where its positions end within its word's (uint32, after the weights), and then every
# position (uint32). All little-endian.
ARRAY_POSTINGS_MAGIC = b"KCVAPX01"
ARRAY_POSITIONS_MAGIC = b"KCVAPX02"
ARRAY_POSTINGS_HEADER = len(ARRAY_POSTINGS_MAGIC) + 16
ARRAY_POSITIONS_HEADER = len(ARRAY_POSITIONS_MAGIC) + 24


class ArrayPostingsWriter:
    """The common words' postings of a segment being flushed, written at its end (with
    their positions when every word is given them: the text field's, ``WordPositions``)."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.docs: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.values: list[list[bytes]] | None = []

    def add(
        self, offset: int, docs: np.ndarray, weights: np.ndarray, values: list[bytes] | None = None
    ) -> None:
        """A word's postings; ``values`` its postings' encoded positions (32-bit numbers,
        little-endian, one run a posting), or None."""
        self.offsets.append(offset)
        self.docs.append(docs.astype("<i4"))
        self.weights.append(weights.astype("<f4"))
        if values is None or self.values is None:
            self.values = None
        else:
            self.values.append(values)

    def write(self, file: Any) -> None:
        # The reader finds a word by binary search over the offsets. Terms are written one
        # after another, so they ascend already; sorting costs nothing and promises it.
        order = np.argsort(np.asarray(self.offsets, dtype="<i8"), kind="stable")
        offsets = np.asarray(self.offsets, dtype="<i8")[order]
        docs = [self.docs[i] for i in order]
        weights = [self.weights[i] for i in order]
        counts = np.fromiter(map(len, docs), dtype="<i8", count=len(docs))
        firsts = np.cumsum(counts) - counts
        words = [] if self.values is None else [self.values[i] for i in order]
        ends: list[np.ndarray] = []
        positions: list[bytes] = []
        for values in words:
            lengths = np.fromiter(map(len, values), dtype="<i8", count=len(values)) // 4
            ends.append(np.cumsum(lengths).astype("<u4"))
            positions.append(b"".join(values))
        placed = np.fromiter((len(run) // 4 for run in positions), dtype="<i8", count=len(words))
        if self.values is None:
            file.write(ARRAY_POSTINGS_MAGIC)
            file.write(np.array([len(counts), int(counts.sum())], dtype="<i8").tobytes())
        else:
            file.write(ARRAY_POSITIONS_MAGIC)
            header = [len(counts), int(counts.sum()), int(placed.sum())]
            file.write(np.array(header, dtype="<i8").tobytes())
        file.write(offsets.tobytes())
        file.write(firsts.astype("<i8").tobytes())
        file.write(counts.tobytes())
        if self.values is not None:
            file.write((np.cumsum(placed) - placed).astype("<i8").tobytes())
        for column in (*docs, *weights, *ends):
            file.write(column.tobytes())
        for run in positions:
            file.write(run)
        file.close()


class ArrayPostings:
    """A segment's array postings: its common words' document numbers and weights (and in
    version 2 their positions), mapped read-only. A segment without the file, or with one
    that does not read as written, has none, and its words are read from their blocks."""

    NONE: ArrayPostings

    def __init__(
        self, buffer: mmap.mmap | None = None, words: int = 0, postings: int = 0, placed: int = -1
    ) -> None:
        self._buffer = buffer
        self.has_positions = placed >= 0
        if buffer is None:
            return
        at = ARRAY_POSITIONS_HEADER if self.has_positions else ARRAY_POSTINGS_HEADER
        self._offsets = np.frombuffer(buffer, "<i8", words, at)
        self._firsts = np.frombuffer(buffer, "<i8", words, at + 8 * words)
        self._counts = np.frombuffer(buffer, "<i8", words, at + 16 * words)
        if self.has_positions:
            self._placed_firsts = np.frombuffer(buffer, "<i8", words, at + 24 * words)
            at += 8 * words
        self._ids_at = at + 24 * words
        self._weights_at = self._ids_at + 4 * postings
        self._ends_at = self._weights_at + 4 * postings
        self._positions_at = self._ends_at + 4 * postings

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
        magic = buffer[: len(ARRAY_POSTINGS_MAGIC)]
        if magic == ARRAY_POSTINGS_MAGIC and size >= ARRAY_POSTINGS_HEADER:
            words, postings = np.frombuffer(buffer, "<i8", 2, len(magic)).tolist()
            placed, expected = -1, ARRAY_POSTINGS_HEADER + 24 * words + 8 * postings
        elif magic == ARRAY_POSITIONS_MAGIC and size >= ARRAY_POSITIONS_HEADER:
            words, postings, placed = np.frombuffer(buffer, "<i8", 3, len(magic)).tolist()
            expected = ARRAY_POSITIONS_HEADER + 32 * words + 12 * postings + 4 * placed
        else:
            return cls.NONE
        if min(words, postings) < 0 or size != expected:
            return cls.NONE
        return cls(buffer, words, postings, placed)

    def _place(self, info: Any) -> int | None:
        """Where the word whose term info is ``info`` is among the file's, if it is."""
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
        return place

    def find(self, info: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The document numbers (int64, within the segment) and weights (float64) of the
        term whose term info is ``info``, if the segment holds them as arrays."""
        found = self.placed(info, positions=False)
        if found is None:
            return None
        return found[0].astype(np.int64), found[1].astype(np.float64)

    def placed(
        self, info: Any, *, positions: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The term's postings as the file holds them, without a copy: document numbers
        (int32), weights (float32) and, when asked (None when not), where each posting's
        positions end (uint32) and the positions (uint32); None if the file does not hold
        them (the word is not common, or the file is of version 1 and positions are asked)."""
        if positions and not self.has_positions:
            return None
        place = self._place(info)
        if place is None:
            return None
        assert self._buffer is not None
        first, count = int(self._firsts[place]), int(self._counts[place])
        ids = np.frombuffer(self._buffer, "<i4", count, self._ids_at + 4 * first)
        weights = np.frombuffer(self._buffer, "<f4", count, self._weights_at + 4 * first)
        if not positions:
            return ids, weights, _NONE, _NONE
        ends = np.frombuffer(self._buffer, "<u4", count, self._ends_at + 4 * first)
        placed = int(ends[-1]) if count else 0
        start = self._positions_at + 4 * int(self._placed_firsts[place])
        return ids, weights, ends, np.frombuffer(self._buffer, "<u4", placed, start)


_NONE = np.zeros(0, dtype="<u4")
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
