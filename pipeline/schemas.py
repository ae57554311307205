"""JSON Schemas shipped in ``schemas/`` (copied into the wheel as ``pipeline/schemas``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

_CANDIDATE_DIRS = (
    Path(__file__).parent / "schemas",  # installed wheel
    Path(__file__).parent.parent / "schemas",  # source checkout / editable install
)


def schema_path(name: str) -> Path:
    for folder in _CANDIDATE_DIRS:
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"schema {name} not found in {[str(d) for d in _CANDIDATE_DIRS]}")


@cache
def validator(name: str, *, formats: bool = True) -> Any:
    """A compiled validator (jsonschema-rs: every listing is checked, and the pure-Python
    validator cost a quarter of a millisecond each, 200 times as much). ``formats=False``
    leaves out the ``format`` checks, for a caller that reads those values itself."""
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return jsonschema_rs.validator_for(schema, validate_formats=formats)


def first_error(name: str, document: object, *, formats: bool = True) -> str | None:
    """A one-line description of the first way ``document`` breaks the schema, or None."""
    checker = validator(name, formats=formats)
    if checker.is_valid(document):
        return None
    error = next(iter(checker.iter_errors(document)))
    where = "/".join(str(p) for p in error.instance_path) or "(root)"
    return f"{where}: {error.message[:200]}"
