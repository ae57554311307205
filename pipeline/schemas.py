"""JSON Schemas shipped in ``schemas/`` (copied into the wheel as ``pipeline/schemas``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

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
def validator(name: str) -> Draft202012Validator:
    schema: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())


def first_error(name: str, document: object) -> str | None:
    """A one-line description of the first way ``document`` breaks the schema, or None."""
    error = next(iter(validator(name).iter_errors(document)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:200]}"
