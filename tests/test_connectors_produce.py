"""ConfirmingProducer on the real broker: a request returns only when every one of its messages is on the
topic, a failed delivery fails the whole request, and the delivery accounting it relies on holds."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from sendflowr.connectors.produce import ConfirmingProducer
from sendflowr.kafka_io import KafkaUnavailable, admin_client

pytestmark = pytest.mark.integration


def on_topic(settings, topic: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        values: list[bytes] = []
        while sum(ends.values()) > len(values):
            message = consumer.poll(30)
            assert message is not None, "topic ended early"
            assert message.error() is None, message.error()
            values.append(message.value())
        return values
    finally:
        consumer.close()


def test_concurrent_requests_each_return_once_all_their_messages_are_on_the_topic(settings) -> None:
    requests = [[f"r{r}-m{m}".encode() for m in range(300 + 50 * r)] for r in range(6)]

    async def run() -> list[int]:
        producer = ConfirmingProducer(settings, timeout_seconds=60)
        try:
            await producer.produce_async([b"warm-up"])  # producer id from a fresh broker, not under test
            confirmed: list[int] = []

            async def one(index: int, payloads: list[bytes]) -> None:
                await producer.produce_async(payloads)
                confirmed.append(index)

            await asyncio.gather(*(one(i, p) for i, p in enumerate(requests)))
            return confirmed
        finally:
            producer.close()

    confirmed = asyncio.run(run())
    assert sorted(confirmed) == list(range(6))
    landed = on_topic(settings, settings.kafka_topic)
    assert sorted(landed) == sorted([b"warm-up"] + [m for r in requests for m in r])


def test_a_message_the_broker_refuses_fails_its_whole_request(settings) -> None:
    topic = f"small-{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "4096"})])[topic].result(60)
    big = os.urandom(64 * 1024)  # incompressible: over the topic's limit even with lz4

    async def run() -> tuple[str, list[str]]:
        producer = ConfirmingProducer(settings, topic=topic, timeout_seconds=30)
        try:
            await producer.produce_async([b"fits"])
            with pytest.raises(KafkaUnavailable) as refused:
                await producer.produce_async([b"small-1", big, b"small-2"])
            await producer.produce_async([b"fits-again"])  # the producer carries on for the next request
            return str(refused.value), [p for p in producer._waiting]
        finally:
            producer.close()

    message, left_waiting = asyncio.run(run())
    assert "not confirmed" in message and left_waiting == []
    assert big not in on_topic(settings, topic)


def test_the_client_holds_one_callback_reference_per_queued_message(settings) -> None:
    """The accounting produce_async relies on (checked again on every request): queueing n messages adds n
    references to the request's callback, and serving their reports gives every one back."""

    async def run() -> tuple[int, int]:
        producer = ConfirmingProducer(settings, timeout_seconds=60)
        try:
            await producer.produce_async([b"warm-up"])
            from sendflowr.connectors.produce import _Pending

            pending = _Pending(asyncio.get_running_loop().create_future())
            producer._enqueue([b"x"] * 250, pending)
            queued = pending.in_flight()
            producer._producer.flush(60)
            return queued, pending.in_flight()
        finally:
            producer.close()

    queued, after = asyncio.run(run())
    assert (queued, after) == (250, 0)


def test_a_request_larger_than_the_local_queue_is_confirmed_whole(settings) -> None:
    """Queueing waits for room by serving reports itself; the request still returns only when all of its
    messages are acknowledged, and the first request (before the accounting was seen to hold) cannot
    skip the check: it fails instead of guessing."""
    payloads = [f"q{i}".encode() for i in range(1000)]

    async def run() -> str:
        producer = ConfirmingProducer(settings, timeout_seconds=60, **{"queue.buffering.max.messages": 100})
        try:
            with pytest.raises(KafkaUnavailable) as unverified:
                await producer.produce_async(payloads[:150])  # over the queue before any request verified
            producer._producer.flush(60)
            await producer.produce_async(payloads[:50])  # fits: verifies the accounting
            await producer.produce_async(payloads)  # ten times the local queue
            return str(unverified.value)
        finally:
            producer.close()

    message = asyncio.run(run())
    assert "cannot count deliveries" in message
    landed = on_topic(settings, settings.kafka_topic)
    assert sorted(set(landed)) == sorted(payloads) and len(landed) == 150 + 50 + 1000
