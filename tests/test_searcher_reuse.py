"""An open searcher is reused between searches only while its index is unchanged: every
commit, deletion, optimize and rebuild is seen by the very next search, however soon."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.errors import IndexDamagedError
from pipeline.search import IndexDoc, SearchIndex


def _doc(attachment_id: str, text: str) -> IndexDoc:
    return IndexDoc(attachment_id, "C1", None, "CV", "cv.pdf", text)


def _found(index: SearchIndex, query: str = "kafka") -> list[str]:
    results = index.search(query, texts=lambda ids: {i: "kafka" for i in ids}, limit=50)
    return sorted(hit.attachment_id for hit in results.hits)


def test_each_change_is_seen_by_the_next_search(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    index.write([_doc("a1", "Kafka")])
    assert _found(index) == ["a1"]
    # Each step follows the last search within a millisecond or two: within one tick of a
    # coarse file clock, so the folder's modification time alone would not tell.
    index.write([_doc("a2", "Kafka")])
    assert _found(index) == ["a1", "a2"]
    index.write(deletions=["a1"])
    assert _found(index) == ["a2"]
    index.write([_doc("a3", "Kafka streams")], purge=True)  # an optimize: one segment
    assert _found(index) == ["a2", "a3"]
    assert _found(index, "streams") == ["a3"]
    index.rebuild([_doc("b1", "Kafka")])  # the folder made again, its TOC of the same name
    assert _found(index) == ["b1"]
    index.rebuild([_doc("b2", "Kafka")])
    assert _found(index) == ["b2"]
    shutil.rmtree(index.directory)
    assert _found(index) == []  # no index: no hits (App tells whether one was expected)
    index.directory.write_text("not a folder\n")
    with pytest.raises(IndexDamagedError, match="is a file, not the index folder"):
        _found(index)


def test_a_segment_removed_under_an_open_searcher_is_damage(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    index.write([_doc("a1", "Kafka"), _doc("a2", "Kafka")])
    assert _found(index) == ["a1", "a2"]
    segment = max(
        (p for p in index.directory.iterdir() if p.suffix != ".toc" and "LOCK" not in p.name),
        key=lambda p: p.stat().st_size,
    )
    segment.unlink()
    with pytest.raises(IndexDamagedError, match="run `pipeline reindex`"):
        _found(index)


def test_a_settled_folder_still_tells_each_commit(tmp_path: Path) -> None:
    # A folder last changed long ago is checked by two stats (the folder's, its TOC's):
    # each commit still shows, even one whose folder time were set back to the old one.
    index = SearchIndex(tmp_path / "index")
    index.write([_doc("a1", "Kafka")])
    long_ago = index.directory.stat().st_mtime_ns - 60 * 10**9
    os.utime(index.directory, ns=(long_ago, long_ago))
    assert _found(index) == ["a1"]
    assert _found(index) == ["a1"]  # the settled searcher, reused
    index.write([_doc("a2", "Kafka")])
    os.utime(index.directory, ns=(long_ago, long_ago))
    assert _found(index) == ["a1", "a2"]
    index.write(deletions=["a1"])
    assert _found(index) == ["a2"]
    index.rebuild([_doc("b1", "Kafka")])
    assert _found(index) == ["b1"]
