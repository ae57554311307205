"""Search ranks with numpy over Whoosh's postings (``pipeline.search._whoosh._ranker``): the
same documents, scores and totals as Whoosh's own matchers, on a real index of generated CVs
with several segments and deleted documents."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from whoosh import index as whoosh_index
from whoosh.codec.whoosh3 import W3Codec
from whoosh.query import And, ConstantScoreQuery, DateRange, Term

from pipeline.search import IndexDoc, IndexWriter, SearchIndex
from pipeline.search._query import _parse
from pipeline.search._schema import INDEX_NAME
from pipeline.search._whoosh import _postings as postings
from pipeline.search._whoosh import _ranker as ranking
from tests.helpers import generated_docs as _docs

QUERIES = [
    "Python",
    "python developer",
    "Kubernetes Docker",
    '"machine learning"',
    '"senior python developer"',
    "München",
    "developpement",
    "Teamfähigkeit",
    "Entwicklungen",
    "Python OR Golang",
    "(python OR go) berlin",
    "Python NOT Java",
    "NOT Java",
    "python ANDMAYBE java",
    "python^3 berlin",
    "Kuber*",
    "Pyth?n",
    "c++ node.js",
    "type:CV python",
    '"machine learning"~4',  # a sloppy phrase: Whoosh's own matcher, inside our ranking
    "file_name:lebenslauf",
    "*",
    "zzzzz",
]


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder: Path = tmp_path_factory.mktemp("ranking") / "index"
    SearchIndex(folder).write([])  # creates the index with our schema
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    docs = _docs(450)
    # Three segments (no merging), then deletions in two of them. Small blocks, compressed
    # and not, so that posting lists cross many block boundaries.
    for start, codec in ((0, W3Codec(16, 0)), (150, W3Codec(128, 3)), (300, W3Codec(7, 3))):
        raw = ix.writer(compound=False, codec=codec)
        writer = IndexWriter(raw)
        for doc in docs[start : start + 150]:
            writer.add(doc)
        raw.commit(merge=False)
    raw = ix.writer(compound=False)
    for number in range(0, 450, 7):
        raw.delete_by_term("attachment_id", f"doc{number:05d}")
    raw.commit(merge=False)
    with ix.searcher() as opened:
        assert len(opened.leaf_searchers()) == 3
        assert opened.doc_count() < opened.doc_count_all()
        yield opened
    ix.close()


def _whoosh(searcher, query, limit: int) -> tuple[list[tuple[int, float]], int]:  # type: ignore[no-untyped-def]
    # Every match as Whoosh scores it, best first, the lower document number first among
    # equals. (Whoosh's own top-N is no oracle: over several segments it can leave out a
    # document that belongs in it, optimized or not.)
    results = searcher.search(query, limit=None, optimize=False)
    ranked = sorted(((hit.docnum, hit.score) for hit in results), key=lambda h: (-h[1], h[0]))
    total = sum(1 for _ in searcher.docs_for_query(query))
    return ranked[:limit], total


def _assert_same(ours: ranking.Ranked, theirs: list[tuple[int, float]], total: int) -> None:
    assert ours.total == total
    assert len(ours.top) == len(theirs)
    for (_, mine), (_, whoosh) in zip(ours.top, theirs, strict=True):
        assert mine == pytest.approx(whoosh, rel=1e-9, abs=1e-9)
    if theirs:
        # The same documents; only those tied with the last one may differ.
        last = theirs[-1][1]
        assert {d for d, s in ours.top if s > last + 1e-9} == {
            d for d, s in theirs if s > last + 1e-9
        }


@pytest.mark.parametrize("text", QUERIES)
def test_same_hits_scores_and_total_as_whoosh(searcher, text: str) -> None:  # type: ignore[no-untyped-def]
    query = _parse(searcher.schema, text)
    ours = ranking.rank(searcher, query, 30)
    theirs, total = _whoosh(searcher, query, 30)
    _assert_same(ours, theirs, total)
    if text not in ("zzzzz", '"senior python developer"', "c++ node.js"):
        assert total > 0  # the query means something on this index


def _phrases(count: int) -> list[str]:
    """Phrases of two and three words standing side by side in the documents (their title
    and file name too), many sharing their words: a ranker reads a word's positions once
    and keeps them for the phrases after."""
    import random

    rng = random.Random(3)
    made: dict[str, None] = {}
    docs = _docs(450)
    while len(made) < count:
        doc = rng.choice(docs)
        source = rng.choice((doc.text, doc.text, doc.candidate_title or "", doc.file_name or ""))
        words = [w for w in source.split() if w.isalpha()]
        if len(words) < 3:
            continue
        i = rng.randrange(len(words) - 2)
        made.setdefault('"' + " ".join(words[i : i + rng.choice((2, 2, 3))]) + '"', None)
    return list(made)


@pytest.mark.parametrize("kept", [ranking.KEPT_POSITIONS.budget, 4_000])
def test_phrases_from_kept_positions_are_whooshs(searcher, kept: int) -> None:  # type: ignore[no-untyped-def]
    # One ranker for them all, as an open searcher keeps it: its kept positions answer the
    # later phrases, and with little room it drops words and reads them again.
    ranker = ranking.Ranker(searcher)
    ranker.kept_positions = ranking.Kept(kept)
    matched = 0
    for text in _phrases(150):
        query = _parse(searcher.schema, text)
        ours = ranker.rank(query, 10)
        theirs, total = _whoosh(searcher, query, 10)
        _assert_same(ours, theirs, total)
        matched += total > 0
    assert matched > 100
    # Within its room, or holding only the last word read (one larger than the room).
    assert ranker.kept_positions.used <= kept or len(ranker.kept_positions) == 1


def test_filters_select_without_scoring(searcher) -> None:  # type: ignore[no-untyped-def]
    parsed = _parse(searcher.schema, "python")
    filters = [
        ConstantScoreQuery(Term("type", "CV"), 0.0),
        ConstantScoreQuery(DateRange("updated", datetime(2026, 6, 1), None), 0.0),
    ]
    ours = ranking.rank(searcher, And([parsed, *filters]), 30)
    plain = ranking.rank(searcher, parsed, 1000)
    theirs, total = _whoosh(searcher, And([parsed, *filters]), 30)
    assert 0 < ours.total == total < plain.total
    # Whoosh lets each filter add its own score; ours adds nothing: same order.
    shifted = [(docnum, score - len(filters)) for docnum, score in theirs]
    _assert_same(ours, shifted, total)
    scores = dict(plain.top)
    assert all(score == pytest.approx(scores[docnum]) for docnum, score in ours.top)


def test_deleted_documents_never_match(searcher) -> None:  # type: ignore[no-untyped-def]
    ranked = ranking.rank(searcher, _parse(searcher.schema, "*"), 1000)
    assert ranked.total == searcher.doc_count()
    found = {searcher.stored_fields(docnum)["attachment_id"] for docnum, _ in ranked.top}
    assert "doc00007" not in found and "doc00008" in found


def test_an_index_with_whooshs_own_positions_still_finds_phrases(tmp_path: Path) -> None:
    # Indexes built before the text field stored its positions as arrays keep Whoosh's
    # pickled ones: the ranker decodes them (as it does the short fields'), with the same
    # result as Whoosh's own matcher.
    from whoosh.formats import Positions

    from pipeline.search._schema import _schema

    schema = _schema()
    schema["text"].format = Positions(field_boost=1.0)
    folder = tmp_path / "index"
    folder.mkdir()
    ix = whoosh_index.create_in(str(folder), schema, indexname=INDEX_NAME)
    docs = {"a1": "machine learning engineer", "a2": "learning about machines", "a3": "ML"}
    raw = ix.writer()
    writer = IndexWriter(raw)
    for key, text in docs.items():
        writer.add(IndexDoc(key, "C1", None, "CV", "cv.pdf", text))
    raw.commit()
    ix.close()
    index = SearchIndex(folder)
    results = index.search('"machine learning"', texts=lambda ids: {i: docs[i] for i in ids})
    assert [hit.attachment_id for hit in results.hits] == ["a1"]
    assert results.hits[0].snippet == "<b>machine</b> <b>learning</b> engineer"


# -- array postings: a segment's common words as plain arrays (search._whoosh._postings) ---

COMMON_QUERIES = [
    "expert",
    "advanced intermediate",
    "expert OR python",
    "expert NOT python",
    "adv*",
    "expert^2 berlin",
    "type:CV intermediate",
    '"advanced expert"',
    "2026 example.org",
]


def _common_words_index(folder: Path) -> list[IndexDoc]:
    """Two segments, written as runs write them: one of 1,100 documents, whose commonest
    words have more postings than ARRAY_POSTINGS_MIN, and one of 40 (none has); then
    deletions."""
    docs = _docs(1140)
    index = SearchIndex(folder)
    index.write(docs[:1100])
    index.write(docs[1100:])
    index.write(deletions=[doc.attachment_id for doc in docs[:300:9]])
    return docs


def _array_files(folder: Path) -> list[Path]:
    from pipeline.search._whoosh._postings import ARRAY_POSTINGS_EXT

    return sorted(folder.glob(f"*{ARRAY_POSTINGS_EXT}"))


def _assert_arrays_hold_the_blocks(searcher) -> int:  # type: ignore[no-untyped-def]
    """Every word a segment keeps as arrays has there exactly what its blocks hold."""
    from whoosh.matching import FilterMatcher

    from pipeline.search._whoosh._postings import ARRAY_POSTINGS_MIN

    checked = 0
    for reader, _offset in searcher.reader().leaf_readers():
        arrays = postings.ArrayPostings.open(reader)
        for text, info in reader.iter_field("text"):
            found = arrays.find(info)
            if info.doc_frequency() < ARRAY_POSTINGS_MIN:
                assert found is None
                continue
            assert found is not None, text
            matcher = reader.postings("text", text)
            if isinstance(matcher, FilterMatcher):
                matcher = matcher.child
            values: list[bytes] = []
            ids, weights = postings.read_postings(matcher, values)
            assert found[0].tolist() == ids.tolist()
            assert found[1].tolist() == weights.tolist()
            # And the positions a phrase reads: each posting's, as its block holds them.
            placed = arrays.placed(info)
            assert placed is not None, text
            ends = placed[2].tolist()
            runs = [placed[3][a:b].tobytes() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
            assert runs == values
            checked += 1
    return checked


def test_common_words_are_read_from_arrays_with_whooshs_results(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    _common_words_index(folder)
    assert len(_array_files(folder)) == 1  # the small segment has no common word
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        assert len(searcher.leaf_searchers()) == 2
        assert _assert_arrays_hold_the_blocks(searcher) >= 5
        for text in COMMON_QUERIES:
            query = _parse(searcher.schema, text)
            ours = ranking.rank(searcher, query, 30)
            theirs, total = _whoosh(searcher, query, 30)
            _assert_same(ours, theirs, total)
            if not text.startswith('"'):
                assert total > 0, text
    ix.close()


def test_a_purge_leaves_no_array_postings_of_the_erased_and_rebuilds_them(
    tmp_path: Path,
) -> None:
    """An erasure merges every segment into one: the old segments' files go, array
    postings included (they say which documents hold a word), and the merged segment has
    array postings of its own, so search stays as quick."""
    folder = tmp_path / "index"
    docs = _common_words_index(folder)
    before = _array_files(folder)
    erased = docs[10].attachment_id
    SearchIndex(folder).write(deletions=[erased], purge=True)
    after = _array_files(folder)
    assert len(after) == 1 and not set(after) & set(before)
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        assert len(searcher.leaf_searchers()) == 1 and not searcher.reader().has_deletions()
        assert searcher.document_number(attachment_id=erased) is None
        assert _assert_arrays_hold_the_blocks(searcher) >= 5
        for text in COMMON_QUERIES:
            query = _parse(searcher.schema, text)
            _assert_same(ranking.rank(searcher, query, 30), *_whoosh(searcher, query, 30))
    ix.close()


def test_a_damaged_array_postings_file_is_passed_over(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    _common_words_index(folder)
    (damaged,) = _array_files(folder)
    damaged.write_bytes(damaged.read_bytes()[:-10])  # as a full disk might leave it
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        for reader, _offset in searcher.reader().leaf_readers():
            info = reader.term_info("text", b"expert")
            assert postings.ArrayPostings.open(reader).find(info) is None
        query = _parse(searcher.schema, "expert OR python")
        _assert_same(ranking.rank(searcher, query, 30), *_whoosh(searcher, query, 30))
    ix.close()


def test_array_postings_of_the_first_version_are_read_without_positions(tmp_path: Path) -> None:
    """An index written before the array postings held positions (version 1) is searched
    as it is: common words from its arrays, phrases' positions from the blocks."""
    folder = tmp_path / "index"
    _common_words_index(folder)
    (written,) = _array_files(folder)
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        for reader, _offset in searcher.reader().leaf_readers():
            arrays = postings.ArrayPostings.open(reader)
            if arrays.has_positions:
                old = postings.ArrayPostingsWriter()
                for _text, info in reader.iter_field("text"):
                    found = arrays.find(info)
                    if found is not None:
                        old.add(info.extent()[0], *found)
    ix.close()
    with written.open("wb") as file:
        old.write(file)
    assert written.read_bytes().startswith(postings.ARRAY_POSTINGS_MAGIC)
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        common = []
        for reader, _offset in searcher.reader().leaf_readers():
            arrays = postings.ArrayPostings.open(reader)
            info = reader.term_info("text", b"expert")
            assert not arrays.has_positions and arrays.placed(info) is None
            common.append(arrays.find(info) is not None)
        assert sorted(common) == [False, True]  # the large segment's, from its arrays
        for text in COMMON_QUERIES:
            query = _parse(searcher.schema, text)
            _assert_same(ranking.rank(searcher, query, 30), *_whoosh(searcher, query, 30))
    ix.close()


def test_what_rankers_keep_is_bounded_for_the_process_and_goes_with_them(searcher) -> None:  # type: ignore[no-untyped-def]
    """Every ranker of a process keeps its terms' scores in one bounded store (a search
    worker holds many integrations' searchers), and a ranker's go when it does."""
    import gc

    kept = ranking.Kept(200_000)
    rankers = [ranking.Ranker(searcher) for _ in range(3)]
    for ranker in rankers:
        ranker.kept_scores = kept
        for text in ("expert", "python OR golang", "advanced intermediate", "berlin"):
            query = _parse(searcher.schema, text)
            _assert_same(ranker.rank(query, 10), *_whoosh(searcher, query, 10))
    assert 0 < kept.used <= kept.budget
    # Scores kept: the same answers again, from the store.
    for ranker in rankers:
        query = _parse(searcher.schema, "expert")
        _assert_same(ranker.rank(query, 10), *_whoosh(searcher, query, 10))
    ranker = ranking.Ranker(searcher)
    ranker.rank(_parse(searcher.schema, "expert OR berlin"), 10)
    owner = ranker.owner

    def owned() -> int:
        return sum(key[0] == owner for key in list(ranking.KEPT_SCORES._items))

    assert owned() > 0
    del ranker
    gc.collect()
    assert owned() == 0


def test_an_index_outside_a_folder_is_ranked_through_whooshs_own_lookups() -> None:
    """A segment whose files are not in a folder (Whoosh's RAM storage here; a compound
    file likewise) has no term table map and no array postings: its terms are looked up
    through Whoosh's hash reader, with the same results."""
    from whoosh.filedb.filestore import RamStorage

    from pipeline.search._schema import _schema

    ix = RamStorage().create_index(_schema(), indexname=INDEX_NAME)
    writer = IndexWriter(ix.writer())
    for doc in _docs(120):
        writer.add(doc)
    writer._writer.commit()
    with ix.searcher() as searcher:
        ranker = ranking.Ranker(searcher)
        assert all(table._buffer is None for table in ranker._tables)
        for text in QUERIES[:19]:
            query = _parse(searcher.schema, text)
            _assert_same(ranker.rank(query, 10), *_whoosh(searcher, query, 10))


def test_the_term_tables_hash_is_whooshs() -> None:
    from whoosh.filedb.filetables import md5_hash

    keys = [b"", b"\x00\x05python", "Jörg".encode(), bytes(range(256)), b"x" * 1000]
    assert [ranking._md5_hash(key) for key in keys] == [md5_hash(key) for key in keys]
