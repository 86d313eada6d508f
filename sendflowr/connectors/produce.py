"""Produce a request's events and return only once the broker acknowledged every one of them.

One long-lived producer per process (connections and batching are shared by all requests). Delivery
reports are served on the event loop's own thread by a timer that runs while any request waits: a
separate poll thread would need the GIL back for every single report while the loop thread is busy
mapping the next batch, and the two threads convoy on it (each hand-over waits out the interpreter's
switch interval). Each request waits on its own counter, so a slow request never waits for another's
messages (flush() would). All-or-nothing per request: if any message fails or time runs out, the caller
answers 503, the provider retries the whole batch, and ingestion's dedup by event_id drops the copies
that did arrive.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import Producer

from sendflowr.kafka_io import KafkaUnavailable, producer_config
from sendflowr.settings import Settings

# How often the loop serves delivery reports while a request waits: small next to the 20 ms linger.
POLL_INTERVAL_SECONDS = 0.002


class _Pending:
    """Delivery count of one request. Reports are served only on the loop's thread, so no lock."""

    __slots__ = ("left", "failed", "first_error", "future")

    def __init__(self, count: int, future: asyncio.Future):
        self.left = count
        self.failed = 0
        self.first_error: str | None = None
        self.future = future

    def on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


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
        config = producer_config(settings, **{"message.timeout.ms": int(timeout_seconds * 1000), **overrides})
        self._producer = Producer(config)
        self._waiting = 0  # requests awaiting reports; the timer runs while there are any
        self._timer: asyncio.TimerHandle | None = None

    def _enqueue(self, payloads: list[bytes], pending: _Pending) -> None:
        produce, topic, callback = self._producer.produce, self.topic, pending.on_delivery
        for value in payloads:
            while True:
                try:
                    # positional (topic, value, key, partition, callback): keyword parsing in the C call
                    # costs about as much as the rest of it; partition -1 lets librdkafka choose, as by default
                    produce(topic, value, None, -1, callback)
                    break
                except BufferError:  # local queue full: serve reports (this is the polling thread) and retry
                    self._producer.poll(0.005)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._producer.poll(0)
        finally:  # the timer must outlive a failing report, or every waiting request would time out
            self._timer = loop.call_later(POLL_INTERVAL_SECONDS, self._serve, loop) if self._waiting else None

    async def produce_async(self, payloads: list[bytes]) -> None:
        """Queue every payload, then wait (without blocking the loop) until the broker confirmed them all;
        KafkaUnavailable if any failed or none came back in time. Call it from one event loop only."""
        if not payloads:
            return
        loop = asyncio.get_running_loop()
        pending = _Pending(len(payloads), loop.create_future())
        self._enqueue(payloads, pending)
        self._waiting += 1
        if self._timer is None:
            self._timer = loop.call_later(POLL_INTERVAL_SECONDS, self._serve, loop)
        try:  # librdkafka fails undelivered messages after message.timeout.ms; this is only a backstop
            await asyncio.wait_for(pending.future, self.timeout + 5)
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
        if pending.left or pending.failed:
            raise KafkaUnavailable(f"{pending.failed + pending.left} of {len(payloads)} event(s) not confirmed by "
                                   f"{self._servers}: {pending.first_error or 'timed out'}")

    def close(self, timeout: float = 10.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._producer.flush(timeout)  # on the caller's thread, the only one serving reports from now on
