"""The closed set of states an attachment ends in (INTERFACE.md), stored as text."""

from __future__ import annotations

from enum import StrEnum


class AttachmentState(StrEnum):
    # Seen and being worked on. A finished run leaves none; a killed one may, and the next
    # run finishes them first.
    PENDING = "pending"
    INDEXED = "indexed"
    NO_TEXT = "no_text"
    ENCRYPTED = "encrypted"
    UNSUPPORTED = "unsupported"
    TOO_LARGE = "too_large"
    FAILED = "failed"
    DELETED = "deleted"


# States after which nothing more will happen to an attachment until it changes at Kombo.
FINAL_STATES = frozenset(
    {
        AttachmentState.INDEXED,
        AttachmentState.NO_TEXT,
        AttachmentState.ENCRYPTED,
        AttachmentState.UNSUPPORTED,
        AttachmentState.TOO_LARGE,
        AttachmentState.DELETED,
    }
)
