"""Ranking at size: Whoosh's BM25F scores, computed a posting list at a time with numpy.

Whoosh scores one posting at a time through a tree of Python matchers (about a microsecond
a posting per query term), then walks the matches again to count them: at 100,000 CVs a
common word ("Python" is in a third of them) costs hundreds of milliseconds. Here each
term's postings are read a block at a time straight from the segment files (a common word's
from the segment's array postings, ``_postings``, written beside it by ``_segments``), scored as
arrays with the very formula and statistics Whoosh uses, and combined into one dense score
array per query node; the total is the count of that array's matches. The results are
Whoosh's own (``tests/test_ranking.py`` compares them, score for score, on every kind of
query the parser makes).

Each node of a query holds a score and a flag for every document of the index: 9 bytes a
document (0.9 MB at 100,000 CVs), freed as the query is combined. A ranker lives with its
open searcher and keeps, bounded, its terms' scores (``SCORED_POSTINGS``) and, for phrases,
its words' positions (``PLACED_BYTES``); a phrase's positions are matched for the documents
holding every word only, whether the field keeps them as arrays (``WordPositions``) or as
Whoosh's pickled lists (the short fields).

A query node of a kind not handled here (a sloppy phrase such as ``"a b"~3``, a span
query) is evaluated by Whoosh's own matcher for that node only. Anything this module cannot
read (another codec, a Whoosh version whose segment files differ) raises
``FastPathUnsupportedError``, and the caller searches the way Whoosh does.

Nothing outside ``pipeline.search`` uses this module (through ``_whoosh``'s fence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, _lenfield
from whoosh.formats import Positions
from whoosh.matching.wrappers import FilterMatcher
from whoosh.query import (
    And,
    AndMaybe,
    AndNot,
    ConstantScoreQuery,
    Every,
    Not,
    NullQuery,
    NumericRange,
    Or,
    Phrase,
    Prefix,
    Query,
    Term,
    Wildcard,
)
from whoosh.query.terms import MultiTerm
from whoosh.scoring import BM25F
from whoosh.util.numeric import byte_to_length

from ...errors import FastPathUnsupportedError
from ._postings import ArrayPostings, read_postings

if TYPE_CHECKING:
    from whoosh.reading import SegmentReader
    from whoosh.searching import Searcher

# Whoosh keeps a field's length in a document as one byte; this is its decoding.
_LENGTHS = np.array([byte_to_length(b) or 0 for b in range(256)], dtype=np.float64)


# Queries whose matcher is Whoosh's "or the terms this pattern expands to".
_EXPANDING = (MultiTerm.matcher, Prefix.matcher, Wildcard.matcher)


@dataclass(frozen=True)
class Ranked:
    total: int
    top: list[tuple[int, float]]  # (document number, score), best first


@dataclass
class _Postings:
    ids: np.ndarray  # document numbers across the whole index, ascending
    weights: np.ndarray  # the term's frequency in each document
    values: list[bytes] | None  # encoded positions, when asked for


@dataclass
class _Placed:
    """A word's postings with their positions, as a ranker keeps them for phrases: every
    posting's positions one after another in ``positions``, the k-th ending at ``ends[k]``."""

    ids: np.ndarray  # int32, within the index
    weights: np.ndarray  # float32, as the postings hold them
    ends: np.ndarray  # uint32
    positions: np.ndarray  # as the field stores them (WordPositions: uint32)

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.weights.nbytes + self.ends.nbytes + self.positions.nbytes


class _Node:
    """A query node's matches: a mask over every document, and their scores."""

    __slots__ = ("mask", "scores")

    def __init__(self, mask: np.ndarray, scores: np.ndarray) -> None:
        self.mask = mask
        self.scores = scores


def rank(searcher: Searcher, query: Query, limit: int) -> Ranked:
    return Ranker(searcher).rank(query, limit)


# Postings whose scores a ranker keeps, all terms together (16 bytes each: 1,000,000 are
# 16 MB; a word in every CV of 100,000 is 100,000 of them). Each idle searcher of the pool
# (at most two a folder, eight folders) keeps its own.
SCORED_POSTINGS = 1_000_000
# Bytes of positions a ranker keeps for phrases, all words together (4 a position, 12 a
# posting), the least recently used word dropped first. Reading a word's positions means
# unpickling every block of its postings (most of a new phrase's time at 100,000 CVs), and
# the words of phrases recur: at 100,000 CVs the common ones fill about 30 MB, with which a
# new phrase costs a third of what it does without.
PLACED_BYTES = 32_000_000


class Ranker:
    """Ranks queries on one open searcher. A term's scored postings are kept for the
    ranker's life: a spelling correction ranked after the query it corrects shares most of
    its terms (the stems of "Kubernets" are those of "Kubernetes")."""

    def __init__(self, searcher: Searcher) -> None:
        weighting = searcher.weighting
        if type(weighting) is not BM25F or weighting._field_B:
            raise FastPathUnsupportedError("only Whoosh's default BM25F is reproduced")
        self.searcher = searcher
        self.schema = searcher.schema
        self.b = weighting.B
        self.k1 = weighting.K1
        self._scored: dict[tuple[str, bytes], tuple[np.ndarray, np.ndarray] | None] = {}
        self._scored_postings = 0
        self._placed: dict[tuple[str, bytes], _Placed | None] = {}
        self._placed_bytes = 0
        self.placed_bytes_kept = PLACED_BYTES
        self.size = int(searcher.doc_count_all())
        self.leaves = list(searcher.leaf_searchers())
        self.readers = [(sub.reader(), offset) for sub, offset in self.leaves]
        alive = np.ones(self.size, dtype=bool)
        for reader, offset in self.readers:
            if reader.has_deletions():
                try:
                    deleted = np.fromiter(reader.deleted_docs_set, dtype=np.int64)
                except AttributeError as exc:
                    raise FastPathUnsupportedError(f"deletions: {exc}") from exc
                alive[deleted + offset] = False
        self.alive = alive
        self._lengths: dict[str, np.ndarray] = {}
        self._array_files: dict[int, ArrayPostings] = {}

    def rank(self, query: Query, limit: int) -> Ranked:
        """The ``limit`` best documents for ``query`` (ties: lower document number first)
        and the number of documents it matches."""
        node = self.evaluate(query)
        matched = np.flatnonzero(node.mask & self.alive)
        total = int(matched.size)
        if not total or limit <= 0:
            return Ranked(total, [])
        scores = node.scores[matched]
        if total > limit:
            # Keep every document scoring at least the limit-th best, ties included, then
            # order them exactly: best first, the lower document number first among equals
            # (Whoosh's order).
            threshold = np.partition(scores, total - limit)[total - limit]
            keep = scores >= threshold
            matched, scores = matched[keep], scores[keep]
        order = np.lexsort((matched, -scores))[:limit]
        return Ranked(total, [(int(matched[i]), float(scores[i])) for i in order])

    # -- combining nodes -----------------------------------------------------------------

    def evaluate(self, query: Query) -> _Node:
        kind = type(query)
        if kind is Term:
            return self._term(query)
        if kind in (And, Or):
            if not query.subqueries:
                return self._empty()
            if len(query.subqueries) == 1:
                # Whoosh matches a lone subquery by itself, without the compound's boost.
                return self.evaluate(query.subqueries[0])
            if kind is Or and (query.scale or query.minmatch):
                raise FastPathUnsupportedError("Or with a coordination bonus or minimum match")
            nodes = [self.evaluate(sub) for sub in query.subqueries]
            mask = nodes[0].mask.copy()
            scores = nodes[0].scores.copy()
            for node in nodes[1:]:
                if kind is And:
                    mask &= node.mask
                else:
                    mask |= node.mask
                scores += node.scores
            return self._boosted(_Node(mask, scores), query.boost)
        if kind is AndNot:
            positive, negative = self.evaluate(query.a), self.evaluate(query.b)
            return _Node(positive.mask & ~negative.mask, positive.scores)
        if kind is AndMaybe:
            required, optional = self.evaluate(query.a), self.evaluate(query.b)
            return _Node(required.mask, required.scores + optional.scores * required.mask)
        if kind is Not:
            # Whoosh's inverse matcher matches every document the child does not, each with
            # a weight (and score) of 1.
            child = self.evaluate(query.query)
            return _Node(~child.mask, np.where(child.mask, 0.0, 1.0))
        if kind is ConstantScoreQuery:
            child = self.evaluate(query.child)
            return _Node(child.mask, np.where(child.mask, query.score, 0.0))
        if kind is Phrase and query.slop == 1:
            return self._phrase(query)
        if kind is Every:
            return self._every(query.fieldname, query.boost)
        if kind in (Prefix, Wildcard) and query.text == ("" if kind is Prefix else "*"):
            return self._every(query.fieldname, query.boost)  # as Whoosh reads these
        if isinstance(query, MultiTerm) and type(query).matcher in _EXPANDING:
            return self._multiterm(query)
        if isinstance(query, NumericRange) and hasattr(query, "_compile_query"):
            # A number or date range is the terms of its numeric tiers, or'ed: Whoosh's own
            # matcher compiles it the same way (``--since`` is one).
            return self.evaluate(query._compile_query(self.searcher.reader()))
        if query is NullQuery:
            return self._empty()
        return self._by_whoosh(query)

    def _empty(self) -> _Node:
        return _Node(np.zeros(self.size, dtype=bool), np.zeros(self.size))

    def _boosted(self, node: _Node, boost: float) -> _Node:
        if boost != 1.0:
            node.scores *= boost
        return node

    def _from_postings(self, ids: np.ndarray, scores: np.ndarray) -> _Node:
        mask = np.zeros(self.size, dtype=bool)
        mask[ids] = True
        dense = np.zeros(self.size)
        dense[ids] = scores
        return _Node(mask, dense)

    # -- leaves ----------------------------------------------------------------------------

    def _term(self, query: Term) -> _Node:
        if query.fieldname not in self.schema:
            return self._empty()
        field = self.schema[query.fieldname]
        try:
            btext = field.to_bytes(query.text)
        except ValueError:
            return self._empty()
        key = (query.fieldname, btext)
        if key not in self._scored:
            postings = self._postings(query.fieldname, btext)
            if postings is not None:
                self._scored_postings += len(postings.ids)
            if self._scored_postings > SCORED_POSTINGS:
                # A ranker lives as long as its open searcher: its terms' scores are kept
                # for the searches after, bounded.
                self._scored.clear()
                self._scored_postings = 0 if postings is None else len(postings.ids)
            self._scored[key] = (
                None
                if postings is None
                else (postings.ids, self._scores(query.fieldname, btext, postings))
            )
        scored = self._scored[key]
        if scored is None:
            return self._empty()
        return self._boosted(self._from_postings(*scored), query.boost)

    def _every(self, fieldname: str | None, boost: float) -> _Node:
        # Every document (no field), or every document with a word in the field; each
        # scores the query's boost.
        if fieldname in (None, "", "*"):
            mask = self.alive.copy()
        elif fieldname in self.schema:
            mask = self._field_lengths(fieldname) > 0
        else:
            return self._empty()
        return _Node(mask, np.where(mask, boost, 0.0))

    def _multiterm(self, query: MultiTerm) -> _Node:
        # As Whoosh does, segment by segment: the terms the pattern expands to are or'ed,
        # and a single one is matched alone (Whoosh drops the query's boost then; so do we,
        # for the same order).
        fieldname = query.field()
        if fieldname not in self.schema:
            return self._empty()
        result = self._empty()
        for reader, offset in self.readers:
            texts = [t for t in query._btexts(reader) if t]
            if not texts:
                continue
            boost = query.boost if len(texts) > 1 else 1.0
            for btext in texts:
                postings = self._postings(fieldname, btext, only=(reader, offset))
                if postings is None:
                    continue
                scores = self._scores(fieldname, btext, postings) * boost
                result.mask[postings.ids] = True
                result.scores[postings.ids] += scores
        return result

    def _phrase(self, query: Phrase) -> _Node:
        """Documents holding the words one after another, scored as the words' sum (Whoosh
        scores a phrase by the intersection of its terms)."""
        fieldname = query.fieldname
        if fieldname not in self.schema:
            return self._empty()
        field = self.schema[fieldname]
        dtype = getattr(field.format, "positions_dtype", None)
        # Whoosh's own pickled positions (the short fields, file_name and candidate_title;
        # the text of an index built before WordPositions) are decoded here too, a call a
        # document but only for the documents holding every word: Whoosh's phrase matcher
        # walks them a posting at a time and took half of a new phrase's time at 100,000.
        pickled = dtype is None and type(field.format) is Positions
        if dtype is None and not pickled:
            # Another positions format, or none at all (Whoosh raises its own error):
            # Whoosh's own phrase matcher.
            return self._by_whoosh(query)
        words = []
        for word in query.words:
            try:
                words.append(field.to_bytes(word))
            except ValueError:
                return self._empty()
        lists: list[_Postings | _Placed] = []
        for btext in words:
            found = (
                self._postings(fieldname, btext, values=True)
                if pickled
                else self._placed_postings(fieldname, btext, np.dtype(dtype))
            )
            if found is None:
                return self._empty()
            lists.append(found)
        common = lists[0].ids
        for postings in lists[1:]:
            common = common[_within(common, postings.ids)]
        if not common.size:
            return self._empty()
        rows = [np.searchsorted(p.ids, common) for p in lists]
        # Every position of every word as one number, document * stride + position; a
        # phrase starts where word k stands k places after the first word, in the same
        # document.
        keyed = []
        for postings, row in zip(lists, rows, strict=True):
            if isinstance(postings, _Placed):
                # The rows' stretches of the kept positions, gathered in one index.
                ends = postings.ends[row].astype(np.int64)
                counts = ends - np.where(row > 0, postings.ends[row - 1], 0).astype(np.int64)
                gather = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(
                    ends - np.cumsum(counts), counts
                )
                position = postings.positions[gather].astype(np.int64)
            else:
                assert postings.values is not None
                values = list(map(postings.values.__getitem__, row.tolist()))
                decoded = list(map(field.format.decode_positions, values))
                counts = np.fromiter(map(len, decoded), dtype=np.int64, count=len(decoded))
                position = np.fromiter(
                    (p for places in decoded for p in places), dtype=np.int64, count=counts.sum()
                )
            keyed.append((np.repeat(np.arange(row.size, dtype=np.int64), counts), position))
        stride = max(int(position.max()) for _, position in keyed) + len(keyed) + 1
        starts = keyed[0][0] * stride + keyed[0][1]
        for k, (document, position) in enumerate(keyed[1:], start=1):
            starts = starts[_within(starts + k, document * stride + position)]
            if not starts.size:
                break
        keep = np.zeros(common.size, dtype=bool)
        keep[starts // stride] = True
        ids = common[keep].astype(np.int64)
        total = np.zeros(ids.size)
        for btext, postings, row in zip(words, lists, rows, strict=True):
            picked = _Postings(ids, postings.weights[row[keep]].astype(np.float64), None)
            total += self._scores(fieldname, btext, picked)
        return self._boosted(self._from_postings(ids, total), query.boost)

    def _placed_postings(self, fieldname: str, btext: bytes, dtype: np.dtype) -> _Placed | None:
        """A word's postings with their positions, kept for the ranker's life (bounded)."""
        key = (fieldname, btext)
        if key in self._placed:
            placed = self._placed.pop(key)  # the most recently used is last
            self._placed[key] = placed
            return placed
        postings = self._postings(fieldname, btext, values=True)
        placed = None
        if postings is not None:
            assert postings.values is not None
            lengths = np.fromiter(map(len, postings.values), np.int64, len(postings.values))
            placed = _Placed(
                postings.ids.astype(np.int32),
                postings.weights.astype(np.float32),
                np.cumsum(lengths // dtype.itemsize).astype(np.uint32),
                np.frombuffer(b"".join(postings.values), dtype=dtype),
            )
            self._placed_bytes += placed.nbytes
            while self._placed_bytes > self.placed_bytes_kept and self._placed:
                dropped = self._placed.pop(next(iter(self._placed)))
                self._placed_bytes -= 0 if dropped is None else dropped.nbytes
        self._placed[key] = placed
        return placed

    def _by_whoosh(self, query: Query) -> _Node:
        """Whoosh's own matcher for one node: exact, at Whoosh's speed."""
        ids: list[int] = []
        scores: list[float] = []
        for sub, offset in self.leaves:
            matcher = query.matcher(sub, sub.context())
            while matcher.is_active():
                ids.append(matcher.id() + offset)
                scores.append(matcher.score())
                matcher.next()
        return self._from_postings(np.array(ids, dtype=np.int64), np.array(scores))

    # -- postings and scores -----------------------------------------------------------------

    def _postings(
        self,
        fieldname: str,
        btext: bytes,
        *,
        values: bool = False,
        only: tuple[SegmentReader, int] | None = None,
    ) -> _Postings | None:
        # Segment by segment, in order: a common word from the segment's array postings
        # (one slice each, when its positions are not asked for), any other from its blocks.
        ids: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        raw_values: list[bytes] | None = [] if values else None
        for reader, offset in [only] if only else self.readers:
            if (fieldname, btext) not in reader:
                continue
            arrays = None if values else self._arrays(reader).find(reader, fieldname, btext)
            if arrays is not None:
                segment_ids, segment_weights = arrays
            else:
                matcher = reader.postings(fieldname, btext)
                if isinstance(matcher, FilterMatcher):
                    matcher = matcher.child  # deletions: the alive mask takes them out
                segment_ids, segment_weights = read_postings(matcher, raw_values)
            ids.append(segment_ids + offset)
            weights.append(segment_weights)
        if not ids:
            return None
        if len(ids) == 1:
            return _Postings(ids[0], weights[0], raw_values)
        return _Postings(np.concatenate(ids), np.concatenate(weights), raw_values)

    def _arrays(self, reader: SegmentReader) -> ArrayPostings:
        found = self._array_files.get(id(reader))
        if found is None:
            found = self._array_files[id(reader)] = ArrayPostings.open(reader)
        return found

    def _scores(self, fieldname: str, btext: bytes, postings: _Postings) -> np.ndarray:
        field = self.schema[fieldname]
        if not field.scorable:
            return postings.weights.astype(np.float64)  # Whoosh's WeightScorer
        text = field.from_bytes(btext)
        idf = self.searcher.idf(fieldname, text)
        avgfl = self.searcher.avg_field_length(fieldname) or 1
        lengths = self._field_lengths(fieldname)[postings.ids]
        tf = postings.weights
        k1, b = self.k1, self.b
        return idf * ((tf * (k1 + 1)) / (tf + k1 * ((1 - b) + b * lengths / avgfl)))

    def _field_lengths(self, fieldname: str) -> np.ndarray:
        if fieldname not in self._lengths:
            parts = []
            for reader, _offset in self.readers:
                count = reader.doc_count_all()
                column = _length_bytes(reader, fieldname, count)
                parts.append(_LENGTHS[column])
            self._lengths[fieldname] = np.concatenate(parts) if parts else np.zeros(0)
        return self._lengths[fieldname]


def _within(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in ``ordered`` (sorted ascending): a binary search each, where
    np.isin hashes or sorts both (three times slower on a phrase's positions)."""
    if not ordered.size:
        return np.zeros(values.size, dtype=bool)
    places = np.searchsorted(ordered, values)
    return ordered[np.minimum(places, ordered.size - 1)] == values


def _length_bytes(reader: SegmentReader, fieldname: str, count: int) -> np.ndarray:
    """A segment's one-byte field lengths, read as one slice of its column file."""
    try:
        column = reader._perdoc._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
        if column is None:
            return np.zeros(count, dtype=np.uint8)
        stored = min(column._count, count)
        raw = column._dbfile.get(column._basepos, stored) if stored else b""
    except AttributeError as exc:
        raise FastPathUnsupportedError(f"field lengths: {exc}") from exc
    lengths = np.zeros(count, dtype=np.uint8)
    lengths[:stored] = np.frombuffer(raw, dtype=np.uint8)
    return lengths
