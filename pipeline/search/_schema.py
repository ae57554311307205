"""The index's schema, and what one document gives each of its fields."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from whoosh import index as whoosh_index
from whoosh.codec.whoosh3 import W3Codec
from whoosh.fields import DATETIME, ID, STORED, TEXT, Schema

from ..errors import IndexDamagedError, QueryError
from ..filestore import tighten
from ._analysis import ANALYSIS_VERSION, FILE_NAME_PATTERN, analyzer, terms
from ._doc import IndexDoc
from ._whoosh import segment_writer
from ._whoosh._positions import WordPositions

INDEX_NAME = "attachments"
# Which analysis an index's words were written with (``_analysis.ANALYSIS_VERSION``); an
# index without the file was written by version 1.
ANALYSIS_FILE = "ANALYSIS_VERSION"
FIELDS = ("text", "file_name", "candidate_title")
# A match in the file name ("Lebenslauf Müller") weighs double, one in the candidate's
# current job title one and a half; a match through a shared stem weighs 0.6 of an exact one.
BOOSTS = {"text": 1.0, "file_name": 2.0, "candidate_title": 1.5}
STEM_BOOST = 0.6


def _schema() -> Schema:
    words = analyzer()
    text = TEXT(analyzer=words, phrase=True)
    text.format = WordPositions(field_boost=text.format.field_boost)
    return Schema(
        attachment_id=ID(stored=True, unique=True),
        candidate_id=ID(stored=True),
        application_id=STORED(),
        type=ID(stored=True),
        language=ID(stored=True),
        updated=DATETIME(stored=True),
        file_name=TEXT(stored=True, analyzer=analyzer(FILE_NAME_PATTERN)),
        candidate_title=TEXT(analyzer=words),
        text=text,
    )


def _fields(doc: IndexDoc) -> dict[str, object]:
    fields: dict[str, object] = {
        "attachment_id": doc.attachment_id,
        "candidate_id": doc.candidate_id,
        "application_id": doc.application_id,
        "type": doc.type,
        "language": doc.language or "",
        "file_name": doc.file_name or "",
        "candidate_title": doc.candidate_title or "",
        "text": terms(doc.text, doc.language),
    }
    if doc.updated_at is not None:
        fields["updated"] = doc.updated_at.replace(tzinfo=None)
    return fields


def codec() -> W3Codec:
    # Postings blocks are left uncompressed: inflating them was a third of a search's time
    # at 100,000 CVs, and saved disk only (the postings file is 3.4 times as large: 190 MB
    # against 55 MB at 100,000 CVs). Blocks of 512 postings instead of 128: a search reads
    # whole posting lists, and each block costs a seek and a pickle.
    return W3Codec(blocklimit=512, compression=0)


def writer_options() -> dict[str, object]:
    # Segments are left as separate files: Whoosh reads a file of a compound segment by
    # copying it whole into memory, on every search (90 ms at 100,000 CVs).
    return {"limitmb": 256, "compound": False, "codec": codec()}


@contextmanager
def _toc_read(directory: Path) -> Iterator[None]:
    try:
        yield
    except (ImportError, AttributeError) as exc:
        # The TOC's pickled schema names a class this version does not have (one that moved
        # and is not in _whoosh._pickle's map, or one of another build).
        raise QueryError(
            f"the search index in {directory} was built by another version: run `pipeline reindex`"
        ) from exc
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError) as exc:
        # A TOC cut short or overwritten.
        raise IndexDamagedError(
            f"search index: {directory} has an unreadable table of contents "
            f"({type(exc).__name__}): run `pipeline reindex` to rebuild it from the database",
            path=str(directory),
        ) from exc


def index_exists(directory: Path) -> bool:
    with _toc_read(directory):  # Whoosh reads the TOC to tell
        return bool(whoosh_index.exists_in(str(directory), indexname=INDEX_NAME))


def open_index(directory: Path) -> whoosh_index.Index:
    """The index in ``directory``, created (empty, with our schema) if there is none."""
    if index_exists(directory):
        with _toc_read(directory):
            return whoosh_index.open_dir(str(directory), indexname=INDEX_NAME)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = whoosh_index.create_in(str(directory), _schema(), indexname=INDEX_NAME)
    marker = directory / ANALYSIS_FILE
    marker.write_text(f"{ANALYSIS_VERSION}\n", encoding="ascii")
    tighten(marker, 0o600)
    return created


def analysis_version(directory: Path) -> int:
    """The analysis an existing index was written with (1: before the marker existed)."""
    try:
        return int((directory / ANALYSIS_FILE).read_text(encoding="ascii").strip() or 1)
    except (FileNotFoundError, ValueError):
        return 1


def locked_writer(ix: whoosh_index.Index) -> Any:
    """A writer that holds the index's lock: the fence's choice of segment writer."""
    # Wait for the lock a while: a writer process of a run that was killed may still be
    # finishing its last batch.
    writer = segment_writer(ix, timeout=120, delay=0.1, **writer_options())
    # Whoosh creates its lock file with mode 0777 less the umask (0700 under ours): private
    # files are 0600.
    folder = getattr(ix.storage, "folder", None)
    if folder is not None:
        tighten(Path(folder) / f"{INDEX_NAME}_WRITELOCK", 0o600)
    return writer
