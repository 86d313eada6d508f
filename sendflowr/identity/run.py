"""One identity-stitching run: new events -> identifiers -> edges -> people with stable universal ids.

Set work happens in ClickHouse (sql/identity/): finding the new events, the distinct unseen raw identifiers,
the co-occurrence edges and when each identifier was seen. Python only normalizes the DISTINCT unseen raw
identifiers (sendflowr.identity.normalize) and runs the graph (sendflowr.identity.graph) on integer arrays.

Steps of `stitch_once` (docs/IDENTITY-RESOLUTION.md):
  a. new events = offsets of committed ingest ranges beyond `identity_progress`, per partition (exact);
  b. unseen (type, raw) -> normalize + identifier_key -> `identity_identifiers` (rejects -> `identity_blocked`);
  c. node first/last seen -> `identity_node_seen`, pairs of valid identifiers per event -> `identity_edges`;
  d. whole graph into memory, `graph.rebuild` against the previous ids, write changed `identity_nodes` rows, the
     merge log and edge verdict changes (`identity_blocked`);
  e. record the new watermark in `identity_progress`.
No new events and no changed rules = nothing written but the watermark: a rerun changes no universal_id.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from sendflowr.identity import graph
from sendflowr.identity.graph import REASONS, TYPE_NAMES, Edges, Guards, Nodes
from sendflowr.identity.normalize import DEFAULT_RULES, NormalizationRules, normalize_many
from sendflowr.ingest import lease
from sendflowr.settings import Settings
from sendflowr.sql_files import load_sql

DERIVED_TABLES = ("identity_identifiers", "identity_edges", "identity_node_seen", "identity_blocked",
                  "identity_progress")  # truncated by a full rebuild (identity_nodes is replaced at the end)
IDENTITY_LEASE = "identity:graph"  # ':' is not allowed in Kafka topic names, so it never meets a real topic
LEASE_TTL = timedelta(hours=1)
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
    seconds: float = 0.0

    @property
    def edges_new(self) -> int:
        return self.edges_total - self.edges_before


def _sql(name: str, database: str, new_identifiers: str | None = None) -> str:
    text = load_sql(f"identity/{name}.sql", database)
    if new_identifiers is not None:
        text = text.replace("${new_identifiers}", new_identifiers)
    return text


def pending_bounds(client: Client, database: str) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> [identity watermark, committed end) for every partition with unstitched events."""
    committed = {(t, int(p)): int(e) for t, p, e in client.query(
        f"SELECT toString(kafka_topic), kafka_partition, max(end_offset) FROM {database}.ingest_ranges "
        "WHERE state = 'committed' GROUP BY kafka_topic, kafka_partition").result_rows}
    done = {(t, int(p)): int(e) for t, p, e in client.query(
        f"SELECT toString(kafka_topic), kafka_partition, max(end_offset) FROM {database}.identity_progress "
        "GROUP BY kafka_topic, kafka_partition").result_rows}
    return {k: (done.get(k, 0), end) for k, end in sorted(committed.items()) if end > done.get(k, 0)}


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

    # One identity writer at a time (same lease mechanism as ingestion, under a name no Kafka topic can have).
    with lease.ingest_lease(client, database, IDENTITY_LEASE, run_id, ttl=LEASE_TTL):
        _run(client, database, rules, guards, full_rebuild, forget_ids, run_id, report, log)
    report.seconds = time.perf_counter() - started
    log(f"identity: {report.people_total} people from {report.nodes_total} identifiers, "
        f"{report.merges} merge(s), {report.nodes_written} node rows written in {report.seconds:.2f}s")
    return report


def _run(client: Client, database: str, rules: NormalizationRules, guards: Guards, full_rebuild: bool,
         forget_ids: bool, run_id: str, report: IdentityReport, log: Callable[[str], None]) -> None:
    previous = _previous_nodes(client, database)  # read before a rebuild truncates anything
    if full_rebuild and forget_ids:
        previous = {name: col[:0] for name, col in previous.items()}
    if full_rebuild:
        log("full rebuild: truncating " + ", ".join(DERIVED_TABLES))
        for table in DERIVED_TABLES:
            client.command(f"TRUNCATE TABLE {database}.{table}")
    report.edges_before = int(client.command(
        f"SELECT count() FROM (SELECT src, dst FROM {database}.identity_edges GROUP BY src, dst)"))

    # (a) new events
    bounds = pending_bounds(client, database)
    params = {"topics": [k[0] for k in bounds], "partitions": [k[1] for k in bounds],
              "starts": [v[0] for v in bounds.values()], "ends": [v[1] for v in bounds.values()]}
    new_ids = _sql("new_identifiers", database)
    if bounds:
        report.new_events = int(client.command(
            f"SELECT uniqExact(kafka_topic, kafka_partition, kafka_offset) FROM ({new_ids})", parameters=params))
        log(f"{report.new_events} new events in {len(bounds)} partition(s): " + ", ".join(
            f"{t}[{p}] {s}..{e}" for (t, p), (s, e) in bounds.items()))
        # (b) normalize the distinct unseen identifiers, (c) edges and node times
        _normalize_unseen(client, database, new_ids, params, rules, run_id, report, log)
        client.command(_sql("insert_node_seen", database, new_ids), parameters=params)
        client.command(_sql("insert_edges", database, new_ids), parameters=params)

    # (d) the graph
    _stitch_graph(client, database, guards, previous, run_id, report, full_rebuild, log)

    # (e) watermark
    if bounds:
        client.insert_arrow(f"{database}.identity_progress", pa.table({
            "kafka_topic": pa.array(params["topics"], pa.string()),
            "kafka_partition": pa.array(params["partitions"], pa.uint32()),
            "end_offset": pa.array(params["ends"], pa.uint64()),
            "run_id": pa.array([run_id] * len(bounds), pa.string()), "at": _now_us(len(bounds))}))


def _normalize_unseen(client: Client, database: str, new_ids: str, params: dict, rules: NormalizationRules,
                      run_id: str, report: IdentityReport, log: Callable[[str], None]) -> None:
    unseen = client.query_arrow(_sql("unseen_identifiers", database, new_ids), parameters=params,
                                use_strings=True)
    if unseen.num_rows == 0:
        return
    types = unseen.column("identifier_type").combine_chunks().cast(pa.string())
    raws = unseen.column("raw_value").combine_chunks().cast(pa.string())
    col = normalize_many(types, raws, rules)
    ok = np.asarray(col.accepted.to_numpy(zero_copy_only=False), bool)
    codes = np.array([TYPE_NAMES.index(t) for t in types.to_pylist()], np.int8)
    values = col.value.to_numpy(zero_copy_only=False)
    keys = np.zeros(len(raws), np.uint64)
    if ok.any():
        keys[ok] = graph.identifier_key(codes[ok], values[ok])
    reason = col.reason.fill_null("")
    client.insert_arrow(f"{database}.identity_identifiers", pa.table({
        "identifier_type": types, "raw_value": raws, "normalized": col.value.fill_null(""),
        "node_key": pa.array(keys, pa.uint64()), "reason": reason}))
    report.identifiers_new = len(raws)
    rejected = np.flatnonzero(~ok)
    report.identifiers_rejected = dict(Counter(reason.take(pa.array(rejected)).to_pylist()).most_common())
    if len(rejected):
        n = len(rejected)
        client.insert_arrow(f"{database}.identity_blocked", pa.table({
            "run_id": pa.array([run_id] * n, pa.string()), "kind": pa.array(["identifier"] * n, pa.string()),
            "src": pa.array(np.zeros(n, np.uint64)), "dst": pa.array(np.zeros(n, np.uint64)),
            "identifier_type": types.take(pa.array(rejected)), "value": raws.take(pa.array(rejected)),
            "reason": reason.take(pa.array(rejected)), "at": _now_us(n)}))
    log(f"{len(raws)} new distinct identifiers, {len(rejected)} rejected")


def _now_us(n: int) -> pa.Array:
    return pa.array(np.full(n, int(time.time() * 1e6), np.int64)).cast(_TS6)


def _previous_nodes(client: Client, database: str) -> dict[str, np.ndarray]:
    t = client.query_arrow(_sql("previous_nodes", database), use_strings=True)
    return {name: t.column(name).to_numpy() for name in t.column_names}


def _stitch_graph(client: Client, database: str, guards: Guards, previous: dict[str, np.ndarray], run_id: str,
                  report: IdentityReport, full_rebuild: bool, log: Callable[[str], None]) -> None:
    """Full recompute of the graph in memory (all nodes and edges); `graph.update` could restrict it to the
    components the new edges touch."""
    nt = client.query_arrow(_sql("graph_nodes", database), use_strings=True)
    et = client.query_arrow(_sql("graph_edges", database))
    node_key = nt.column("node_key").to_numpy().astype(np.uint64)
    n = len(node_key)
    report.nodes_total = n
    if n == 0:
        if full_rebuild:
            client.command(f"TRUNCATE TABLE {database}.identity_nodes")
        return
    src_key = et.column("src").to_numpy().astype(np.uint64)
    dst_key = et.column("dst").to_numpy().astype(np.uint64)
    src = np.searchsorted(node_key, src_key)
    dst = np.searchsorted(node_key, dst_key)
    known = (src < n) & (dst < n)
    known[known] &= (node_key[src[known]] == src_key[known]) & (node_key[dst[known]] == dst_key[known])
    src, dst, src_key, dst_key = src[known], dst[known], src_key[known], dst_key[known]
    report.edges_total = len(src)
    nodes = Nodes(nt.column("node_type").to_numpy(), node_key, nt.column("first_ingested").to_numpy())
    edges = Edges(src, dst, et.column("events").to_numpy()[known], et.column("first_seen").to_numpy()[known])
    prev_keys = previous["node_key"].astype(np.uint64)
    snap = graph.rebuild(nodes, edges, guards, (prev_keys, previous["universal_id"].astype("U19")))

    uid = graph.format_uid(snap.ids.uid)
    # stable cluster label: the smallest node_key of the pre-guard component
    cl = snap.result.cluster
    cluster_key = np.full(int(cl.max()) + 1, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(cluster_key, cl, node_key)
    cluster = cluster_key[cl]
    shared = snap.result.shared.astype(np.uint8)
    first_seen = nt.column("first_seen").to_numpy()
    last_seen = nt.column("last_seen").to_numpy()

    # rows that differ from the previous graph (all of them after a full rebuild)
    at = np.minimum(np.searchsorted(prev_keys, node_key), max(len(prev_keys) - 1, 0))
    found = (prev_keys[at] == node_key) if len(prev_keys) else np.zeros(n, bool)
    changed = ~found
    if len(prev_keys):
        changed |= ((previous["universal_id"].astype("U19")[at] != uid) | (previous["cluster"][at] != cluster)
                    | (previous["shared"][at] != shared) | (previous["first_seen"][at] != first_seen)
                    | (previous["last_seen"][at] != last_seen))
        report.ids_changed = int((found & (previous["universal_id"].astype("U19")[at] != uid)).sum())
    rows = np.arange(n) if full_rebuild else np.flatnonzero(changed)
    if full_rebuild:
        client.command(f"TRUNCATE TABLE {database}.identity_nodes")
    if len(rows):
        client.insert_arrow(f"{database}.identity_nodes", pa.table({
            "node_key": pa.array(node_key[rows], pa.uint64()),
            "identifier_type": pa.array(np.array(TYPE_NAMES, object)[nodes.node_type[rows]], pa.string()),
            "value": nt.column("value").take(pa.array(rows)),
            "first_seen": pa.array(first_seen[rows], pa.int64()).cast(_TS),
            "last_seen": pa.array(last_seen[rows], pa.int64()).cast(_TS),
            "cluster": pa.array(cluster[rows], pa.uint64()), "shared": pa.array(shared[rows], pa.uint8()),
            "universal_id": pa.array(uid[rows], pa.string()), "updated_at": _now_us(len(rows))}))
    report.nodes_written = len(rows)

    merges = snap.ids.merge_log()
    report.merges = len(merges)
    if merges:
        client.insert_arrow(f"{database}.identity_merge_log", pa.table({
            "old_id": pa.array([m[0] for m in merges], pa.string()),
            "new_id": pa.array([m[1] for m in merges], pa.string()),
            "run_id": pa.array([run_id] * len(merges), pa.string()),
            "merged_at": pa.array(np.full(len(merges), int(time.time() * 1000), np.int64)).cast(_TS)}))

    _audit_edges(client, database, snap.result.blocked_reason, src_key, dst_key, run_id)
    counts = np.bincount(np.unique(snap.ids.uid, return_inverse=True)[1])
    report.people_total = len(counts)
    report.largest_person = int(counts.max())
    report.edges_blocked = {k: v for k, v in snap.result.audit().items() if k != REASONS[graph.ACCEPTED]}


def _audit_edges(client: Client, database: str, reason_code: np.ndarray, src_key: np.ndarray,
                 dst_key: np.ndarray, run_id: str) -> None:
    """Write an `identity_blocked` edge row for every edge whose verdict differs from the latest one logged."""
    last = {(int(s), int(d)): r for s, d, r in client.query(
        f"SELECT src, dst, argMax(reason, at) FROM {database}.identity_blocked WHERE kind = 'edge' "
        "GROUP BY src, dst").result_rows}
    accepted = REASONS[graph.ACCEPTED]
    blocked = np.flatnonzero(reason_code != graph.ACCEPTED)
    now_blocked = {(int(src_key[i]), int(dst_key[i])): REASONS[int(reason_code[i])] for i in blocked}
    changes = [(k, r) for k, r in now_blocked.items() if last.get(k, accepted) != r]
    changes += [(k, accepted) for k, r in last.items() if r != accepted and k not in now_blocked]
    if not changes:
        return
    n = len(changes)
    client.insert_arrow(f"{database}.identity_blocked", pa.table({
        "run_id": pa.array([run_id] * n, pa.string()), "kind": pa.array(["edge"] * n, pa.string()),
        "src": pa.array([k[0] for k, _ in changes], pa.uint64()),
        "dst": pa.array([k[1] for k, _ in changes], pa.uint64()),
        "identifier_type": pa.array([""] * n, pa.string()), "value": pa.array([""] * n, pa.string()),
        "reason": pa.array([r for _, r in changes], pa.string()), "at": _now_us(n)}))


@dataclass(frozen=True)
class PairwiseScore:
    precision: float
    recall: float
    identifiers: int  # ground-truth identifiers found in the graph
    predicted_pairs: int
    true_pairs: int


def pairwise_score(client: Client, database: str, truth_path: Path) -> PairwiseScore | None:
    """Pairwise precision/recall of same-person decisions over the graph's identifiers that the ground truth
    ties to one person (non-generic). Exact (pair counts from the contingency table, no sampling)."""
    if not Path(truth_path).exists():
        return None
    truth = pq.read_table(truth_path, columns=["identifier_type", "raw_value", "person_id", "is_generic"])
    truth = truth.filter(pc.and_(pc.invert(truth.column("is_generic")), pc.is_valid(truth.column("person_id"))))
    mapped = client.query_arrow(
        f"SELECT toString(i.identifier_type) AS identifier_type, i.raw_value AS raw_value, n.node_key AS node_key, "
        f"n.universal_id AS universal_id FROM {database}.identity_identifiers AS i FINAL "
        f"INNER JOIN (SELECT node_key, universal_id FROM {database}.identity_nodes FINAL) AS n "
        "ON i.node_key = n.node_key WHERE i.reason = ''", use_strings=True)
    joined = truth.join(mapped, ["identifier_type", "raw_value"], join_type="inner")
    # one row per node: several raw spellings normalize to the same node
    nodes = joined.group_by(["node_key", "universal_id", "person_id"]).aggregate([])
    if nodes.num_rows < 2:
        return None

    def pairs(table: pa.Table, by: list[str]) -> int:
        c = table.group_by(by).aggregate([([], "count_all")]).column("count_all").to_numpy().astype(np.int64)
        return int((c * (c - 1) // 2).sum())

    both = pairs(nodes, ["universal_id", "person_id"])
    predicted, true = pairs(nodes, ["universal_id"]), pairs(nodes, ["person_id"])
    return PairwiseScore(precision=both / predicted if predicted else 1.0, recall=both / true if true else 1.0,
                         identifiers=nodes.num_rows, predicted_pairs=predicted, true_pairs=true)
