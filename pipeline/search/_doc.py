"""What the index stage is given of one attachment.

A module of its own, with nothing heavy to import: index writer processes receive these
pickled, and unpickling one imports the module that defines it (``pipeline.database`` would
bring SQLAlchemy: 0.3 s at each writer process's start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class IndexDoc:
    """What the search index needs of one attachment."""

    attachment_id: str
    candidate_id: str
    application_id: str | None
    type: str
    file_name: str | None
    text: str
    sha256: str | None = None
    language: str | None = None
    updated_at: datetime | None = None
    candidate_title: str | None = None
