"""The duplicate check's cost against the size of the event-id history (docs/INGESTION.md, "Duplicates").

    .venv/bin/python bench/known_ids.py [--history 1000000,4000000,16000000] [--attempt 200000] [--rounds 3]
                                        [--redelivered 0.01] [--late 0.02] [--late-days 3] [--days 84]
                                        [--live-hours 6]

Every attempt looks up which of its events `event_ids` already holds (sql/ingest/known_ids.sql). Since migration
0019 the table is sorted by (hour occurred, id hash), so the lookup reads only the hours the attempt's events
occurred in. On a private chDB endpoint with the migrations applied, for each history size: `event_ids` filled with that
many ULID-like ids spread evenly over `--days` of hours (generated inside ClickHouse, merged, not timed), so that a
bigger history is more traffic an hour, as with more people; then one attempt of `--attempt` staged messages:

- most occurred in the history's last `--live-hours` hours (live traffic, which the history already covers);
- `--late` of them (2%) occurred at random hours of the history's last `--late-days` (3): events that arrive
  minutes to days late (with `--late 1 --late-days 84`, a bulk import across the whole history);
- `--redelivered` of them (1%) are copies of ids the history holds in the live hours, with their hours.

Then, alternated `--rounds` times, the endpoint's CPU for

- the lookup as it runs (sendflowr's EventsSink statement on the table as migration 0019 left it);
- the anchor: the lookup before 0019 (the 8-byte id hash first, then the ids) on the same ids in a table of the
  shape before 0019 (sorted by id), which reads the whole history's hashes every attempt.

Both must find exactly the redeliveries (checked). Prints CPU seconds per attempt (median), the ratio to the anchor,
and the lookup's CPU per ingested event for a history of that size. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import timing  # bench/: CPU of the endpoint process, settle()
from endpoint import private_endpoint  # bench/endpoint.py

from sendflowr.clickhouse import get_client
from sendflowr.ingest.sink import EVENTS
from sendflowr.migrations import apply_migrations

TOPIC = "bench.known_ids"
ATTEMPT = "bench~known-ids"
# 26 characters like an ESP's ULID: never sorted the way they arrive
ID = "concat('01J', leftPad(hex(cityHash64({n}, {salt})), 23, '0'))"
END = "toDateTime('2026-11-01 00:00:00', 'UTC')"  # the history's hours end here unless told
OLD_SHAPE = "bench_event_ids_by_id"
# sql/ingest/known_ids.sql as migration 0018 left it, on a table of that shape
BEFORE_0019 = f"""
INSERT INTO ${{database}}.ingest_known_ids (attempt_id, event_id)
SELECT {{attempt:String}}, event_id
FROM ${{database}}.{OLD_SHAPE}
PREWHERE id_hash IN (
        SELECT cityHash64(event_id) FROM ${{database}}.ingest_staging
        WHERE attempt_id = {{attempt:String}} AND kafka_topic = {{topic:String}} AND reason = '')
WHERE event_id IN (
        SELECT event_id FROM ${{database}}.ingest_staging
        WHERE attempt_id = {{attempt:String}} AND kafka_topic = {{topic:String}} AND reason = '')
  AND NOT (kafka_topic = {{topic:String}}
         AND arrayExists((p, s, e) -> kafka_partition = p AND kafka_offset >= s AND kafka_offset < e,
                         {{partitions:Array(UInt32)}}, {{starts:Array(UInt64)}}, {{ends:Array(UInt64)}}))
SETTINGS use_index_for_in_with_subqueries = 0
"""


def hour_of(n: str, history: int, hours: int, until: str = END) -> str:
    """The hour history id number `n` occurred in: ids spread evenly over the `hours` before `until`."""
    return f"{until} - toIntervalHour({hours} - intDiv(({n}) * {hours}, {history}))"


def fill_history(client, database: str, start: int, end: int, history: int, hours: int, until: str = END,
                 also: str = "") -> None:
    """Ids [start, end) of a history of `history` ids over the `hours` hours before `until` in `event_ids` (and
    the table `also`), of another topic than any real one, merged."""
    for table in filter(None, ("event_ids", also)):
        hour = ", " + hour_of("number", history, hours, until) if table == "event_ids" else ""
        client.command(f"INSERT INTO {database}.{table} (event_id, kafka_topic, kafka_partition, kafka_offset"
                       f"{', occurred_hour' if hour else ''}) "
                       f"SELECT {ID.format(n='number', salt=1)}, '{TOPIC}', number % 4, intDiv(number, 4){hour} "
                       f"FROM numbers({start}, {end - start})")
        client.command(f"OPTIMIZE TABLE {database}.{table} FINAL")


def stage_attempt(client, database: str, history: int, hours: int, args) -> int:
    """`args.attempt` valid staged messages past the history's offsets (see the module's docstring)."""
    client.command(f"ALTER TABLE {database}.ingest_staging DELETE WHERE attempt_id = '{ATTEMPT}'")
    size = args.attempt
    live_ids = max(history * args.live_hours // hours, 1)  # the history's ids in the live hours
    resent, late = min(int(size * args.redelivered), live_ids), int(size * args.late)
    late_hours = min(args.late_days * 24, hours)
    copied = f"{history} - 1 - intDiv(number * {live_ids}, {max(resent, 1)})"
    at = (f"multiIf(number < {resent}, {hour_of(copied, history, hours)}, "
          f"number < {resent + late}, {END} - toIntervalSecond(cityHash64(number, 3) % {late_hours * 3600}), "
          f"{END} - toIntervalSecond(cityHash64(number, 4) % {args.live_hours * 3600}))")
    client.command(
        f"INSERT INTO {database}.ingest_staging (attempt_id, kafka_topic, kafka_partition, kafka_offset, event_id, "
        f"occurred_at, reason) SELECT '{ATTEMPT}', '{TOPIC}', number % 4, {history} + intDiv(number, 4), "
        f"if(number < {resent}, {ID.format(n=copied, salt=1)}, {ID.format(n='number', salt=2)}), "
        f"toDateTime64({at}, 3, 'UTC'), '' FROM numbers({size})")
    return resent


def params(history: int, size: int) -> dict:
    end = history // 4 + size // 4 + 1
    return {"attempt": ATTEMPT, "topic": TOPIC, "partitions": [0, 1, 2, 3], "starts": [history // 4] * 4,
            "ends": [end] * 4, "staged": size, "known": 0}


def lookup(sql: str, client, database: str, p: dict, cpu) -> tuple[float, int]:
    client.command(f"TRUNCATE TABLE {database}.ingest_known_ids")
    before, _ = cpu.now()
    client.command(sql, parameters=p)
    after, _ = cpu.now()
    return after - before, int(client.command(f"SELECT count() FROM {database}.ingest_known_ids"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", default="1000000,4000000,16000000", help="event ids already held, ascending")
    parser.add_argument("--attempt", type=int, default=200_000, help="messages in the attempt (the writer's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redelivered", type=float, default=0.01, help="share of the attempt's ids already held")
    parser.add_argument("--late", type=float, default=0.02, help="share that occurred at earlier hours")
    parser.add_argument("--late-days", type=int, default=3,
                        help="days back the late events reach (84: a bulk import across the whole history)")
    parser.add_argument("--days", type=int, default=84, help="days the history spans (a synth world's 12 weeks)")
    parser.add_argument("--live-hours", type=int, default=6, help="hours the attempt's live events span")
    args = parser.parse_args()
    sizes = [int(x) for x in args.history.split(",")]
    hours = args.days * 24
    with private_endpoint("sendflowr-bench-known-ids-") as (settings, pid):
        apply_migrations(settings)
        client, database, cpu = get_client(settings), settings.clickhouse_database, timing.Cpu(pid)
        client.command(f"CREATE TABLE {database}.{OLD_SHAPE} (event_id String, kafka_topic LowCardinality(String), "
                       "kafka_partition UInt32, kafka_offset UInt64, id_hash UInt64 MATERIALIZED cityHash64(event_id)) "
                       "ENGINE = MergeTree ORDER BY event_id")
        ours, anchor = EVENTS.sql("ingest/known_ids", database), BEFORE_0019.replace("${database}", database)
        rows = []
        for history in sizes:
            for table in ("event_ids", OLD_SHAPE):
                client.command(f"TRUNCATE TABLE {database}.{table}")
            fill_history(client, database, 0, history, history, hours, also=OLD_SHAPE)
            resent = stage_attempt(client, database, history, hours, args)
            p = params(history, args.attempt)
            timing.settle(client, database)
            times = {"ours": [], "anchor": []}
            for _ in range(args.rounds):
                for name, sql in (("anchor", anchor), ("ours", ours)):
                    seconds, found = lookup(sql, client, database, p, cpu)
                    if found != resent:
                        print(f"{name} found {found} known ids, expected {resent}", file=sys.stderr)
                        return 1
                    times[name].append(seconds)
            ours_s, anchor_s = statistics.median(times["ours"]), statistics.median(times["anchor"])
            rows.append((history, ours_s, anchor_s))
            print(f"history {history:>12,} ({history // hours:,} an hour): lookup {ours_s:.3f} CPU-s an attempt, "
                  f"anchor (before 0019) {anchor_s:.3f} = {ours_s / anchor_s:.2f}x; "
                  f"{ours_s / args.attempt * 1e6:.2f} us of CPU an ingested event", flush=True)
        if len(rows) > 1:
            (h1, o1, a1), (h2, o2, a2) = rows[0], rows[-1]
            print(f"from {h1:,} to {h2:,} ids held ({h2 / h1:.0f}x): lookup {o2 / o1:.1f}x, anchor {a2 / a1:.1f}x "
                  "per attempt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
