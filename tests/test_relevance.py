"""Search quality against the sandbox generator's knowledge of who wrote what.

Every query's relevant set comes from the generator (who has which skill, phrase, city and
language), never from the search index. Prints recall@10 and precision@10 per query, over
candidates (a recruiter wants people), and asserts floors."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer

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
