"""Search quality against the sandbox generator's knowledge of who wrote what, and against
documents judged by reading them.

Every query's relevant set comes from the generator (who has which skill, phrase, city and
language) or from reading the documents, never from the search index. The generator's test
prints recall@10 and precision@10 per query, over candidates (a recruiter wants people); the
judged tests print recall@10 and MRR by class (correction, folding, tokens, language), on
documents written here and on the shared corpus, and assert a floor for each class."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pipeline.extract import extract_file
from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from pipeline.search import IndexDoc, SearchIndex
from tests.helpers import CORPUS, needs_corpus

Truth = Callable[[World], set[str]]


def skill(name: str) -> Truth:
    return lambda w: w.with_skill(name)


def both(a: str, b: str) -> Truth:
    return lambda w: w.with_skill(a) & w.with_skill(b)


def phrase(text: str) -> Truth:
    return lambda w: w.with_phrase(text)


def language(code: str) -> Truth:
    return lambda w: w.in_language(code)


def city(name: str) -> Truth:
    return lambda w: (
        w.in_city(name)
        | {
            c.id
            for c in w.live()
            if name in c.school  # "Technische Universität München"
        }
    )


QUERIES: list[tuple[str, str, Truth]] = [
    ("single skill", "Python", skill("Python")),
    ("single skill", "Kubernetes", skill("Kubernetes")),
    ("single skill", "Terraform", skill("Terraform")),
    ("single skill", "Kafka", skill("Kafka")),
    ("skill pair", "Python Kubernetes", both("Python", "Kubernetes")),
    ("skill pair", "Docker AND PostgreSQL", both("Docker", "PostgreSQL")),
    ("either skill", "Scala OR Golang", lambda w: w.with_skill("Scala") | w.with_skill("Golang")),
    ("phrase", '"machine learning"', phrase("machine learning")),
    ("phrase", '"site reliability"', phrase("site reliability")),
    ("German word", "Teamfähigkeit", language("de")),
    ("German, no umlaut", "Teamfahigkeit", language("de")),
    ("German stem", "Entwicklungen", language("de")),
    ("French word", "développement", language("fr")),
    ("French, no accent", "developpement", language("fr")),
    ("French stem", "conceptions", language("fr")),
    ("Spanish word", "gestión", language("es")),
    ("Spanish, no accent", "gestion", language("es")),
    ("Spanish stem", "diseños", language("es")),
    ("English stem", "designing", language("en")),
    ("city, accent", "München", city("München")),
    ("city, folded", "Munchen", city("München")),
    ("city, accent", "Málaga", city("Málaga")),
    ("city, folded", "Geneve", city("Genève")),
    ("typo", "Kubernets", skill("Kubernetes")),
    ("typo", "Terrafom", skill("Terraform")),
]

RECALL_FLOOR = 0.9
PRECISION_FLOOR = 0.9


@pytest.fixture(scope="module")
def world() -> World:
    return World(candidates=48, seed=5)


def test_relevance(cli, world: World) -> None:  # type: ignore[no-untyped-def]
    with SandboxServer(world) as server:
        assert cli("ingest", *[c.id for c in world.ordered()], env=server.env()).code == 0
    table, recalls, precisions = [], [], []
    for kind, query, truth in QUERIES:
        relevant = truth(world)
        assert relevant, f"the world has nobody for {query!r}: pick another seed or query"
        result = cli("search", query, "--by-candidate", "--limit", "10", "--json")
        assert result.code == 0, result.err
        found = [c["candidate_id"] for c in json.loads(result.out)["candidates"]]
        right = len(set(found) & relevant)
        recall = right / min(10, len(relevant))
        precision = right / len(found) if found else 0.0
        recalls.append(recall)
        precisions.append(precision)
        table.append(f"{recall:6.2f} {precision:9.2f} {len(relevant):8}  {kind:<20} {query}")
    mean_recall = sum(recalls) / len(recalls)
    mean_precision = sum(precisions) / len(precisions)
    print("\nrecall@10 precision@10 relevant  kind                 query")
    print("\n".join(table))
    print(f"{mean_recall:6.2f} {mean_precision:9.2f}           mean")
    assert mean_recall >= RECALL_FLOOR
    assert mean_precision >= PRECISION_FLOOR
    assert min(recalls) >= 0.5 and min(precisions) >= 0.5


# -- the cases of issue 18, judged by reading the documents ------------------------------------
#
# Each case is (class, query, the documents a recruiter wants in the first ten). Scored over
# files: recall@10 (of at most ten relevant) and the reciprocal rank of the first relevant
# hit; printed by class, with a floor for each class.

Case = tuple[str, str, set[str]]


def _measure(
    cases: list[Case], search: Callable[[str], list[str]]
) -> dict[str, tuple[float, float]]:
    by_class: dict[str, list[tuple[float, float]]] = {}
    table = []
    for kind, query, relevant in cases:
        found = search(query)[:10]
        right = len(set(found) & relevant)
        recall = right / min(10, len(relevant))
        first = next((rank for rank, doc in enumerate(found, 1) if doc in relevant), None)
        reciprocal = 1 / first if first else 0.0
        by_class.setdefault(kind, []).append((recall, reciprocal))
        table.append(f"{recall:6.2f} {reciprocal:5.2f}  {kind:<12} {query}")
    scores = {
        kind: (sum(r for r, _ in rows) / len(rows), sum(m for _, m in rows) / len(rows))
        for kind, rows in by_class.items()
    }
    print("\nrecall@10  MRR  class        query")
    print("\n".join(table))
    print("\nclass        recall@10   MRR  queries")
    for kind, (recall, mrr) in scores.items():
        print(f"{kind:<12} {recall:9.2f} {mrr:5.2f} {len(by_class[kind]):8}")
    return scores


def _index(tmp_path: Path, docs: dict[str, tuple[str, str | None]]) -> Callable[[str], list[str]]:
    index = SearchIndex(tmp_path / "index")
    index.write(
        IndexDoc(name, f"c-{name}", None, "CV", name, text, language=language)
        for name, (text, language) in docs.items()
    )

    def texts(ids: Sequence[str]) -> dict[str, str]:
        return {i: docs[i][0] for i in ids}

    def search(query: str) -> list[str]:
        return [hit.attachment_id for hit in index.search(query, texts=texts).hits]

    return search


# Documents of the kinds recruiters meet, written for these checks (so that a clone without
# the shared corpus checks every case): a German LaTeX CV our detector takes for English, a
# CV laid out as a table, French and Italian letters, names with umlauts spelt both ways.
SHIPPED: dict[str, tuple[str, str | None]] = {
    "latex-de": (
        r"\documentclass[german]{article}\usepackage{fontawesome}\begin{document}"
        r"\section{Berufserfahrung}\textbf{Softwareentwicklung} für die Stadtwerke "
        r"Münster: Entwicklung der Plattform und Weiterentwicklungen mit dem Team. "
        r"\cvitem{Geburtsdatum}{16.6.1974} \cvitem{E-Mail}{joerg.fuerst@beispiel.de} "
        r"\cvitem{Adresse}{Hauptstraße 5, an der Straße} \end{document}",
        "en",  # what py3langid says of LaTeX markup around German
    ),
    "table-de": (
        "| Zeitraum | Tätigkeit | Ort |\n| 2019-2021 | Ich entwickle und leite die "
        "Beratung der Kunden | Köln |\n| Kenntnisse | C# & ASP.NET & SQL | Jörg Müller |",
        "de",
    ),
    "node-en": (
        "Full-stack developer: Node.js, C++ and Go services, R for statistics. "
        "Contact jane.smith@example.com. Lives on Strasse 12 in Muenster.",
        "en",
    ),
    "letter-fr": (
        "Madame, diplômée d’Ingénieurs, je m'intéresse à l'extraction de données et à "
        "l’apprentissage automatique qu'il faut industrialiser. Mon œuvre: Cæsar.",
        "fr",
    ),
    "letter-it": (
        "Gentile dott. Rossi, ho maturato un'esperienza nell'ambito dell'analisi dei dati "
        "all'interno dell'azienda.",
        None,
    ),
    "python-en": (
        "Python engineer. Python, Django, PostgreSQL, Kubernetes. Senior python developer "
        "who writes python every day.",
        "en",
    ),
    "state-en": ("State of the art: the state machine, first in the state. Jour fixe.", "en"),
}

SHIPPED_CASES: list[Case] = [
    ("correction", "Kubernets", {"python-en"}),
    ("correction", "pyhton pyhton", {"python-en"}),
    ("correction", "Joerg", {"latex-de", "table-de"}),
    ("correction", "Fuerst", {"latex-de"}),
    ("correction", "Straße", {"latex-de", "node-en"}),
    ("correction", "C++", {"node-en"}),
    ("correction", "C#", {"table-de"}),
    ("correction", "Go", {"node-en"}),
    ("correction", "SQL", {"table-de"}),
    ("folding", "Strasse", {"latex-de", "node-en"}),
    ("folding", "Hauptstrasse", {"latex-de"}),
    ("folding", "Jörg", {"latex-de", "table-de"}),
    ("folding", "Mueller", {"table-de"}),
    ("folding", "Münster", {"latex-de", "node-en"}),
    ("folding", "Muenster", {"latex-de", "node-en"}),
    ("folding", "Koeln", {"table-de"}),
    ("folding", "Caesar", {"letter-fr"}),
    ("folding", "oeuvre", {"letter-fr"}),
    ("tokens", ".NET", {"table-de"}),
    ("tokens", "ASP.NET", {"table-de"}),
    ("tokens", "asp", {"table-de"}),
    ("tokens", "1974", {"latex-de"}),
    ("tokens", "16.6.1974", {"latex-de"}),
    ("tokens", "beispiel.de", {"latex-de"}),
    ("tokens", "joerg.fuerst@beispiel.de", {"latex-de"}),
    ("tokens", "jane.smith", {"node-en"}),
    ("tokens", "Node.js", {"node-en"}),
    ("tokens", '"Node.js, C++"', {"node-en"}),
    ("tokens", "ingénieur", {"letter-fr"}),
    ("tokens", "extraction", {"letter-fr"}),
    ("tokens", "apprentissage", {"letter-fr"}),
    ("tokens", "esperienza", {"letter-it"}),
    ("tokens", "azienda", {"letter-it"}),
    ("language", "Entwicklung", {"latex-de"}),
    ("language", "entwickeln", {"latex-de", "table-de"}),
    ("language", "Entwickler", {"latex-de", "table-de"}),
    ("language", "Leitung", {"table-de"}),
    ("language", "beraten", {"table-de"}),
]
SHIPPED_FLOORS = {"correction": 1.0, "folding": 1.0, "tokens": 1.0, "language": 1.0}


def test_each_case_on_documents_the_project_ships(tmp_path: Path) -> None:
    scores = _measure(SHIPPED_CASES, _index(tmp_path, SHIPPED))
    for kind, floor in SHIPPED_FLOORS.items():
        assert scores[kind][0] >= floor and scores[kind][1] >= floor, kind


def test_a_correction_never_replaces_hits_and_never_touches_short_or_symbol_words(
    tmp_path: Path,
) -> None:
    index = SearchIndex(tmp_path / "index")
    index.write(
        IndexDoc(n, f"c-{n}", None, "CV", n, t, language=lang) for n, (t, lang) in SHIPPED.items()
    )

    def texts(ids: Sequence[str]) -> dict[str, str]:
        return {i: SHIPPED[i][0] for i in ids}

    for query in ("C++", "C#", ".NET", "Go", "R", "SQL", "Straße", "Joerg", "Fuerst", "python"):
        results = index.search(query, texts=texts)
        assert results.total and results.did_you_mean is None, (query, results.did_you_mean)
    # Every misspelled word is corrected, and the corrected query's hits shown only because
    # the typed one found nothing.
    typo = index.search("pyhton pyhton", texts=texts)
    assert (typo.did_you_mean, typo.corrected) == ("python python", True)
    assert [h.attachment_id for h in typo.hits] == ["python-en"]
    # A word that found something keeps its hits; the correction is only offered beside them.
    beside = index.search("Kubernets", texts=texts)
    assert beside.did_you_mean == "kubernetes"
    assert not beside.corrected or beside.total == 0


# The shared corpus: documents no test of ours wrote, extracted as a run extracts them.
CORPUS_FILES = {
    "lebenslauf.pdf": "modern-latex-cv/german/lebenslauf.pdf",
    "lebenslauf.tex": "modern-latex-cv/german/lebenslauf.tex",
    "curriculum.pdf": "latexPlantillaUnam/Curriculum/curriculum.pdf",
    "curriculum.tex": "latexPlantillaUnam/Curriculum/curriculum.tex",
    "alfred.pdf": "resume-matcher/alfred_pennyworth_pm.pdf",
    "barry.pdf": "resume-matcher/barry_allen_fe.pdf",
    "bruce.pdf": "resume-matcher/bruce_wayne_fullstack.pdf",
    "john.pdf": "resume-matcher/john_doe.pdf",
    "modern-two-column.pdf": "resume-matcher/modern-two-column.pdf",
    "two-column.pdf": "resume-matcher/two-column.pdf",
    "java.pdf": "resume-matcher/job_desc_java_developer.pdf",
    "bbva.pdf": (
        "resume-matcher/BBVA BANCO CONTINENTAL_ Convocatoria para Practicante data "
        "Analytics en Lima.pdf"
    ),
    "europass.pdf": "europass-ewa/Europass-CV-20130618-Emmanouilidi-EN.pdf",
    "fr.test": "apache-tika/language-tests/fr.test",
    "en.test": "apache-tika/language-tests/en.test",
    "umlaut.rtf": "apache-tika/testRTFUmlautSpaces.rtf",
    "crazyones.txt": "py-pdf_pypdf/crazyones.txt",
    "testPDF.pdf": "apache-tika/testPDF.pdf",
}
LEBENSLAUF = {"lebenslauf.pdf", "lebenslauf.tex"}
CURRICULUM = {"curriculum.pdf", "curriculum.tex"}
CORPUS_CASES: list[Case] = [
    ("correction", "Pennyworht", {"alfred.pdf"}),
    ("correction", "Regensbrug", LEBENSLAUF),
    ("correction", "Gotam", {"bruce.pdf"}),
    ("correction", "C++", CURRICULUM),
    ("correction", "Hänsch", {"fr.test", "en.test"}),
    ("correction", "Gotham", {"bruce.pdf"}),
    ("folding", "Universitat", LEBENSLAUF),
    ("folding", "Universitaet", LEBENSLAUF),
    ("folding", "Kumpfmuehler", LEBENSLAUF),
    ("folding", "Uebersicht", {"umlaut.rtf"}),
    ("folding", "Haensch", {"fr.test", "en.test"}),
    ("tokens", ".NET", CURRICULUM),
    ("tokens", "1995", LEBENSLAUF),
    ("tokens", "2007", {"alfred.pdf", "bruce.pdf", "testPDF.pdf"}),
    ("tokens", "philipempl.de", LEBENSLAUF),
    ("tokens", "gmail.com", CURRICULUM),
    ("tokens", "allthe", {"barry.pdf"}),
    ("tokens", "Node.js", {"barry.pdf", "bruce.pdf", "modern-two-column.pdf", "two-column.pdf"}),
    ("tokens", "accord", {"fr.test"}),
    ("tokens", "abord", {"fr.test"}),
    ("tokens", "Alexandre", {"fr.test"}),
    ("language", "Entwicklung", LEBENSLAUF),
    ("language", "entwickeln", LEBENSLAUF),
    ("language", "bearbeiten", LEBENSLAUF),
    ("language", "Fähigkeit", LEBENSLAUF),
    ("language", "estudiante", {"bbva.pdf"}),
]
# (recall@10, MRR). Language's MRR: "estudiante" (the job posting's "Estudiantes") ranks the
# Spanish CV's "Estudios" first, through their shared Spanish stem.
CORPUS_FLOORS = {
    "correction": (1.0, 1.0),
    "folding": (1.0, 1.0),
    "tokens": (1.0, 1.0),
    "language": (1.0, 0.85),
}


@needs_corpus()
@pytest.mark.corpus
def test_each_case_on_the_shared_corpus(tmp_path: Path) -> None:
    docs = {}
    for name, path in CORPUS_FILES.items():
        extracted = extract_file(CORPUS / path, mimetypes.guess_type(path)[0], Path(path).name)
        assert extracted.text, name
        docs[name] = (extracted.text, extracted.language)
    # The LaTeX source of a German CV: its licence and commands are English, its prose
    # German (pipeline.extract.language reads the prose); stemmed as German.
    assert docs["lebenslauf.tex"][1] == "de"
    scores = _measure(CORPUS_CASES, _index(tmp_path, docs))
    for kind, (recall, mrr) in CORPUS_FLOORS.items():
        assert scores[kind][0] >= recall and scores[kind][1] >= mrr, kind
