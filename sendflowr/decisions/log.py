"""The decision log in the API process: every served decision goes to Kafka without a request ever waiting on it.

A request only appends (function, arguments) to a bounded in-memory queue, under a lock held for a few
instructions; building the record columns (records.py), JSON encoding and producing happen on one background
thread that wakes every `interval` seconds, drains the queue and hands the messages to a confluent-kafka producer
(batching, linger, lz4, idempotent). Nothing is ever silent: a decision whose record cannot be queued (queue full,
log off), produced (the producer's own queue full) or delivered (Kafka down past message.timeout.ms, a shutdown
before delivery) is counted by reason, and the API exports the counts in /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from confluent_kafka import KafkaError, Producer

from sendflowr.decisions import records
from sendflowr.kafka_io import ensure_topic, producer_config
from sendflowr.settings import Settings

log = logging.getLogger("sendflowr.decisions.log")
DROP_REASONS = ("disabled", "queue_full", "producer_full", "delivery_failed", "encode_failed", "shutdown")
TOPIC_RETRY_SECONDS = 30.0


class DecisionLog:
    def __init__(self, settings: Settings, interval: float = 0.05, flush_seconds: float = 5.0,
                 **producer_overrides: object) -> None:
        self.settings = settings
        self.topic = settings.decision_log_topic
        self.enabled = bool(self.topic)
        self.capacity = settings.decision_log_queue_size
        self.interval = interval
        self.flush_seconds = flush_seconds
        self.producer_overrides = producer_overrides
        self.queued = 0  # decisions accepted into the queue
        self.delivered = 0  # decisions Kafka confirmed
        self.dropped: Counter[str] = Counter()  # decisions lost, by reason
        self.last_error = ""
        self._items: deque = deque()
        self._waiting = 0  # decisions in the queue
        self._in_flight = 0  # decisions handed to the producer, not yet confirmed or failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._topic_ready = False
        self._topic_checked = 0.0

    # -- request path ---------------------------------------------------------------------------------------------

    def offer(self, rows: int, build: Callable[..., dict], *args) -> bool:
        """Queue `rows` decisions whose columns `build(*args)` makes later, on the log's thread; False (and
        counted) when they are dropped instead."""
        if not rows:
            return True
        with self._lock:
            if not self.enabled:
                self.dropped["disabled"] += rows
                return False
            if self._waiting + rows > self.capacity:
                self.dropped["queue_full"] += rows
                return False
            self._waiting += rows
            self.queued += rows
        self._items.append((rows, build, args))
        return True

    # -- the log's thread -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain the queue, wait up to flush_seconds for Kafka, count whatever is still undelivered as dropped."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        config = producer_config(self.settings, **{
            "client.id": "sendflowr-decision-log", "message.timeout.ms": 30_000,
            "queue.buffering.max.kbytes": 65_536, "error_cb": self._on_error, **self.producer_overrides})
        producer = Producer(config)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                self._drain(producer)
                producer.poll(0)  # delivery callbacks run here, on this thread
                self._ensure_topic()  # after the drain: an unreachable Kafka delays the check, not the queue
                if stopping:
                    break
            producer.flush(self.flush_seconds)
        finally:
            with self._lock:
                lost, self._in_flight = self._in_flight, 0
                self.dropped["shutdown"] += lost + self._waiting
                self._waiting = 0
            self._items.clear()

    def _ensure_topic(self) -> None:
        """Create the topic if missing (as the webhook receiver does for events); retried while Kafka is away."""
        if self._topic_ready or time.monotonic() - self._topic_checked < TOPIC_RETRY_SECONDS:
            return
        self._topic_checked = time.monotonic()
        try:
            ensure_topic(self.settings, self.topic, timeout=5.0)
            self._topic_ready = True
        except Exception as exc:  # Kafka unreachable: records queue in the producer until message.timeout.ms
            self.last_error = f"topic {self.topic!r}: {exc}"
            log.warning("decision log: %s", self.last_error)

    def _drain(self, producer: Producer) -> None:
        while self._items:
            rows, build, args = self._items.popleft()
            with self._lock:
                self._waiting -= rows
            try:
                messages = records.encode(build(*args))
            except Exception as exc:  # a bug must cost records (counted), never the thread
                self._count_lost("encode_failed", rows, f"{type(exc).__name__}: {exc}")
                continue
            for count, value in messages:
                try:
                    producer.produce(self.topic, value=value, on_delivery=self._delivery(count))
                except BufferError:
                    self._count_lost("producer_full", count, "the producer's queue is full")
                    continue
                with self._lock:
                    self._in_flight += count

    def _delivery(self, rows: int):
        def done(err, _message) -> None:
            with self._lock:
                self._in_flight -= rows
                if err is None:
                    self.delivered += rows
                    return
            self._count_lost("delivery_failed", rows, str(err))

        return done

    def _count_lost(self, reason: str, rows: int, why: str) -> None:
        with self._lock:
            first = self.dropped[reason] == 0
            self.dropped[reason] += rows
        self.last_error = why
        if first:  # once per reason; the counts are in /metrics
            log.warning("decision log: %d record(s) dropped (%s): %s", rows, reason, why)

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)

    # -- what /metrics shows --------------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return {"enabled": self.enabled, "queued": self.queued, "delivered": self.delivered,
                    "pending": self._waiting + self._in_flight,
                    "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS}}
