"""Scale benchmark: every stage at growing sizes, with wall time, CPU, peak memory and the growth exponent.

    .venv/bin/python bench/scale.py [--sizes 250000,1000000,4000000] [--stages ingest,identity,timing,api]
                                    [--events-per-person 20] [--ingest-per-person 1]

For each size (people), on a fresh private chDB endpoint (own port, temp home), removed afterwards:

1. ingest: `--ingest-per-person` events a person from the synthetic world produced to a fresh topic of a local
   broker (not timed), then ingested by one writer, `ingest_once` end to end (bench/ingest.py's writer process);
   Kafka is the subject here, so this stage has its own, smaller event count; then ingestion +1%: the event ids of
   the size's whole history (`--events-per-person` a person, written inside ClickHouse, not timed) and 1% of that
   many new events produced and ingested by one writer (the history occurred in the 12 weeks before them), against
   its anchor, as many new events ingested with no history held (the row "ingestion +1%, no history", not judged);
2. the events of the other stages are generated inside ClickHouse (INSERT ... SELECT FROM numbers(), not timed)
   with bench/timing.py's generator: messages of ~3 events, `--events-per-person` events a person, and identifiers
   as bench/identity.py's world has them (email always; a Klaviyo id for 80% of people, a phone for 60% and an
   external id for 60%, on some of their events; 50 phones shared by up to 100,000 profiles);
3. identity: `stitch_once` from empty (bench/identity.py's timed run, with its phases), then its I/O floor
   (reading the events' identifier columns once and writing the identity_nodes rows once);
4. timing: `materialize` from empty, on the identity the stage before left (or on registered emails when identity
   is not run);
5. +1% events (new messages, ~1% of them to new people), then identity and timing incremental runs;
6. api: the decision snapshot loaded the way an API worker loads it (SnapshotHolder.refresh, building its parts
   from the identity and timing tables above), then single decisions and 10,000-recipient batches in process
   (bench/api_snapshot.py's loops: p50/p99 of single decisions, median batch).

Every stage prints wall time, CPU seconds (the chDB endpoint process + this process, from /proc: robust to a loaded
box; for ingestion the writer process + the endpoint, the broker apart) and the peak RSS of this process and of the
endpoint process during the stage (VmHWM after resetting it through /proc/<pid>/clear_refs; the endpoint is restarted
on the same data before each stage of steps 3-6, so its peak is the stage's own). At the end: the table,
the growth exponent log(cost2 / cost1) / log(size2 / size1) between consecutive sizes, and the goals. A size whose
projected memory or disk (from the sizes before it) exceeds what the machine has is skipped with the reason.
Nothing is asserted: see docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import api_snapshot  # bench/: the snapshot bench's in-process decision loops
import identity  # bench/: stitch_once timed with its phases, the I/O floor, the world's identifier shapes
import ingest  # bench/: the synthetic world produced to Kafka, the ingestion writer process
import known_ids  # bench/: a history of event ids, as ingestion leaves it
import numpy as np
import pyarrow as pa
import timing  # bench/: the in-ClickHouse event generator, CPU of the endpoint process, settle()
from endpoint import private_endpoint  # bench/endpoint.py

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.ingest import IngestOptions
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig
from sendflowr.timing.run import materialize

STAGES = ("ingest", "identity", "timing", "api")
ROWS = ("ingestion (1 writer)", "ingestion +1%, no history", "ingestion +1%", "identity full", "identity I/O floor",
        "identity +1%", "timing full", "timing +1%", "API snapshot load", "API single p99", "API 10k batch")
STAGE_ROWS = {"ingest": ROWS[:3], "identity": ROWS[3:6], "timing": ROWS[6:8], "api": ROWS[6:7] + ROWS[8:]}
LATENCY_ROWS = ("API single p99", "API 10k batch")  # per decision: no CPU or memory of their own
ANCHOR_ROWS = ("identity I/O floor", "ingestion +1%, no history")  # a stage's reference: no goal of its own
EXPONENT_GOAL = 1.1
MEMORY_GOAL = 8e9  # bytes, any process, at 10M people
FLOOR_GOAL = 3.0  # identity full asset over its I/O floor
GOAL_PEOPLE = 10_000_000


def identifiers_sql() -> str:
    """EVENTS_SQL's klaviyo_id, phone and external_id of person p on event n, shaped as bench/identity.py's world:
    a Klaviyo id for 80% of people (on all their events), a phone for 60% (on every 4th event) and an external id
    for 60% (every 3rd), at least two identifiers a person; one profile in ten of the first million carries one
    of 50 shared phones instead of its own (the degree guard's work)."""
    areas = f"[{', '.join(str(a) for a in identity.AREA_CODES)}]"

    def phone(index: str) -> str:  # identity._phones in SQL: +1, area code, exchange 200-999, line 0000-9999
        return (f"concat('+', toString(10000000000 + {areas}[intDiv({index}, 8000000) % {len(identity.AREA_CODES)} "
                f"+ 1] * 10000000 + (200 + intDiv({index} % 8000000, 10000)) * 10000 + {index} % 10000))")

    shared = phone(f"({identity.SHARED_PHONE_INDEX} + p % {identity.SHARED_PHONES})")
    return (f"if(p % 5 != 4, concat('01JK', toString(p)), '') AS klaviyo_id, "
            f"multiIf(n % 4 != 0, '', p % 10 = 7 AND p < {identity.SHARED_PHONES * 2000 * 10}, {shared}, "
            f"p % 5 < 3, {phone('p')}, '') AS phone, "
            "if(p % 5 >= 2 AND n % 3 = 0, concat('cust-', toString(p)), '') AS external_id")


class Emails:
    """The generator's emails by person number, made on demand (api_snapshot's loops index them)."""

    def __getitem__(self, index):
        if np.isscalar(index):
            return f"person{index}@{timing.DOMAIN}"
        return np.char.add(np.char.add("person", np.asarray(index).astype(str)), f"@{timing.DOMAIN}")


@dataclass
class Cost:
    wall: float
    cpu: float | None = None  # seconds, every process that worked for the stage
    peak_py: int | None = None  # bytes: this process (for ingestion: the writer process)
    peak_chdb: int | None = None  # bytes: the chDB endpoint process
    note: str = ""

    @property
    def peak(self) -> int:
        return max(self.peak_py or 0, self.peak_chdb or 0)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


class StatementPeaks:
    """The endpoint's peak RSS during each statement a client sends (its high-water mark reset before the
    statement, read after), to name what holds the memory; statements of one client run one at a time."""

    METHODS = ("command", "query", "query_arrow", "insert_arrow", "insert")

    def __init__(self, server_pid: int, database: str) -> None:
        self.server, self.database = server_pid, database
        self.peaks: dict[str, int] = {}
        self.highest = 0  # since the Meter's last reset, between statements too

    def client(self, client):
        peaks = self

        class Watched:
            def __getattr__(_, name):
                original = getattr(client, name)
                if name not in peaks.METHODS:
                    return original

                def call(*args, **kwargs):
                    peaks.highest = max(peaks.highest, peak_rss(peaks.server))
                    reset_peak(peaks.server)
                    try:
                        return original(*args, **kwargs)
                    finally:
                        text = str(args[0] if args else "").replace(f"{peaks.database}.", "")
                        label = f"{name}: " + " ".join(text.split())[:90]
                        peak = peak_rss(peaks.server)
                        peaks.peaks[label] = max(peaks.peaks.get(label, 0), peak)
                        peaks.highest = max(peaks.highest, peak)
                return call

        return Watched()

    def top(self, n: int = 3) -> str:
        best = sorted(self.peaks.items(), key=lambda kv: -kv[1])[:n]
        self.peaks = {}
        return "\n".join(f"     endpoint peak {gb(v):>9} in {label}" for label, v in best)


class Meter:
    """Wall, CPU (endpoint + this process) and peak RSS (each) of a block; the endpoint's peak also over the
    statements `peaks` watched (each resets the high-water mark)."""

    def __init__(self, server_pid: int, peaks: StatementPeaks) -> None:
        self.server, self.peaks = server_pid, peaks
        self.cpu = timing.Cpu(server_pid)

    def run(self, fn) -> tuple[object, Cost]:
        for pid in (os.getpid(), self.server):
            reset_peak(pid)
        self.peaks.highest = 0
        out, wall, chdb, py = self.cpu.timed(fn)
        return out, Cost(wall, chdb + py, peak_rss(os.getpid()), max(peak_rss(self.server), self.peaks.highest))


def exponent(size1: float, cost1: float | None, size2: float, cost2: float | None) -> float | None:
    """The growth exponent between two sizes: cost ~ size ** exponent (1 = linear)."""
    if not cost1 or not cost2 or cost1 <= 0 or cost2 <= 0 or size1 == size2:
        return None
    return math.log(cost2 / cost1) / math.log(size2 / size1)


def project(sizes: list[int], values: list[float], target: int) -> float:
    """A value at `target` from the last two measured sizes: the larger of the power law through them and the
    straight line (a fixed base plus a per-person part grows slower than linear early, then linearly)."""
    if len(sizes) == 1:
        return values[0] * target / sizes[0]
    (s1, s2), (v1, v2) = sizes[-2:], values[-2:]
    line = v2 + (v2 - v1) * (target - s2) / (s2 - s1)
    e = exponent(s1, v1, s2, v2)
    return max(line, v2 * (target / s2) ** e if e is not None else line)


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def seconds(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n * 1e3:.1f} ms" if n < 1 else f"{n:.1f} s"


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def stage_ingest(settings: Settings, events: int, history: int, seed: int) -> tuple[Cost, Cost, Cost]:
    """Produce `events` synthetic events (not timed), then one writer ingests them end to end; then the anchor of
    ingestion +1%: 1% of `history` new events produced (not timed) and ingested by one writer with no more history
    than that; then ingestion +1%: the event ids of a size's whole history (`history` ids, written inside ClickHouse
    as ingestion would have left them, over the 12 weeks before the new events occurred, not timed) and as many new
    events again, whose duplicate check looks them up in that history (docs/INGESTION.md, "Duplicates")."""
    settings = settings.model_copy(update={
        "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "kafka_controller_port": free_port(),
        "kafka_partitions": 4, "kafka_topic": f"bench-scale-{uuid.uuid4().hex[:8]}"})
    kafka = LocalKafka(settings)
    try:
        kafka.start()
        ensure_topic(settings)
        server = processes.running_pid(settings, chdb_server.PROCESS_NAME)
        endpoint, broker = timing.Cpu(server), timing.Cpu(int(kafka.pid_file.read_text()))

        def ingest_produced(count: int, produce_seed: int) -> Cost:
            started = time.perf_counter()
            produced = ingest.produce_events(settings, count, produce_seed)
            print(f"  produced {produced:,} events to Kafka in {time.perf_counter() - started:.1f}s (not timed)",
                  flush=True)
            reset_peak(server)
            (c0, _), (b0, _) = endpoint.now(), broker.now()
            wall, read, writer_cpu, writer_peak = ingest.bench_writers(settings, 1, IngestOptions.attempt_messages)
            (c1, _), (b1, _) = endpoint.now(), broker.now()
            return Cost(wall, writer_cpu + c1 - c0, writer_peak, peak_rss(server),
                        f"{read / wall:,.0f} ev/s wall, {read / (writer_cpu + c1 - c0):,.0f} ev per CPU-s; "
                        f"broker +{b1 - b0:.1f} CPU-s")

        first = ingest_produced(events, seed)
        client = get_client(settings.model_copy(update={"clickhouse_database": ingest.writers_database(1)}))
        timing.settle(client, ingest.writers_database(1))  # the first run's merges done, as before the second
        control = ingest_produced(max(history // 100, 1), seed + 1)
        held = int(client.command("SELECT count() FROM event_ids"))
        started = time.perf_counter()
        # before the hours of the new events (a synth world's 12 weeks): a daily run's events occurred after its
        # history, and bench/known_ids.py measures the lookup where they overlap
        world = WorldConfig()
        known_ids.fill_history(client, ingest.writers_database(1), held, history, history, world.weeks * 7 * 24,
                               until=f"toDateTime('{world.start:%Y-%m-%d %H:%M:%S}', 'UTC')")
        timing.settle(client, ingest.writers_database(1))
        print(f"  {history:,} event ids of history held ({time.perf_counter() - started:.1f}s, not timed)", flush=True)
        more = ingest_produced(max(history // 100, 1), seed + 2)
        return first, control, Cost(more.wall, more.cpu, more.peak_py, more.peak_chdb,
                                    f"onto {history:,} ids held: {more.cpu / control.cpu:.2f}x the CPU with no "
                                    f"history; {more.note}")
    finally:
        kafka.stop()


class Endpoint:
    """The size's private chDB endpoint (bench/endpoint.py's, started). `fresh` restarts it on the same data before
    a measured stage, so that the stage's peak is its own and not memory the engine kept from the stage before (a
    scheduled run meets a process that has served other work too, but not necessarily the heaviest)."""

    def __init__(self, settings: Settings, pid: int) -> None:
        self.settings = settings
        apply_migrations(settings)
        self._start(pid)

    def _start(self, pid: int) -> None:
        self.pid = pid
        self.client = get_client(self.settings, send_receive_timeout=3600)
        self.peaks = StatementPeaks(self.pid, self.settings.clickhouse_database)
        self.meter = Meter(self.pid, self.peaks)
        self.watched = self.peaks.client(self.client)  # identity's and timing's statements, each with its peak

    def fresh(self) -> None:
        gc.collect()  # and this process gives back what the stage before freed, as far as it can
        pa.default_memory_pool().release_unused()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.client.close()
        processes.stop(self.settings, chdb_server.PROCESS_NAME)
        self._start(chdb_server.start_background(self.settings))
        timing.settle(self.client, self.settings.clickhouse_database)

    def measure(self, fn) -> tuple[object, Cost]:
        """fn() on a fresh endpoint, measured."""
        self.fresh()
        return self.meter.run(fn)


def run_size(people: int, args, stages: set[str]) -> tuple[dict[str, Cost], int]:
    """Every selected stage at one size; the costs by row and the bytes the size's data took on disk."""
    costs: dict[str, Cost] = {}
    ep: Endpoint | None = None

    def record(row: str, cost: Cost) -> None:
        costs[row] = cost
        cpu = f"CPU {cost.cpu:.1f}s" if cost.cpu is not None else ""
        print(f"== {people:,} people | {row}: {seconds(cost.wall)} {cpu}  peak python {gb(cost.peak_py)}, chDB "
              f"{gb(cost.peak_chdb)}  {cost.note}", flush=True)
        if ep and ep.peaks.peaks:
            print(ep.peaks.top(), flush=True)

    def stitch(title: str):
        (_, report), cost = ep.measure(lambda: identity.timed_stitch(settings, ep.watched, title))
        return report, cost

    def build():
        return ep.measure(lambda: materialize(ep.watched, db, log=lambda line: print("  " + line, flush=True)))

    with private_endpoint("sendflowr-bench-scale-") as (settings, pid):
        db = settings.clickhouse_database
        ep = Endpoint(settings, pid)
        if "ingest" in stages:
            first, control, more = stage_ingest(settings, people * args.ingest_per_person,
                                                people * args.events_per_person, args.seed)
            record("ingestion (1 writer)", first)
            record("ingestion +1%, no history", control)
            record("ingestion +1%", more)
            ep.client.command(f"DROP DATABASE IF EXISTS {ingest.writers_database(1)} SYNC")
        if not stages & {"identity", "timing", "api"}:
            return costs, 0

        events = people * args.events_per_person
        started = time.perf_counter()
        ids = identifiers_sql()
        timing.load(ep.client, db, people, events, identifiers=ids, register="identity" not in stages)
        print(f"  generated {events:,} events of {people:,} people in ClickHouse in "
              f"{time.perf_counter() - started:.1f}s (not timed)", flush=True)

        if "identity" in stages:
            report, cost = stitch("identity, full run")
            cost.note = (f"{report.nodes_total:,} identifiers, {report.edges_total:,} edges, "
                         f"{report.people_total:,} people, largest {report.largest_person}")
            record("identity full", cost)
            (read, write, rows), cost = ep.measure(lambda: identity.io_floor(ep.client, db))
            floor = read + write
            record("identity I/O floor", Cost(floor, None, cost.peak_py, cost.peak_chdb,
                                              f"read {read:.1f}s + write {rows:,} rows {write:.1f}s; full run = "
                                              f"{costs['identity full'].wall / floor:.1f}x"))
        if stages & {"timing", "api"}:
            report, cost = build()
            cost.note = f"{report.people:,} people, {report.people_written:,} curves"
            if "timing" in stages:
                record("timing full", cost)
            else:
                ep.peaks.peaks = {}  # a means to the snapshot here, not a stage

        if stages & {"identity", "timing"}:
            extra = max(events // 100, 3)
            grown = round(people * 1.01) if "identity" in stages else people  # new people need stitching
            timing.load(ep.client, db, grown, extra, start=events, identifiers=ids, register=False)
            if "identity" in stages:
                report, cost = stitch("identity, +1%")
                cost.note = (f"{report.new_events:,} new events, {report.identifiers_new:,} new identifiers; "
                             f"{cost.cpu / costs['identity full'].cpu:.1%} of the full run's CPU")
                record("identity +1%", cost)
            if "timing" in stages:
                report, cost = build()
                cost.note = (f"{report.people_written:,} curves rewritten; "
                             f"{cost.cpu / costs['timing full'].cpu:.1%} of the full run's CPU")
                record("timing +1%", cost)

        if "api" in stages:
            holder = SnapshotHolder(lambda: get_client(settings, send_receive_timeout=3600), db, 3600)
            try:
                _, cost = ep.measure(holder.refresh)
                snapshot = holder.current
                cost.note = f"{len(snapshot.timing_uid):,} curves, {snapshot.identity.identifiers:,} identifiers"
                record("API snapshot load", cost)
                latency = api_snapshot.timing_loops({"snapshot": snapshot}, {"email": Emails()}, people, args.loops,
                                                    args.seed)["snapshot"]
                record("API single p99", Cost(latency["p99"], note=f"p50 {seconds(latency['p50'])}"))
                record("API 10k batch", Cost(latency["batch_median"], note=f"best {seconds(latency['batch_best'])}"))
            finally:
                holder.stop()
        return costs, du(settings.home)


def skip_reasons(people: int, stages: set[str], done: dict[int, dict[str, Cost]],
                 disks: dict[int, int]) -> dict[str, str]:
    """The stages that would not fit at `people`, with the reason, projected from the sizes where they ran."""
    reasons: dict[str, str] = {}
    available = mem_available()
    for stage in stages:
        need, worst = 0.0, ""
        for row in STAGE_ROWS[stage]:
            sizes = sorted(s for s in done if row in done[s])
            if not sizes:
                continue
            value = (project(sizes, [done[s][row].peak_py or 0 for s in sizes], people)
                     + project(sizes, [done[s][row].peak_chdb or 0 for s in sizes], people))
            if value > need:
                need, worst = value, f"{row}, from {', '.join(f'{s:,}' for s in sizes[-2:])}"
        if need > 0.9 * available:
            reasons[stage] = (f"projected peak memory {gb(need)} (this process + the endpoint; {worst}) > 90% of "
                              f"the {gb(available)} available")
    if "timing" in reasons and "api" in stages:  # the snapshot is built from the timing run's curves
        reasons.setdefault("api", "it needs the timing stage's curves: " + reasons["timing"])
    sizes = sorted(disks)
    space = shutil.disk_usage(tempfile.gettempdir()).free
    if sizes and project(sizes, [disks[s] for s in sizes], people) > 0.8 * space:
        for stage in stages - {"ingest"}:
            reasons[stage] = (f"projected data {gb(project(sizes, [disks[s] for s in sizes], people))} > 80% of "
                              f"{gb(space)} free")
    return reasons


def report(done: dict[int, dict[str, Cost]]) -> None:
    sizes = sorted(done)
    print("\n" + "=" * 110)
    print(f"{'stage':<27}{'people':>12}{'wall':>11}{'CPU':>11}{'peak py':>11}{'peak chDB':>11}   note")
    for row in ROWS:
        for size in sizes:
            c = done[size].get(row)
            if c:
                print(f"{row:<27}{size:>12,}{seconds(c.wall):>11}{seconds(c.cpu):>11}{gb(c.peak_py):>11}"
                      f"{gb(c.peak_chdb):>11}   {c.note}")
    if len(sizes) < 2:
        return
    pairs = list(zip(sizes, sizes[1:], strict=False))
    print("\ngrowth exponents (cost ~ people ** e), wall / CPU / peak memory of the larger process")
    print(f"{'stage':<27}" + "".join(f"{f'{a:,} -> {b:,}':>30}" for a, b in pairs))
    over = []
    for row in ROWS:
        cells = []
        for a, b in pairs:
            ca, cb = done[a].get(row), done[b].get(row)
            if not (ca and cb):
                cells.append("-")
                continue
            es = [exponent(a, ca.wall, b, cb.wall), exponent(a, ca.cpu, b, cb.cpu),
                  exponent(a, ca.peak or None, b, cb.peak or None)]
            cells.append(" / ".join("-" if e is None else f"{e:.2f}" for e in es))
            judged = es[0] if row in LATENCY_ROWS or es[1] is None else es[1]  # CPU where there is one
            if judged is not None and judged > EXPONENT_GOAL and row not in ANCHOR_ROWS:
                over.append(f"{row} {a:,}->{b:,}: {judged:.2f}")
        print(f"{row:<27}" + "".join(f"{c:>30}" for c in cells))

    print("\ngoals")
    print(f"- every exponent <= {EXPONENT_GOAL} (CPU where measured, else wall): "
          + ("met" if not over else "NOT met: " + "; ".join(over)))
    peaks = []
    for row in ROWS:
        for which in ("peak_py", "peak_chdb"):
            have = [s for s in sizes if row in done[s] and getattr(done[s][row], which)]
            if not have:
                continue
            if GOAL_PEOPLE in have:
                peaks.append((getattr(done[GOAL_PEOPLE][row], which), row, which, "measured"))
            else:  # each stage from the sizes where it ran
                value = project(have, [getattr(done[s][row], which) for s in have], GOAL_PEOPLE)
                peaks.append((value, row, which, f"extrapolated from {', '.join(f'{s:,}' for s in have[-2:])}"))
    judged = [p for p in peaks if p[1] not in ANCHOR_ROWS]
    if judged:
        value, row, which, how = max(judged)
        process = {"peak_py": "the Python process", "peak_chdb": "the chDB endpoint"}[which]
        print(f"- no process above {gb(MEMORY_GOAL)} at {GOAL_PEOPLE:,} people: "
              f"{'met' if value <= MEMORY_GOAL else 'NOT met'}; largest {gb(value)}, {process} in '{row}' ({how})")
        for value, row, which, how in sorted(peaks, reverse=True)[:6]:
            note = "; a reference, not judged" if row in ANCHOR_ROWS else ""
            print(f"    {gb(value):>10}  {row} ({which[5:]}, {how}{note})")
    ratios = [(s, done[s]["identity full"].wall / done[s]["identity I/O floor"].wall) for s in sizes
              if "identity full" in done[s] and "identity I/O floor" in done[s]]
    if ratios:
        print(f"- identity full asset <= {FLOOR_GOAL:.0f}x its I/O floor: "
              + ("met" if all(r <= FLOOR_GOAL for _, r in ratios) else "NOT met") + " ("
              + ", ".join(f"{r:.1f}x at {s:,}" for s, r in ratios) + ")")
    print("- sendflowr import >= 100,000 events/s: measured by bench/connectors.py --only import (docs/CONNECTORS.md)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,1000000,4000000", help="people, comma-separated, ascending")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--events-per-person", type=int, default=20)
    parser.add_argument("--ingest-per-person", type=int, default=1,
                        help="events a person produced to Kafka for the ingestion stage")
    parser.add_argument("--loops", type=int, default=1000, help="single decisions timed per round (3 rounds)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    if stages - set(STAGES):
        parser.error(f"unknown stages: {', '.join(sorted(stages - set(STAGES)))}")

    done: dict[int, dict[str, Cost]] = {}
    disks: dict[int, int] = {}
    skipped: list[str] = []
    for people in sizes:
        reasons = skip_reasons(people, stages, done, disks)
        for stage, reason in sorted(reasons.items()):
            skipped.append(f"{stage} at {people:,} people: {reason}")
            print(f"\n#### skipping {skipped[-1]}", flush=True)
        here = stages - set(reasons)
        if not here:
            continue
        print(f"\n#### {people:,} people ({', '.join(s for s in STAGES if s in here)}); "
              f"{gb(mem_available())} available", flush=True)
        started = time.perf_counter()
        done[people], disk = run_size(people, args, here)
        if here & {"identity", "timing", "api"}:
            disks[people] = disk
        print(f"#### {people:,} people done in {time.perf_counter() - started:.0f}s; data on disk {gb(disk)}",
              flush=True)
        report(done)
        for line in skipped:
            print(f"skipped: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
