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

A query node is sparse (the documents it matches and their scores: a term, a phrase, an
intersection) or, for what can match much of the index (a large union, NOT), dense: a flag
and a score for every document, 9 bytes a document (0.9 MB at 100,000 CVs). The rankers of
a process keep, bounded together (``Kept``), their terms' scores and, for phrases, their
words' positions; a phrase's positions are matched for the documents holding every word
only, whether the field keeps them as arrays (``WordPositions``, common words' read from
the array postings) or as Whoosh's pickled lists (the short fields).

A query node of a kind not handled here (a sloppy phrase such as ``"a b"~3``, a span
query) is evaluated by Whoosh's own matcher for that node only. Anything this module cannot
read (another codec, a Whoosh version whose segment files differ) raises
``FastPathUnsupportedError``, and the caller searches the way Whoosh does.

Nothing outside ``pipeline.search`` uses this module (through ``_whoosh``'s fence).
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import md5
from math import log
from typing import TYPE_CHECKING, Any

import numpy as np
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, W3Codec, W3TermInfo, _lenfield
from whoosh.filedb.filetables import OrderedHashReader, md5_hash
from whoosh.formats import Positions
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
    from whoosh.matching import Matcher
    from whoosh.reading import SegmentReader
    from whoosh.searching import Searcher

# Whoosh keeps a field's length in a document as one byte; this is its decoding.
_LENGTHS = np.array([byte_to_length(b) or 0 for b in range(256)], dtype=np.float64)
# Whoosh's hash file (whoosh.filedb.filetables): a slot is (hash, where the item is), an item
# starts with its key's and value's lengths.
_POINTER = struct.Struct("!Iq")
_LENGTHS_PAIR = struct.Struct("!ii")


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
    """A query node's matches, in one of two shapes. Sparse (``ids`` set): the matching
    documents' numbers, ascending, and their scores, one each: what a term, a phrase and an
    intersection give, costing their postings only. Dense (``mask`` set): a flag and a score
    for every document of the index, for what can match a large part of it (a union, NOT,
    every document). A dense node's scores are 0 wherever its mask is False."""

    __slots__ = ("ids", "mask", "scores")

    def __init__(
        self, scores: np.ndarray, *, ids: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> None:
        self.ids = ids
        self.mask = mask
        self.scores = scores

    @property
    def empty(self) -> bool:
        return self.ids is not None and not self.ids.size


_NO_IDS = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0)
_NO_IDS.flags.writeable = False
_NO_SCORES.flags.writeable = False
_EMPTY = _Node(_NO_SCORES, ids=_NO_IDS)

# A union of sparse nodes stays sparse (sorted at once) while its postings are fewer than
# the index's documents over this; past it a dense array is filled instead.
_SPARSE_UNION = 8


def rank(searcher: Searcher, query: Query, limit: int) -> Ranked:
    return Ranker(searcher).rank(query, limit)


class Kept:
    """What rankers keep between searches (a term's scores, a word's positions), for every
    ranker of the process together: at most ``budget`` bytes, the least recently used
    dropped first, so that a search worker holding many integrations' searchers holds no
    more than one would. A ranker's entries go with it (``forget``). Thread-safe: with
    ``--search-workers 0`` the server's threads search at once."""

    # What an absent term costs to remember: its key, about.
    ABSENT = 100

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: dict[tuple[int, str, bytes], tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[int, str, bytes]) -> tuple[bool, Any]:
        """(whether the key is kept, its value); the key becomes the most recently used."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return False, None
            self._items[key] = item  # the most recently used is last
            return True, item[0]

    def put(self, key: tuple[int, str, bytes], value: Any, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget and len(self._items) > 1:
                self.used -= self._items.pop(next(iter(self._items)))[1]

    def forget(self, owner: int) -> None:
        with self._lock:
            for key in [key for key in self._items if key[0] == owner]:
                self.used -= self._items.pop(key)[1]


# The scores of the terms searched lately, 16 bytes a posting (a word in every CV of 100,000
# is 1.6 MB), and the positions of the phrases' words (4 bytes a position, 12 a posting),
# for the whole process. At 100,000 CVs a new query's terms are mostly kept already: the
# words of recruiters' queries recur.
KEPT_SCORES = Kept(64_000_000)
KEPT_POSITIONS = Kept(64_000_000)
_RANKERS = itertools.count()


class Ranker:
    """Ranks queries on one open searcher. A term's scored postings are kept for the
    ranker's life (bounded): a spelling correction ranked after the query it corrects shares
    most of its terms (the stems of "Kubernets" are those of "Kubernetes"), and the words of
    recruiters' queries recur."""

    def __init__(self, searcher: Searcher) -> None:
        weighting = searcher.weighting
        if type(weighting) is not BM25F or weighting._field_B:
            raise FastPathUnsupportedError("only Whoosh's default BM25F is reproduced")
        self.searcher = searcher
        self.schema = searcher.schema
        self.b = weighting.B
        self.k1 = weighting.K1
        self.owner = next(_RANKERS)
        self.kept_scores = KEPT_SCORES
        self.kept_positions = KEPT_POSITIONS
        weakref.finalize(self, KEPT_SCORES.forget, self.owner)
        weakref.finalize(self, KEPT_POSITIONS.forget, self.owner)
        self.size = int(searcher.doc_count_all())
        self.leaves = list(searcher.leaf_searchers())
        self.readers = [(sub.reader(), offset) for sub, offset in self.leaves]
        self._tables = [_TermTable.open(reader) for reader, _offset in self.readers]
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
        self._average_lengths: dict[str, float] = {}
        self._idfs: dict[tuple[str, bytes], float] = {}
        self._norms: dict[str, np.ndarray] = {}
        self._array_files: dict[int, ArrayPostings] = {}

    def rank(self, query: Query, limit: int) -> Ranked:
        """The ``limit`` best documents for ``query`` (ties: lower document number first)
        and the number of documents it matches."""
        node = self.evaluate(query)
        if node.ids is not None:
            alive = self.alive[node.ids]
            matched, scores = node.ids[alive], node.scores[alive]
        else:
            assert node.mask is not None
            matched = np.flatnonzero(node.mask & self.alive)
            scores = node.scores[matched]
        total = int(matched.size)
        if not total or limit <= 0:
            return Ranked(total, [])
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
    #
    # Scores are summed in the order of the query's subqueries, as Whoosh's matchers and
    # the dense arrays before did, so that every score is the same to the last bit.

    def evaluate(self, query: Query) -> _Node:
        kind = type(query)
        if kind is Term:
            return self._term(query)
        if kind in (And, Or):
            if not query.subqueries:
                return _EMPTY
            if len(query.subqueries) == 1:
                # Whoosh matches a lone subquery by itself, without the compound's boost.
                return self.evaluate(query.subqueries[0])
            if kind is Or and (query.scale or query.minmatch):
                raise FastPathUnsupportedError("Or with a coordination bonus or minimum match")
            if kind is And:
                return self._boosted(self._intersection(query.subqueries), query.boost)
            return self._boosted(
                self._union([self.evaluate(sub) for sub in query.subqueries]), query.boost
            )
        if kind is AndNot:
            positive = self.evaluate(query.a)
            if positive.empty:
                return _EMPTY
            return self._without(positive, self.evaluate(query.b))
        if kind is AndMaybe:
            required = self.evaluate(query.a)
            if required.empty:
                return _EMPTY
            return self._maybe(required, self.evaluate(query.b))
        if kind is Not:
            # Whoosh's inverse matcher matches every document the child does not, each with
            # a weight (and score) of 1.
            mask = ~self._mask(self.evaluate(query.query))
            return _Node(mask.astype(np.float64), mask=mask)
        if kind is ConstantScoreQuery:
            child = self.evaluate(query.child)
            if child.ids is not None:
                return _Node(np.full(child.ids.size, float(query.score)), ids=child.ids)
            assert child.mask is not None
            return _Node(np.where(child.mask, query.score, 0.0), mask=child.mask)
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
            return _EMPTY
        return self._by_whoosh(query)

    def _boosted(self, node: _Node, boost: float) -> _Node:
        if boost == 1.0 or node.empty:
            return node
        # A new array: a term's scores are kept by the ranker and never changed in place.
        return _Node(node.scores * boost, ids=node.ids, mask=node.mask)

    def _mask(self, node: _Node) -> np.ndarray:
        if node.mask is not None:
            return node.mask
        mask = np.zeros(self.size, dtype=bool)
        mask[node.ids] = True
        return mask

    def _intersection(self, subqueries: list[Query]) -> _Node:
        """The documents every node matches, scored by the sum of theirs. Sparse as soon as
        one node is; a node that matches nothing ends it without reading the rest."""
        nodes: list[_Node] = []
        for sub in subqueries:
            node = self.evaluate(sub)
            if node.empty:
                return _EMPTY
            nodes.append(node)
        sparse = [node.ids for node in nodes if node.ids is not None]
        if not sparse:
            # Every node dense: the documents all of them match, then sparse (fewer to add).
            masks = [node.mask for node in nodes if node.mask is not None]
            mask = masks[0].copy()
            for other in masks[1:]:
                mask &= other
            ids: np.ndarray = np.flatnonzero(mask)
            if not ids.size:
                return _EMPTY
        else:
            ids = min(sparse, key=len)
        for node in nodes:
            if node.ids is not None:
                if node.ids is not ids:
                    ids = ids[_within(ids, node.ids)]
            elif node.mask is not None:
                ids = ids[node.mask[ids]]
            if not ids.size:
                return _EMPTY
        scores = self._at(nodes[0], ids).copy()
        for node in nodes[1:]:
            scores += self._at(node, ids)
        return _Node(scores, ids=ids)

    @staticmethod
    def _at(node: _Node, ids: np.ndarray) -> np.ndarray:
        """The node's scores of ``ids`` (documents it matches)."""
        if node.ids is None:
            return node.scores[ids]
        if node.ids.size == ids.size:
            return node.scores  # the same documents: nothing to pick
        return node.scores[np.searchsorted(node.ids, ids)]

    def _union(self, nodes: list[_Node]) -> _Node:
        """The documents any node matches, scored by the sum of the nodes that match each."""
        nodes = [node for node in nodes if not node.empty]
        if not nodes:
            return _EMPTY
        if len(nodes) == 1:
            return nodes[0]
        postings = sum(node.scores.size for node in nodes if node.ids is not None)
        if all(node.ids is not None for node in nodes) and postings * _SPARSE_UNION < self.size:
            ids = np.concatenate([node.ids for node in nodes])
            scores = np.concatenate([node.scores for node in nodes])
            # A stable sort keeps each document's scores in the nodes' order, and
            # ``_summed_runs`` adds each run from 0: 0 + a + b, as the dense sum.
            order = np.argsort(ids, kind="stable")
            ids, scores = ids[order], scores[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            return _Node(_summed_runs(scores, starts), ids=ids[starts])
        mask = np.zeros(self.size, dtype=bool)
        total = np.zeros(self.size)
        for node in nodes:
            if node.ids is not None:
                mask[node.ids] = True
                total[node.ids] += node.scores
            else:
                mask |= node.mask
                total += node.scores
        return _Node(total, mask=mask)

    def _without(self, positive: _Node, negative: _Node) -> _Node:
        if negative.empty:
            return positive
        if positive.ids is not None:
            if negative.ids is not None:
                keep = ~_within(positive.ids, negative.ids)
            else:
                keep = ~negative.mask[positive.ids]  # type: ignore[index]
            return _Node(positive.scores[keep], ids=positive.ids[keep])
        mask = positive.mask & ~self._mask(negative)
        return _Node(np.where(mask, positive.scores, 0.0), mask=mask)

    def _maybe(self, required: _Node, optional: _Node) -> _Node:
        if optional.empty:
            return required
        if required.ids is not None:
            ids = required.ids
            if optional.ids is not None:
                places = np.minimum(np.searchsorted(optional.ids, ids), optional.ids.size - 1)
                found = optional.ids[places] == ids
                extra = np.where(found, optional.scores[places], 0.0)
            else:
                extra = optional.scores[ids]
            return _Node(required.scores + extra, ids=ids)
        optional_scores = optional.scores
        if optional.ids is not None:
            optional_scores = np.zeros(self.size)
            optional_scores[optional.ids] = optional.scores
        return _Node(
            required.scores + optional_scores * required.mask,
            mask=required.mask,
        )

    # -- leaves ----------------------------------------------------------------------------

    def _term(self, query: Term) -> _Node:
        if query.fieldname not in self.schema:
            return _EMPTY
        field = self.schema[query.fieldname]
        try:
            btext = field.to_bytes(query.text)
        except ValueError:
            return _EMPTY
        key = (self.owner, query.fieldname, btext)
        kept, scored = self.kept_scores.get(key)
        if not kept:
            postings = self._postings(query.fieldname, btext)
            scored = None
            if postings is not None:
                ids, scores = postings.ids, self._scores(query.fieldname, btext, postings)
                ids.flags.writeable = False  # kept: shared by every node made of them
                scores.flags.writeable = False
                scored = (ids, scores)
            size = Kept.ABSENT if scored is None else scored[0].nbytes + scored[1].nbytes
            self.kept_scores.put(key, scored, size)
        if scored is None:
            return _EMPTY
        return self._boosted(_Node(scored[1], ids=scored[0]), query.boost)

    def _every(self, fieldname: str | None, boost: float) -> _Node:
        # Every document (no field), or every document with a word in the field; each
        # scores the query's boost.
        if fieldname in (None, "", "*"):
            mask = self.alive.copy()
        elif fieldname in self.schema:
            mask = self._field_lengths(fieldname) > 0
        else:
            return _EMPTY
        return _Node(np.where(mask, boost, 0.0), mask=mask)

    def _multiterm(self, query: MultiTerm) -> _Node:
        # As Whoosh does, segment by segment: the terms the pattern expands to are or'ed,
        # and a single one is matched alone (Whoosh drops the query's boost then; so do we,
        # for the same order).
        fieldname = query.field()
        if fieldname not in self.schema:
            return _EMPTY
        # Kept as a phrase is: expanding the pattern walks the segments' term dictionaries.
        # Its repr names the kind, the field, the pattern, the boost (and a fuzzy term's
        # distance and prefix): all that the expansion and the scores depend on.
        return self._kept_node(
            "\x00expanded",
            repr(query).encode("utf-8", "surrogatepass"),
            lambda: self._expanded(query, fieldname),
        )

    def _kept_node(self, kind: str, text: bytes, make: Callable[[], _Node]) -> _Node:
        """A node kept with the terms' scores (``kept_scores``), made once while kept."""
        key = (self.owner, kind, text)
        kept, node = self.kept_scores.get(key)
        if not kept:
            node = make()
            self.kept_scores.put(key, node, _kept_size(node))
        return node

    def _expanded(self, query: MultiTerm, fieldname: str) -> _Node:
        parts: list[_Node] = []
        for segment, (reader, _offset) in enumerate(self.readers):
            texts = [t for t in query._btexts(reader) if t]
            if not texts:
                continue
            boost = query.boost if len(texts) > 1 else 1.0
            for btext in texts:
                postings = self._postings(fieldname, btext, only=segment)
                if postings is None:
                    continue
                scores = self._scores(fieldname, btext, postings) * boost
                parts.append(_Node(scores, ids=postings.ids))
        return self._union(parts)

    def _phrase(self, query: Phrase) -> _Node:
        """Documents holding the words one after another, scored as the words' sum (Whoosh
        scores a phrase by the intersection of its terms)."""
        fieldname = query.fieldname
        if fieldname not in self.schema:
            return _EMPTY
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
                return _EMPTY
        # A phrase's matches are kept with the terms' scores: the next page of the same
        # search asks for them again, and matching common words' positions is the work.
        node = self._kept_node(
            f"\x00phrase:{fieldname}",
            b"\x00".join(words),
            lambda: self._phrase_matches(fieldname, field, words, pickled, dtype),
        )
        return self._boosted(node, query.boost)

    def _phrase_matches(
        self, fieldname: str, field: Any, words: list[bytes], pickled: bool, dtype: Any
    ) -> _Node:
        lists: list[_Postings | _Placed] = []
        for btext in words:
            found = (
                self._postings(fieldname, btext, values=True)
                if pickled
                else self._placed_postings(fieldname, btext, np.dtype(dtype))
            )
            if found is None:
                return _EMPTY
            lists.append(found)
        common = lists[0].ids
        for postings in lists[1:]:
            common = common[_within(common, postings.ids)]
        if not common.size:
            return _EMPTY
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
        if not ids.size:
            return _EMPTY
        return _Node(total, ids=ids)

    def _placed_postings(self, fieldname: str, btext: bytes, dtype: np.dtype) -> _Placed | None:
        """A word's postings with their positions, kept for the ranker's life (bounded):
        a segment's from its array postings where they hold them (a slice each), any
        other's from its blocks (every block unpickled)."""
        key = (self.owner, fieldname, btext)
        kept, placed = self.kept_positions.get(key)
        if kept:
            return placed
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for segment, (reader, offset) in enumerate(self.readers):
            info = self._tables[segment].term_info(reader, fieldname, btext)
            if info is None:
                continue
            held = self._arrays(reader).placed(info) if dtype == np.dtype("<u4") else None
            if held is not None:
                ids, weights, ends, positions = held
            else:
                values: list[bytes] = []
                ids, weights = read_postings(_matcher(reader, fieldname, btext, info), values)
                lengths = np.fromiter(map(len, values), np.int64, len(values))
                ends = np.cumsum(lengths // dtype.itemsize)
                positions = np.frombuffer(b"".join(values), dtype=dtype)
            parts.append((ids + offset, weights, ends, positions))
        placed = None
        if parts:
            before = np.cumsum([0] + [p[3].size for p in parts[:-1]])
            placed = _Placed(
                np.concatenate([p[0] for p in parts]).astype(np.int32),
                np.concatenate([p[1] for p in parts]).astype(np.float32),
                np.concatenate([p[2] + int(b) for p, b in zip(parts, before, strict=True)]).astype(
                    np.uint32
                ),
                np.concatenate([p[3] for p in parts]),
            )
        self.kept_positions.put(key, placed, Kept.ABSENT if placed is None else placed.nbytes)
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
        if not ids:
            return _EMPTY
        return _Node(np.array(scores), ids=np.array(ids, dtype=np.int64))

    # -- postings and scores -----------------------------------------------------------------

    def _postings(
        self,
        fieldname: str,
        btext: bytes,
        *,
        values: bool = False,
        only: int | None = None,
    ) -> _Postings | None:
        # Segment by segment, in order: a common word from the segment's array postings
        # (one slice each, when its positions are not asked for), any other from its blocks.
        # Each segment's term dictionary is asked once (``_TermTable``): the term's
        # statistics and where its postings are both come with that one answer.
        parts: list[tuple[np.ndarray, np.ndarray, int]] = []
        raw_values: list[bytes] | None = [] if values else None
        segments = range(len(self.readers)) if only is None else (only,)
        for segment in segments:
            reader, offset = self.readers[segment]
            info = self._tables[segment].term_info(reader, fieldname, btext)
            if info is None:
                continue
            held = None if values else self._arrays(reader).placed(info, positions=False)
            if held is not None:
                parts.append((held[0], held[1], offset))  # int32 and float32, as mapped
            else:
                matcher = _matcher(reader, fieldname, btext, info)
                parts.append((*read_postings(matcher, raw_values), offset))
        if not parts:
            return None
        # Every segment's postings copied once into the whole index's numbering.
        size = sum(part[0].size for part in parts)
        ids = np.empty(size, dtype=np.int64)
        weights = np.empty(size, dtype=np.float64)
        at = 0
        for segment_ids, segment_weights, offset in parts:
            end = at + segment_ids.size
            np.add(segment_ids, np.int64(offset), out=ids[at:end])
            weights[at:end] = segment_weights
            at = end
        return _Postings(ids, weights, raw_values)

    def _arrays(self, reader: SegmentReader) -> ArrayPostings:
        found = self._array_files.get(id(reader))
        if found is None:
            found = self._array_files[id(reader)] = ArrayPostings.open(reader)
        return found

    def _scores(self, fieldname: str, btext: bytes, postings: _Postings) -> np.ndarray:
        field = self.schema[fieldname]
        if not field.scorable:
            return postings.weights.astype(np.float64)  # Whoosh's WeightScorer
        tf = postings.weights
        # Whoosh's bm25(): idf * ((tf * (K1 + 1)) / (tf + K1 * ((1 - B) + B * fl / avgfl))),
        # its length part made once per document (``_length_norms``), in place: the same
        # operations on the same numbers.
        denominator = self._length_norms(fieldname)[postings.ids]
        denominator += tf
        scores = tf * (self.k1 + 1)
        scores /= denominator
        scores *= self._idf(fieldname, btext)
        return scores

    def _length_norms(self, fieldname: str) -> np.ndarray:
        """Every document's ``K1 * ((1 - B) + B * fl / avgfl)`` in the field."""
        found = self._norms.get(fieldname)
        if found is None:
            lengths = self._field_lengths(fieldname)
            avgfl = self._average_length(fieldname)
            k1, b = self.k1, self.b
            found = self._norms[fieldname] = k1 * ((1 - b) + b * lengths / avgfl)
        return found

    def _idf(self, fieldname: str, btext: bytes) -> float:
        """Whoosh's idf (``WeightingModel.idf``: the whole index's documents over the
        term's), its document frequency summed from the segments' term dictionaries."""
        key = (fieldname, btext)
        found = self._idfs.get(key)
        if found is not None:
            return found
        if len(self._idfs) > 100_000:
            self._idfs.clear()
        frequency = 0
        for (reader, _offset), table in zip(self.readers, self._tables, strict=True):
            info = table.term_info(reader, fieldname, btext)
            if info is not None:
                frequency += info.doc_frequency()
        found = self._idfs[key] = log(self.size / (frequency + 1)) + 1
        return found

    def _average_length(self, fieldname: str) -> float:
        found = self._average_lengths.get(fieldname)
        if found is None:
            found = self._average_lengths[fieldname] = (
                self.searcher.avg_field_length(fieldname) or 1
            )
        return found

    def _field_lengths(self, fieldname: str) -> np.ndarray:
        if fieldname not in self._lengths:
            parts = []
            for reader, _offset in self.readers:
                count = reader.doc_count_all()
                column = _length_bytes(reader, fieldname, count)
                parts.append(_LENGTHS[column])
            self._lengths[fieldname] = np.concatenate(parts) if parts else np.zeros(0)
        return self._lengths[fieldname]


def _kept_size(node: _Node) -> int:
    """A node's bytes, as ``Kept`` counts them; its arrays made read-only, as they are
    shared from then on by every search that uses them."""
    size = Kept.ABSENT
    for array in (node.ids, node.mask, node.scores):
        if array is not None and array.size:
            array.flags.writeable = False
            size += array.nbytes
    return size


def _summed_runs(scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The sum of each run of ``scores`` (run k from ``starts[k]`` to the next start), each
    added one after another from 0 as the dense arrays summed them (np.add.reduceat may
    sum a long run pairwise, a last bit apart)."""
    runs = np.zeros(scores.size, dtype=np.int64)
    runs[starts[1:]] = 1
    return np.bincount(np.cumsum(runs), weights=scores, minlength=starts.size)


def _matcher(reader: SegmentReader, fieldname: str, btext: bytes, info: Any) -> Matcher:
    """The term's postings matcher in a segment from its term info (Whoosh's
    ``reader.postings`` looks the term up again, and wraps it for deletions, which the
    ranker's alive mask takes out)."""
    try:
        terms = reader._terms
        return terms._codec.postings_reader(
            terms._postfile, info, reader.schema[fieldname].format, term=(fieldname, btext)
        )
    except AttributeError as exc:
        raise FastPathUnsupportedError(f"postings reader: {exc}") from exc


def _md5_hash(key: bytes) -> int:
    # Whoosh's md5_hash (the hexdigest as a number, its low 32 bits): the digest's last four
    # bytes, without the hex string.
    return int.from_bytes(md5(key, usedforsecurity=False).digest()[12:], "big")


def _faster_hash(hashfn: Callable[[bytes], int]) -> Callable[[bytes], int]:
    return _md5_hash if hashfn is md5_hash else hashfn


class _TermTable:
    """A segment's term dictionary (Whoosh's hash file, ``.trm``), looked up over a
    read-only map of the file: Whoosh's HashReader reads each slot through a seek and a
    read of its file object, some 16 microseconds a lookup, and a word of a query is looked
    up in every segment for each of its stems and fields. The same slots, compared the same
    way, give the same term infos. A segment whose terms are not such a file is looked up
    through Whoosh."""

    __slots__ = ("_buffer", "_coder", "_hash", "_tables")

    def __init__(self, buffer: mmap.mmap | None, tindex: Any, coder: Any) -> None:
        self._buffer = buffer
        self._tables = None if buffer is None else tindex.tables
        self._hash = None if buffer is None else _faster_hash(tindex.hashfn)
        self._coder = coder

    @classmethod
    def open(cls, reader: SegmentReader) -> _TermTable:
        try:
            terms = reader._terms
            tindex, coder = terms._tindex, terms._keycoder
        except AttributeError as exc:
            raise FastPathUnsupportedError(f"term dictionary: {exc}") from exc
        buffer = None
        try:
            if type(tindex) is OrderedHashReader and not tindex.startoffset:
                path = os.path.join(
                    reader._storage.folder, reader._segment.make_filename(W3Codec.TERMS_EXT)
                )
                with open(path, "rb") as file:
                    buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (AttributeError, OSError, ValueError):
            buffer = None  # not a segment of files in a folder: Whoosh's own lookups
        return cls(buffer, tindex, coder)

    def term_info(self, reader: SegmentReader, fieldname: str, btext: bytes) -> Any | None:
        """The term's W3TermInfo in this segment, or None."""
        key = self._coder(fieldname, btext)
        if self._buffer is None:
            try:
                return W3TermInfo.from_bytes(reader._terms._tindex[key])
            except KeyError:
                return None
        value = self._value(key)
        return None if value is None else W3TermInfo.from_bytes(value)

    def _value(self, key: bytes) -> bytes | None:
        # Whoosh's HashReader.ranges_for_key, over the map: the key's hash picks one of 256
        # tables, and its slots are probed from the hash's place, wrapping around.
        buffer = self._buffer
        assert buffer is not None and self._tables is not None and self._hash is not None
        keyhash = self._hash(key)
        tablestart, numslots = self._tables[keyhash & 255]
        if not numslots:
            return None
        slot = (keyhash >> 8) % numslots
        for _ in range(numslots):
            slothash, itempos = _POINTER.unpack_from(buffer, tablestart + slot * _POINTER.size)
            if not itempos:
                return None
            if slothash == keyhash:
                keylen, datalen = _LENGTHS_PAIR.unpack_from(buffer, itempos)
                keystart = itempos + _LENGTHS_PAIR.size
                if keylen == len(key) and buffer[keystart : keystart + keylen] == key:
                    return buffer[keystart + keylen : keystart + keylen + datalen]
            slot += 1
            if slot == numslots:
                slot = 0
        return None


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
