"""What a search gives back: hits, a page of them, and hits grouped by candidate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchHit:
    attachment_id: str
    candidate_id: str
    application_id: str | None
    type: str
    file_name: str | None
    score: float
    snippet: str
    language: str | None = None


@dataclass(frozen=True)
class SearchResults:
    query: str
    total: int
    hits: list[SearchHit]
    # The query with its misspelled words corrected, shown beside the literal query's hits
    # ("did you mean"); when the literal query found nothing, the hits are the corrected
    # query's, and ``corrected`` says so.
    did_you_mean: str | None = None
    corrected: bool = False


@dataclass(frozen=True)
class CandidateHit:
    candidate_id: str
    score: float
    hits: list[SearchHit]


def group_by_candidate(hits: list[SearchHit]) -> list[CandidateHit]:
    """People, not files: each candidate once, at the rank of their best file."""
    grouped: dict[str, list[SearchHit]] = {}
    for hit in hits:
        grouped.setdefault(hit.candidate_id, []).append(hit)
    return [CandidateHit(cid, files[0].score, files) for cid, files in grouped.items()]
