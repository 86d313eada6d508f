"""Ingestion benchmark: our `events` asset path against two anchors measured in the same run.

    .venv/bin/python bench/ingest.py [--events 1000000] [--partitions 4] [--attempt-messages 200000] [--writers 1,2]

1. produce N realistic events from the synthetic world to a fresh topic (local broker, own ports);
2. anchor "raw": a bare confluent-kafka consumer reading the topic and decoding each JSON (orjson);
3. anchor "kafka engine": ClickHouse's own Kafka table engine (chDB, in a child process) reading the topic as
   JSONAsString into a MergeTree through a materialized view that extracts the same fields we do;
4. ours: sendflowr.ingest.ingest_once end to end — consume, stage over HTTP into the chDB endpoint
   process, validate and parse in ClickHouse, dedup, insert with tokens, commit — with 1 writer, then with N
   writers at once (one process per writer slot, as on several machines; each count on a fresh database, all
   against the one chDB endpoint).

Prints events/second for each and the ratios. Nothing here is asserted: see docs/INGESTION.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition

from sendflowr.clickhouse import get_client
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.ingest.slots import Slot
from sendflowr.kafka_io import ensure_topic, produce_all
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch


def produce_events(settings: Settings, count: int, seed: int) -> int:
    # ~40 events per person in the default world; build enough people, then stop at `count`.
    world = build_world(WorldConfig(people=max(1000, count // 30), seed=seed))
    produced = 0

    def messages():
        nonlocal produced
        for batch in iter_event_batches(world):
            for raw in serialize_batch(batch):
                if produced >= count:
                    return
                produced += 1
                yield None, raw

    produce_all(settings, messages())
    return produced


def bench_raw_consumer(settings: Settings, topic: str, count: int) -> float:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"raw-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen = 0
    started = time.perf_counter()
    loads = orjson.loads
    while seen < count:
        for message in consumer.consume(num_messages=20_000, timeout=1.0):
            if message.error() is None:
                loads(message.value())
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def bench_kafka_engine(settings: Settings, topic: str, count: int, partitions: int, workdir: Path) -> float:
    import chdb

    conn = chdb.connect(str(workdir / "kafka-engine-chdb"))
    conn.query("CREATE DATABASE IF NOT EXISTS b")
    conn.query("""
        CREATE TABLE b.sink (event_id String, event_type LowCardinality(String), occurred_at DateTime64(3, 'UTC'),
                             email String, klaviyo_id String, phone String, external_id String,
                             esp LowCardinality(String), message_id String, campaign_id String,
                             user_agent String, ip String, url String)
        ENGINE = MergeTree ORDER BY (email, occurred_at)""")
    queue_ddl = f"""
        CREATE TABLE b.queue (raw String) ENGINE = Kafka SETTINGS
            kafka_broker_list = '{settings.kafka_bootstrap_servers}', kafka_topic_list = '{topic}',
            kafka_group_name = 'kafka-engine-{uuid.uuid4().hex[:8]}', kafka_format = 'JSONAsString',
            kafka_num_consumers = {min(partitions, 2)}, kafka_max_block_size = 262144,
            kafka_poll_max_batch_size = 262144, kafka_flush_interval_ms = 500,
            kafka_thread_per_consumer = 1"""
    try:
        conn.query(queue_ddl)
    except Exception as exc:
        # chDB 26.9 reports "Shutdown was called" from the Kafka engine's start-up although the table is
        # created and consumes normally; anything else is a real failure.
        if "Shutdown was called" not in str(exc):
            raise
    started = time.perf_counter()
    conn.query("""
        CREATE MATERIALIZED VIEW b.mv TO b.sink AS SELECT
            JSONExtractString(raw, 'event_id') AS event_id, JSONExtractString(raw, 'event_type') AS event_type,
            parseDateTime64BestEffort(JSONExtractString(raw, 'occurred_at'), 3, 'UTC') AS occurred_at,
            JSONExtractString(raw, 'identifiers', 'email') AS email,
            JSONExtractString(raw, 'identifiers', 'klaviyo_id') AS klaviyo_id,
            JSONExtractString(raw, 'identifiers', 'phone') AS phone,
            JSONExtractString(raw, 'identifiers', 'external_id') AS external_id,
            JSONExtractString(raw, 'esp') AS esp, JSONExtractString(raw, 'message_id') AS message_id,
            JSONExtractString(raw, 'campaign_id') AS campaign_id, JSONExtractString(raw, 'user_agent') AS user_agent,
            JSONExtractString(raw, 'ip') AS ip, JSONExtractString(raw, 'url') AS url
        FROM b.queue""")
    deadline = started + 600
    done = 0
    while time.perf_counter() < deadline:
        done = int(conn.query("SELECT count() FROM b.sink", "CSV").bytes().strip() or 0)
        if done >= count:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    conn.query("DROP TABLE b.mv")
    conn.query("DROP TABLE b.queue")
    conn.close()
    if done < count:
        print(f"  kafka engine reached only {done}/{count} rows in 600 s")
    return elapsed


def _in_child(function, *args):
    """Run an anchor in its own process: chDB embedded in this process would keep its engine's threads
    (Kafka consumers, background pools) alive while the next path is measured."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def _writer(settings: Settings, slot: Slot, attempt_messages: int, ready, go, results) -> None:
    client = get_client(settings)
    ready.put(str(slot))
    go.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_at_go = usage.ru_utime + usage.ru_stime
    started = time.time()
    report = ingest_once(settings, client, IngestOptions(max_messages_per_partition=10**12, until_caught_up=True,
                                                         attempt_messages=attempt_messages, slot=slot),
                         log=lambda _line: None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put((started, time.time(), report.messages, usage.ru_utime + usage.ru_stime - cpu_at_go,
                 usage.ru_maxrss * 1024))


def writers_database(writers: int) -> str:
    """The database bench_writers ingests into (kept between its calls: a second call ingests what is new)."""
    return f"bench_w{writers}"


def bench_writers(settings: Settings, writers: int, attempt_messages: int) -> tuple[float, int, float, int]:
    """Wall time from the first writer's start to the last one's end, the messages they read, the writers' CPU
    seconds while ingesting (all of them) and the largest writer's peak RSS in bytes (since it started)."""
    settings = settings.model_copy(update={"clickhouse_database": writers_database(writers)})
    apply_migrations(settings)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    procs = [context.Process(target=_writer, args=(settings, Slot(k, writers), attempt_messages, ready, go, results))
             for k in range(writers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)  # every writer imported and connected: the clock measures ingestion only
    go.set()
    done = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    return (max(d[1] for d in done) - min(d[0] for d in done), sum(d[2] for d in done), sum(d[3] for d in done),
            max(d[4] for d in done))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--attempt-messages", type=int, default=IngestOptions.attempt_messages,
                        help="messages per loaded attempt (the next attempt is read while this one loads)")
    parser.add_argument("--writers", default="1,2",
                        help="writer counts to measure, comma-separated (each on a fresh database)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sendflowr-bench-"))
    settings = Settings(home=workdir, clickhouse_url=f"http://127.0.0.1:{free_port()}",
                        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
                        kafka_partitions=args.partitions, kafka_topic=f"bench-{uuid.uuid4().hex[:8]}",
                        clickhouse_database="bench")
    kafka = LocalKafka(settings)
    try:
        print(f"starting broker and chDB endpoint under {workdir}", flush=True)
        kafka.start()
        chdb_server.start_background(settings)
        apply_migrations(settings)
        ensure_topic(settings)
        started = time.perf_counter()
        produced = produce_events(settings, args.events, args.seed)
        print(f"produced {produced} events in {time.perf_counter() - started:.1f}s", flush=True)

        raw = bench_raw_consumer(settings, settings.kafka_topic, produced)
        print(f"raw consumer + JSON decode : {produced / raw:12,.0f} events/s ({raw:.2f}s)", flush=True)
        engine = _in_child(bench_kafka_engine, settings, settings.kafka_topic, produced, args.partitions, workdir)
        print(f"ClickHouse Kafka engine    : {produced / engine:12,.0f} events/s ({engine:.2f}s)", flush=True)
        rates = {}
        for writers in sorted({int(n) for n in args.writers.split(",")}):
            seconds, read, _cpu, _peak = bench_writers(settings, writers, args.attempt_messages)
            rates[writers] = read / seconds
            print(f"sendflowr, {writers} writer(s)     : {rates[writers]:12,.0f} events/s ({seconds:.2f}s, {read} "
                  "messages)", flush=True)
        ours = rates.get(1, next(iter(rates.values())))

        fastest = max(produced / raw, produced / engine)
        print()
        print(f"ours / raw consumer       = {ours / (produced / raw):.2f}x")
        print(f"ours / Kafka engine       = {ours / (produced / engine):.2f}x")
        print(f"ours / faster anchor      = {ours / fastest:.2f}x   (goal >= 0.5x)")
        print(f"ours absolute             = {ours:,.0f} events/s   (goal >= 100,000)")
        for writers, rate in sorted(rates.items()):
            if writers != 1 and 1 in rates:
                print(f"{writers} writers / 1 writer      = {rate / rates[1]:.2f}x   (one chDB endpoint, "
                      f"{multiprocessing.cpu_count()} cores)")
        return 0
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
        kafka.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
