"""The search package's shape and its fence: the public surface, Whoosh kept inside
``pipeline/search``, the fallback to Whoosh's own writer and matchers giving the same
results, and index files written before the package still opening."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.search
from pipeline.app import App
from pipeline.config import DataSettings, KomboSettings
from pipeline.errors import QueryError
from pipeline.sandbox.server import SandboxServer
from pipeline.search import IndexDoc, SearchIndex

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "pipeline" / "search"
# Written by the code of main before the package (``pipeline.index``), with three documents
# in two segments: its TOC's pickled schema names ``pipeline.index.WordPositions``.
MAIN_INDEX = Path(__file__).resolve().parent / "data" / "index-main"
MAIN_TEXTS = {
    "a1": "Senior machine learning engineer, Python and Kubernetes, Berlin",
    "a2": "Learning about machine rooms; developing payment software in Golang",
    "a3": "Entwicklung von Software in München mit Python",
}


def _imports(path: Path) -> set[str]:
    """The modules a file imports, relative imports resolved to absolute names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base) if node.level else ""
            if node.module:
                module = f"{module}.{node.module}" if module else node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_public_surface_is_all_importable() -> None:
    for name in pipeline.search.__all__:
        assert getattr(pipeline.search, name) is not None, name
    assert set(pipeline.search.__all__) <= set(dir(pipeline.search))


def test_nothing_outside_the_search_package_imports_whoosh() -> None:
    outside = [
        path
        for folder in ("pipeline", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if SEARCH not in path.parents
    ]
    assert len(outside) > 10
    offenders = [
        str(path.relative_to(ROOT))
        for path in outside
        if any(name == "whoosh" or name.startswith("whoosh.") for name in _imports(path))
    ]
    assert offenders == []


def test_no_two_modules_of_the_search_package_import_each_other() -> None:
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in SEARCH.rglob("*.py")
    }
    graph = {
        name: {m for m in _imports(path) if m in modules} - {name} for name, path in modules.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for step in graph[start]:
            if step == goal or (step not in seen and reaches(step, goal, seen | {step})):
                return True
        return False

    # The package's __init__ imports its modules lazily, by name: it takes part in no cycle.
    cycles = [name for name in graph if name != "pipeline.search" and reaches(name, name, set())]
    assert cycles == []


def test_index_docs_are_read_without_sqlalchemy_or_whoosh() -> None:
    probe = (
        "import pickle, sys; from pipeline.search import IndexDoc; "
        "pickle.loads(pickle.dumps(IndexDoc('a', 'c', None, 'CV', None, 'text'))); "
        "print(sorted({'sqlalchemy', 'whoosh', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_fast_paths_are_in_use_on_the_proven_release() -> None:
    assert pipeline.search.engine_paths().startswith("fast (whoosh-reloaded 2.7.5")


# -- the fallback: Whoosh's own writer and matchers, the same results ------------------------

# Run in a process of its own (the fence is read once per process): a rebuild, a write
# through the index writer process (a child: it inherits the setting), and searches.
_SCENARIO = r"""
import json, sys
from pathlib import Path
from pipeline.search import IndexWriterProcess, SearchIndex, engine_paths
from tests.test_ranking import _docs

folder, queries = Path(sys.argv[1]), json.loads(sys.argv[2])
docs = _docs(120)
texts = {d.attachment_id: d.text for d in docs}
index = SearchIndex(folder)
assert index.rebuild(docs[:80]) == 80
writer = IndexWriterProcess(folder)
batches = [writer.submit(docs[80:110], ["doc00003"]), writer.submit(docs[110:], [])]
writer.close()
for batch in batches:
    batch.result(timeout=60)
found = {}
for query in queries:
    results = index.search(query, texts=lambda ids: {i: texts[i] for i in ids}, limit=200)
    found[query] = {
        "total": results.total,
        "did_you_mean": results.did_you_mean,
        "hits": [[h.attachment_id, h.score, h.snippet] for h in results.hits],
    }
print(json.dumps({"paths": engine_paths(), "found": found}))
"""

_FALLBACK_QUERIES = [
    "python",
    "Kubernetes Docker",
    '"machine learning"',
    "München",
    "Python NOT Java",
    "Kuber*",
    "type:CV python",
    "Kubernets",
    "*",
]


def _scenario(folder: Path, fast: bool) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_SEARCH_FAST"}
    if not fast:
        env["PIPELINE_SEARCH_FAST"] = "off"
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(folder), json.dumps(_FALLBACK_QUERIES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_the_fallback_writes_and_searches_with_the_same_results(tmp_path: Path) -> None:
    fast, fast_err = _scenario(tmp_path / "fast", fast=True)
    slow, slow_err = _scenario(tmp_path / "fallback", fast=False)
    assert fast["paths"].startswith("fast")
    assert slow["paths"] == "fallback: Whoosh's own writer and matchers (PIPELINE_SEARCH_FAST=off)"
    # Loud: a warning, once per process (the parent's; the writer process says it too).
    assert "fast paths are off" not in fast_err
    assert slow_err.count("search's fast paths are off (PIPELINE_SEARCH_FAST=off)") >= 1
    for query in _FALLBACK_QUERIES:
        ours, whooshs = fast["found"][query], slow["found"][query]
        assert ours["total"] == whooshs["total"] > 0, query
        assert ours["did_you_mean"] == whooshs["did_you_mean"], query
        assert [h[0] for h in ours["hits"]] == [h[0] for h in whooshs["hits"]], query
        assert [h[2] for h in ours["hits"]] == [h[2] for h in whooshs["hits"]], query
        for mine, theirs in zip(ours["hits"], whooshs["hits"], strict=True):
            assert mine[1] == pytest.approx(theirs[1], abs=2e-4), query


def test_a_release_the_fast_paths_do_not_know_falls_back_and_says_so(tmp_path: Path) -> None:
    # A whoosh-reloaded that says it is 2.8.0, found first on the path: what an upgrade
    # past the pin would install.
    dist = tmp_path / "site" / "whoosh_reloaded-2.8.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: whoosh-reloaded\nVersion: 2.8.0\n")
    probe = (
        "import sys; from pathlib import Path; "
        "from pipeline.search import IndexDoc, SearchIndex, engine_paths; "
        "index = SearchIndex(Path(sys.argv[1])); "
        "index.write([IndexDoc('a1', 'C1', None, 'CV', 'cv.pdf', 'machine learning')]); "
        "index.write([IndexDoc('a2', 'C2', None, 'CV', 'cv.pdf', 'learning machines')]); "
        "found = index.search('\"machine learning\"', texts=lambda ids: {}); "
        "print([h.attachment_id for h in found.hits], engine_paths())"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("PIPELINE_SEARCH_FAST", None)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "index")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "['a1'] fallback: Whoosh's own writer and matchers "
        "(whoosh-reloaded 2.8.0; the fast paths are proven on 2.7.5)"
    )
    assert done.stderr.count("search's fast paths are off") == 1  # once, for two writes


# -- index files written before the package -------------------------------------------------


def _copy_of_main_index(tmp_path: Path) -> SearchIndex:
    folder = tmp_path / "index"
    shutil.copytree(MAIN_INDEX, folder)
    return SearchIndex(folder)


def _ids(index: SearchIndex, query: str, texts: dict[str, str], **kw: object) -> list[str]:
    results = index.search(query, texts=lambda ids: {i: texts[i] for i in ids}, **kw)  # type: ignore[arg-type]
    return [hit.attachment_id for hit in results.hits]


def test_an_index_written_before_the_package_opens_and_takes_writes(tmp_path: Path) -> None:
    assert b"pipeline.index" in next(MAIN_INDEX.glob("*.toc")).read_bytes()
    index = _copy_of_main_index(tmp_path)
    assert index.doc_count() == 3
    assert sorted(_ids(index, "python", MAIN_TEXTS)) == ["a1", "a3"]
    assert _ids(index, '"machine learning"', MAIN_TEXTS) == ["a1"]  # its positions read
    assert _ids(index, "development", MAIN_TEXTS) == ["a2"]  # its stems
    assert _ids(index, "müller", MAIN_TEXTS) == ["a1"]  # its file names
    texts = {**MAIN_TEXTS, "a4": "Python and machine learning"}
    index.write([IndexDoc("a4", "C4", None, "CV", "cv.pdf", texts["a4"], language="en")])
    assert sorted(_ids(index, '"machine learning"', texts)) == ["a1", "a4"]


def test_an_index_of_an_older_analysis_answers_and_says_to_reindex(tmp_path: Path) -> None:
    index = _copy_of_main_index(tmp_path)  # written before ß = ss and the split tokens
    assert index.analysis_outdated()
    assert "run `pipeline reindex`" in (index.outdated_reason() or "")
    # Its own pickled analyzer reads the query as its words were read: still found.
    assert _ids(index, "münchen", MAIN_TEXTS) == ["a3"]
    assert _ids(index, "Entwicklung", MAIN_TEXTS) == ["a3"]
    texts = {**MAIN_TEXTS, "a4": "ASP.NET in der Hauptstraße"}
    docs = [IndexDoc(i, f"C{i}", None, "CV", "cv.pdf", t, language="de") for i, t in texts.items()]
    index.rebuild(docs)
    assert not index.analysis_outdated() and index.outdated_reason() is None
    assert _ids(index, ".NET", texts) == ["a4"]
    assert _ids(index, "Hauptstrasse", texts) == ["a4"]


def test_expansions_and_lengths_past_the_caps_are_too_costly(tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "index")
    words = " ".join(f"w{n:04d}" for n in range(1_500))
    index.write([IndexDoc("a1", "C1", None, "CV", "cv.pdf", words, language="en")])
    texts = {"a1": words}
    for query in ("w*", "[a TO z]", "w?*", "x" * 1_001, " ".join(["word"] * 65)):
        with pytest.raises(pipeline.search.QueryTooCostly):
            _ids(index, query, texts)
    assert _ids(index, "w00*", texts) == ["a1"]  # 100 words: under the cap
    assert issubclass(pipeline.search.QueryTooCostly, QueryError)  # the server's 400


def test_an_index_naming_a_class_we_do_not_have_asks_for_a_reindex(tmp_path: Path) -> None:
    index = _copy_of_main_index(tmp_path)
    (toc,) = index.directory.glob("*.toc")
    toc.write_bytes(toc.read_bytes().replace(b"pipeline.index", b"pipeline.indey"))
    with pytest.raises(QueryError, match=r"^[^\n]*run `pipeline reindex`$"):
        index.search("python", texts=lambda ids: {})


def test_the_next_run_rebuilds_an_index_of_an_older_analysis(
    sandbox: SandboxServer,
    settings: KomboSettings,
    data: DataSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = list(sandbox.world.candidates)[:2]
    with App(data, settings) as app:
        app.ingest([first, second])
        indexed = app.index.doc_count()
    index_dir = data.integration(settings.integration_id).index_dir
    shutil.rmtree(index_dir)
    shutil.copytree(MAIN_INDEX, index_dir)  # written before ß = ss and the split tokens
    assert SearchIndex(index_dir).analysis_outdated()
    with caplog.at_level(logging.INFO, logger="pipeline"), App(data, settings) as app:
        summary = app.ingest([first])
        rebuilt = [r for r in caplog.records if "older analysis; rebuilding" in r.getMessage()]
        assert len(rebuilt) == 1 and settings.integration_id in rebuilt[0].getMessage()
        assert summary.exit_code == 0
        assert not app.index.analysis_outdated()
        # Rebuilt from the database: its documents, none of the old index's.
        assert app.index.doc_count() == indexed
        assert not {"a1", "a2", "a3"} & app.index.attachment_ids()
    with caplog.at_level(logging.INFO, logger="pipeline"), App(data, settings) as app:
        caplog.clear()
        app.ingest([first])  # current: not rebuilt again
        assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
