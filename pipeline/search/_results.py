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
    # When a word of the query is not in the index and its correction finds at least as much:
    # the corrected spelling, whose hits these are (or the suggestion, when nothing matched).
    did_you_mean: str | None = None


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
