"""Prometheus metrics, one registry per app (tests build several apps in one process).

Request counts and latencies come from a small pure-ASGI middleware (no BaseHTTPMiddleware: it costs a task
per request). Snapshot gauges are read from the holder at scrape time, so they are never stale.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sendflowr.decisions.arms import CONTROL
from sendflowr.decisions.snapshot import SnapshotHolder

# Known routes only, so a scan of random paths cannot explode label cardinality.
ROUTES = {"/timing-decision", "/timing-decisions", "/people/lookup", "/healthz", "/readyz", "/metrics"}
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _SnapshotCollector:
    def __init__(self, holder: SnapshotHolder) -> None:
        self.holder = holder

    def collect(self):
        snap = self.holder.current
        loaded = GaugeMetricFamily("sendflowr_api_snapshot_loaded", "1 once a decision snapshot is loaded")
        loaded.add_metric([], 1.0 if snap else 0.0)
        yield loaded
        loads = GaugeMetricFamily("sendflowr_api_snapshot_loads", "Snapshots loaded since start")
        loads.add_metric([], self.holder.loads)
        yield loads
        failures = GaugeMetricFamily("sendflowr_api_snapshot_refresh_failures", "Failed refreshes since start")
        failures.add_metric([], self.holder.failures)
        yield failures
        if snap is None:
            return
        for name, doc, value in (
            ("sendflowr_api_snapshot_timing_version", "Timing run version served", snap.timing_version),
            ("sendflowr_api_snapshot_age_seconds", "Seconds since the served timing run was materialized",
             snap.age_seconds(datetime.now(UTC))),
            ("sendflowr_api_snapshot_people", "People with a timing curve in the snapshot", len(snap.timing_uid)),
            ("sendflowr_api_snapshot_identifiers", "Identifiers in the identity map", snap.identity.identifiers),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge


class _CoalescerCollector:
    def __init__(self, coalescer) -> None:
        self.coalescer = coalescer

    def collect(self):
        for name, doc, value in (
            ("sendflowr_api_coalesced_flushes", "Vectorized decide calls made for single decisions",
             self.coalescer.flushes),
            ("sendflowr_api_coalesced_decisions", "Single decisions made through those calls", self.coalescer.decided),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


class _DecisionLogCollector:
    """The decision log's counts (sendflowr.decisions.log), read at scrape time: what reached Kafka and, by reason,
    what did not (a decision is always answered; only its record can be lost)."""

    def __init__(self, decision_log) -> None:
        self.decision_log = decision_log

    def collect(self):
        stats = self.decision_log.stats()
        enabled = GaugeMetricFamily("sendflowr_api_decision_log_enabled",
                                    "1 when decisions are recorded (SENDFLOWR_DECISION_LOG_TOPIC is set)")
        enabled.add_metric([], 1.0 if stats["enabled"] else 0.0)
        yield enabled
        for name, doc, key in (
            ("sendflowr_api_decision_log_queued", "Decisions queued for the decision log", "queued"),
            ("sendflowr_api_decision_log_delivered", "Decisions the decision log's Kafka topic confirmed", "delivered"),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], stats[key])
            yield family
        dropped = CounterMetricFamily("sendflowr_api_decision_log_dropped",
                                      "Decisions answered but not recorded, by reason (disabled, queue_full, "
                                      "producer_full, delivery_failed, encode_failed, shutdown)", labels=["reason"])
        for reason, count in stats["dropped"].items():
            dropped.add_metric([reason], count)
        yield dropped
        pending = GaugeMetricFamily("sendflowr_api_decision_log_pending",
                                    "Decisions queued or in flight to Kafka, not yet confirmed")
        pending.add_metric([], stats["pending"])
        yield pending


class Metrics:
    def __init__(self, holder: SnapshotHolder, coalescer=None, decision_log=None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sendflowr_api_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("sendflowr_api_request_seconds", "Request duration by route", ["route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.decisions = Counter("sendflowr_api_decisions", "Decisions made by endpoint and fallback level",
                                 ["endpoint", "fallback_level"], registry=self.registry)
        self.decision_errors = Counter("sendflowr_api_decision_errors", "Recipients without a decision, by field",
                                       ["endpoint", "field"], registry=self.registry)
        self.auth_failures = Counter("sendflowr_api_auth_failures", "Requests refused for a missing/invalid key",
                                     registry=self.registry)
        self.control_decisions = Counter("sendflowr_api_control_decisions",
                                         "Decisions served in the randomized control arm, by endpoint", ["endpoint"],
                                         registry=self.registry)
        if decision_log is not None:
            self.registry.register(_DecisionLogCollector(decision_log))
        self.registry.register(_SnapshotCollector(holder))
        if coalescer is not None:  # requests per flush = decisions / flushes: how much coalescing happens
            self.registry.register(_CoalescerCollector(coalescer))
        self._children: dict = {}  # resolved label children, by (route, status) or fallback level

    def single_decision(self, level: str, arm: str) -> None:
        child = self._children.get(level)
        if child is None:
            child = self._children[level] = self.decisions.labels("single", level)
        child.inc()
        if arm == CONTROL:
            self.control_decisions.labels("single").inc()

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost microseconds: resolve each (route, status) once
            children = self._children[key] = (self.requests.labels(route, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    def __init__(self, app, metrics_of) -> None:
        self.app = app
        self.metrics_of = metrics_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            route = path if path in ROUTES else ("/people/{universal_id}" if path.startswith("/people/") else "other")
            self.metrics_of(scope).observe(route, status, time.perf_counter() - started)
