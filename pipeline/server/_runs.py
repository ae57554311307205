"""Runs the server starts (Kombo's ``data-changed`` webhook): coalesced per integration.

Each run is ``pipeline nightly --wait`` for one integration in a child process: the same
run engine, writer lock and records as the command line, with the CLI's own stop path, so
that SIGTERM to the server (forwarded to each run) leaves the run recorded ``interrupted``
exactly as ``systemctl stop`` on a cron run would. A run's CPU work never holds up the
server's requests, and the API key reaches the child on its stdin
(``--api-key-file -``), never in its environment or its command line.

Coalescing: per integration at most one run going and one waiting. A request while one
runs marks one waiting (the run going may have listed Kombo before the change); more
requests while one waits change nothing, since the waiting run will see every change.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..child import child_environment
from ..config import DataSettings, Secret

log = logging.getLogger(__name__)

# Variables a run's child never gets: the key goes on stdin, the webhook secret nowhere.
_WITHHELD = ("KOMBO_API_KEY", "KOMBO_WEBHOOK_SECRET")
# How long a run stopped by SIGTERM gets to record itself before it is killed.
STOP_GRACE_SECONDS = 60.0


@dataclass
class _Slot:
    running: subprocess.Popen[bytes] | None = None
    waiting: bool = False
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class RunnerSettings:
    data: DataSettings
    api_key: Secret | None
    base_url: str
    extra_args: tuple[str, ...] = ()


@dataclass
class RunCoordinator:
    """Starts incremental runs per integration, at most one going and one waiting."""

    settings: RunnerSettings
    on_finished: Callable[[str, int], None] = lambda integration_id, code: None
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: bool = False

    def request(self, integration_id: str) -> str:
        """Ask for a run: "started", "queued" (one will follow the one going) or
        "coalesced" (one is already waiting). "refused" while shutting down or without
        an API key."""
        if self.settings.api_key is None:
            log.error(
                "a run for integration %s was asked for, but KOMBO_API_KEY is not set for "
                "`pipeline serve`: nothing started",
                integration_id,
            )
            return "refused"
        with self._lock:
            if self._closing:
                return "refused"
            slot = self._slots.setdefault(integration_id, _Slot())
            if slot.thread is None:
                slot.thread = threading.Thread(
                    target=self._loop,
                    args=(integration_id, slot),
                    daemon=True,
                    name=f"run-{integration_id}",
                )
                slot.thread.start()
                return "started"
            if not slot.waiting:
                slot.waiting = True
                return "queued"
            return "coalesced"

    def in_flight(self) -> dict[str, int]:
        """Per integration: runs going or waiting (0, 1 or 2)."""
        with self._lock:
            return {
                iid: (slot.thread is not None) + slot.waiting for iid, slot in self._slots.items()
            }

    def _loop(self, integration_id: str, slot: _Slot) -> None:
        while True:
            try:
                code = self._run_once(integration_id, slot)
            except Exception as exc:  # a run that cannot start must not wedge its slot
                log.error("a run for integration %s could not start: %s", integration_id, exc)
                with self._lock:
                    slot.running = None
                code = -1
            self.on_finished(integration_id, code)
            with self._lock:
                if not slot.waiting or self._closing:
                    slot.thread = None
                    slot.waiting = False
                    return
                slot.waiting = False

    def _run_once(self, integration_id: str, slot: _Slot) -> int:
        settings = self.settings
        assert settings.api_key is not None
        # Without the key and the webhook secret, whatever variable holds them.
        env = {k: v for k, v in child_environment().items() if k not in _WITHHELD}
        env["PIPELINE_DATA_DIR"] = str(settings.data.data_dir)
        env["PIPELINE_DATABASE_URL"] = settings.data.database_url
        command = [
            sys.executable, "-m", "pipeline", "nightly", "--wait", "-q",
            "--api-key-file", "-",
            "--integration-id", integration_id,
            "--base-url", settings.base_url,
            *settings.extra_args,
        ]  # fmt: skip
        with self._lock:
            if self._closing:
                return -1
            log.info("run for integration %s started (webhook data-changed)", integration_id)
            child = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: Ctrl-C in the server's terminal reaches the server only,
                # which stops each run itself (SIGTERM), so every run is recorded.
                start_new_session=True,
            )
            slot.running = child
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(settings.api_key.reveal().encode() + b"\n")
            child.stdin.close()
        except BrokenPipeError:
            pass
        output = child.stdout.read().decode("utf-8", "replace").strip().splitlines()
        code = child.wait()
        with self._lock:
            slot.running = None
        last = output[-1] if output else ""
        log.info("run for integration %s ended (exit %d): %s", integration_id, code, last)
        return code

    def shutdown(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """No new runs; each run going is stopped as SIGTERM stops a cron run (recorded
        interrupted), killed if it has not ended within ``timeout``."""
        with self._lock:
            self._closing = True
            children = [s.running for s in self._slots.values() if s.running is not None]
            threads = [s.thread for s in self._slots.values() if s.thread is not None]
        for child in children:
            log.info("stopping the run in process %d (SIGTERM)", child.pid)
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("the run in process %d did not stop in time: killed", child.pid)
                child.kill()
        for thread in threads:
            thread.join(5)


__all__ = ["STOP_GRACE_SECONDS", "RunCoordinator", "RunnerSettings"]
