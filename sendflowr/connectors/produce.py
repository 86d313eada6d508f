"""Produce a request's events and return only once the broker acknowledged every one of them.

One long-lived producer per process (connections and batching are shared by all requests); a poll
thread fires delivery callbacks, and each request waits on its own counter, so a slow request never
waits for another's messages (flush() would). All-or-nothing per request: if any message fails or time
runs out, the caller answers 503, the provider retries the whole batch, and ingestion's dedup by
event_id drops the copies that did arrive.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from confluent_kafka import Producer

from sendflowr.kafka_io import KafkaUnavailable, producer_config
from sendflowr.settings import Settings


class _Pending:
    """Delivery count of one request. Callbacks run only on the poll thread (nothing else polls while it
    runs), so the counter needs no lock."""

    def __init__(self, count: int, done: Callable[[], None]):
        self.left = count
        self.failed = 0
        self.first_error: str | None = None
        self._done = done

    def on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)
        self.left -= 1
        if self.left == 0:
            self._done()


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
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="sendflowr-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _enqueue(self, payloads: list[bytes], pending: _Pending) -> None:
        produce, topic, callback = self._producer.produce, self.topic, pending.on_delivery
        for value in payloads:
            while True:
                try:
                    produce(topic, value, on_delivery=callback)
                    break
                except BufferError:
                    time.sleep(0.005)  # local queue full: the poll thread is draining it

    def _raise_if_failed(self, pending: _Pending, count: int) -> None:
        if pending.left or pending.failed:
            raise KafkaUnavailable(f"{pending.failed + pending.left} of {count} event(s) not confirmed by "
                                   f"{self._servers}: {pending.first_error or 'timed out'}")

    def produce(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        done = threading.Event()
        pending = _Pending(len(payloads), done.set)
        self._enqueue(payloads, pending)
        done.wait(self.timeout + 5)
        self._raise_if_failed(pending, len(payloads))

    async def produce_async(self, payloads: list[bytes]) -> None:
        """The same, without holding a thread while the broker confirms."""
        if not payloads:
            return
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        pending = _Pending(len(payloads), lambda: loop.call_soon_threadsafe(done.set))
        self._enqueue(payloads, pending)
        try:  # librdkafka fails undelivered messages after message.timeout.ms; this is only a backstop
            await asyncio.wait_for(done.wait(), self.timeout + 5)
        except TimeoutError:
            pass
        self._raise_if_failed(pending, len(payloads))

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poller.join(timeout)
        self._producer.flush(timeout)  # after the poll thread: callbacks never run on two threads
