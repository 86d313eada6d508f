"""The duplicate check's cost against the size of the event-id history (docs/INGESTION.md, "Duplicates").

    .venv/bin/python bench/known_ids.py [--history 1000000,4000000,16000000] [--attempt 200000] [--rounds 3]
                                        [--redelivered 0.01]

Every attempt looks up which of its event ids `event_ids` already holds (sql/ingest/known_ids.sql): random ids
give the primary index nothing to skip, so the lookup reads the whole history once per attempt, and a run's total
grows with the square of what it ingests. On a private chDB endpoint with the migrations applied, for each history
size: `event_ids` filled with that many ULID-like ids (generated inside ClickHouse, merged to one part per partition,
not timed), one attempt of `--attempt` staged messages, `--redelivered` of them (1%) redeliveries of earlier ids;
then, alternated `--rounds` times, the endpoint's CPU for

- the lookup as it runs (sendflowr's EventsSink statement: the 8-byte `id_hash` first, the ids where it matched);
- the anchor: the same lookup probing the id strings themselves (the statement before migration 0018).

Both must find exactly the redeliveries (checked). Prints CPU seconds per attempt (median), the ratio to the anchor,
and the lookup's CPU per ingested event for a history of that size (what one attempt costs, over its events).
Nothing is asserted.
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


def fill_history(client, database: str, start: int, end: int) -> None:
    """Ids [start, end) of a history in `event_ids` (of another topic than any real one), merged."""
    client.command(f"INSERT INTO {database}.event_ids (event_id, kafka_topic, kafka_partition, kafka_offset) "
                   f"SELECT {ID.format(n='number', salt=1)}, '{TOPIC}', number % 4, intDiv(number, 4) "
                   f"FROM numbers({start}, {end - start})")
    client.command(f"OPTIMIZE TABLE {database}.event_ids FINAL")


def stage_attempt(client, database: str, history: int, size: int, share: float) -> int:
    """`size` valid staged messages past the history's offsets, `share` of them copies of ids already in it."""
    client.command(f"ALTER TABLE {database}.ingest_staging DELETE WHERE attempt_id = '{ATTEMPT}'")
    resent = int(size * share)
    client.command(
        f"INSERT INTO {database}.ingest_staging (attempt_id, kafka_topic, kafka_partition, kafka_offset, event_id, "
        f"reason) SELECT '{ATTEMPT}', '{TOPIC}', number % 4, {history} + intDiv(number, 4), "
        f"if(number < {resent}, {ID.format(n=f'intDiv(number * {history}, {max(resent, 1)})', salt=1)}, "
        f"{ID.format(n='number', salt=2)}), '' FROM numbers({size})")
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
    args = parser.parse_args()
    sizes = [int(x) for x in args.history.split(",")]
    with private_endpoint("sendflowr-bench-known-ids-") as (settings, pid):
        apply_migrations(settings)
        client, database, cpu = get_client(settings), settings.clickhouse_database, timing.Cpu(pid)
        ours = EVENTS.sql("ingest/known_ids", database)
        # the anchor: the statement as before migration 0018, probing the id strings (its second test of the ids
        # then runs on the few matching rows only)
        hashed = "PREWHERE id_hash IN (\n        SELECT cityHash64(event_id) FROM"
        if hashed not in ours:
            print("sql/ingest/known_ids.sql changed: update this benchmark's anchor", file=sys.stderr)
            return 1
        anchor = ours.replace(hashed, "PREWHERE event_id IN (\n        SELECT event_id FROM", 1)
        held = 0
        rows = []
        for history in sizes:
            fill_history(client, database, held, history)
            held = history
            resent = stage_attempt(client, database, history, args.attempt, args.redelivered)
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
            print(f"history {history:>12,}: lookup {ours_s:.3f} CPU-s an attempt, anchor (id strings) {anchor_s:.3f} "
                  f"= {ours_s / anchor_s:.2f}x; {ours_s / args.attempt * 1e6:.2f} us of CPU an ingested event",
                  flush=True)
        if len(rows) > 1:
            (h1, o1, a1), (h2, o2, a2) = rows[0], rows[-1]
            print(f"from {h1:,} to {h2:,} ids held ({h2 / h1:.0f}x): lookup {o2 / o1:.1f}x, anchor {a2 / a1:.1f}x "
                  "per attempt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
