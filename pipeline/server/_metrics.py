"""``/metrics``: Prometheus' text format through its official client.

Counters and the latency histogram live in the server process; runs by outcome and
attachments per state per integration are read from the database at each scrape (one
grouped query each), so they are right whoever made the runs (cron or the server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..database import Store

log = logging.getLogger(__name__)


class _DatabaseCollector(Collector):
    def __init__(self, store: Callable[[], Store], in_flight: Callable[[], dict[str, int]]) -> None:
        self._store = store
        self._in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        going = GaugeMetricFamily(
            "pipeline_server_runs_in_flight",
            "Runs the server has going or waiting, per integration (at most 2).",
            labels=["integration_id"],
        )
        for integration_id, count in self._in_flight().items():
            going.add_metric([integration_id], count)
        yield going
        attachments = GaugeMetricFamily(
            "pipeline_attachments",
            "Attachments on record, per integration and state.",
            labels=["integration_id", "state"],
        )
        runs = GaugeMetricFamily(
            "pipeline_runs",
            "Runs on record, per integration and outcome.",
            labels=["integration_id", "outcome"],
        )
        try:
            store = self._store()
            for (integration_id, state), count in store.counts_by_integration_and_status().items():
                attachments.add_metric([integration_id, state], count)
            for (integration_id, outcome), count in store.run_counts_by_status().items():
                runs.add_metric([integration_id, outcome], count)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: the database could not be read: %s", exc)
        yield attachments
        yield runs


class _SearchPoolCollector(Collector):
    def __init__(self, waiting: Callable[[], int], restarts: Callable[[], int]) -> None:
        self._waiting = waiting
        self._restarts = restarts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "pipeline_search_waiting",
            "Searches waiting for a search worker (past --search-queue: 429).",
            value=self._waiting(),
        )
        yield CounterMetricFamily(
            "pipeline_search_worker_restarts",
            "Search workers found dead and replaced.",
            value=self._restarts(),
        )


class Metrics:
    def __init__(self, store: Callable[[], Store], in_flight: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pipeline_http_requests",
            "HTTP requests answered, per route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.search_seconds = Histogram(
            "pipeline_search_seconds",
            "Time to answer a search (API and page).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.webhooks = Counter(
            "pipeline_webhooks",
            "Kombo webhooks received, per type and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.server_runs = Counter(
            "pipeline_server_runs",
            "Runs the server started, per exit code (0 succeeded, 1 with failures, 2 stopped, "
            "143 interrupted).",
            ["integration_id", "exit_code"],
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(store, in_flight))

    def watch_searches(self, waiting: Callable[[], int], restarts: Callable[[], int]) -> None:
        """The search workers' queue and restarts, read at each scrape."""
        self.registry.register(_SearchPoolCollector(waiting, restarts))


__all__ = ["Metrics"]
