"""One identity-stitching run: new events -> identifiers -> edges -> people with stable universal ids.

Set work happens in ClickHouse (sql/identity/): finding the new events, the distinct unseen raw identifiers,
the co-occurrence edges, when each identifier was seen, and the *region* a run recomputes. Python only
normalizes the DISTINCT unseen raw identifiers (sendflowr.identity.normalize) and runs the graph
(sendflowr.identity.graph.restitch) on integer arrays of the region.

Steps of `stitch_once` (docs/IDENTITY-RESOLUTION.md):
  a. new events = offsets of committed ingest ranges beyond `identity_progress`, per partition (exact); their
     distinct identifiers and distinct pairs of identifiers of one event go to the scratch table
     `identity_run_identifiers` (the run's only scan of `events`, aggregated as it reads: nothing per event);
  b. unseen (type, raw) -> normalize + identifier_key -> `identity_identifiers` (rejects -> `identity_blocked`), in
     parts of NORMALIZE_ROWS;
  c. resolved to node keys (`identity_run_nodes`) -> node first/last seen -> `identity_node_seen`, the pairs of
     valid identifiers -> `identity_run_edges` -> `identity_edges`;
  d. region = whole pre-guard clusters holding an identifier of the new events, plus the other endpoints of
     their edges (`identity_region`); `graph.restitch` on it against the previous ids; write the changed
     `identity_nodes` rows, the merge log and edge verdict changes (`identity_blocked`); running totals go to
     `identity_runs`. A full rebuild is the same with everything as the region, then deletes the rows it did not
     write. A region of more than SLICE_IDENTIFIERS goes in slices of whole clusters (`_stitch_in_slices`);
  e. record the new watermark in `identity_progress`.
No new events and no changed rules = nothing written but the run log: a rerun changes no universal_id.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from sendflowr import lease, progress
from sendflowr.arrays import lookup, unique
from sendflowr.identity import graph
from sendflowr.identity.graph import REASONS, TYPE_NAMES, Edges, Guards, Nodes
from sendflowr.identity.normalize import DEFAULT_RULES, NormalizationRules, normalize_many
from sendflowr.settings import Settings
from sendflowr.sql_files import load_sql

DERIVED_TABLES = ("identity_identifiers", "identity_edges", "identity_node_seen", "identity_blocked",
                  "identity_progress")  # truncated by a full rebuild (identity_nodes: rewritten, the rest deleted)
SCRATCH_TABLES = ("identity_run_identifiers", "identity_run_nodes", "identity_run_edges", "identity_region")
# Seeds tried for the run's key map until its identifiers' 64-bit hashes are distinct: one collision among 30M
# identifiers has a probability of ~2.4e-5, so a second seed is rarely needed and a fourth never.
KEY_SEEDS = 4
IDENTITY_LEASE = "identity:graph"  # ':' is not allowed in Kafka topic names, so it never meets a real topic
LEASE_TTL = timedelta(hours=1)
# A larger region (a full rebuild, the first run) is stitched in slices of whole clusters of about this many
# identifiers: Python holds ~0.7 KB an identifier of one slice (docs/SCALING.md), whatever the graph's size.
SLICE_IDENTIFIERS = 2_000_000
NORMALIZE_ROWS = 1_000_000  # raw identifiers normalized at a time (~0.25 KB each in Python)
_TS = pa.timestamp("ms", tz="UTC")
_TS6 = pa.timestamp("us", tz="UTC")


@dataclass
class IdentityReport:
    run_id: str
    full_rebuild: bool = False
    new_events: int = 0
    identifiers_new: int = 0
    identifiers_rejected: dict[str, int] = field(default_factory=dict)  # reason -> count (this run)
    edges_before: int = 0
    edges_total: int = 0
    edges_blocked: dict[str, int] = field(default_factory=dict)  # reason -> count (whole graph, current)
    nodes_total: int = 0
    people_total: int = 0
    largest_person: int = 0
    merges: int = 0
    nodes_written: int = 0
    ids_changed: int = 0  # identifiers whose universal_id differs from the previous run's
    region_nodes: int = 0  # identifiers this run recomputed (all of them on a full rebuild)
    region_edges: int = 0  # edges read for them
    seconds: float = 0.0

    @property
    def edges_new(self) -> int:
        return self.edges_total - self.edges_before


def _sql(name: str, database: str) -> str:
    return load_sql(f"identity/{name}.sql", database)


def stitch_once(settings: Settings, client: Client, rules: NormalizationRules = DEFAULT_RULES,
                guards: Guards | None = None, full_rebuild: bool = False, run_id: str | None = None,
                log: Callable[[str], None] = print, forget_ids: bool = False) -> IdentityReport:
    """One run; see the module docstring. `forget_ids` (with full_rebuild) assigns ids from scratch, ignoring the
    previous graph: every person gets mix(its anchor), and changed ids are not merge-logged."""
    guards = guards or Guards()
    run_id = run_id or f"identity-{uuid.uuid4().hex[:12]}"
    database = settings.clickhouse_database
    report = IdentityReport(run_id=run_id, full_rebuild=full_rebuild)
    started = time.perf_counter()

    # One identity writer at a time (a lease under a name no Kafka topic can have).
    with lease.hold(client, database, IDENTITY_LEASE, run_id, ttl=LEASE_TTL):
        _run(client, database, rules, guards, full_rebuild, forget_ids, run_id, report, log)
        report.seconds = time.perf_counter() - started
        _record_run(client, database, report)
    log(f"identity: {report.people_total} people from {report.nodes_total} identifiers, "
        f"{report.merges} merge(s), {report.nodes_written} node rows written ({report.region_nodes} identifiers "
        f"recomputed) in {report.seconds:.2f}s")
    return report


def _run(client: Client, database: str, rules: NormalizationRules, guards: Guards, full_rebuild: bool,
         forget_ids: bool, run_id: str, report: IdentityReport, log: Callable[[str], None]) -> None:
    for table in SCRATCH_TABLES:
        client.command(f"TRUNCATE TABLE {database}.{table}")
    _last_totals(client, database, full_rebuild, report)  # the run then moves them by what it changed
    if full_rebuild:
        log("full rebuild: truncating " + ", ".join(DERIVED_TABLES))
        for table in DERIVED_TABLES:
            client.command(f"TRUNCATE TABLE {database}.{table}")
    report.edges_before = report.edges_total

    # (a) new events: one scan of `events` into the run's scratch table
    bounds = progress.pending(client, database, "identity_progress")
    params = {"topics": [k[0] for k in bounds], "partitions": [k[1] for k in bounds],
              "starts": [v[0] for v in bounds.values()], "ends": [v[1] for v in bounds.values()]}
    new_pairs = 0
    if bounds:
        client.command(_sql("insert_run_identifiers", database), parameters=params)
        report.new_events = int(client.command(  # the scan's row of the events themselves
            f"SELECT sum(events) FROM {database}.identity_run_identifiers WHERE identifier_type = ''"))
        log(f"{report.new_events} new events in {len(bounds)} partition(s): " + ", ".join(
            f"{t}[{p}] {s}..{e}" for (t, p), (s, e) in bounds.items()))
        # (b) normalize the distinct unseen identifiers, (c) node times and edges
        whole_graph = not int(client.command(f"SELECT count() FROM {database}.identity_identifiers"))
        _normalize_unseen(client, database, rules, run_id, report, log)
        # every known identifier is then the run's: its join need not cut them to the run's first
        client.command(_sql("insert_run_nodes", database), parameters={"whole_graph": int(whole_graph)})
        client.command(_sql("insert_node_seen", database))
        _insert_run_edges(client, database)
        new_pairs = int(client.command(_sql("new_pair_count", database)))
        for name in ("insert_edges", "insert_touched"):
            client.command(_sql(name, database))

    # (d) the graph: only the region the new events touched (everything on a full rebuild), in slices when large
    if bounds:
        if not full_rebuild:
            client.command(_sql("expand_region", database))
        _stitch_in_slices(client, database, guards, run_id, report, full_rebuild, forget_ids, log)
        # a full rebuild read every edge once (its totals started at zero); an incremental run adds its new pairs
        report.edges_total += report.region_edges if full_rebuild else new_pairs
    else:
        if full_rebuild:  # no events at all: the graph is empty
            client.command(f"TRUNCATE TABLE {database}.identity_nodes")
            report.nodes_total = report.people_total = report.edges_total = report.largest_person = 0
            report.edges_blocked = {}

    # (e) watermark
    progress.advance(client, database, "identity_progress", bounds, run_id)


def _stitch_in_slices(client: Client, database: str, guards: Guards, run_id: str, report: IdentityReport,
                      full_rebuild: bool, forget_ids: bool, log: Callable[[str], None]) -> None:
    """The region (identity_region) in slices of at most ~SLICE_IDENTIFIERS identifiers, each a set of whole
    clusters (every decision is taken inside one: `graph.restitch`), so Python holds one slice at a time. A full
    rebuild then deletes the rows it did not write (identifiers gone from the graph, superseded versions): until
    then readers see the previous graph, never an empty one. Every row a rebuild writes carries its start time as
    its version, so what it did not write is exactly the rows of another version, whatever the clock does."""
    version = int(time.time() * 1e6) if full_rebuild else None
    size = int(client.command(f"SELECT uniqExact(node_key) FROM {database}.identity_region WHERE boundary = 0"))
    n_slices = -(-size // SLICE_IDENTIFIERS)
    slices = _cluster_slices(client, database, n_slices) if n_slices > 1 else [None]
    for i, keys in enumerate(slices):
        if keys is not None:
            log(f"region: slice {i + 1}/{len(slices)}, {len(keys)} of {size} identifiers")
            client.command(f"TRUNCATE TABLE {database}.identity_region")
            client.insert_arrow(f"{database}.identity_region", pa.table({
                "node_key": pa.array(keys, pa.uint64()), "boundary": pa.array(np.zeros(len(keys), np.uint8))}))
        _stitch_region(client, database, guards, run_id, report, full_rebuild, forget_ids, version, log)
    if full_rebuild:
        client.command(f"ALTER TABLE {database}.identity_nodes DELETE WHERE updated_at != fromUnixTimestamp64Micro("
                       "{version:Int64}, 'UTC')", parameters={"version": version}, settings={"mutations_sync": 2})


def _cluster_slices(client: Client, database: str, n_slices: int) -> list[np.ndarray]:
    """The region's node keys in `n_slices` groups of whole connected components over the edges between them
    (blocked ones too, so a group holds whole clusters and every edge leaving it ends outside the region, where
    `restitch`'s boundary rule holds; a component larger than a slice stays whole). ~40 bytes an edge, 20 a node."""
    keys = np.sort(_col(client.query_arrow(
        f"SELECT DISTINCT node_key FROM {database}.identity_region WHERE boundary = 0"), "node_key").astype(np.uint64))
    n = len(keys)
    et = client.query_arrow(f"SELECT src, dst FROM {database}.identity_edges")
    (src, src_in), (dst, dst_in) = (lookup(keys, _col(et, name).astype(np.uint64, copy=False))
                                    for name in ("src", "dst"))
    del et
    inside = src_in & dst_in
    _, label = graph.components(n, src[inside], dst[inside])
    del src, dst, inside
    part = label % n_slices  # scipy numbers components by their first node: spread evenly over the slices
    order = np.argsort(part, kind="stable")
    cuts = np.searchsorted(part[order], np.arange(n_slices + 1))
    return [keys[order[a:b]] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def _insert_run_edges(client: Client, database: str) -> None:
    """The run's pairs resolved to node keys through its key map (sql/identity/run_keys_table.sql), under the first
    seed that gives the run's identifiers distinct hashes; the map is dropped afterwards (it lives in memory)."""
    seed = next((s for s in range(KEY_SEEDS)
                 if int(client.command(_sql("run_keys_distinct", database), parameters={"seed": s}))), None)
    if seed is None:
        raise RuntimeError(f"identity: the run's identifiers share a 64-bit hash under each of {KEY_SEEDS} seeds")
    client.command(f"DROP TABLE IF EXISTS {database}.identity_run_keys")  # a killed run's, if any
    client.command(_sql("run_keys_table", database))
    try:
        client.command(_sql("insert_run_keys", database), parameters={"seed": seed})
        client.command(_sql("insert_run_edges", database), parameters={"seed": seed})
    finally:
        client.command(f"DROP TABLE IF EXISTS {database}.identity_run_keys")


def _last_totals(client: Client, database: str, full_rebuild: bool, report: IdentityReport) -> None:
    """The graph's totals after the last run (identity_runs) into the report; zeros before a full rebuild. A graph
    written before identity_runs existed, or by a run that died before logging itself, is counted with full scans."""
    if full_rebuild:
        return
    rows = client.query(
        f"SELECT nodes_total, people_total, edges_total, largest_person, edges_blocked, "
        f"finished_at >= (SELECT max(updated_at) FROM {database}.identity_nodes) AS clean "
        f"FROM {database}.identity_runs ORDER BY finished_at DESC LIMIT 1").result_rows
    if rows and rows[0][5]:
        nodes, people, edges, largest, blocked, _ = rows[0]
        _set_totals(report, nodes, people, edges, largest, blocked)
        return
    # No run log yet, or a run died after writing identity_nodes (rows newer than the last log): count once.
    nodes, people, largest = client.query(
        f"SELECT sum(n), count(), max(n) FROM (SELECT universal_id, count() AS n FROM {database}.identity_nodes "
        "FINAL GROUP BY universal_id)").result_rows[0]
    if not people:
        return
    edges = int(client.command(f"SELECT uniqExact(src, dst) FROM {database}.identity_edges"))
    blocked = Counter(r for _, _, r in client.query(
        f"SELECT src, dst, argMax(reason, at) AS r FROM {database}.identity_blocked WHERE kind = 'edge' "
        "GROUP BY src, dst HAVING r != 'accepted'").result_rows)
    _set_totals(report, nodes, people, edges, largest, blocked)


def _set_totals(report: IdentityReport, nodes, people, edges, largest, blocked: dict) -> None:
    report.nodes_total, report.people_total, report.edges_total = int(nodes), int(people), int(edges)
    report.largest_person, report.edges_blocked = int(largest), {k: int(v) for k, v in blocked.items()}


def _record_run(client: Client, database: str, report: IdentityReport) -> None:
    blocked = {k: v for k, v in report.edges_blocked.items() if v}
    client.insert(f"{database}.identity_runs", [[
        report.run_id, int(time.time() * 1e6), int(report.full_rebuild), report.new_events, report.region_nodes,
        report.region_edges, report.nodes_written, report.merges, report.nodes_total, report.people_total,
        report.edges_total, blocked, report.largest_person, report.seconds]],
        column_names=["run_id", "finished_at", "full_rebuild", "new_events", "region_nodes", "region_edges",
                      "nodes_written", "merges", "nodes_total", "people_total", "edges_total", "edges_blocked",
                      "largest_person", "seconds"])


def _normalize_unseen(client: Client, database: str, rules: NormalizationRules, run_id: str, report: IdentityReport,
                      log: Callable[[str], None]) -> None:
    """Normalize the run's unseen raw identifiers as they stream in, ~NORMALIZE_ROWS at a time, so Python holds one
    part's strings. Writing a part while the query streams is safe: its NOT IN set was built when it started."""
    rejected: Counter[str] = Counter()
    parts = 0

    def flush(unseen: pa.Table) -> None:
        nonlocal parts
        report.identifiers_new += unseen.num_rows
        rejected.update(_normalize_part(client, database, rules, run_id, unseen))
        parts += 1
        log(f"normalized part {parts}: {report.identifiers_new} new distinct identifiers so far")

    pending: list[pa.Table] = []
    rows = 0
    with client.query_arrow_stream(_sql("unseen_identifiers", database), use_strings=True) as stream:
        for batch in stream:
            pending.append(pa.table(batch))
            rows += pending[-1].num_rows
            while rows >= NORMALIZE_ROWS:  # whole parts out of the blocks read so far
                table = pa.concat_tables(pending)
                flush(table.slice(0, NORMALIZE_ROWS))
                pending = [table.slice(NORMALIZE_ROWS)]
                rows = pending[0].num_rows
    if rows:
        flush(pa.concat_tables(pending))
    report.identifiers_rejected = dict(rejected.most_common())
    if report.identifiers_new:
        log(f"{report.identifiers_new} new distinct identifiers, {rejected.total()} rejected")


def _normalize_part(client: Client, database: str, rules: NormalizationRules, run_id: str,
                    unseen: pa.Table) -> Counter[str]:
    """Normalize and key raw identifiers -> `identity_identifiers`, rejects -> `identity_blocked`; their reasons."""
    types = unseen.column("identifier_type").combine_chunks().cast(pa.string())
    raws = unseen.column("raw_value").combine_chunks().cast(pa.string())
    col = normalize_many(types, raws, rules)
    ok = np.asarray(col.accepted.to_numpy(zero_copy_only=False), bool)
    codes = _type_codes(types)
    keys = np.zeros(len(raws), np.uint64)
    if ok.any():
        # distinct (type, normalized) only: several raw spellings share one node
        keys[ok] = graph.identifier_key(codes[ok], col.value.filter(pa.array(ok)))
    reason = col.reason.fill_null("")
    client.insert_arrow(f"{database}.identity_identifiers", pa.table({
        "identifier_type": types, "raw_value": raws, "normalized": col.value.fill_null(""),
        "node_key": pa.array(keys, pa.uint64()), "reason": reason}))
    rejected = np.flatnonzero(~ok)
    if len(rejected):
        n = len(rejected)
        client.insert_arrow(f"{database}.identity_blocked", pa.table({
            "run_id": pa.array([run_id] * n, pa.string()), "kind": pa.array(["identifier"] * n, pa.string()),
            "src": pa.array(np.zeros(n, np.uint64)), "dst": pa.array(np.zeros(n, np.uint64)),
            "identifier_type": types.take(pa.array(rejected)), "value": raws.take(pa.array(rejected)),
            "reason": reason.take(pa.array(rejected)), "at": _now_us(n)}))
    return Counter(reason.take(pa.array(rejected)).to_pylist())


def _type_codes(types: pa.Array) -> np.ndarray:
    at = pc.index_in(types, value_set=pa.array(TYPE_NAMES)).fill_null(-1)
    return np.asarray(at.to_numpy(zero_copy_only=False), np.int8)


def _now_us(n: int, at: int | None = None) -> pa.Array:
    return pa.array(np.full(n, int(time.time() * 1e6) if at is None else at, np.int64)).cast(_TS6)


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _stitch_region(client: Client, database: str, guards: Guards, run_id: str, report: IdentityReport,
                   full_rebuild: bool, forget_ids: bool, version: int | None, log: Callable[[str], None]) -> None:
    """Read the region (identity_region) and its edges, `graph.restitch` it, write what changed."""
    et = client.query_arrow(_sql("region_edges", database))
    src_key = _col(et, "src").astype(np.uint64)
    dst_key = _col(et, "dst").astype(np.uint64)
    # boundary: the other endpoints of the region's edges (region keys come back as boundary = 0 by min())
    ends = unique(np.concatenate([src_key, dst_key]))
    if len(ends):
        client.insert_arrow(f"{database}.identity_region", pa.table({
            "node_key": pa.array(ends, pa.uint64()), "boundary": pa.array(np.ones(len(ends), np.uint8))}))
    nt = client.query_arrow(_sql("region_nodes", database), use_strings=True)
    node_key = _col(nt, "node_key").astype(np.uint64)
    n = len(node_key)
    (src, src_known), (dst, dst_known) = lookup(node_key, src_key), lookup(node_key, dst_key)
    known = src_known & dst_known
    src, dst, src_key, dst_key = src[known], dst[known], src_key[known], dst_key[known]
    in_region = _col(nt, "boundary") == 0
    prev_text = nt.column("prev_uid").combine_chunks()
    had_row = np.asarray(pc.not_equal(prev_text, "").to_numpy(zero_copy_only=False), bool)
    prev = np.zeros(n, np.uint64)
    if had_row.any():
        prev[had_row] = graph.parse_uid(prev_text.filter(pa.array(had_row)).to_numpy(zero_copy_only=False)
                                        .astype("U19"))
    nodes = Nodes(_col(nt, "node_type"), node_key, _col(nt, "first_ingested"), active_from=_col(nt, "first_seen"),
                  active_to=_col(nt, "last_seen"), events=_col(nt, "events"))
    edges = Edges(src, dst, _col(et, "events")[known], _col(et, "first_seen")[known])
    res = graph.restitch(nodes, edges, in_region, _col(nt, "prev_shared") == graph.SHARED_DEGREE,
                         np.zeros(n, np.uint64) if forget_ids else prev, guards)

    region = res.region
    report.region_nodes += len(region)  # summed over the slices of a large region
    report.region_edges += len(edges)
    uid_int = res.ids.uid
    uid = graph.format_uid(uid_int)
    # stable cluster label: the smallest node_key of the pre-guard component
    cluster_key = np.full(len(region), np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(cluster_key, res.cluster, node_key[region])
    cluster = cluster_key[res.cluster]
    shared = res.shared.astype(np.uint8)
    first_seen, last_seen = _col(nt, "first_seen")[region], _col(nt, "last_seen")[region]
    found = had_row[region]
    changed = ~found | (prev[region] != uid_int) | (_col(nt, "prev_cluster")[region] != cluster)
    changed |= (_col(nt, "prev_shared")[region] != shared) | (_col(nt, "prev_first_seen")[region] != first_seen)
    changed |= _col(nt, "prev_last_seen")[region] != last_seen
    report.ids_changed += int((found & (prev[region] != uid_int)).sum())
    rows = np.arange(len(region)) if full_rebuild else np.flatnonzero(changed)
    if len(rows):
        at = region[rows]
        client.insert_arrow(f"{database}.identity_nodes", pa.table({
            "node_key": pa.array(node_key[at], pa.uint64()),
            "identifier_type": pa.array(np.array(TYPE_NAMES, object)[nodes.node_type[at]], pa.string()),
            "value": nt.column("value").take(pa.array(at)),
            "first_seen": pa.array(first_seen[rows], pa.int64()).cast(_TS),
            "last_seen": pa.array(last_seen[rows], pa.int64()).cast(_TS),
            "cluster": pa.array(cluster[rows], pa.uint64()), "shared": pa.array(shared[rows], pa.uint8()),
            "universal_id": pa.array(uid[rows], pa.string()), "updated_at": _now_us(len(rows), version)}))
    report.nodes_written += len(rows)

    merges = res.ids.merge_log()
    report.merges += len(merges)
    if merges:
        client.insert_arrow(f"{database}.identity_merge_log", pa.table({
            "old_id": pa.array([m[0] for m in merges], pa.string()),
            "new_id": pa.array([m[1] for m in merges], pa.string()),
            "run_id": pa.array([run_id] * len(merges), pa.string()),
            "merged_at": pa.array(np.full(len(merges), int(time.time() * 1000), np.int64)).cast(_TS)}))

    blocked_before = _audit_edges(client, database, res.blocked_reason, src_key, dst_key, run_id)

    # Totals: a person lies wholly inside or outside the region, so the region's before/after difference is
    # the whole graph's.
    people_after = np.unique(uid_int, return_counts=True)[1]
    people_before = len(unique(prev[region][found])) if not full_rebuild else 0
    report.nodes_total += len(region) if full_rebuild else int((~found).sum())
    report.people_total = report.people_total - people_before + len(people_after)
    report.largest_person = max(report.largest_person, int(people_after.max(initial=0)))
    now = Counter(_blocked_counts(res.blocked_reason))
    total = Counter(report.edges_blocked)
    total.subtract(Counter(blocked_before))
    total.update(now)
    report.edges_blocked = {k: v for k, v in total.items() if v > 0}
    log(f"region: {len(region)} identifiers, {len(edges)} edges, {n - len(region)} boundary identifiers")


def _blocked_counts(reason_code: np.ndarray) -> dict[str, int]:
    """Number of blocked edges per guard reason."""
    counts = np.bincount(reason_code, minlength=len(REASONS))
    return {REASONS[code]: int(c) for code, c in enumerate(counts) if c and code != graph.ACCEPTED}


def _audit_edges(client: Client, database: str, reason_code: np.ndarray, src_key: np.ndarray,
                 dst_key: np.ndarray, run_id: str) -> dict[str, int]:
    """Write an `identity_blocked` edge row for every region edge whose verdict differs from the latest one
    logged. Returns the region's blocked edges per reason as they were before this run."""
    last = {(int(s), int(d)): r for s, d, r in client.query(_sql("region_verdicts", database)).result_rows}
    accepted = REASONS[graph.ACCEPTED]
    blocked = np.flatnonzero(reason_code != graph.ACCEPTED)
    now_blocked = {(int(src_key[i]), int(dst_key[i])): REASONS[int(reason_code[i])] for i in blocked}
    changes = [(k, r) for k, r in now_blocked.items() if last.get(k, accepted) != r]
    changes += [(k, accepted) for k, r in last.items() if r != accepted and k not in now_blocked]
    if changes:
        n = len(changes)
        client.insert_arrow(f"{database}.identity_blocked", pa.table({
            "run_id": pa.array([run_id] * n, pa.string()), "kind": pa.array(["edge"] * n, pa.string()),
            "src": pa.array([k[0] for k, _ in changes], pa.uint64()),
            "dst": pa.array([k[1] for k, _ in changes], pa.uint64()),
            "identifier_type": pa.array([""] * n, pa.string()), "value": pa.array([""] * n, pa.string()),
            "reason": pa.array([r for _, r in changes], pa.string()), "at": _now_us(n)}))
    return dict(Counter(r for r in last.values() if r != accepted))
