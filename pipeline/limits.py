"""Adaptive limit on Kombo actions in flight (AIMD, as TCP does it).

Kombo refuses more than 30 actions in flight per integration (fewer for some) with 429
``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED``, and reports ``Concurrency-Limit`` and
``Concurrency-Remaining`` on its answers. We start at the configured limit, never go above
what the server says its limit is, halve on a refusal, and grow back by one after a limit's
worth of clean answers.

When an answer says nothing remains, we hold at what we had in flight, unless our own calls
explain it: each call carries the most we had in flight at any moment of its life, and
answers of a burst of calls, read one after another, must not each shrink the limit to what
is left of the burst by then.
"""

from __future__ import annotations

import itertools
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
        self._tickets = itertools.count()
        self._peaks: dict[int, int] = {}  # call in flight -> most of ours in flight meanwhile

    def acquire(self) -> int:
        """Wait for room; return the ticket to give back to :meth:`release`."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            for ticket, peak in self._peaks.items():
                if peak < self.in_flight:
                    self._peaks[ticket] = self.in_flight
            ticket = next(self._tickets)
            self._peaks[ticket] = self.in_flight
            return ticket

    def release(
        self,
        ticket: int,
        *,
        refused: bool = False,
        remaining: int | None = None,
        server_limit: int | None = None,
    ) -> None:
        with self._cond:
            self.in_flight -= 1
            peak = self._peaks.pop(ticket, self.in_flight + 1)
            if server_limit is not None and server_limit > 0:
                self.maximum = min(self._configured, server_limit)
                self.limit = min(self.limit, self.maximum)
            if refused:
                self.refusals += 1
                self.limit = max(1, min(self.limit, self.in_flight + 1) // 2)
                self._clean = 0
                log.info("Kombo refused for concurrency: now at most %d in flight", self.limit)
            elif remaining == 0:
                # Full at the server. If we never had the server's whole limit in flight,
                # someone else shares it: hold at the most we had. Either way, do not grow.
                if peak < self.maximum:
                    self.limit = max(1, min(self.limit, peak))
                self._clean = 0
            else:
                self._clean += 1
                if self._clean >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._clean = 0
            self._cond.notify_all()
