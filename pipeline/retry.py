"""The retry policy shared by the fetch and download stages (Kombo's guide: back off
exponentially from about 1 s, honour ``Retry-After`` within a cap, give each call a budget)."""

from __future__ import annotations

import logging
import random
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from .config import KomboSettings
from .errors import is_transient

log = logging.getLogger(__name__)


class _Wait:
    """Exponential backoff with jitter; a server's Retry-After wins, within the cap."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap

    def __call__(self, state: RetryCallState) -> float:
        exponent = min(state.attempt_number - 1, 30)
        delay = min(self._cap, self._base * 2**exponent) + random.uniform(0, self._base)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            delay = max(delay, float(hint))
        return min(delay, self._cap)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("retrying after: %s (attempt %d)", exc, state.attempt_number)


def _policy(settings: KomboSettings) -> dict[str, Any]:
    return {
        "retry": retry_if_exception(is_transient),
        "wait": _Wait(settings.retry_base_delay, settings.retry_max_delay),
        "stop": stop_after_attempt(settings.max_attempts) | stop_after_delay(settings.retry_budget),
        "reraise": True,
        "before_sleep": _log_retry,
    }


def retrying(settings: KomboSettings) -> Retrying:
    """A fresh tenacity controller: ``for attempt in retrying(s): with attempt: ...``."""
    return Retrying(**_policy(settings))


def async_retrying(settings: KomboSettings) -> AsyncRetrying:
    """The same policy for coroutines: ``async for attempt in async_retrying(s): ...``."""
    return AsyncRetrying(**_policy(settings))
