"""Everything of search that touches Whoosh's private names, behind one fence.

The fast paths (the array segment writer ``_segments``, the array-postings file
``_postings``, the numpy ranker ``_ranker``, the postings' pickle protocol ``_pickle``) read
and write Whoosh's files through its internals. They are proven, file for file and score
for score (``tests/test_segments.py``, ``tests/test_ranking.py``), on the releases in
``PROVEN_RELEASES``, and ``pyproject.toml`` pins ``whoosh-reloaded`` to them. On any other
release (or with ``PIPELINE_SEARCH_FAST=off``) search falls back to Whoosh's own segment
writer and its own matchers and scoring: the same results, slower, said once per process
as a warning and by ``engine_paths()`` (which ``status`` and ``check`` show).

What is not a fast path, and so is used on every release: the text field's postings format
(``_positions``; it is the index's file format, and public Whoosh API to subclass), the
mapping of moved classes when a TOC is read (``_pickle``; old indexes must open) and the
spelling corrector that leaves out marked stems (``_spelling``).
"""

from __future__ import annotations

import logging
import os
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

from ...errors import FastPathUnsupportedError
from . import _pickle

if TYPE_CHECKING:
    from ._ranker import Ranker

log = logging.getLogger(__name__)

if "numpy" not in sys.modules:
    # numpy's OpenBLAS starts a thread per core as numpy is imported, for matrix products that
    # search (the ranker, the segment writer) never makes: 40-80 ms of every search's start on
    # a 2-core machine. One thread, unless the operator set it (children inherit it).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Releases of whoosh-reloaded whose internals the fast paths are tested on.
PROVEN_RELEASES = frozenset({"2.7.5"})
# Set to "off" to use Whoosh's own writer and matchers (a test compares both; an operator
# can rule the fast paths out when in doubt). Read once per process; child processes
# inherit it.
FAST_VARIABLE = "PIPELINE_SEARCH_FAST"


def whoosh_release() -> str:
    from importlib import metadata

    try:
        return metadata.version("whoosh-reloaded")
    except metadata.PackageNotFoundError:  # another distribution of the whoosh package
        import whoosh

        return "whoosh " + str(whoosh.versionstring())


@cache
def _fallback_reason() -> str | None:
    """Why the fast paths are off in this process, or None when they are on."""
    if os.environ.get(FAST_VARIABLE, "").strip().lower() in ("off", "0", "false", "no"):
        return f"{FAST_VARIABLE}=off"
    release = whoosh_release()
    if release not in PROVEN_RELEASES:
        proven = ", ".join(sorted(PROVEN_RELEASES))
        return f"whoosh-reloaded {release}; the fast paths are proven on {proven}"
    return None


@cache
def fast_paths() -> bool:
    """Whether search's fast paths are in use; the first call warns if they are not."""
    reason = _fallback_reason()
    if reason is None:
        _pickle.use_newest_protocol_for_postings()
        return True
    log.warning(
        "search's fast paths are off (%s): Whoosh's own segment writer and matchers are "
        "used instead, with the same results, slower",
        reason,
    )
    return False


def engine_paths() -> str:
    """Which paths search runs on, in a few words, for ``status`` and ``check``:
    "fast (whoosh-reloaded 2.7.5)", or "fallback: Whoosh's own writer and matchers (why)"."""
    reason = _fallback_reason()
    if reason is None:
        return f"fast (whoosh-reloaded {whoosh_release()})"
    return f"fallback: Whoosh's own writer and matchers ({reason})"


def segment_writer(ix: Any, **options: Any) -> Any:
    """A writer of new segments: the array writer, or Whoosh's own on the fallback."""
    if fast_paths():
        # Imported when an index is written: numpy takes 0.1 s to import, and most
        # commands (status, export, erase) write no index.
        from ._segments import ArraySegmentWriter

        return ArraySegmentWriter(ix, **options)
    from whoosh.writing import SegmentWriter

    return SegmentWriter(ix, **options)


def ranker(searcher: Any) -> Ranker | None:
    """The numpy ranker for an open searcher, or None: search through Whoosh's matchers."""
    if not fast_paths():
        return None
    from ._ranker import Ranker  # numpy: the index writer process never needs it

    try:
        return Ranker(searcher)
    except FastPathUnsupportedError as exc:
        log.debug("searching through Whoosh's matchers: %s", exc)
        return None


_pickle.map_moved_classes_in_tocs()
