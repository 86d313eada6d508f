"""Produce a request's events and return only once the broker acknowledged every one of them.

One long-lived producer per process (connections and batching are shared by all requests). Delivery
reports are served on the event loop's own thread by a timer that runs while any request waits: a
separate poll thread would need the GIL back for every single report while the loop thread is busy
mapping the next batch, and the two threads convoy on it (each hand-over waits out the interpreter's
switch interval). All-or-nothing per request: if any message fails or time runs out, the caller answers
503, the provider retries the whole batch, and ingestion's dedup by event_id drops the copies that did
arrive.

Counting without a Python call per delivered message: the producer reports only failures
(`delivery.report.only.error`), each to its request's own callback object. confluent-kafka holds one
reference to a message's callback from produce() until that message's report has been served (delivered
or failed), so the callback's reference count above its baseline is the number of the request's messages
still in flight; a Python callback per success cost more than producing the message. That accounting is
checked on every request right after queueing (exactly one reference per queued message, or the request
fails loudly with 503), so a client library that stopped holding them could never answer early.
"""

from __future__ import annotations

import asyncio
import sys
from functools import partial

from confluent_kafka import Producer

from sendflowr.kafka_io import KafkaUnavailable, producer_config
from sendflowr.settings import Settings

# How often the loop serves delivery reports while a request waits: small next to the 20 ms linger.
POLL_INTERVAL_SECONDS = 0.002


def _record_failure(failures: list[str], err, _msg) -> None:
    failures.append(str(err))


class _Pending:
    """One request: its failure callback (whose extra references are its messages in flight), failures."""

    __slots__ = ("callback", "baseline", "failures", "future")

    def __init__(self, future: asyncio.Future):
        self.failures: list[str] = []
        self.future = future
        # one object shared by all of the request's messages (a partial, so it does not refer back to self)
        self.callback = partial(_record_failure, self.failures)
        self.baseline = sys.getrefcount(self.callback)

    def in_flight(self) -> int:
        return sys.getrefcount(self.callback) - self.baseline


class ConfirmingProducer:
    def __init__(self, settings: Settings, topic: str | None = None, timeout_seconds: float = 10.0,
                 **overrides: object):
        self.topic = topic or settings.kafka_topic
        self.timeout = timeout_seconds
        self._servers = settings.kafka_bootstrap_servers
        # The project's producer settings (linger, batch size, lz4), the same as bench/connectors.py's anchor:
        # concurrent requests share the bigger broker batches, and 20 ms of linger is small next to a
        # provider's webhook timeout. message.timeout.ms bounds how long a request can wait for an
        # unreachable broker before it fails (and the provider retries).
        config = producer_config(settings, **{"message.timeout.ms": int(timeout_seconds * 1000),
                                              "delivery.report.only.error": True, **overrides})
        self._producer = Producer(config)
        self._waiting: list[_Pending] = []  # the timer runs while any request waits
        self._timer: asyncio.TimerHandle | None = None
        self._verified = False  # the reference accounting held on a request

    def _enqueue(self, payloads: list[bytes], pending: _Pending) -> bool:
        """Queue every payload; True when reports had to be served meanwhile (local queue full)."""
        produce, topic, callback = self._producer.produce, self.topic, pending.callback
        served = False
        for value in payloads:
            while True:
                try:
                    # positional (topic, value, key, partition, callback): keyword parsing in the C call
                    # costs about as much as the rest of it; partition -1 lets librdkafka choose, as by default
                    produce(topic, value, None, -1, callback)
                    break
                except BufferError:  # local queue full: serve reports (this is the polling thread) and retry
                    self._serve_now()
                    served = True
        return served

    def _serve_now(self) -> None:
        self._producer.poll(0)
        still = []
        for pending in self._waiting:
            if pending.in_flight() == 0:
                if not pending.future.done():
                    pending.future.set_result(None)
            else:
                still.append(pending)
        self._waiting = still

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._serve_now()
        finally:  # the timer must outlive a failing report, or every waiting request would time out
            self._timer = loop.call_later(POLL_INTERVAL_SECONDS, self._serve, loop) if self._waiting else None

    async def produce_async(self, payloads: list[bytes]) -> None:
        """Queue every payload, then wait (without blocking the loop) until the broker confirmed them all;
        KafkaUnavailable if any failed or none came back in time. Call it from one event loop only."""
        if not payloads:
            return
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future())
        self._waiting.append(pending)  # before queueing: a full queue serves reports while this one queues
        served = self._enqueue(payloads, pending)
        # Reports are served only on this thread, so with none served meanwhile every queued message must
        # hold exactly one reference; once that held, a queue-full request (some served) is counted alike.
        if (served and not self._verified) or (not served and pending.in_flight() != len(payloads)):
            self._waiting.remove(pending)
            raise KafkaUnavailable("cannot count deliveries: the Kafka client does not hold one callback reference "
                                   "per queued message; events not confirmed")
        self._verified = True
        if self._timer is None:
            self._timer = loop.call_later(POLL_INTERVAL_SECONDS, self._serve, loop)
        try:  # librdkafka fails undelivered messages after message.timeout.ms; this is only a backstop
            await asyncio.wait_for(pending.future, self.timeout + 5)
        except TimeoutError:
            pass
        finally:
            if pending in self._waiting:
                self._waiting.remove(pending)
        left, failures = pending.in_flight(), pending.failures
        if left or failures:
            raise KafkaUnavailable(f"{len(failures) + left} of {len(payloads)} event(s) not confirmed by "
                                   f"{self._servers}: {failures[0] if failures else 'timed out'}")

    def close(self, timeout: float = 10.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._producer.flush(timeout)  # on the caller's thread, the only one serving reports from now on
