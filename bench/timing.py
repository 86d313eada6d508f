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
5. a rerun with no new events (nothing to do), then an incremental run after +1% events (`--increment`): new
   messages to people already known, committed as new ranges (sendflowr.timing.incremental: only the new events
   are grouped, only the people they touch re-estimated), against the full build's wall and CPU;
6. the floor any exposure-corrected build must pay, whatever its design: (a) a bare `GROUP BY` of the events on
   the message key with one count() (each engagement must meet its message's delivery time), best of two, and
   (b) writing the built timing_curves rows once into an empty copy of the table, with no computation: by the
   build's own Arrow path (same chunks, same insert settings) and by a server-side INSERT ... SELECT (less a
   read of the same rows, timed apart);
7. the floor of THESE signal rules: (a) the same grouping carrying every per-event input the rules read, in the
   cheapest form measured (one array of packed 64-bit facts per message: time, type, flags, Apple proxy,
   scanner agent, a 16-bit URL hash) plus the owner probe of one identifier, no rule applied, best of two;
   (b) the estimate alone (numpy, every person's curve from the built statistics, in the build's blocks and
   threads, nothing written); (c) the cheaper curve write of 6(b). Their sum is what the build could cost if
   nothing else did.
The events table is merged to one part per partition before anything is timed (OPTIMIZE ... FINAL, not timed),
and before each timed block the benchmark waits for merges to end and flushes dirty pages (os.sync): right after
the load, merges and the kernel's writeback ran under the anchor and made it ~2x slower (5.2 s against 2.3 s).
Prints wall seconds and, robust to a loaded box, CPU seconds (the chDB endpoint process + this process) with
ratios to the anchor. Nothing here is asserted: see docs/TIMING.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from endpoint import private_endpoint  # bench/endpoint.py

from sendflowr.clickhouse import get_client
from sendflowr.migrations import apply_migrations
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.fit import fit
from sendflowr.timing.owners import owner_map
from sendflowr.timing.run import WRITE_ROWS, _estimated_blocks, _insert_curves, materialize
from sendflowr.timing.signals import SignalRules

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
    email AS person_key, email, {identifiers}, 'klaviyo' AS esp,
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
           concat('person', toString(p), '@{domain}') AS email,
           p % 3 = 0 AS mpp, p % 33 = 1 AS scanner,
           addHours(toDateTime64('{base}', 3, 'UTC'),
                    (campaign * 37) % 24 * 7 + [8, 14, 15, 18, 3, 21][campaign % 6 + 1]) AS delivered
    FROM numbers({start}, {events})
)
"""
# The other identifier columns of EVENTS_SQL: none here (email alone names a person); bench/scale.py gives people
# more identifiers, for the identity stage to stitch.
NO_IDENTIFIERS = "'' AS klaviyo_id, '' AS phone, '' AS external_id"
DOMAIN = "example-mail.com"  # person<p>@DOMAIN; not a placeholder domain, which stitching would reject

IDENTITY_SQL = (
    "INSERT INTO {db}.identity_identifiers SELECT 'email', e, e, p + 1, '' "
    "FROM (SELECT number AS p, concat('person', toString(number), '@{domain}') AS e FROM numbers({people}))",
    "INSERT INTO {db}.identity_nodes SELECT p + 1, 'email', e, now64(3), now64(3), p + 1, 0, "
    "concat('sf_', leftPad(lower(hex(cityHash64(p))), 16, '0')), now64(6) "
    "FROM (SELECT number AS p, concat('person', toString(number), '@{domain}') AS e FROM numbers({people}))",
)

ANCHOR_SQL = ("SELECT count(), sum(c) FROM (SELECT person_key, (toDayOfWeek(occurred_at) - 1) * 24 + "
              "toHour(occurred_at) AS how, count() AS c FROM {db}.events GROUP BY person_key, how)")


MESSAGES_SQL = ("SELECT count(), sum(c) FROM (SELECT murmurHash3_128(message_id) AS m, count() AS c "
                "FROM {db}.events GROUP BY m)")
# Every input the signal rules read, per event, packed into one UInt64 (42 bits of milliseconds, then type,
# flagged machine open / bot click, Apple proxy open, scanner user agent on a click, 16 bits of URL hash), and
# the owner probe of one identifier type: a lower bound on the rules' grouping, not a correct implementation.
RULES_FLOOR_SQL = """
SELECT count(), sum(length(facts)), sum(joinGet({{owners:String}}, 'p', owner_key))
FROM (
    SELECT murmurHash3_128(message_id) AS message,
           groupArray(bitShiftLeft(toUInt64(toUnixTimestamp64Milli(occurred_at)), 21)
                      + bitShiftLeft(toUInt64(indexOf(['delivered', 'opened', 'clicked'], event_type)), 19)
                      + bitShiftLeft(toUInt64(machine_open = 1 OR bot_click = 1), 18)
                      + bitShiftLeft(toUInt64(event_type = 'opened'
                                              AND (user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.'))), 17)
                      + bitShiftLeft(toUInt64(event_type = 'clicked' AND multiSearchAnyCaseInsensitive(
                                                  user_agent, {{agents:Array(String)}})), 16)
                      + if(event_type = 'clicked', cityHash64(url) % 65536, 0)) AS facts,
           max(if(email = '', 0, cityHash64('email', email))) AS owner_key
    FROM {db}.events
    WHERE message_id != '' AND event_type IN ('delivered', 'opened', 'clicked')
    GROUP BY message
)
"""
TICK = os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds (user + system) of the chDB endpoint process and of this process, all threads: unlike wall
    time, barely moved by other people's work on a shared box."""

    def __init__(self, server_pid: int) -> None:
        self.stat = Path(f"/proc/{server_pid}/stat")

    def now(self) -> tuple[float, float]:
        fields = self.stat.read_text().rsplit(")", 1)[1].split()
        own = os.times()
        return (int(fields[11]) + int(fields[12])) / TICK, own.user + own.system

    def timed(self, fn):
        """(result, wall seconds, server CPU seconds, Python CPU seconds) of fn()."""
        s0, p0 = self.now()
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
        s1, p1 = self.now()
        return out, wall, s1 - s0, p1 - p0


def best_of_two(cpu: Cpu, fn):
    """The faster of two runs (wall), with its CPU seconds and both walls."""
    runs = [cpu.timed(fn) for _ in range(2)]
    best = min(runs, key=lambda r: r[1])
    return best, [r[1] for r in runs]


def write_floor(client, db: str, cpu: Cpu) -> tuple[tuple, tuple, int]:
    """Write the built curve rows once into an empty copy of timing_curves, no computation: (a) the build's Arrow
    path (read back untimed, sent in the build's chunks with its insert settings), (b) INSERT ... SELECT on the
    server (what a design computing curves in SQL would at least pay), less the cost of reading the same rows
    (SELECT ... FORMAT Null, timed separately), so the floor counts the write alone."""
    rows = client.query_arrow(f"SELECT * FROM {db}.timing_curves", use_strings=True)
    client.command(f"CREATE TABLE {db}.floor_curves AS {db}.timing_curves")
    try:
        settle(client, db)

        def arrow():
            for lo in range(0, rows.num_rows, WRITE_ROWS):
                _insert_curves(client, db, rows.slice(lo, WRITE_ROWS), into="floor_curves")
        _, *arrow_cost = cpu.timed(arrow)
        client.command(f"TRUNCATE TABLE {db}.floor_curves")
        settle(client, db)
        _, *server_cost = cpu.timed(lambda: client.command(
            f"INSERT INTO {db}.floor_curves SELECT * FROM {db}.timing_curves", settings={"optimize_on_insert": 0}))
        written = int(client.command(f"SELECT count() FROM {db}.floor_curves"))
        settle(client, db)
        _, *read_cost = cpu.timed(lambda: client.command(f"SELECT * FROM {db}.timing_curves FORMAT Null"))
    finally:
        client.command(f"DROP TABLE IF EXISTS {db}.floor_curves")
    write_alone = tuple(max(s - r, 0.0) for s, r in zip(server_cost, read_cost, strict=True))
    return tuple(arrow_cost), write_alone, written


def estimate_only(client, db: str, cpu: Cpu) -> tuple[float, float, int]:
    """(wall, Python CPU, people) of estimating every person's curve from the built statistics, nothing written
    (the statistics are aggregated again first, not timed)."""
    f = fit(client, db, SignalRules(), EstimatorParams())

    def estimate():
        for _ in _estimated_blocks(f):  # as the build estimates: blocks side by side
            pass
    settle(client, db)
    _, wall, _, py = cpu.timed(estimate)  # Python alone: the engine only merges in the background meanwhile
    return wall, py, len(f.stats)


def load(client, db: str, people: int, events: int, start: int = 0, identifiers: str = NO_IDENTIFIERS,
         register: bool = True) -> None:
    """Events [start, start + events) (event n of message n // 3, of a person drawn from the message: an
    increment is new messages to people already known), their committed ranges; with `register`, each person's
    email in the identity tables first (as a stitching run would have left them)."""
    client.command(EVENTS_SQL.format(db=db, topic=TOPIC, partitions=PARTITIONS, people=people, events=events,
                                     start=start, campaigns=max((start + events) // 3 // max(people, 1) * 3, 12),
                                     base=BASE, identifiers=identifiers, domain=DOMAIN))
    if start == 0 and register:
        for sql in IDENTITY_SQL:
            client.command(sql.format(db=db, people=people, domain=DOMAIN))
    client.command(
        f"INSERT INTO {db}.ingest_ranges (kafka_topic, kafka_partition, start_offset, end_offset, state, run_id, "
        f"messages, valid, rejected) SELECT '{TOPIC}', number, {start}, {start + events}, 'committed', 'bench', "
        f"0, 0, 0 FROM numbers({PARTITIONS})")
    if start == 0:
        client.command(f"OPTIMIZE TABLE {db}.events FINAL")
    settle(client, db)


def settle(client, db: str, timeout: float = 300.0) -> None:
    """Wait until no merge runs in the database and written pages are on disk: otherwise the engine's merges and
    the kernel's writeback of the last big write (the load, the build's curves) run under whatever is timed next
    (measured at full size: the anchor took 5.2 s right after the load, 2.3 s once settled)."""
    deadline = time.monotonic() + timeout
    while (int(client.command(f"SELECT count() FROM system.merges WHERE database = '{db}'"))
           and time.monotonic() < deadline):
        time.sleep(0.5)
    os.sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--increment", type=float, default=0.01, help="new events for the incremental run, as a "
                        "share of --events")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args()

    with private_endpoint("sendflowr-bench-timing-", args.keep) as (settings, endpoint_pid):
        db = settings.clickhouse_database
        cpu = Cpu(endpoint_pid)
        apply_migrations(settings)
        client = get_client(settings)
        started = time.perf_counter()
        load(client, db, args.people, args.events)
        n_events = int(client.command(f"SELECT count() FROM {db}.events"))
        n_people = int(client.command(f"SELECT uniqExact(person_key) FROM {db}.events"))
        print(f"generated {n_events:,} events of {n_people:,} people in {time.perf_counter() - started:.1f}s "
              "(not timed)", flush=True)

        ((groups, total), anchor, anchor_ch, anchor_py), anchors = best_of_two(
            cpu, lambda: client.query(ANCHOR_SQL.format(db=db)).result_rows[0])
        anchor_cpu = anchor_ch + anchor_py
        print(f"\nanchor GROUP BY person, hour_of_week: {anchor:.2f}s, CPU {anchor_cpu:.2f}s ({int(groups):,} groups "
              f"over {int(total):,} events; runs {', '.join(f'{a:.2f}s' for a in anchors)})", flush=True)

        report, full, full_ch, full_py = cpu.timed(
            lambda: materialize(client, db, log=lambda line: print("  " + line, flush=True)))
        print(f"\ntiming materialize from empty: {full:.2f}s, CPU {full_ch:.2f}s chDB + {full_py:.2f}s Python "
              f"({report.people:,} people, {report.people_written:,} curves written)")
        for phase, secs in report.seconds.items():
            print(f"    {secs:8.2f}s  {phase}")
        shares = report.shares()

        t = time.perf_counter()
        again = materialize(client, db, log=lambda line: print("  " + line, flush=True))
        rerun = time.perf_counter() - t

        extra = max(int(args.events * args.increment), 3)
        load(client, db, args.people, extra, start=args.events)  # not timed
        inc, inc_wall, inc_ch, inc_py = cpu.timed(
            lambda: materialize(client, db, log=lambda line: print("  " + line, flush=True)))
        print(f"\nincremental run after +{extra:,} events ({args.increment:.0%}): {inc_wall:.2f}s, CPU {inc_ch:.2f}s "
              f"chDB + {inc_py:.2f}s Python ({inc.people_written:,} curves rewritten)")
        for phase, secs in inc.seconds.items():
            print(f"    {secs:8.2f}s  {phase}")

        settle(client, db)  # the build's curve parts merge in the background after it returns
        ((messages, _), group, group_ch, group_py), groups_wall = best_of_two(
            cpu, lambda: client.query(MESSAGES_SQL.format(db=db)).result_rows[0])
        arrow, server, written = write_floor(client, db, cpu)
        write = min(arrow, server, key=lambda c: c[0])
        floor, floor_cpu = group + write[0], group_ch + group_py + write[1] + write[2]
        with owner_map(client, db) as owners:
            settle(client, db)
            ((rules_messages, _, _), rules, rules_ch, rules_py), rules_wall = best_of_two(
                cpu, lambda: client.query(RULES_FLOOR_SQL.format(db=db), parameters={
                    "owners": owners, "agents": list(SignalRules().scanner_agents)}).result_rows[0])
        est, est_cpu, est_people = estimate_only(client, db, cpu)
        rules_floor, rules_floor_cpu = rules + est + write[0], rules_ch + rules_py + est_cpu + write[1] + write[2]
        print(f"\nfloor: GROUP BY message key, count(): {group:.2f}s, CPU {group_ch + group_py:.2f}s "
              f"({int(messages):,} messages; runs {', '.join(f'{a:.2f}s' for a in groups_wall)}); write {written:,} "
              f"curve rows into an empty copy: Arrow path {arrow[0]:.2f}s (CPU {arrow[1]:.2f}s chDB + "
              f"{arrow[2]:.2f}s Python), INSERT ... SELECT less the read {server[0]:.2f}s "
              f"(CPU {server[1] + server[2]:.2f}s)")
        print(f"rules floor: GROUP BY message key with the rules' inputs and one owner probe: {rules:.2f}s, CPU "
              f"{rules_ch + rules_py:.2f}s ({int(rules_messages):,} messages; runs "
              f"{', '.join(f'{a:.2f}s' for a in rules_wall)}); estimate only: {est:.2f}s, CPU {est_cpu:.2f}s "
              f"({est_people:,} people)")

        print("\n" + "=" * 72)
        print("                                     wall             CPU (chDB + Python)")
        print(f"events                         {n_events:>14,}")
        print(f"people with curves             {report.people:>14,}")
        print(f"machine open share             {shares['machine_open_share']:>14.1%}")
        print(f"scanner click share            {shares['scanner_click_share']:>14.1%}")
        print(f"anchor (bare GROUP BY)         {anchor:>13.2f}s             {anchor_cpu:>8.2f}s")

        def line(label: str, wall: float, cpu_s: float) -> None:
            print(f"{label:<31}{wall:>13.2f}s {wall / anchor:6.2f}x   {cpu_s:>8.2f}s {cpu_s / anchor_cpu:6.2f}x anchor")

        line("full curve build", full, full_ch + full_py)
        sql = report.seconds['progress'] + report.seconds['aggregate']
        print(f"  of which pass + fit          {sql:>13.2f}s {sql / anchor:6.2f}x")
        line("floor: GROUP BY message", group, group_ch + group_py)
        line("floor: write curves (cheaper)", write[0], write[1] + write[2])
        line("floor: sum", floor, floor_cpu)
        over = (full_ch + full_py) / floor_cpu
        print(f"full build over the floor      {full / floor:>13.2f}x             {over:>7.2f}x")
        line("rules floor: grouping+inputs", rules, rules_ch + rules_py)
        line("rules floor: estimate only", est, est_cpu)
        line("rules floor: sum (+ write)", rules_floor, rules_floor_cpu)
        print(f"rerun, nothing new             {rerun:>13.2f}s {rerun / anchor:6.2f}x "
              f"({again.people_written:,} curves rewritten)")
        print(f"incremental, +{args.increment:.0%} events   {inc_wall:>13.2f}s {inc_wall / full:6.1%} of the full "
              f"build; CPU {inc_ch + inc_py:.2f}s = {(inc_ch + inc_py) / (full_ch + full_py):.1%}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
