"""The bulk writer (``pipeline.search._whoosh._segments``) writes the very files Whoosh's own
writer writes for the same documents, and a rebuild whose writer process is killed fails
loudly instead of leaving documents out."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from whoosh import index as whoosh_index
from whoosh.codec.whoosh3 import W3Codec
from whoosh.writing import SegmentWriter

import pipeline.search._whoosh._segments as segments
from pipeline.errors import IndexBuildError
from pipeline.search import IndexDoc, SearchIndex
from pipeline.search._schema import INDEX_NAME, _fields
from pipeline.search._whoosh._postings import ARRAY_POSTINGS_EXT
from pipeline.search._whoosh._segments import ArraySegmentWriter, offsets_always
from tests.helpers import generated_docs as _docs


def _odd_docs() -> list[IndexDoc]:
    """Documents at the edges: no text, no optional fields, a language without stems,
    accents and scripts, a word repeated far past a block."""
    base = {
        "candidate_id": "cand-odd",
        "application_id": None,
        "type": "CV",
        "sha256": None,
        "updated_at": None,
        "candidate_title": None,
        "file_name": None,
    }
    return [
        IndexDoc(attachment_id="odd-empty", text="", language=None, **base),  # type: ignore[arg-type]
        IndexDoc(
            attachment_id="odd-accents",
            text="Müller Straße façade São Paulo 東京 Ελληνικά naïve coöperate C++ C# node.js",
            language="de",
            **base,  # type: ignore[arg-type]
        ),
        IndexDoc(
            attachment_id="odd-repeat",
            text=" ".join(["kubernetes"] * 1500 + ["python"] * 3),
            language="it",
            **base,  # type: ignore[arg-type]
        ),
    ]


def _segment_files(folder: Path) -> dict[str, str]:
    # Files are named after the segment's random id: compare them by what follows it.
    # Whoosh's files only: our array postings (.apx) lie beside them, and
    # tests/test_ranking.py checks those against the blocks.
    return {
        path.name.split(".", 1)[1]: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.iterdir()
        if path.name.startswith(INDEX_NAME + "_")
        and not path.name.endswith(("LOCK", ARRAY_POSTINGS_EXT))
    }


def _whoosh_writer(ix: Any, **options: Any) -> SegmentWriter:
    # Whoosh's writer, with the one layout choice ours makes differently.
    writer = SegmentWriter(ix, **options)
    offsets_always(writer)
    return writer


def _write(folder: Path, writer_class: Any, docs: list[IndexDoc], codec: W3Codec) -> None:
    SearchIndex(folder).write([])  # an empty index with our schema
    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    writer = writer_class(ix, compound=False, codec=codec)
    for doc in docs:
        writer.add_document(**_fields(doc))
    writer.commit(merge=False)
    ix.close()


@pytest.mark.parametrize("blocklimit", [512, 7])  # one block a term, or many
def test_the_array_writer_writes_what_whooshs_writer_writes_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocklimit: int
) -> None:
    # Small chunks: a term's postings are turned into objects across several chunks.
    monkeypatch.setattr(segments, "_CHUNK_POSTINGS", 50)
    docs = _docs(120) + _odd_docs()
    codec = W3Codec(blocklimit=blocklimit, compression=0)
    _write(tmp_path / "whoosh", _whoosh_writer, docs, codec)
    _write(tmp_path / "array", ArraySegmentWriter, docs, codec)
    theirs, ours = _segment_files(tmp_path / "whoosh"), _segment_files(tmp_path / "array")
    assert {"pst", "trm", "_stored.col", "_text_len.col"} <= set(theirs)
    assert ours == theirs


def test_a_merging_commit_writes_what_whooshs_writer_writes(tmp_path: Path) -> None:
    # A purge merges every segment into the new one: the older segments' postings come
    # through Whoosh's pool, and the array writer's own join them there.
    docs = _docs(90) + _odd_docs()
    codec = W3Codec(blocklimit=16, compression=0)
    for name, writer_class in (("whoosh", _whoosh_writer), ("array", ArraySegmentWriter)):
        folder = tmp_path / name
        _write(folder, writer_class, docs[:50], codec)
        ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
        writer = writer_class(ix, compound=False, codec=codec)
        writer.delete_by_term("attachment_id", docs[3].attachment_id)
        for doc in docs[50:]:
            writer.update_document(**_fields(doc))
        writer.commit(optimize=True)
        ix.close()
    theirs, ours = _segment_files(tmp_path / "whoosh"), _segment_files(tmp_path / "array")
    assert "pst" in theirs and ours == theirs


def test_stored_fields_carry_their_offsets_however_small_the_segment(tmp_path: Path) -> None:
    # Whoosh rebuilds a small segment's offsets in a Python loop on every search otherwise.
    # A column that carries them ends with the marker "X" (Whoosh's layout for large ones).
    index = SearchIndex(tmp_path / "index")
    index.write(_docs(40))
    (stored,) = (tmp_path / "index").glob("*_stored.col")
    assert stored.read_bytes().endswith(b"X")
    texts = {d.attachment_id: d.text for d in _docs(40)}
    found = index.search("python", texts=lambda ids: {i: texts[i] for i in ids}, limit=100)
    assert found.total == sum("python" in t.lower() for t in texts.values())


def test_the_array_writer_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    SearchIndex(tmp_path).write([])
    ix = whoosh_index.open_dir(str(tmp_path), indexname=INDEX_NAME)
    writer = ArraySegmentWriter(ix, compound=False)
    with pytest.raises(ValueError, match="boosts"):
        writer.add_document(_boost=2.0, **_fields(_docs(1)[0]))
    writer.cancel()
    ix.close()


def _writer_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"serve_segments" in command:
            found.append(int(entry.name))
    return found


def _wait_until_dead(pid: int) -> None:
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(500):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except OSError:
            return
        time.sleep(0.01)  # polls a state, with a bound: not a race
    raise AssertionError(f"process {pid} did not die")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the rebuild is serial")
def test_a_rebuild_whose_writer_process_is_killed_fails_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.search._rebuild as module

    monkeypatch.setattr(module, "PARALLEL_REBUILD_DOCS", 40)
    monkeypatch.setattr(module, "REBUILD_BATCH_DOCS", 10)
    docs = _docs(200)

    def killing_one_midway() -> Iterator[IndexDoc]:
        for number, doc in enumerate(docs):
            if number == 120:
                victims = _writer_processes()
                assert len(victims) == 2
                os.kill(victims[0], signal.SIGKILL)
                _wait_until_dead(victims[0])  # the next batch may be sent to it, or not
            yield doc

    index = SearchIndex(tmp_path / "index")
    with pytest.raises(IndexBuildError, match=r"writer process stopped .*pipeline reindex"):
        index.rebuild(killing_one_midway())
    assert _writer_processes() == []  # the other one is stopped too
    # Nothing half-built is left behind as if whole: the next rebuild starts afresh.
    assert index.rebuild(docs) == 200
    assert index.doc_count() == 200


def test_a_rebuild_of_nothing_leaves_an_empty_index(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    assert index.rebuild([]) == 0
    assert index.exists() and index.doc_count() == 0


def test_dates_and_missing_fields_survive_the_bulk_path(tmp_path: Path) -> None:
    docs = _docs(30) + _odd_docs()
    index = SearchIndex(tmp_path / "index")
    assert index.rebuild(docs) == len(docs)
    texts = {d.attachment_id: d.text for d in docs}
    found = index.search("kubernetes", texts=lambda ids: {i: texts[i] for i in ids}, limit=100)
    assert "odd-repeat" in {hit.attachment_id for hit in found.hits}
    since = index.search(
        "python",
        texts=lambda ids: {i: texts[i] for i in ids},
        since=datetime(2026, 11, 1, tzinfo=UTC),
        limit=100,
    )
    assert since.total == sum(
        1
        for d in docs
        if d.updated_at and d.updated_at >= datetime(2026, 11, 1, tzinfo=UTC) and "ython" in d.text
    )
