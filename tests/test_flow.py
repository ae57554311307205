"""The stages of a run overlap without holding each other up: real sandbox over HTTP, real
download process, real extraction workers, real SQLite and Whoosh."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from pipeline.app import App
from pipeline.config import DataSettings, KomboSettings
from pipeline.extract import Extraction
from pipeline.extract.pool import ProcessExtractor
from pipeline.sandbox.server import SandboxServer


class _HeldExtractor:
    """Real extraction workers, handed nothing until the sandbox has served ``files``
    downloads (or ``patience`` seconds have passed): extraction far behind the downloads."""

    workers = 1

    def __init__(self, sandbox: SandboxServer, files: int, patience: float) -> None:
        self._inner = ProcessExtractor(workers=1)
        self._sandbox = sandbox
        self._files = files
        self._patience = patience
        self._held: list[tuple[Future[Extraction], Path, str | None, str | None]] = []
        self._lock = threading.Lock()
        self.released = threading.Event()
        self.all_downloaded_first = False
        threading.Thread(target=self._release_when_downloaded, daemon=True).start()

    def _release_when_downloaded(self) -> None:
        deadline = time.monotonic() + self._patience
        while time.monotonic() < deadline:
            if self._sandbox.stats.file_requests >= self._files:
                self.all_downloaded_first = True
                break
            time.sleep(0.02)  # polling a counter, not waiting for an outcome
        with self._lock:
            self.released.set()
            held, self._held = self._held, []
        for job in held:
            self._pass_on(*job)

    def _pass_on(
        self, future: Future[Extraction], path: Path, content_type: str | None, name: str | None
    ) -> None:
        inner = self._inner.submit(path, content_type, name)
        inner.add_done_callback(lambda done: future.set_result(done.result()))

    def submit(
        self, path: Path, content_type: str | None, file_name: str | None
    ) -> Future[Extraction]:
        future: Future[Extraction] = Future()
        with self._lock:
            if not self.released.is_set():
                self._held.append((future, path, content_type, file_name))
                return future
        self._pass_on(future, path, content_type, file_name)
        return future

    def prestart(self) -> None:
        self._inner.prestart()

    def close(self, *, cancel: bool = False) -> None:
        self._inner.close(cancel=cancel)


def test_downloads_go_on_while_extraction_is_far_behind(  # type: ignore[no-untyped-def]
    cli, sandbox: SandboxServer, settings: KomboSettings, data: DataSettings
) -> None:
    """Two listings and two downloads at a time, and one worker that is handed nothing until
    every file is in: the downloads must not wait for the extractions (when the stages shared
    one window, no listing started once twelve files waited), and every CV is found in the
    end."""
    files = sum(len(c.attachments) for c in sandbox.world.ordered())
    assert files > 4 * (2 + 1)  # more than the old shared window held
    extractor = _HeldExtractor(sandbox, files, patience=15)
    ids = [c.id for c in sandbox.world.ordered()]
    narrow = replace(settings, concurrency=2, download_concurrency=2)
    with App(data, narrow, extractor=extractor) as run:
        summary = run.ingest(ids)
    assert extractor.all_downloaded_first, "downloads stalled behind the held extractions"
    assert summary.exit_code == 0
    search = cli("search", "Python", "--json", "--limit", "1000")
    assert search.code == 0, search.err
    found = {hit["candidate_id"] for hit in json.loads(search.out)["hits"]}
    assert found == sandbox.world.with_skill("Python")
