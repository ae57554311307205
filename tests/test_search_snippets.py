"""Snippets as a search shows them, pinned: the words marked, the fragments chosen, the rest
escaped, over generated CVs and texts with the shapes the analysis treats apart (``ß``,
``æ``, joined words, e-mail addresses, elisions, markup, accents written as combining
marks, ligatures, a Greek final sigma, matches far apart in a long text).

The expected snippets (``tests/data/snippets.json``) were made by the highlighter before it
learnt to tokenize only the stretches of a text that can hold a match; they must not change.
``python -m tests.test_search_snippets --write`` makes them again, for a change meant to
change them.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline.sandbox.documents import cv_blocks, render_text
from pipeline.sandbox.generator import World
from pipeline.search import IndexDoc, SearchIndex

EXPECTED = Path(__file__).parent / "data" / "snippets.json"

_LONG = (
    "Python at the start. "
    + "Filler words about nothing in particular, repeated for length. " * 60
    + "Kubernetes and Docker in the middle, with Python again. "
    + "More filler so that the fragments are far apart from each other. " * 60
    + "Entwicklung von Software, entwickelt in München, Straße 5."
)
TEXTS = {
    "tricky-de": (
        "Lebenslauf Jörg Müller, Hauptstraße 12, 48143 Münster. STRASSE und Strasse. "
        "Geboren am 16.6.1974. E-Mail: joerg.mueller@example.com. Entwicklung und "
        "Weiterentwicklung von Anwendungen; entwickelte Softwareentwicklung; Beratung.",
        "de",
    ),
    "tricky-fr": (
        "Diplôme d’Ingénieurs, l'extraction de données, qu'il développe. Développeur "
        "C++ et C#, ASP.NET, .NET Core, Node.js. L’œuvre de Cæsar. ﬁnance et ﬃliale.",
        "fr",
    ),
    "tricky-en": (
        "Developing developers develop <script>alert('x')</script> & more > less. "
        "Machine learning engineer; machine-learning; learned machines. İstanbul office, "
        "e\u0301cole (combining accent), ΟΔΟΣ and οδός. Kubernetes, kubectl, Kuberlab.",
        "en",
    ),
    "tricky-es": ("Desarrollador de software en Málaga; desarrollo ágil; España.", "es"),
    "long": (_LONG, "en"),
    "no-language": ("Python und Straße ohne Sprache; Entwicklungen.", None),
}
QUERIES = (
    "python",
    '"machine learning"',
    "Kuber*",
    "Entwicklungen",
    "entwickeln",
    "Straße",
    "strasse",
    ".NET",
    "asp.net",
    "C++",
    "ingénieur",
    "extraction",
    "joerg",
    "mueller",
    "1974",
    "example.com",
    "caesar",
    "oeuvre",
    "finance",
    "script",
    "München",
    "developpeur",
    "developing",
    "istanbul",
    "ecole",
    "οδος",
    "Desarrollo",
    "docker OR kubernetes",
    "python NOT docker",
    "file_name:lebenslauf",
)


def _docs() -> list[IndexDoc]:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    docs = []
    for number, candidate in enumerate(World(candidates=40, seed=5).ordered()):
        docs.append(
            IndexDoc(
                attachment_id=f"cv{number:03d}",
                candidate_id=candidate.id,
                application_id=None,
                type="CV",
                file_name=f"{candidate.full_name} CV.pdf",
                text=render_text(cv_blocks(candidate)).decode(),
                sha256=None,
                language=candidate.language,
                updated_at=now,
            )
        )
    for name, (text, language) in TEXTS.items():
        docs.append(
            IndexDoc(
                attachment_id=name,
                candidate_id=f"person-{name}",
                application_id=None,
                type="CV",
                file_name=f"Lebenslauf_{name}.pdf",
                text=text,
                sha256=None,
                language=language,
                updated_at=now,
            )
        )
    return docs


def snippets(folder: Path) -> dict[str, list[list[str]]]:
    docs = _docs()
    texts = {doc.attachment_id: doc.text for doc in docs}
    index = SearchIndex(folder)
    index.rebuild(docs)
    found = {}
    for query in QUERIES:
        results = index.search(query, texts=lambda ids: {i: texts[i] for i in ids}, limit=12)
        found[query] = [[hit.attachment_id, hit.snippet] for hit in results.hits]
    return found


def test_snippets_are_as_they_were(tmp_path: Path) -> None:
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    found = snippets(tmp_path / "index")
    assert found.keys() == expected.keys()
    for query, hits in expected.items():
        assert found[query] == hits, query
    # The cases say something: each tricky text is found, and marked, by some query.
    marked = {name for hits in found.values() for name, snippet in hits if "<b>" in snippet}
    assert set(TEXTS) <= marked
    assert any("&lt;script&gt;" in s for hits in found.values() for _n, s in hits)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        EXPECTED.write_text(
            json.dumps(snippets(Path(tmp) / "index"), ensure_ascii=False, indent=1) + "\n",
            encoding="utf-8",
        )
