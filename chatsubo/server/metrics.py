"""Prometheus metrics for one server instance."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..protocol import ErrorCode


class Metrics:
    """The server's metrics, on a registry of their own so several apps can coexist."""

    def __init__(
        self,
        connections: Callable[[], int],
        rooms: Callable[[], int],
        peers: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        Gauge(
            "chatsubo_connections", "Open signaling WebSockets", registry=self.registry
        ).set_function(connections)
        Gauge(
            "chatsubo_rooms", "Rooms with at least one peer", registry=self.registry
        ).set_function(rooms)
        Gauge(
            "chatsubo_peers", "Peers in rooms, including those within grace", registry=self.registry
        ).set_function(peers)
        self.connections_total = Counter(
            "chatsubo_connections_opened", "WebSockets accepted", registry=self.registry
        )
        #: Signals relayed between peers. A plain int, not a Counter: the lock
        #: that Counter.inc takes costs the relay path more than counting is
        #: worth, and the event loop is a single thread anyway.
        self.relayed = 0
        self.registry.register(_RelayedCollector(self))
        self.errors = Counter(
            "chatsubo_errors", "Errors sent to clients, by code", ["code"], registry=self.registry
        )
        for code in ErrorCode:
            self.errors.labels(code=code.value)
        self.join_latency = Histogram(
            "chatsubo_join_latency_seconds",
            "From receiving join to sending peer_list",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class _RelayedCollector(Collector):
    """Exports ``Metrics.relayed`` as the counter ``chatsubo_relayed_messages``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._created = time.time()

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "chatsubo_relayed_messages",
            "Signals relayed between peers",
            value=self._metrics.relayed,
            created=self._created,
        )
