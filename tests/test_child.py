"""Child processes are started by a reference to their entry point, and their errors arrive
as themselves."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

from pipeline import child
from pipeline.errors import IndexWriteError
from pipeline.search import IndexDoc, IndexWriterProcess


def test_a_child_entry_must_be_a_module_level_function() -> None:
    def nested(fd: int) -> None:
        pass

    with pytest.raises(ValueError, match="module-level function"):
        child.start(nested)


def test_an_index_writer_error_crosses_the_process_boundary_as_itself(tmp_path: Path) -> None:
    # A folder where the index cannot be: the writer process fails the batch, and the
    # parent's future holds the exception the child raised (pickled), not a description.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    writer = IndexWriterProcess(blocker / "index")
    batch: Future[float] = writer.submit([IndexDoc("a1", "C1", None, "CV", None, "text")], [])
    writer.close()
    error = batch.exception(timeout=60)
    assert type(error) is IndexWriteError
    assert str(error).startswith("writing the search index failed: ")
    assert error.transient
