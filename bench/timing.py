"""Timing curves benchmark: the full curve build against a bare GROUP BY person, hour_of_week in the same run.

    .venv/bin/python bench/timing.py [--people 1000000] [--events 20000000]

1. start a private chDB endpoint (own port, temp home) and apply the migrations -- no Kafka: events are
   generated inside ClickHouse (INSERT ... SELECT FROM numbers(), not timed) straight into `events`, with a
   committed `ingest_ranges` row per partition, and each person's email is registered in the identity tables
   (identity_identifiers / identity_nodes), as the identity asset would have left them;
2. the events: messages of ~3 events (delivered, then opens and clicks); a third of the people are Apple MPP
   readers whose messages get a prefetch open seconds after delivery, 3% sit behind a link scanner clicking
   every link at once; delivery hours follow a few popular campaign hours;
3. anchor: `SELECT person_key, hour_of_week, count() FROM events GROUP BY ...` (the cost of reading the events
   once and grouping them per person and hour), best of two;
4. ours: `sendflowr.timing.run.materialize` from empty (one pass over the committed events: per-message signal
   cleaning, owner lookup, per-person statistics; estimation, curve writes, commit), with its phases;
5. incremental: a rerun with no new events (nothing folded, no curve rewritten).
Prints figures and ratios to the anchor. Nothing here is asserted: see docs/TIMING.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sendflowr.clickhouse import get_client
from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing.run import materialize

TOPIC = "bench.timing"
PARTITIONS = 4
BASE = "2025-01-06 00:00:00"  # a Monday; every event in January keeps one monthly partition

# n = event number, m = message (3 events each), p = person. Event 0 of a message is the delivery, 1 an open
# (an Apple prefetch within seconds for MPP readers, else a human open hours later for ~30% of messages),
# 2 a click (every link within seconds for scanner-protected people, else a human click or a second open).
EVENTS_SQL = """
INSERT INTO {db}.events (event_id, event_type, occurred_at, person_key, email, klaviyo_id, phone, external_id, esp,
                         message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open, bot_click,
                         schema_version, kafka_topic, kafka_partition, kafka_offset)
SELECT
    toString(n) AS event_id,
    multiIf(k = 0, 'delivered', k = 1 OR (k = 2 AND NOT scanner AND n % 7 != 0), 'opened', 'clicked') AS event_type,
    addMilliseconds(delivered, multiIf(k = 0, 0, k = 1 AND mpp, 2000 + n % 300000,
                                       k = 2 AND scanner, 5000 + n % 3000,
                                       600000 + (n * 7919) % 20000000)) AS occurred_at,
    email AS person_key, email, '' AS klaviyo_id, '' AS phone, '' AS external_id, 'klaviyo' AS esp,
    concat('m', toString(m)) AS message_id, concat('c', toString(campaign)) AS campaign_id,
    if(mpp AND k = 1, 'Mozilla/5.0', 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0') AS user_agent,
    if(mpp AND k = 1, '17.58.1.2', concat('84.', toString(p % 250), '.1.2')) AS ip,
    if(event_type = 'clicked', concat('https://shop.example.com/', toString(n % 5)), '') AS url,
    '' AS bounce_type, 0 AS machine_open, 0 AS bot_click, 1 AS schema_version,
    '{topic}' AS kafka_topic, toUInt32(p % {partitions}) AS kafka_partition, n AS kafka_offset
FROM (
    SELECT number AS n, intDiv(number, 3) AS m, number % 3 AS k,
           cityHash64(intDiv(number, 3)) % {people} AS p,
           intDiv(number, 3) % {campaigns} AS campaign,
           concat('person', toString(p), '@example.org') AS email,
           p % 3 = 0 AS mpp, p % 33 = 1 AS scanner,
           addHours(toDateTime64('{base}', 3, 'UTC'),
                    (campaign * 37) % 24 * 7 + [8, 14, 15, 18, 3, 21][campaign % 6 + 1]) AS delivered
    FROM numbers({events})
)
"""

IDENTITY_SQL = (
    "INSERT INTO {db}.identity_identifiers SELECT 'email', e, e, p + 1, '' "
    "FROM (SELECT number AS p, concat('person', toString(number), '@example.org') AS e FROM numbers({people}))",
    "INSERT INTO {db}.identity_nodes SELECT p + 1, 'email', e, now64(3), now64(3), p + 1, 0, "
    "concat('sf_', lower(hex(cityHash64(p)))), now64(6) "
    "FROM (SELECT number AS p, concat('person', toString(number), '@example.org') AS e FROM numbers({people}))",
)

ANCHOR_SQL = ("SELECT count(), sum(c) FROM (SELECT person_key, (toDayOfWeek(occurred_at) - 1) * 24 + "
              "toHour(occurred_at) AS how, count() AS c FROM {db}.events GROUP BY person_key, how)")


def load(client, db: str, people: int, events: int) -> None:
    client.command(EVENTS_SQL.format(db=db, topic=TOPIC, partitions=PARTITIONS, people=people, events=events,
                                     campaigns=max(events // 3 // max(people, 1) * 3, 12), base=BASE))
    for sql in IDENTITY_SQL:
        client.command(sql.format(db=db, people=people))
    client.command(
        f"INSERT INTO {db}.ingest_ranges (kafka_topic, kafka_partition, start_offset, end_offset, state, run_id, "
        f"messages, valid, rejected) SELECT '{TOPIC}', number, 0, {events}, 'committed', 'bench', 0, 0, 0 "
        f"FROM numbers({PARTITIONS})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sendflowr-bench-timing-"))
    settings = Settings(home=workdir, clickhouse_url=f"http://127.0.0.1:{free_port()}", clickhouse_database="bench")
    db = settings.clickhouse_database
    try:
        print(f"starting chDB endpoint under {workdir}", flush=True)
        chdb_server.start_background(settings)
        apply_migrations(settings)
        client = get_client(settings)
        started = time.perf_counter()
        load(client, db, args.people, args.events)
        n_events = int(client.command(f"SELECT count() FROM {db}.events"))
        n_people = int(client.command(f"SELECT uniqExact(person_key) FROM {db}.events"))
        print(f"generated {n_events:,} events of {n_people:,} people in {time.perf_counter() - started:.1f}s "
              "(not timed)", flush=True)

        anchors = []
        for _ in range(2):
            t = time.perf_counter()
            groups, total = client.query(ANCHOR_SQL.format(db=db)).result_rows[0]
            anchors.append(time.perf_counter() - t)
        anchor = min(anchors)
        print(f"\nanchor GROUP BY person, hour_of_week: {anchor:.2f}s ({int(groups):,} groups over {int(total):,} "
              f"events; runs {', '.join(f'{a:.2f}s' for a in anchors)})", flush=True)

        t = time.perf_counter()
        report = materialize(client, db, log=lambda line: print("  " + line, flush=True))
        full = time.perf_counter() - t
        print(f"\ntiming materialize from empty: {full:.2f}s ({report.people:,} people, "
              f"{report.people_written:,} curves written)")
        for phase, secs in report.seconds.items():
            print(f"    {secs:8.2f}s  {phase}")
        shares = report.shares()

        t = time.perf_counter()
        again = materialize(client, db, log=lambda line: print("  " + line, flush=True))
        rerun = time.perf_counter() - t

        print("\n" + "=" * 72)
        print(f"events                         {n_events:>14,}")
        print(f"people with curves             {report.people:>14,}")
        print(f"machine open share             {shares['machine_open_share']:>14.1%}")
        print(f"scanner click share            {shares['scanner_click_share']:>14.1%}")
        print(f"anchor (bare GROUP BY)         {anchor:>13.2f}s")
        print(f"full curve build               {full:>13.2f}s   {full / anchor:6.2f}x anchor")
        sql = report.seconds['progress'] + report.seconds['aggregate']
        print(f"  of which SQL (aggregate)     {sql:>13.2f}s   {sql / anchor:6.2f}x anchor")
        print(f"rerun, nothing new             {rerun:>13.2f}s   {rerun / anchor:6.2f}x anchor "
              f"({again.people_written:,} curves rewritten)")
        return 0
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
