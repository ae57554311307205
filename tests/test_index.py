"""The Whoosh index behind our own interface, on real index files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import QueryError
from pipeline.search import IndexDoc, SearchIndex


def _doc(
    attachment_id: str,
    text: str,
    *,
    candidate: str = "C1",
    type: str = "CV",
    file_name: str = "cv.pdf",
) -> IndexDoc:
    return IndexDoc(attachment_id, candidate, None, type, file_name, text)


@pytest.fixture
def index(tmp_path: Path) -> SearchIndex:
    return SearchIndex(tmp_path / "index")


def _search(index: SearchIndex, docs: dict[str, str], query: str, **kw: object) -> list[str]:
    results = index.search(query, texts=lambda ids: {i: docs[i] for i in ids if i in docs}, **kw)  # type: ignore[arg-type]
    return [hit.attachment_id for hit in results.hits]


def test_case_and_accents_do_not_matter(index: SearchIndex) -> None:
    docs = {"a1": "Jürgen Müller, Köln", "a2": "Francois Lefevre, Geneve", "a3": "Unrelated"}
    index.write(_doc(k, v) for k, v in docs.items())
    assert _search(index, docs, "muller") == ["a1"]
    assert _search(index, docs, "MÜLLER") == ["a1"]
    assert _search(index, docs, "Köln") == ["a1"]
    assert _search(index, docs, "François") == ["a2"]
    assert _search(index, docs, "genève") == ["a2"]


def test_upsert_never_duplicates(index: SearchIndex) -> None:
    docs = {"a1": "Python developer"}
    index.write([_doc("a1", "Python developer")])
    index.write([_doc("a1", "Python developer")])
    assert index.doc_count() == 1
    assert _search(index, docs, "python") == ["a1"]


def test_delete_removes_from_results(index: SearchIndex) -> None:
    docs = {"a1": "Kafka", "a2": "Kafka"}
    index.write(_doc(k, v) for k, v in docs.items())
    index.write(deletions=["a1"])
    assert _search(index, docs, "kafka") == ["a2"]


def test_all_words_must_match_and_ranking(index: SearchIndex) -> None:
    docs = {
        "a1": "Python Python Python Kubernetes in Berlin",
        "a2": "Python in Berlin",
        "a3": "Kubernetes in Berlin",
    }
    index.write(_doc(k, v) for k, v in docs.items())
    assert _search(index, docs, "Python Berlin") == ["a1", "a2"]
    assert set(_search(index, docs, "Python OR Kubernetes")) == {"a1", "a2", "a3"}
    assert _search(index, docs, "Berlin NOT Python") == ["a3"]


def test_phrases_and_filters(index: SearchIndex) -> None:
    docs = {
        "a1": "machine learning engineer",
        "a2": "learning about machine rooms",
        "a3": "machine learning letter",
    }
    index.write(
        [
            _doc("a1", docs["a1"]),
            _doc("a2", docs["a2"]),
            _doc("a3", docs["a3"], type="COVER_LETTER", candidate="C2"),
        ]
    )
    assert set(_search(index, docs, '"machine learning"')) == {"a1", "a3"}
    assert _search(index, docs, '"machine learning"', type="COVER_LETTER") == ["a3"]
    assert _search(index, docs, "machine", candidate_id="C2") == ["a3"]


def test_skill_tokens_keep_their_shape(index: SearchIndex) -> None:
    docs = {"a1": "C++ and C# and Node.js", "a2": "C and Node"}
    index.write(_doc(k, v) for k, v in docs.items())
    assert _search(index, docs, "c++") == ["a1"]
    assert _search(index, docs, "node.js") == ["a1"]


def test_snippets_highlight_and_escape(index: SearchIndex) -> None:
    docs = {"a1": "Senior <script> engineer with Python and Django experience"}
    index.write(_doc(k, v) for k, v in docs.items())
    results = index.search("python", texts=lambda ids: docs)
    snippet = results.hits[0].snippet
    assert "<b>Python</b>" in snippet
    assert "<script>" not in snippet


@pytest.mark.parametrize("bad", ['"unclosed phrase', "(python", "python)", "   "])
def test_unreadable_queries_raise_query_error(index: SearchIndex, bad: str) -> None:
    index.write([_doc("a1", "python")])
    with pytest.raises(QueryError):
        index.search(bad, texts=lambda ids: {})


def test_rebuild_starts_from_nothing(index: SearchIndex) -> None:
    index.write([_doc("old", "stale text")])
    assert index.rebuild([_doc("new", "fresh text")]) == 1
    assert index.attachment_ids() == {"new"}


def test_the_writer_process_keeps_one_document_per_attachment_across_batches(
    index: SearchIndex,
) -> None:
    from pipeline.search import IndexWriterProcess

    writer = IndexWriterProcess(index.directory)
    batches = [
        writer.submit([_doc("a1", "Python developer"), _doc("a2", "Kubernetes")], []),
        # The same attachments again before any commit: a new text, and a deletion.
        writer.submit([_doc("a1", "Golang developer")], ["a2"]),
        writer.submit([_doc("a3", "Golang and Python")], []),
    ]
    writer.close()
    for batch in batches:
        assert batch.result(timeout=30) >= 0.0  # committed, with its CPU seconds
    docs = {"a1": "Golang developer", "a3": "Golang and Python"}
    assert index.doc_count() == 2
    assert sorted(_search(index, docs, "Golang")) == ["a1", "a3"]
    assert _search(index, docs, "Python") == ["a3"]
    assert _search(index, docs, "Kubernetes") == []


def test_one_writer_process_serves_several_indexes_each_apart(tmp_path: Path) -> None:
    """nightly --all's one index writer: each run's batches go to its own index, a run's
    end commits its index alone, and a run that stops leaves nothing of its batches."""
    from pipeline.search import IndexWriterProcess

    first, second, third = (SearchIndex(tmp_path / name) for name in ("one", "two", "three"))
    process = IndexWriterProcess()
    try:
        one, two, three = (process.for_index(i.directory) for i in (first, second, third))
        batches = [
            one.submit([_doc("a1", "Python developer")], []),
            two.submit([_doc("a1", "Kubernetes operator")], []),
            three.submit([_doc("a9", "Golang")], []),
        ]
        one.close()  # commits the first index alone, and waits for it
        assert batches[0].result(timeout=30) >= 0.0
        assert not batches[1].done()  # the second's writer is still open
        three.close(cancel=True)  # the third's run stopped: its batch is dropped
        two.submit([_doc("a2", "Python and Kubernetes")], [])
        two.close()
        assert batches[1].result(timeout=30) >= 0.0
    finally:
        process.close()
    docs = {"a1": "", "a2": ""}
    assert _search(first, docs, "Python") == ["a1"]
    assert _search(first, docs, "Kubernetes") == []
    assert sorted(_search(second, docs, "Kubernetes")) == ["a1", "a2"]
    assert _search(second, docs, "Python") == ["a2"]
    assert third.doc_count() == 0


def test_words_of_a_file_name_are_found(index: SearchIndex) -> None:
    docs = {"a1": "Curriculum vitae", "a2": "Curriculum vitae"}
    index.write(
        [
            _doc("a1", docs["a1"], file_name="Lebenslauf_Max_Müller.pdf"),
            _doc("a2", docs["a2"], file_name="cv.pdf"),
        ]
    )
    assert _search(index, docs, "Müller") == ["a1"]
    assert _search(index, docs, "lebenslauf max") == ["a1"]


def test_snippets_mark_words_matched_through_their_stem(index: SearchIndex) -> None:
    docs = {"a1": "Years of developing payment software. " + "Filler words here. " * 30}
    index.write([IndexDoc("a1", "C1", None, "CV", "cv.pdf", docs["a1"], language="en")])
    results = index.search("development", texts=lambda ids: docs)
    assert [hit.attachment_id for hit in results.hits] == ["a1"]
    assert "<b>developing</b> payment" in results.hits[0].snippet
    assert len(results.hits[0].snippet) < 300  # a fragment around the match, not the text


def test_snippets_show_the_fragments_with_matches(index: SearchIndex) -> None:
    filler = "Lorem ipsum dolor sit amet. " * 20
    docs = {"a1": f"{filler}Kubernetes at scale. {filler}Docker and Kubernetes. {filler}"}
    index.write(_doc(k, v) for k, v in docs.items())
    snippet = index.search("kubernetes docker", texts=lambda ids: docs).hits[0].snippet
    assert "<b>Docker</b> and <b>Kubernetes</b>" in snippet
    assert " ... " in snippet and "<b>Kubernetes</b> at scale" in snippet
    assert snippet.index("at scale") < snippet.index("<b>Docker</b>")  # in text order
    # Fragments start and end on whole words.
    words = set(docs["a1"].split())
    shown = snippet.replace("<b>", "").replace("</b>", "").replace(" ... ", " ").split()
    assert set(shown) <= words, set(shown) - words


def test_snippets_cut_long_words_only_at_spaces(index: SearchIndex) -> None:
    text = "Softwareentwicklungsprojektleitungsassistenz " * 3 + "Python " + "Donau" * 30
    docs = {"a1": text}
    index.write(_doc(k, v) for k, v in docs.items())
    snippet = index.search("python", texts=lambda ids: docs).hits[0].snippet
    assert snippet.startswith("Softwareentwicklungsprojektleitungsassistenz <b>Python</b>")
    assert snippet.endswith("<b>Python</b>")  # the next word runs past the context


def _segments(folder: Path) -> int:
    from whoosh import index as whoosh_index

    from pipeline.search._schema import INDEX_NAME

    ix = whoosh_index.open_dir(str(folder), indexname=INDEX_NAME)
    with ix.searcher() as searcher:
        count = len(searcher.leaf_searchers())
    ix.close()
    return count


def test_a_large_rebuild_shares_the_work_between_processes_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import pipeline.search._rebuild as module
    from tests.helpers import generated_docs as _docs

    docs = _docs(250)
    serial = SearchIndex(tmp_path / "serial")
    assert serial.rebuild(docs) == 250
    # Sizes scaled down: parallel from 40 documents, batches of 25, a segment per 60.
    monkeypatch.setattr(module, "PARALLEL_REBUILD_DOCS", 40)
    monkeypatch.setattr(module, "REBUILD_BATCH_DOCS", 25)
    monkeypatch.setattr(module, "REBUILD_SEGMENT_DOCS", 60)
    parallel = SearchIndex(tmp_path / "parallel")
    assert parallel.rebuild(iter(docs)) == 250
    assert parallel.doc_count() == 250
    if (os.cpu_count() or 1) > 1:
        assert _segments(tmp_path / "parallel") >= 5  # both processes, a segment per 60
    # Long documents close a segment early: the writer's memory grows with the words.
    monkeypatch.setattr(module, "PARALLEL_REBUILD_DOCS", 10_000)
    monkeypatch.setattr(module, "REBUILD_SEGMENT_WORDS", 250 * 50)
    by_words = SearchIndex(tmp_path / "by-words")
    assert by_words.rebuild(docs) == 250
    assert _segments(tmp_path / "by-words") >= 250 * 150 // (250 * 50)
    texts = {d.attachment_id: d.text for d in docs}
    for query in ["python", "Kubernetes Docker", '"machine learning"', "München", "*"]:
        found = [
            index.search(query, texts=lambda ids: {i: texts[i] for i in ids}, limit=1000)
            for index in (serial, parallel, by_words)
        ]
        assert found[0].total == found[2].total > 0, query
        assert sorted((h.attachment_id, h.score) for h in found[0].hits) == sorted(
            (h.attachment_id, h.score) for h in found[2].hits
        ), query
        assert found[0].total == found[1].total > 0, query
        assert sorted((h.attachment_id, h.score) for h in found[0].hits) == sorted(
            (h.attachment_id, h.score) for h in found[1].hits
        ), query


def test_index_writer_processes_start_without_sqlalchemy() -> None:
    # A writer process (a run's, a rebuild's) unpickles IndexDocs and writes the index: it
    # needs neither the database layer (0.3 s to import) nor the parsers.
    import subprocess
    import sys

    probe = (
        "import pickle, sys, pipeline.search._writer; from pipeline.search import IndexDoc; "
        "pickle.loads(pickle.dumps(IndexDoc('a', 'c', None, 'CV', None, 'text'))); "
        "print(sorted({'sqlalchemy', 'pypdf', 'docx'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
