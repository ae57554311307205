"""The JSON the API answers: the same shapes as the CLI's ``--json`` output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import CandidatePage, StatusReport
    from ..search import SearchHit, SearchResults


def hit_json(h: SearchHit, integration_id: str) -> dict[str, Any]:
    return {
        "integration_id": integration_id or None,
        "attachment_id": h.attachment_id,
        "candidate_id": h.candidate_id,
        "application_id": h.application_id,
        "type": h.type,
        "file_name": h.file_name,
        "score": h.score,
        "snippet": h.snippet,
        "language": h.language,
    }


def results_json(results: SearchResults, integration_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "query": results.query,
        "total": results.total,
        "hits": [hit_json(h, integration_id) for h in results.hits],
    }
    if results.did_you_mean:
        payload["did_you_mean"] = results.did_you_mean
    return payload


def people_json(page: CandidatePage, integration_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "query": page.results.query,
        "total": page.total,
        "candidates": [
            {
                "candidate_id": p.candidate_id,
                "score": p.score,
                "hits": [hit_json(h, integration_id) for h in p.hits],
            }
            for p in page.people
        ],
    }
    if page.results.did_you_mean:
        payload["did_you_mean"] = page.results.did_you_mean
    return payload


def status_json(report: StatusReport, integration_id: str) -> dict[str, Any]:
    failures = report.failures
    return {
        "integration_id": integration_id,
        "attachments": report.attachments,
        "nightly_watermark": report.nightly_watermark,
        "erasures": report.erasures,
        "search_engine": report.search_engine,
        "runs": [
            {
                "id": r.id,
                "kind": r.kind,
                "status": r.status,
                "started_at": r.started_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "counts": r.counts,
                "errors": len(r.errors),
                "warnings": r.warnings,
                "summary": r.summary,
            }
            for r in report.runs
        ],
        "failed_candidates": [
            {"candidate_id": f.candidate_id, "reason": f.reason, "retried_by_next_run": f.retried}
            for f in failures.candidates
        ],
        "failed_candidates_total": failures.candidate_total,
        "failed_attachments": [
            {
                "attachment_id": f.attachment_id,
                "candidate_id": f.candidate_id,
                "status": f.status,
                "reason": f.reason,
                "retried_by_next_run": f.retried,
            }
            for f in failures.attachments
        ],
        "failed_attachments_total": failures.attachment_total,
    }


__all__ = ["hit_json", "people_json", "results_json", "status_json"]
