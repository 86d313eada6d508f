"""Webhook benchmark: SendGrid batches over loopback HTTP into Kafka, against a bare producer of the same
normalized events, both measured in the same run on the same broker.

    .venv/bin/python bench/connectors.py [--events 200000] [--batch 1000] [--clients 4] [--rounds 3]

1. build realistic SendGrid Event Webhook batches (processed/delivered/open/click/bounce/..., machine opens,
   user agents, ips, urls), each a JSON array body as SendGrid posts it;
2. anchor: a bare confluent-kafka producer (same settings as ours) producing the already-normalized,
   already-serialized events of all batches, then flush (pure broker throughput);
3. ours: `uvicorn sendflowr_webhooks.app:app` as a separate process; `--clients` keep-alive connections
   POST the batches; an answer of 200 means every event of that batch was confirmed by the broker.

Rounds alternate anchor and ours; prints each round, the medians and their ratio, and checks both topics hold
every event. Nothing asserted.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sendflowr.connectors import FORMATS
from sendflowr.connectors.common import serialize
from sendflowr.kafka_io import ensure_topic, producer_config
from sendflowr.local import processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.settings import PROJECT_ROOT, Settings

AGENTS = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)")
KINDS = ("processed", "delivered", "open", "open", "click", "bounce", "dropped", "unsubscribe", "spamreport")
WEIGHTS = (30, 30, 22, 0, 10, 3, 2, 2, 1)


def sendgrid_batches(events: int, batch: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    now = int(time.time())
    records = []
    for i in range(events):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        message = f"{uuid.UUID(int=rng.getrandbits(128)).hex[:22]}.filterdrecv-{i % 97}-1-{now:X}-{i % 13}.0"
        record = {"email": f"person{rng.randrange(events // 4 + 1)}@example{rng.randrange(50)}.com",
                  "timestamp": now - rng.randrange(90 * 86400), "smtp-id": f"<{message[:22]}@ismtpd-555>",
                  "event": kind, "category": ["newsletter"], "sg_event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                  "sg_message_id": message, "marketing_campaign_id": f"{rng.randrange(400)}"}
        if kind in ("open", "click"):
            record.update(useragent=rng.choice(AGENTS), ip=f"203.0.{rng.randrange(256)}.{rng.randrange(256)}")
        if kind == "open":
            record["sg_machine_open"] = rng.random() < 0.4
        if kind == "click":
            record["url"] = f"https://shop.example.com/p/{rng.randrange(10_000)}?utm_campaign=spring"
        if kind == "bounce":
            record.update(type=rng.choice(("bounce", "blocked")), reason="550 5.1.1 user unknown", status="5.1.1")
        if kind == "delivered":
            record["response"] = "250 OK"
        records.append(record)
    return [records[i:i + batch] for i in range(0, len(records), batch)]


def signed(key: ec.EllipticCurvePrivateKey, body: bytes) -> tuple[bytes, dict[str, str]]:
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return body, {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": signature,
                  "X-Twilio-Email-Event-Webhook-Timestamp": stamp}


def topic_count(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-count"})
    try:
        total = 0
        for partition in range(settings.kafka_partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            total += high - low
        return total
    finally:
        consumer.close()


def warm_producer(settings: Settings, topic: str, warm_up: bytes) -> Producer:
    producer = Producer(producer_config(settings))
    producer.produce(topic, value=warm_up)  # connection and idempotent producer id, not timed
    producer.flush(60)
    return producer


def bench_bare_producer(producer: Producer, topic: str, payloads: list[bytes]) -> float:
    failed = []
    started = time.perf_counter()
    for value in payloads:
        while True:
            try:
                producer.produce(topic, value=value, on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    seconds = time.perf_counter() - started
    assert not failed, failed[:3]
    return seconds


def start_webhooks(settings: Settings, warm_up: tuple[bytes, dict]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, **settings.as_env(), "SENDFLOWR_WEBHOOKS_PORT": str(port)}
    argv = [str(Path(sys.executable).parent / "uvicorn"), "sendflowr_webhooks.app:app", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
    server = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env)
    processes.wait_until(lambda: processes.port_in_use("127.0.0.1", port), timeout=60, what="webhooks",
                         pid=server.pid)
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # first produce gets the producer id
    warm.request("POST", "/webhooks/sendgrid", body=warm_up[0], headers=warm_up[1])
    assert warm.getresponse().status == 200
    warm.close()
    return server, port


def bench_webhook(port: int, bodies: list[tuple[bytes, dict]], clients: int) -> float:
    work = list(bodies)
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not work:
                    break
                body, headers = work.pop()
            conn.request("POST", "/webhooks/sendgrid", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                errors.append(f"{response.status} {payload[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    assert not errors, errors[:3]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per SendGrid POST (default %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive connections")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of anchor and ours")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sendflowr-bench-connectors-"))
    settings = Settings(home=workdir, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                        kafka_controller_port=free_port(), kafka_partitions=args.partitions,
                        kafka_topic=f"bench-webhooks-{uuid.uuid4().hex[:8]}")
    anchor_topic = f"bench-anchor-{uuid.uuid4().hex[:8]}"
    # Signed like production: SendGrid's ECDSA check runs on every POST.
    key = ec.generate_private_key(ec.SECP256R1())
    # Bodies are signed once up front, so the age check is off (it is one comparison; long runs would go stale).
    settings = settings.model_copy(update={"webhooks_signature_max_age_seconds": 0,
                                           "sendgrid_verification_key": base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)).decode()})
    kafka = LocalKafka(settings)
    try:
        print(f"starting broker under {workdir}", flush=True)
        kafka.start()
        ensure_topic(settings)
        ensure_topic(settings, anchor_topic)
        # One extra batch first: the warm-up of each side, excluded from the timing.
        batches = sendgrid_batches(args.events + args.batch, args.batch, args.seed)
        bodies = [signed(key, orjson.dumps(batch)) for batch in batches]
        payloads = [raw for batch in batches for raw in serialize(FORMATS["sendgrid"](batch).events)]
        print(f"{len(payloads)} events in {len(bodies)} SendGrid batches of {args.batch} "
              f"({sum(len(body) for body, _ in bodies) / len(bodies) / 1024:.0f} KiB per POST)", flush=True)

        # Rounds alternate anchor and ours so both see the same (shared, noisy) machine; medians compared.
        warm_events = len(batches[0])
        timed = len(payloads) - warm_events
        producer = warm_producer(settings, anchor_topic, payloads[0])
        server, port = start_webhooks(settings, bodies[0])
        bare_rates, our_rates = [], []
        try:
            for round_no in range(args.rounds + 1):  # round 0 warms the broker (JIT, page cache): not counted
                bare = bench_bare_producer(producer, anchor_topic, payloads[warm_events:])
                ours = bench_webhook(port, bodies[1:], args.clients)
                if round_no:
                    bare_rates.append(timed / bare)
                    our_rates.append(timed / ours)
                print(f"round {round_no or 'warm-up'}: bare producer {timed / bare:10,.0f} events/s   webhook "
                      f"(confirmed) {timed / ours:10,.0f} events/s ({(len(bodies) - 1) / ours:,.0f} requests/s)   "
                      f"ratio {bare / ours:.2f}x", flush=True)
        finally:
            server.terminate()
            server.wait(30)
        landed, anchored = topic_count(settings, settings.kafka_topic), topic_count(settings, anchor_topic)
        expected_ours, expected_anchor = warm_events + timed * (args.rounds + 1), 1 + timed * (args.rounds + 1)
        print(f"messages on topics: webhook {landed} (expected {expected_ours}), anchor {anchored} "
              f"(expected {expected_anchor})")
        bare_median, our_median = statistics.median(bare_rates), statistics.median(our_rates)
        print()
        print(f"bare confluent-kafka producer : {bare_median:12,.0f} events/s (median of {args.rounds})")
        print(f"webhook over HTTP (confirmed) : {our_median:12,.0f} events/s (median, {args.clients} clients, "
              f"{args.batch} events per POST, signed)")
        print(f"webhook / bare producer = {our_median / bare_median:.2f}x   (goal >= 0.5x)")
        return 0 if landed == expected_ours and anchored == expected_anchor else 1
    finally:
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
