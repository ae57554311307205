"""Shared by the server tests: a data directory ingested from the sandbox, tokens, and a
real ``pipeline serve`` process on a free port (its stderr kept for the log checks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.app import App
from pipeline.config import DataSettings, Options, resolve_kombo
from pipeline.database import Store
from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from pipeline.server import new_token

WEBHOOK_SECRET = "whsec-test-0123456789"
OTHER_INTEGRATION = "other:4Yq9WkQb7mT2nXc8"
# A CV that tries to run script in the recruiters' page: shown as text, never run.
HOSTILE_TEXT = (
    b"Hostile Applicant\nSenior zebrafish engineer <script>window.pwned=1;"
    b"document.title='pwned'</script> with <img src=x onerror=\"window.pwned=2\"> and "
    b"Python experience in Berlin.\n"
)


def data_settings(root: Path) -> DataSettings:
    return DataSettings(data_dir=root, database_url=f"sqlite:///{root / 'pipeline.db'}")


def hostile_attachment(world: World) -> str:
    """The plain-text CV of the seventh candidate, whose bytes the sandbox replaces."""
    candidate = world.ordered()[6]
    return next(a.id for a in candidate.attachments if a.type == "CV" and a.kind == "txt")


def ingest(sandbox: SandboxServer, data: DataSettings, integration_id: str | None = None) -> None:
    world = sandbox.world if integration_id is None else sandbox.integration(integration_id).world
    settings = resolve_kombo(
        Options(
            api_key=sandbox.api_key,
            integration_id=integration_id or sandbox.integration_id,
            base_url=sandbox.base_url,
        ),
        env={},
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )
    with App(data, settings) as app:
        summary = app.ingest([c.id for c in world.ordered()])
    assert summary.exit_code == 0, summary.errors


def token(data: DataSettings, integration_id: str, name: str, *, admin: bool = False) -> str:
    store = Store(data.database_url)
    try:
        store.ensure_schema()
        made = new_token(store, integration_id=integration_id, name=name, admin=admin)
    finally:
        store.close()
    assert made is not None
    return made[1]


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return "\n".join(self.lines)


def serve(data: DataSettings, env: dict[str, str] | None = None, *args: str) -> Served:
    """``pipeline serve --port 0`` in a child process, once it accepts connections."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KOMBO_", "PIPELINE_"))}
    environ.update({"KOMBO_WEBHOOK_SECRET": WEBHOOK_SECRET, **(env or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", "0", "--data-dir",
         str(data.data_dir), "--log-format", "json", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=environ,
    )  # fmt: skip
    assert process.stderr is not None
    served = Served(process, "")
    ready = threading.Event()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            served.lines.append(line.rstrip("\n"))
            if "serving on http://" in line and not ready.is_set():
                served.url = line.split("serving on ", 1)[1].strip()
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or not served.url:
        process.kill()
        raise AssertionError("the server did not start:\n" + served.log())
    return served


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()},
                          response.read())  # fmt: skip
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def wait_for(check: Any, timeout: float = 60, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@contextmanager
def served_world(
    candidates: int = 12, *serve_args: str, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """A sandbox world ingested (one CV replaced by a hostile one), a read, an admin and
    another integration's token, and ``pipeline serve [serve_args]`` over it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = data_settings(Path(tmp) / "data")
        world = World(candidates=candidates, seed=7)
        with SandboxServer(world) as sandbox:
            hostile = hostile_attachment(world)
            sandbox.add_fault(kind="replace", target="files", match=hostile, body=HOSTILE_TEXT,
                              times=None)  # fmt: skip
            ingest(sandbox, data)
            # Another customer of the same account, with candidates of its own.
            sandbox.add_integration(OTHER_INTEGRATION, World(candidates=4, seed=13))
            ingest(sandbox, data, OTHER_INTEGRATION)
            integration = sandbox.integration_id
            tokens = {
                "read": token(data, integration, "reader"),
                "admin": token(data, integration, "admin", admin=True),
                "other": token(data, OTHER_INTEGRATION, "other-reader", admin=True),
            }
            served = serve(data, env, *serve_args)
            try:
                yield {"data": data, "sandbox": sandbox, "server": served, "tokens": tokens,
                       "integration": integration, "hostile": hostile}  # fmt: skip
            finally:
                assert served.stop() == 0, served.log()
