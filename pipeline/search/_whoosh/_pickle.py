"""Whoosh's pickles, adjusted: the protocol of its postings blocks, and classes that moved.

Whoosh's segment writer pickles each block of postings with protocol 2, under which every
bytes value (a posting's positions) becomes a call to ``_codecs.encode`` when read back. The
newest protocol reads nine times faster and is half the size (measured on a block of
"python" at 100,000 CVs: 80 us against 9 us). Readers take any protocol, so segments
written before this mix freely with those written after: it is a fast path, applied only
where the fence allows.

Whoosh unpickles the schema from the index's TOC, and the schema names our postings format
by its import path. Indexes written before the search package name it ``pipeline.index``:
the TOC is read with an unpickler that maps such old paths to today's, on every Whoosh
version that reads its TOC through ``whoosh.index.pickle``. Where that is not so, an old
index fails to open, and ``_index`` says in one line to run ``pipeline reindex``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# (old module, old name) -> (module, name) of a class an index's pickled schema may name.
MOVED_CLASSES = {
    ("pipeline.index", "WordPositions"): ("pipeline.search._whoosh._positions", "WordPositions"),
}


def _dumps(obj: object, protocol: int | None = None) -> bytes:
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def use_newest_protocol_for_postings() -> None:
    from whoosh.codec import whoosh3

    if getattr(whoosh3, "dumps", None) is not None:
        whoosh3.dumps = _dumps


# An old TOC's pickled schema -> the same schema pickled naming today's classes.
_REMAPPED: dict[bytes, bytes] = {}


class _MovedClassesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = MOVED_CLASSES.get((module, name), (module, name))
        return super().find_class(module, name)


class _PickleWithMovedClasses:
    """The ``pickle`` module as ``whoosh.index`` sees it, with ``loads`` mapping moved
    classes."""

    @staticmethod
    def loads(data: bytes, **kwargs: Any) -> Any:
        # An unpickler of our own reads three times slower than pickle's (0.38 ms against
        # 0.13 for the schema, and a search reads the TOC three times): an old TOC's schema
        # is mapped once, and its pickle naming today's classes kept for the next reads.
        data = _REMAPPED.get(data, data)
        try:
            return pickle.loads(data, **kwargs)
        except (ImportError, AttributeError):
            loaded = _MovedClassesUnpickler(io.BytesIO(data), **kwargs).load()
            if len(_REMAPPED) < 16:  # an index per integration
                _REMAPPED[data] = pickle.dumps(loaded, 2)
            return loaded

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


def map_moved_classes_in_tocs() -> None:
    from whoosh import index

    if getattr(getattr(index, "pickle", None), "loads", None) is pickle.loads:
        index.pickle = _PickleWithMovedClasses()
