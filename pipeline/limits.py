"""Adaptive limit on Kombo actions in flight (AIMD, as TCP does it).

Kombo refuses more than 30 actions in flight per integration (fewer for some) with 429
``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED``, and reports ``Concurrency-Limit`` and
``Concurrency-Remaining`` on its answers. We start at the configured limit, never go above
what the server says its limit is, hold when it says nothing remains, halve on a refusal,
and grow back by one after a limit's worth of clean answers.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class AdaptiveLimit:
    def __init__(self, maximum: int) -> None:
        self._configured = max(1, maximum)
        self.maximum = self._configured
        self.limit = self._configured
        self.in_flight = 0
        self.refusals = 0
        self._clean = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1

    def release(
        self,
        *,
        refused: bool = False,
        remaining: int | None = None,
        server_limit: int | None = None,
    ) -> None:
        with self._cond:
            self.in_flight -= 1
            if server_limit is not None and server_limit > 0:
                self.maximum = min(self._configured, server_limit)
                self.limit = min(self.limit, self.maximum)
            if refused:
                self.refusals += 1
                self.limit = max(1, min(self.limit, self.in_flight + 1) // 2)
                self._clean = 0
                log.info("Kombo refused for concurrency: now at most %d in flight", self.limit)
            elif remaining == 0:
                # Full at the server: do not start more than are running now.
                self.limit = max(1, min(self.limit, self.in_flight + 1))
                self._clean = 0
            else:
                self._clean += 1
                if self._clean >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._clean = 0
            self._cond.notify_all()
