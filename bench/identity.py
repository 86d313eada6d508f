"""Identity stitching benchmark: `stitch_once` against scipy's connected_components measured in the same run.

    .venv/bin/python bench/identity.py [--people 1000000] [--seed 7]

1. start a private chDB endpoint (own port, temp home) and apply the migrations -- no Kafka: synthetic events go
   straight into `events` with insert_arrow, and committed `ingest_ranges` rows make `stitch_once` see them;
2. people get 2-4 identifiers each (email always; klaviyo_id, phone, external_id by chance), two events per
   person carry all of them (so every identifier pair is seen twice); 50 phones are shared by many profiles so
   the degree guard has work to do. Data generation is never inside a timed section;
3. ours: `stitch_once` from empty, with its phases (log lines timestamped, plus wrappers around its steps);
4. anchor: the same edge set (read back from `identity_edges` as integer arrays) through
   scipy.sparse.csgraph.connected_components, CSR construction included; and `graph.stitch` alone on it;
   and the I/O floor: reading the events' identifier columns once and writing the stitched identity_nodes
   rows once into an empty copy of the table, with no work in between (no asset materialized in ClickHouse
   can be faster than that);
5. incremental: +1% events (new people and new identifiers for existing people), then +0.1%, each with a run;
6. recall/precision: a synthetic world (sendflowr.synth, `--world-people`) straight into `events` of a second
   database, stitched, and scored against its ground truth (`sendflowr.identity.evaluate.score_identity`, as
   bench/identity_quality.py does for the hard worlds), with the world's cross-source identifier rates as
   configured and with them set to zero.

Prints figures and ratios. Nothing here is asserted: see docs/IDENTITY-RESOLUTION.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
from endpoint import private_endpoint  # bench/endpoint.py
from identity_quality import stitch_world  # bench/: the quality bench's world loader and scoring
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from sendflowr.clickhouse import get_client
from sendflowr.identity import graph, run
from sendflowr.identity.graph import Edges, Guards, Nodes
from sendflowr.identity.run import stitch_once
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig

TOPIC = "bench.identity"
PARTITIONS = 4
SHARED_PHONES = 50
SHARED_PHONE_INDEX = 79_000_000  # the shared phones' numbers start here, far from the per-person numbers
AREA_CODES = np.array([415, 212, 646, 312, 617, 206, 303, 404, 512, 702], np.int64)
BASE_MS = 1_735_689_600_000  # 2025-01-01 UTC; every event in January keeps one monthly partition
BATCH = 500_000


def _strs(prefix: str, numbers: np.ndarray, suffix: str = "") -> np.ndarray:
    out = np.char.add(prefix, numbers.astype(str))
    return np.char.add(out, suffix) if suffix else out


def _phones(index: np.ndarray) -> np.ndarray:
    """Distinct valid US numbers in E.164: area code, exchange 200-999, line 0000-9999."""
    area = AREA_CODES[(index // 8_000_000) % len(AREA_CODES)]
    rest = index % 8_000_000
    number = 10_000_000_000 + area * 10_000_000 + (200 + rest // 10_000) * 10_000 + rest % 10_000
    return _strs("+", number)


class World:
    """Identifier columns per person; ids are allocated from counters so later batches never collide."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.next_person = 0
        self.next_ident = 0  # shared counter for every identifier value
        self.next_event = 0
        self.next_offset = np.zeros(PARTITIONS, np.int64)
        self.shared = _phones(np.arange(SHARED_PHONES) + SHARED_PHONE_INDEX)

    def _values(self, n: int) -> np.ndarray:
        out = np.arange(self.next_ident, self.next_ident + n)
        self.next_ident += n
        return out

    def people(self, n: int, shared_profiles: int = 0) -> dict[str, np.ndarray]:
        self.next_person += n
        email = _strs("u", self._values(n), "@example-mail.com")
        has_k, has_p, has_x = (self.rng.random(n) < p for p in (0.8, 0.6, 0.6))
        has_k |= ~(has_p | has_x)  # at least two identifiers per person
        klaviyo = np.where(has_k, _strs("01JK", self._values(n)), "")
        phone = np.where(has_p, _phones(self._values(n)), "")
        external = np.where(has_x, _strs("cust-", self._values(n)), "")
        if shared_profiles:
            who = self.rng.choice(n, shared_profiles, replace=False)
            phone[who] = self.shared[np.arange(shared_profiles) % SHARED_PHONES]
        return {"email": email, "klaviyo_id": klaviyo, "phone": phone, "external_id": external}

    def events(self, cols: dict[str, np.ndarray], per_person: int = 2) -> pa.Table:
        """`per_person` events per row of `cols`, each with all its identifiers, spread over the partitions."""
        rows = np.repeat(np.arange(len(cols["email"])), per_person)
        m = len(rows)
        ids = np.arange(self.next_event, self.next_event + m)
        self.next_event += m
        part = ids % PARTITIONS
        offset = np.empty(m, np.int64)
        for p in range(PARTITIONS):
            mine = np.flatnonzero(part == p)
            offset[mine] = self.next_offset[p] + np.arange(len(mine))
            self.next_offset[p] += len(mine)
        occurred = BASE_MS + self.rng.integers(0, 28 * 86_400_000, m)
        table = {name: pa.array(col[rows], pa.string()) for name, col in cols.items()}
        return pa.table(table | {
            "occurred_at": pa.array(occurred, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "event_id": pa.array(_strs("e", ids), pa.string()),
            "event_type": pa.array(np.full(m, "open"), pa.string()),
            "person_key": table["email"],
            "kafka_topic": pa.array(np.full(m, TOPIC), pa.string()),
            "kafka_partition": pa.array(part, pa.uint32()),
            "kafka_offset": pa.array(offset, pa.uint64()),
        })


def load(client, database: str, world: World, table: pa.Table) -> None:
    """Insert events in large batches, then record one committed ingest range per partition."""
    starts = world.next_offset.copy()
    for p in range(PARTITIONS):  # offsets of this table, per partition
        mask = np.asarray(table.column("kafka_partition").to_numpy()) == p
        starts[p] = int(table.column("kafka_offset").to_numpy()[mask].min()) if mask.any() else starts[p]
    for at in range(0, table.num_rows, BATCH):
        client.insert_arrow(f"{database}.events", table.slice(at, BATCH))
    client.insert(f"{database}.ingest_ranges",
                  [[TOPIC, p, int(starts[p]), int(world.next_offset[p]), "committed", "bench",
                    int(world.next_offset[p] - starts[p]), int(world.next_offset[p] - starts[p]), 0]
                   for p in range(PARTITIONS)],
                  column_names=["kafka_topic", "kafka_partition", "start_offset", "end_offset", "state", "run_id",
                                "messages", "valid", "rejected"])


class Phases:
    """Wall time per step of stitch_once: wraps run.py's helpers and the client's calls (restored after)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.seconds: dict[str, float] = defaultdict(float)
        self.lines: list[str] = []
        self._saved: list[tuple[object, str, object]] = []
        self._t0 = 0.0

    def log(self, line: str) -> None:
        self.lines.append(f"  +{time.perf_counter() - self._t0:7.2f}s  {line}")

    def _wrap(self, owner, name: str, label) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = label(*args, **kwargs) if callable(label) else label
                self.seconds[key] += time.perf_counter() - started

        setattr(owner, name, timed)

    def __enter__(self) -> Phases:
        self._t0 = time.perf_counter()
        self._wrap(run, "normalize_many", "b  normalize (python, pyarrow + phonenumbers)")
        self._wrap(graph, "identifier_key", "b  identifier_key (python blake2b loop)")
        self._wrap(graph, "restitch", "d  graph.restitch (stitch + assign_ids on the region)")
        self._wrap(graph, "format_uid", "d  format_uid")
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)

    def client(self, client):
        """The client, with command/query/insert timed by what they touch."""
        # an INSERT by its target (the statements also name the scratch tables they read)
        labels = (("INSERT INTO identity_run_identifiers", "", "a  INSERT identity_run_identifiers (events scan)"),
                  ("INSERT INTO identity_run_nodes", "", "c  INSERT identity_run_nodes (SQL join)"),
                  ("INSERT INTO identity_run_edges", "", "c  INSERT identity_run_edges (SQL pairs)"),
                  ("INSERT INTO identity_edges (", "", "c  INSERT identity_edges"),
                  ("INSERT INTO identity_node_seen", "", "c  INSERT identity_node_seen (SQL)"),
                  ("INSERT INTO identity_region", "DISTINCT", "d  INSERT identity_region, the run's identifiers (SQL)"),
                  ("NOT IN (SELECT src", "", "c  count new pairs (SQL)"),
                  ("cluster IN", "", "d  expand region to clusters (SQL)"),
                  ("region", "identity_edges", "d  read region edges"),
                  ("prev_uid", "", "d  read region nodes + previous graph"),
                  ("NOT IN", "", "b  read unseen identifiers (SQL)"),
                  ("sum(events) FROM identity_run_identifiers", "", "a  count new events (SQL)"),
                  ("argMax(reason, at)", "", "d  read region edge verdicts (SQL, audit)"),
                  ("", "identity_blocked", "d  write identity_blocked"),
                  ("", "identity_nodes", "d  write identity_nodes"),
                  ("", "identity_region", "d  write region boundary"))

        def label(kind: str, first) -> str:
            text = str(first).replace(f"{self.database}.", "")
            for need_a, need_b, name in labels:
                if need_a in text and need_b in text:
                    return name
            return f"   other {kind}: {text.split(chr(10))[0][:60]}"

        class Timed:
            def __getattr__(_, name):
                return getattr(client, name)

        timed = Timed()
        def timer(kind: str, original):
            def call(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.seconds[label(kind, args[0] if args else "")] += time.perf_counter() - started
            return call

        for method in ("command", "query", "query_arrow", "insert_arrow"):
            setattr(timed, method, timer(method, getattr(client, method)))
        return timed


def timed_stitch(settings: Settings, client, title: str):
    with Phases(settings.clickhouse_database) as phases:
        started = time.perf_counter()
        report = stitch_once(settings, phases.client(client), log=phases.log)
        elapsed = time.perf_counter() - started
    print(f"\n{title}: {elapsed:.2f}s")
    for line in phases.lines:
        print(line)
    for key, secs in sorted(phases.seconds.items(), key=lambda kv: -kv[1]):
        if secs >= 0.01:
            print(f"    {secs:8.2f}s  {key}")
    print(f"    {elapsed - sum(phases.seconds.values()):8.2f}s  (rest: run.py's own numpy/pyarrow glue, lease)")
    return elapsed, report


def read_graph(client, database: str) -> tuple[Nodes, Edges]:
    """The stitched graph's nodes and edges as integer arrays (what the identity run stitches)."""
    nt = client.query_arrow(run._sql("graph_nodes", database), use_strings=True)
    et = client.query_arrow(run._sql("graph_edges", database))
    node_key = nt.column("node_key").to_numpy().astype(np.uint64)
    src = np.searchsorted(node_key, et.column("src").to_numpy().astype(np.uint64))
    dst = np.searchsorted(node_key, et.column("dst").to_numpy().astype(np.uint64))
    nodes = Nodes(nt.column("node_type").to_numpy(), node_key, nt.column("first_ingested").to_numpy(),
                  active_from=nt.column("first_seen").to_numpy(), active_to=nt.column("last_seen").to_numpy(),
                  events=nt.column("events").to_numpy())
    return nodes, Edges(src, dst, et.column("events").to_numpy(), et.column("first_seen").to_numpy())


def scipy_anchor(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[float, int]:
    started = time.perf_counter()
    matrix = csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    n_comp, _labels = connected_components(matrix, directed=False)
    return time.perf_counter() - started, n_comp


def io_floor(client, database: str) -> tuple[float, float, int]:
    """What any asset must at least do, with no stitching at all: read the events' identifier columns once
    (best of two) and write the stitched identity_nodes rows once (into an empty table of the same structure)."""
    reads = []
    for _ in range(2):
        started = time.perf_counter()
        client.query_arrow(f"SELECT email, klaviyo_id, phone, external_id FROM {database}.events")
        reads.append(time.perf_counter() - started)
    nodes = client.query_arrow(f"SELECT * FROM {database}.identity_nodes FINAL")
    client.command(f"CREATE TABLE {database}.floor_nodes AS {database}.identity_nodes")
    try:
        started = time.perf_counter()
        for at in range(0, nodes.num_rows, run.SLICE_IDENTIFIERS):  # as the run writes them: one request is capped
            client.insert_arrow(f"{database}.floor_nodes", nodes.slice(at, run.SLICE_IDENTIFIERS))
        write = time.perf_counter() - started
    finally:
        client.command(f"DROP TABLE IF EXISTS {database}.floor_nodes")
    return min(reads), write, nodes.num_rows


def world_score(base: Settings, people: int, bridges: bool) -> str:
    """Stitch a synthetic world (events inserted directly, no Kafka) and score it against its ground truth."""
    overrides = {} if bridges else {"klaviyo_phone_rate": 0.0, "klaviyo_external_rate": 0.0,
                                    "backend_email_rate": 0.0}
    database = "bench_world" if bridges else "bench_world_nobridge"
    report, score, events, bridging, _ = stitch_world(base, database, WorldConfig(people=people, **overrides))
    label = "cross-source rates as configured" if bridges else "cross-source rates 0"
    return (f"synthetic world, {people:,} people, {label}: {events:,} events ({bridging:,} carry email/klaviyo_id "
            f"AND phone/external_id), {report.people_total:,} people found, {score.summary()} "
            f"({report.seconds:.1f}s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--world-people", type=int, default=10_000,
                        help="people of the synthetic world scored for precision/recall (0 = skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args()

    with private_endpoint("sendflowr-bench-identity-", args.keep) as (settings, _):
        database = settings.clickhouse_database
        apply_migrations(settings)
        client = get_client(settings)

        world = World(args.seed)
        started = time.perf_counter()
        people = world.people(args.people, shared_profiles=min(args.people // 10, SHARED_PHONES * 2000))
        table = world.events(people)
        identifiers = sum(int((col != "").sum()) for col in people.values())
        identifiers -= int(np.isin(people["phone"], world.shared).sum()) - SHARED_PHONES
        load(client, database, world, table)
        print(f"generated and inserted {table.num_rows:,} events of {args.people:,} people "
              f"({identifiers:,} distinct identifiers) in {time.perf_counter() - started:.1f}s", flush=True)
        del table

        full, report = timed_stitch(settings, client, "stitch_once, first run from empty")
        print(f"  report: {report.nodes_total:,} nodes, {report.edges_total:,} edges, {report.people_total:,} "
              f"people, largest {report.largest_person}, blocked {report.edges_blocked}, "
              f"rejected {report.identifiers_rejected}")

        nodes, edges = read_graph(client, database)
        anchor, n_comp = scipy_anchor(len(nodes), edges.src, edges.dst)
        print(f"\nscipy connected_components (csr build included): {anchor:.2f}s, {n_comp:,} components "
              "(all edges, no guards)")
        started = time.perf_counter()
        result = graph.stitch(nodes, edges, Guards())
        core = time.perf_counter() - started
        print(f"graph.stitch alone (degree guard, components, per-type guards): {core:.2f}s, "
              f"{int(result.component.max()) + 1:,} people")
        started = time.perf_counter()
        stitched = graph.stitch(nodes, edges, Guards())
        graph.assign_ids(stitched.component, nodes.node_key, nodes.first_seen, None)
        rebuild = time.perf_counter() - started
        print(f"stitch + assign_ids (a full rebuild, no previous ids): {rebuild:.2f}s")

        floor_read, floor_write, floor_rows = io_floor(client, database)
        floor = floor_read + floor_write
        print(f"I/O floor, no stitching: read the events' identifier columns {floor_read:.2f}s + write "
              f"{floor_rows:,} identity_nodes rows {floor_write:.2f}s = {floor:.2f}s")

        incremental = []
        for share in (0.01, 0.001):
            # share of the events: 2 events per new person + 1 per existing person given a new identifier
            n_new = max(1, round(2 * args.people * share / 3))
            fresh = world.people(n_new)
            old = world.rng.choice(args.people, n_new, replace=False)
            # new identifiers of existing people: an event with the old email and a new external id
            extra = {"email": people["email"][old], "klaviyo_id": np.full(n_new, ""), "phone": np.full(n_new, ""),
                     "external_id": _strs("cust-", world._values(n_new))}
            batch = pa.concat_tables([world.events(fresh), world.events(extra, per_person=1)])
            load(client, database, world, batch)
            secs, rep = timed_stitch(settings, client, f"stitch_once, incremental +{share:.1%} "
                                                       f"({batch.num_rows:,} new events)")
            print(f"  report: {rep.new_events:,} new events, {rep.identifiers_new:,} new identifiers, "
                  f"{rep.edges_new:,} new edges, {rep.nodes_written:,} node rows written, {rep.merges} merges")
            incremental.append((share, batch.num_rows, secs))

        print("\n" + "=" * 72)
        print(f"people                      {args.people:>14,}")
        print(f"identifiers (graph nodes)   {report.nodes_total:>14,}")
        print(f"edges                       {report.edges_total:>14,}")
        print(f"scipy anchor                {anchor:>13.2f}s")
        print(f"graph.stitch                {core:>13.2f}s   {core / anchor:6.1f}x anchor")
        print(f"stitch + assign_ids         {rebuild:>13.2f}s   {rebuild / anchor:6.1f}x anchor")
        print(f"I/O floor (read + write)    {floor:>13.2f}s   {floor / anchor:6.1f}x anchor   "
              "(reading the input and writing the output once, nothing else)")
        print(f"stitch_once (full asset)    {full:>13.2f}s   {full / anchor:6.1f}x anchor   (goal <= 3x)   "
              f"{full / floor:6.1f}x the I/O floor")
        for share, rows, secs in incremental:
            print(f"incremental +{share:<5.1%} ({rows:>7,} ev) {secs:>8.2f}s   {secs / anchor:6.1f}x anchor   "
                  f"{secs / full:6.1%} of the full run (proportional would be ~{share:.1%})")
        if args.world_people:
            print()
            for bridges in (True, False):
                print(world_score(settings, args.world_people, bridges), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
