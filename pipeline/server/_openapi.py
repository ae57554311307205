"""The OpenAPI 3.1 document of the JSON API (``GET /api/v1/openapi.json``), written out
rather than generated: it is the contract of INTERFACE.md's "Serving" section."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from ._api import MAX_LIMIT, MAX_OFFSET, MAX_QUERY_CHARS, TYPES


def _param(name: str, where: str, schema: dict[str, Any], text: str, required: bool = False) -> Any:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": text}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "a query or parameter that cannot be used",
        401: "a missing or wrong token",
        403: "a token without the scope",
        404: "not there, or another integration's",
    }
    return {
        str(s): {"description": texts[s], "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/Error"}}}}
        for s in statuses
    }  # fmt: skip


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


@cache
def openapi_document() -> dict[str, Any]:
    attachment_id = _param("attachment_id", "path", {"type": "string"}, "Kombo's id", True)
    limit = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                      "default": 10}, "how many")  # fmt: skip
    hit = {
        "type": "object",
        "properties": {
            name: {"type": ["string", "null"]}
            for name in ("attachment_id", "candidate_id", "application_id", "type",
                         "file_name", "snippet", "language")
        } | {"score": {"type": "number"}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "CV pipeline", "version": __version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object",
                          "properties": {"code": {"type": "string"},
                                         "message": {"type": "string"}}}}},
                "Hit": hit,
                "Results": {"type": "object", "properties": {
                    "query": {"type": "string"}, "total": {"type": "integer"},
                    "did_you_mean": {"type": "string"},
                    "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    "candidates": {"type": "array", "items": {"type": "object", "properties": {
                        "candidate_id": {"type": "string"}, "score": {"type": "number"},
                        "hits": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/Hit"}}}}}}},
                "ExportRecord": {"type": "object",
                                 "description": "schemas/export_record.schema.json"},
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/api/v1/search": {"get": {
                "summary": "Full-text search (as `search --json`; by candidate when asked)",
                "parameters": [
                    _param("q", "query", {"type": "string", "maxLength": MAX_QUERY_CHARS},
                           "the query (the syntax of `pipeline search`)", True),
                    _param("type", "query", {"enum": list(TYPES)}, "attachment type"),
                    _param("candidate", "query", {"type": "string"}, "one candidate"),
                    _param("language", "query", {"type": "string"}, "ISO 639-1"),
                    _param("since", "query", {"type": "string", "format": "date"},
                           "updated at Kombo since (UTC)"),
                    limit,
                    _param("offset", "query", {"type": "integer", "minimum": 0,
                                               "maximum": MAX_OFFSET}, "paging"),
                    _param("by_candidate", "query", {"type": "boolean"},
                           "one entry per candidate"),
                ],
                "responses": {"200": {"description": "hits", "content": _json("Results")},
                              **_errors(400, 401)},
            }},
            "/api/v1/similar/{attachment_id}": {"get": {
                "summary": "Other candidates' documents most like this one",
                "parameters": [attachment_id, limit],
                "responses": {"200": {"description": "hits", "content": _json("Results")},
                              **_errors(401, 404)},
            }},
            "/api/v1/attachments/{attachment_id}": {"get": {
                "summary": "The export record, without text", "parameters": [attachment_id],
                "responses": {"200": {"description": "the record",
                                      "content": _json("ExportRecord")}, **_errors(401, 404)},
            }},
            "/api/v1/attachments/{attachment_id}/text": {"get": {
                "summary": "The extracted text", "parameters": [attachment_id],
                "responses": {"200": {"description": "text/plain; charset=utf-8"},
                              **_errors(401, 404)},
            }},
            "/api/v1/attachments/{attachment_id}/file": {"get": {
                "summary": "The original file, as a download", "parameters": [attachment_id],
                "responses": {"200": {"description": "the bytes (Content-Disposition: "
                                                     "attachment)"}, **_errors(401, 404)},
            }},
            "/api/v1/status": {"get": {
                "summary": "As `status --json`, for the token's integration",
                "responses": {"200": {"description": "the status"}, **_errors(401)},
            }},
            "/api/v1/export": {"get": {
                "summary": "Admin: export records as JSON lines, streamed",
                "parameters": [
                    _param("format", "query", {"enum": ["jsonl"]}, "jsonl"),
                    _param("status", "query", {"type": "string"}, "a state or all"),
                    _param("type", "query", {"enum": list(TYPES)}, "attachment type"),
                    _param("since", "query", {"type": "string", "format": "date"}, "since"),
                ],
                "responses": {"200": {"description": "application/x-ndjson"},
                              **_errors(400, 401, 403)},
            }},
            "/api/v1/candidates/{candidate_id}": {"delete": {
                "summary": "Admin: erase a candidate (as `forget`)",
                "parameters": [_param("candidate_id", "path", {"type": "string"}, "id", True)],
                "responses": {"200": {"description": "what was erased"},
                              **_errors(401, 403, 404)},
            }},
        },
    }  # fmt: skip


__all__ = ["openapi_document"]
