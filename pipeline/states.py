"""Closed sets of states, stored as text: an attachment's (INTERFACE.md), a run's and an
integration's; and ``utcnow``, the clock the rows are stamped with. Imports nothing heavy
(the application layer and a search use these without the database layer)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum


def utcnow() -> datetime:
    return datetime.now(UTC)


class AttachmentState(StrEnum):
    # Seen and being worked on. A finished run leaves none; a killed one may, and the next
    # run finishes them first.
    PENDING = "pending"
    INDEXED = "indexed"
    NO_TEXT = "no_text"
    ENCRYPTED = "encrypted"
    UNSUPPORTED = "unsupported"
    TOO_LARGE = "too_large"
    # The file came whole but no parser here reads it (corrupt, truncated at the source, or a
    # parser that timed out or ran out of memory on these bytes three times): final until the
    # attachment changes at Kombo or the parser that failed is upgraded.
    UNREADABLE = "unreadable"
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
        AttachmentState.UNREADABLE,
        AttachmentState.DELETED,
    }
)


class RunStatus(StrEnum):
    """What became of a run (the runs table's ``status`` column)."""

    RUNNING = "running"  # begun; a run that dies leaves this, and the next marks it killed
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # finished, but some candidates or attachments failed (exit 1)
    ABORTED = "aborted"  # stopped by an error of the whole integration (exit 2)
    INTERRUPTED = "interrupted"  # Ctrl-C: what finished is committed (exit 130)
    KILLED = "killed"  # its process died while it ran


# Runs that went through every target: the nightly watermark may move past them.
COMPLETED_RUNS = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED})


class IntegrationState:
    """An integration's ``state`` in the registry (``integrations`` table)."""

    ACTIVE = "active"
    PAUSED = "paused"
