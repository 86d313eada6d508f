"""Webhook and import benchmark: SendGrid batches over loopback HTTP into Kafka, and `sendflowr import` of a file of
our own contract, each against a bare producer of the same serialized events, measured in the same run on the same
broker.

    .venv/bin/python bench/connectors.py [--events 200000] [--batch 1000] [--clients 4] [--rounds 3]
                                         [--only webhooks|import] [--import-events 500000]

1. build realistic SendGrid Event Webhook batches (processed/delivered/open/click/bounce/..., machine opens,
   user agents, ips, urls), each a JSON array body as SendGrid posts it;
2. anchor: a bare confluent-kafka producer (same settings as ours) producing the already-normalized,
   already-serialized events of all batches, then flush (pure broker throughput);
3. ours: `uvicorn sendflowr_webhooks.app:app` as a separate process; `--clients` keep-alive connections
   POST the batches; an answer of 200 means every event of that batch was confirmed by the broker.

Rounds alternate anchor and ours; prints each round, the medians and their ratio, and checks both topics hold
every event.

Import (`--only import`, or after the webhooks): a JSON-lines file of `--import-events` events of our contract
(sendflowr import --format native) with a few rejects in it, imported by `import_files` (read, validate column-wise,
serialize, confirmed produce) against the bare producer of the same accepted events; before that, in process and
without Kafka, the validation alone: the column path (`native.normalize`) against the per-record validator it
replaced (`native.normalize_each`, jsonschema per record), with the same verdicts checked. Nothing asserted.
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
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sendflowr.connectors import FORMATS, native
from sendflowr.connectors.common import serialize
from sendflowr.connectors.importer import import_files
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


def bench_webhooks(settings: Settings, key: ec.EllipticCurvePrivateKey, anchor_topic: str,
                   args: argparse.Namespace) -> bool:
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
    return landed == expected_ours and anchored == expected_anchor


def native_lines(events: int, seed: int) -> list[bytes]:
    """JSON lines of our contract, as an export of the same realistic SendGrid records mapped by the SendGrid
    connector carries them; one line in 2,000 is a reject (its line number must reach the rejects file)."""
    out: list[dict] = []
    while len(out) < events:
        records = sendgrid_batches(events, events, seed + len(out))[0]
        out += FORMATS["sendgrid"](records).events
    for event in out[1999:events:2000]:
        event["event_type"] = "exploded"
    return [orjson.dumps(event) for event in out[:events]]


def bench_validation(lines: list[bytes], rounds: int) -> None:
    records = [orjson.loads(line) for line in lines[:100_000]]
    moment = datetime.now(UTC)
    columns = native.normalize(records, moment)
    each = native.normalize_each(records, moment)
    assert columns.events == each.events and columns.rejects == each.rejects
    best_columns = best_each = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        native.normalize(records, moment)
        best_columns = min(best_columns, time.perf_counter() - t)
        t = time.perf_counter()
        native.normalize_each(records[:20_000], moment)
        best_each = min(best_each, (time.perf_counter() - t) * len(records) / 20_000)
    print(f"validation alone, in process ({len(records):,} parsed records, same verdicts: {len(columns.events):,} "
          f"accepted, {len(columns.rejects)} rejected): column-wise {len(records) / best_columns:12,.0f} events/s   "
          f"per-record jsonschema {len(records) / best_each:10,.0f} events/s", flush=True)


def bench_import(settings: Settings, producer: Producer, anchor_topic: str, workdir: Path, events: int,
                 rounds: int, seed: int) -> None:
    lines = native_lines(events, seed)
    path = workdir / "export.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    bench_validation(lines, rounds)
    accepted = [line for i, line in enumerate(lines) if i % 2000 != 1999]
    print(f"import: {events:,} events in {path.stat().st_size / 1e6:,.0f} MB of JSON lines "
          f"({events - len(accepted)} rejects)", flush=True)
    bare_rates, our_rates, cpu = [], [], []
    for round_no in range(rounds + 1):  # round 0 warms up, not counted
        bare = bench_bare_producer(producer, anchor_topic, accepted)
        started = time.thread_time()
        report = import_files(settings, "native", [path], rejects_path=workdir / "rejects.jsonl")
        cpu.append((time.thread_time() - started) / events * 1e6)
        assert report.events == len(accepted) and report.rejected_rows == events - len(accepted), report
        if round_no:
            bare_rates.append(events / bare)
            our_rates.append(events / report.seconds)
        print(f"round {round_no or 'warm-up'}: bare producer {events / bare:10,.0f} events/s   sendflowr import "
              f"(confirmed) {events / report.seconds:10,.0f} events/s   ratio {report.seconds / bare:.2f}x   "
              f"import's own thread {cpu[-1]:.2f} us CPU an event", flush=True)
    rejects = (workdir / "rejects.jsonl").read_text().splitlines()
    assert [orjson.loads(r)["line"] for r in rejects] == [i + 1 for i in range(events) if i % 2000 == 1999]
    print(f"\nbare confluent-kafka producer : {statistics.median(bare_rates):12,.0f} events/s (median of {rounds})")
    print(f"sendflowr import --format native: {statistics.median(our_rates):12,.0f} events/s (median, file read, "
          f"validated, confirmed by the broker; rejects file with line numbers)  goal >= 100,000", flush=True)
    print(f"the import's thread: {statistics.median(cpu[1:]):.2f} us of CPU an event (median): at most "
          f"{1e6 / statistics.median(cpu[1:]):,.0f} events/s on one core with the broker elsewhere", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per SendGrid POST (default %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive connections")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of anchor and ours")
    parser.add_argument("--only", choices=("webhooks", "import"), default=None, help="run one of the two")
    parser.add_argument("--import-events", type=int, default=500_000, help="events in the imported file")
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
        ok = True
        if args.only != "import":
            ok = bench_webhooks(settings, key, anchor_topic, args)
        if args.only != "webhooks":
            producer = warm_producer(settings, anchor_topic, b"{}")
            bench_import(settings, producer, anchor_topic, workdir, args.import_events, args.rounds, args.seed)
        return 0 if ok else 1
    finally:
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
