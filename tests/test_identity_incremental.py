"""Incremental identity runs against the real engine: after every batch only the touched region is recomputed,
and the graph always equals what a full rebuild computes from all events (ids, clusters, shared flags, guard
verdicts, running totals)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime

import networkx as nx
import numpy as np
import pytest

from sendflowr.identity import graph
from sendflowr.identity import run as run_module
from sendflowr.identity.normalize import DEFAULT_RULES, normalize_many
from sendflowr.identity.run import IdentityReport, stitch_once
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

TYPES = ("email", "klaviyo_id", "phone", "external_id")
HUB = "+1 (415) 820-0000"  # one phone on ever more profiles until the degree guard trips


def _value(seed: int, t: str, i: int) -> str:
    if t == "email":
        return f"p{i}@shop{seed}.com"
    if t == "klaviyo_id":
        return f"01K{seed}X{i:06d}"
    if t == "phone":
        return f"+1415{300 + i // 10_000:03d}{i % 10_000:04d}"
    return f"cust-{seed}-{i}"


def world(seed: int, batches: int = 5, people: int = 40) -> list[list[dict]]:
    """Batches of events: new people (some introduced over two events, a chain), events that join identifiers
    of two existing people (merges, and per-type limits when both hold a klaviyo id), a hub phone gaining six
    emails per batch (shared after four batches, which splits the people it glued), and repeat sightings."""
    rng = np.random.default_rng(seed)
    known: dict[str, list[str]] = {t: [] for t in TYPES}
    counter = iter(range(10**6))
    out = []
    for b in range(batches):
        events: list[dict] = []
        for _ in range(people):
            types = list(rng.choice(TYPES, size=int(rng.integers(2, 5)), replace=False))
            ids = {}
            for t in types:
                raw = _value(seed, t, next(counter))
                known[t].append(raw)
                ids[t] = f"  {raw.upper()} " if t == "email" and rng.random() < 0.2 else raw  # same node
            if len(ids) > 2 and rng.random() < 0.4:  # a chain: two events sharing one identifier
                first, *rest = list(ids)
                events.append({first: ids[first], rest[0]: ids[rest[0]]})
                events.append({first: ids[first]} | {t: ids[t] for t in rest[1:]})
            else:
                events.append(ids)
        for _ in range(10):  # joins between people seen so far
            ta, tb = rng.choice(TYPES, size=2, replace=False)
            events.append({ta: known[ta][rng.integers(len(known[ta]))], tb: known[tb][rng.integers(len(known[tb]))]})
        for _ in range(6):
            email = _value(seed, "email", next(counter))
            known["email"].append(email)
            events.append({"email": email, "phone": HUB})
        for t in TYPES:  # seen again, nothing new
            events.append({t: known[t][rng.integers(len(known[t]))]})
        out.append([{"event_id": f"s{seed}-b{b}-{i}", "event_type": "opened",
                     "occurred_at": f"2026-10-{b + 1:02d}T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "identifiers": ids}
                    for i, ids in enumerate(events)])
    return out


def _graph(ch, db: str) -> dict[int, tuple[str, int, int]]:
    return {int(k): (u, int(c), int(s)) for k, u, c, s in ch.query(
        f"SELECT node_key, universal_id, cluster, shared FROM {db}.identity_nodes FINAL").result_rows}


def _verdicts(ch, db: str) -> dict[tuple[int, int], str]:
    return {(int(s), int(d)): r for s, d, r in ch.query(
        f"SELECT src, dst, argMax(reason, at) AS r FROM {db}.identity_blocked WHERE kind = 'edge' "
        "GROUP BY src, dst HAVING r != 'accepted'").result_rows}


def _assert_totals_match_the_tables(ch, db: str, report: IdentityReport) -> None:
    nodes, people, largest = ch.query(
        f"SELECT sum(n), count(), max(n) FROM (SELECT universal_id, count() AS n FROM {db}.identity_nodes FINAL "
        "GROUP BY universal_id)").result_rows[0]
    assert (report.nodes_total, report.people_total) == (nodes, people)
    assert report.largest_person >= largest  # an upper bound between full runs (see docs)
    assert report.edges_total == ch.command(f"SELECT uniqExact(src, dst) FROM {db}.identity_edges")
    assert report.edges_blocked == dict(Counter(_verdicts(ch, db).values()))


def _seen_per_event(events: list[dict]) -> tuple[dict, dict]:
    """What the graph's counters must hold, computed event by event: per node key and per pair of distinct valid
    keys of one event (src < dst), (events, first seen ms, last seen ms)."""
    rows = [(i, t, raw) for i, e in enumerate(events) for t, raw in e["identifiers"].items() if raw]
    col = normalize_many([t for _, t, _ in rows], [raw for _, _, raw in rows])
    ok = np.asarray(col.accepted.to_numpy(zero_copy_only=False), bool)
    codes = np.array([TYPES.index(t) for _, t, _ in rows], np.int8)
    keys = graph.identifier_key(codes[ok], col.value.filter(ok.tolist()))
    per_event: dict[int, set[int]] = defaultdict(set)
    for row, key in zip(np.flatnonzero(ok).tolist(), keys.tolist(), strict=True):
        per_event[rows[row][0]].add(key)
    nodes: dict = {}
    edges: dict = {}

    def see(table: dict, key, ms: int) -> None:
        n, first, last = table.get(key, (0, ms, ms))
        table[key] = (n + 1, min(first, ms), max(last, ms))

    for i, node_keys in per_event.items():
        ms = int(datetime.fromisoformat(events[i]["occurred_at"]).timestamp() * 1000)
        ordered = sorted(node_keys)
        for a, key in enumerate(ordered):
            see(nodes, key, ms)
            for other in ordered[a + 1:]:
                see(edges, (key, other), ms)
    return nodes, edges


def _assert_counters_match_the_events(ch, db: str, events: list[dict]) -> None:
    nodes, edges = _seen_per_event(events)
    seen = "sum(events), toUnixTimestamp64Milli(min(first_seen)), toUnixTimestamp64Milli(max(last_seen))"
    assert {int(k): (int(n), f, la) for k, n, f, la in ch.query(
        f"SELECT node_key, {seen} FROM {db}.identity_node_seen GROUP BY node_key").result_rows} == nodes
    assert {(int(s), int(d)): (int(n), f, la) for s, d, n, f, la in ch.query(
        f"SELECT src, dst, {seen} FROM {db}.identity_edges GROUP BY src, dst").result_rows} == edges


def _partition(graph: dict[int, tuple[str, int, int]]) -> set[frozenset[int]]:
    people: dict[str, set[int]] = {}
    for key, (uid, _, _) in graph.items():
        people.setdefault(uid, set()).add(key)
    return {frozenset(p) for p in people.values()}


@pytest.mark.parametrize(("seed", "slice_size"), [(3, None), (4, None), (4, 30)])
def test_incremental_runs_equal_a_full_rebuild(settings: Settings, ch, seed: int, slice_size: int | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with every run's region stitched in slices of ~30 identifiers (whole clusters each), and its unseen
    identifiers normalized 40 at a time."""
    db = settings.clickhouse_database
    if slice_size:
        monkeypatch.setattr(run_module, "SLICE_IDENTIFIERS", slice_size)
        monkeypatch.setattr(run_module, "NORMALIZE_ROWS", 40)
    quiet = lambda _: None  # noqa: E731
    reports, lines = [], []
    for batch in world(seed):
        produce_all(settings, [(None, json.dumps(e).encode()) for e in batch])
        ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=quiet)
        report = stitch_once(settings, ch, log=lines.append)
        _assert_totals_match_the_tables(ch, db, report)
        reports.append(report)
    sliced = sum(line.startswith("region: slice ") for line in lines)
    parts = sum(line.startswith("normalized part ") for line in lines)
    expected = (sliced > 3 and parts > 2 * len(reports)) if slice_size else (sliced == 0 and parts == len(reports))
    assert expected, (sliced, parts)
    incremental, verdicts = _graph(ch, db), _verdicts(ch, db)
    every_event = [e for batch in world(seed) for e in batch]
    _assert_counters_match_the_events(ch, db, every_event)

    # the world exercised what it should, and later runs recomputed only part of the graph
    reasons = set(verdicts.values())
    assert "shared identifier (degree guard)" in reasons and "per-type limit: klaviyo_id" in reasons
    assert any(r.startswith("shared identifier (conflict") for r in reasons)
    assert sum(r.merges for r in reports) > 0
    assert all(r.region_nodes < r.nodes_total for r in reports[1:])
    assert reports[-1].new_events == len(world(seed)[-1])

    # people == connected components of the accepted edges
    g = nx.Graph()
    g.add_nodes_from(incremental)
    g.add_edges_from((int(s), int(d)) for s, d in ch.query(f"SELECT DISTINCT src, dst FROM {db}.identity_edges")
                     .result_rows if (int(s), int(d)) not in verdicts)
    assert _partition(incremental) == {frozenset(c) for c in nx.connected_components(g)}

    # a full rebuild (one click) reproduces everything, ids included
    full = stitch_once(settings, ch, full_rebuild=True, log=quiet)
    assert _graph(ch, db) == incremental and _verdicts(ch, db) == verdicts
    _assert_counters_match_the_events(ch, db, every_event)
    assert full.ids_changed == 0 and full.merges == 0
    last = reports[-1]
    assert (full.nodes_total, full.people_total, full.edges_total, full.edges_blocked) == \
        (last.nodes_total, last.people_total, last.edges_total, last.edges_blocked)
    _assert_totals_match_the_tables(ch, db, full)

    # a rebuild that forgets the ids finds the same people (ids then derive from the graph alone)
    stitch_once(settings, ch, full_rebuild=True, forget_ids=True, log=quiet)
    assert _partition(_graph(ch, db)) == _partition(incremental)

    # merge log: every old id is gone from the graph and the chains are acyclic
    log = nx.DiGraph(ch.query(f"SELECT old_id, new_id FROM {db}.identity_merge_log").result_rows)
    assert nx.is_directed_acyclic_graph(log)
    # an old id is gone, or a split gave it back to the part holding its origin (graph.assign_ids: a split-off
    # part takes mix(its lowest-ranked identifier), which may be an id once merged away)
    origin = {str(graph.format_uid(graph.mix(np.array([k], np.uint64)))[0]): u for k, (u, _, _) in incremental.items()}
    live = {u for u, _, _ in incremental.values()}
    for old, _ in log.edges:
        assert old not in live or origin.get(old) == old, old


def test_a_run_that_dies_midway_leaves_correct_totals_for_the_next(settings: Settings, ch,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after writing identity_nodes (before its run log and watermark): the next run redoes its
    events and its totals still match full scans (it recounts instead of trusting the stale run log)."""
    db = settings.clickhouse_database
    quiet = lambda _: None  # noqa: E731
    first, second = world(5, batches=2)
    for batch, dies in ((first, False), (second, True)):
        produce_all(settings, [(None, json.dumps(e).encode()) for e in batch])
        ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=quiet)
        if dies:
            def boom(*_args, **_kwargs):
                raise RuntimeError("killed after identity_nodes was written")
            monkeypatch.setattr(run_module, "_audit_edges", boom)
            with pytest.raises(RuntimeError, match="killed"):
                stitch_once(settings, ch, log=quiet)
            monkeypatch.undo()
        else:
            stitch_once(settings, ch, log=quiet)
    report = stitch_once(settings, ch, log=quiet)
    assert report.new_events == len(second)  # the dead run's events are redone
    _assert_totals_match_the_tables(ch, db, report)
    # (the redo counted the dead run's events twice in the edge counters, which can reorder edges where a guard
    # binds; a full rebuild recounts them -- docs/IDENTITY-RESOLUTION.md)
    _assert_totals_match_the_tables(ch, db, stitch_once(settings, ch, full_rebuild=True, log=quiet))


def test_a_run_whose_identifiers_are_all_rejected_changes_nothing(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    quiet = lambda _: None  # noqa: E731
    junk = [{"event_id": f"j{i}", "event_type": "opened", "occurred_at": "2026-10-01T10:00:00Z",
             "identifiers": ids} for i, ids in enumerate([{"email": "noreply@shop.com"}, {"phone": "0000000000"},
                                                          {"email": "test@test.com", "external_id": "null"}])]
    for batch in (junk[:2], junk[2:]):
        produce_all(settings, [(None, json.dumps(e).encode()) for e in batch])
        ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=quiet)
        report = stitch_once(settings, ch, log=quiet)
        assert report.new_events == len(batch) and report.region_nodes == 0
        assert (report.people_total, report.nodes_total, report.edges_total) == (0, 0, 0)
    assert ch.command(f"SELECT count() FROM {db}.identity_blocked WHERE kind = 'identifier'") == 4
    assert ch.command(f"SELECT count() FROM {db}.identity_nodes") == 0


@pytest.mark.parametrize("normalize_rows", [None, 2])
def test_counters_count_events_across_spellings_and_rejects(settings: Settings, ch, normalize_rows: int | None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The run aggregates distinct identifiers and pairs, not events: each event still counts once per node and per
    pair when two raw spellings are one node, when a rejected identifier rides along with valid ones, and when the
    same pair recurs; events without a valid identifier count as scanned only. Also when the raw identifiers are
    normalized in parts (two spellings of one node in different parts)."""
    db = settings.clickhouse_database
    if normalize_rows:
        monkeypatch.setattr(run_module, "NORMALIZE_ROWS", normalize_rows)
    ids = [{"email": "a@shop.com", "phone": "+1 415 555 0101"},
           {"email": "  A@SHOP.COM ", "phone": "(415) 555-0101", "klaviyo_id": "01KA"},  # same nodes, spelt apart
           {"email": "a@shop.com", "external_id": "null", "klaviyo_id": "01KA"},  # a reject rides along
           {"email": "noreply@shop.com", "phone": "+1 415 555 0101"},  # a reject next to one valid identifier
           {"external_id": "null"}, {},  # nothing valid, nothing at all
           {"email": "b@shop.com", "klaviyo_id": "01KA", "external_id": "cust-1", "phone": "+14155550102"}]
    events = [{"event_id": f"c{i}", "event_type": "opened", "occurred_at": f"2026-10-0{1 + i % 3}T10:00:0{i}Z",
               "identifiers": e} for i, e in enumerate(ids)]
    produce_all(settings, [(None, json.dumps(e).encode()) for e in events])
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=lambda _: None)
    lines: list[str] = []
    report = stitch_once(settings, ch, log=lines.append)
    distinct = len({(t, v) for e in ids for t, v in e.items()})
    assert sum(line.startswith("normalized part ") for line in lines) == -(-distinct // (normalize_rows or distinct))
    assert report.new_events == len(events) - 1  # the event without identifiers is not one of the run's
    nodes, edges = _seen_per_event(events)
    assert max(n for n, _, _ in nodes.values()) == 3 and max(n for n, _, _ in edges.values()) == 2  # spellings met
    _assert_counters_match_the_events(ch, db, events)
    raw = sorted({(t, v) for e in ids for t, v in e.items()})  # each raw spelling normalized and logged once
    verdicts = normalize_many([t for t, _ in raw], [v for _, v in raw]).reason.drop_null().to_pylist()
    assert report.identifiers_new == len(raw) == ch.command(f"SELECT count() FROM {db}.identity_identifiers")
    assert report.identifiers_rejected == dict(Counter(verdicts)) and len(verdicts) >= 2
    assert ch.command(f"SELECT count() FROM {db}.identity_blocked WHERE kind = 'identifier'") == len(verdicts)


def test_a_full_rebuild_in_slices_equals_one_in_a_single_slice(settings: Settings, ch,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild too large for one slice stitches whole pre-guard clusters a slice at a time: from the same graph,
    with rules that now reject identifiers (people split, nodes leave the graph), it writes the same rows, ids,
    verdicts, merge log and totals as a rebuild in one slice, and the rejected identifiers' rows are gone."""
    db = settings.clickhouse_database
    quiet = lambda _: None  # noqa: E731
    for batch in world(6):
        produce_all(settings, [(None, json.dumps(e).encode()) for e in batch])
        ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=quiet)
        stitch_once(settings, ch, log=quiet)
    before = ch.query_arrow(f"SELECT * FROM {db}.identity_nodes FINAL")
    emails = sorted(v for (t, v) in ch.query(f"SELECT identifier_type, value FROM {db}.identity_nodes FINAL")
                    .result_rows if t == "email")
    dropped = set(emails[::4])  # a quarter of the emails, some of them the only link of a person's identifiers
    rules = replace(DEFAULT_RULES, blocked_values=DEFAULT_RULES.blocked_values
                    | {"email": DEFAULT_RULES.blocked_values["email"] | dropped})

    def rebuild(slice_size: int) -> tuple[IdentityReport, dict, dict, list, list[str]]:
        ch.command(f"TRUNCATE TABLE {db}.identity_nodes")  # the same previous graph for both rebuilds
        ch.command(f"TRUNCATE TABLE {db}.identity_merge_log")
        ch.insert_arrow(f"{db}.identity_nodes", before)
        monkeypatch.setattr(run_module, "SLICE_IDENTIFIERS", slice_size)
        lines: list[str] = []
        report = stitch_once(settings, ch, rules=rules, full_rebuild=True, log=lines.append)
        merges = sorted(ch.query(f"SELECT old_id, new_id FROM {db}.identity_merge_log").result_rows)
        return report, _graph(ch, db), _verdicts(ch, db), merges, lines

    one, one_graph, one_verdicts, one_merges, _ = rebuild(10**9)
    sliced, sliced_graph, sliced_verdicts, sliced_merges, lines = rebuild(25)
    assert sum(line.startswith("region: slice ") for line in lines) > 3
    assert one.ids_changed > 0  # the rules split people: the parts without the origin got fresh ids
    assert sliced_graph == one_graph and sliced_verdicts == one_verdicts and sliced_merges == one_merges
    for name in ("ids_changed", "merges", "nodes_total", "people_total", "edges_total", "edges_blocked",
                 "largest_person", "region_nodes", "region_edges", "nodes_written"):
        assert getattr(sliced, name) == getattr(one, name), name
    _assert_totals_match_the_tables(ch, db, sliced)
    values = {v for (v,) in ch.query(f"SELECT value FROM {db}.identity_nodes").result_rows}  # without FINAL
    assert dropped and not values & dropped  # deleted, not only superseded
    assert ch.command(f"SELECT count() FROM {db}.identity_nodes") == len(sliced_graph)


def test_pairs_resolve_under_the_first_seed_without_a_hash_collision(settings: Settings, ch,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's key map (sql/identity/run_keys_table.sql) is keyed by a seeded 64-bit hash: when a seed's hashes
    collide the run takes the next one, and map and probes agree on it; when every seed collides the run stops
    loudly and leaves no map behind. Collisions are forced by refusing seeds 0 and 1 (then all of them)."""
    db = settings.clickhouse_database
    quiet = lambda _: None  # noqa: E731
    for batch in world(6, batches=2):
        produce_all(settings, [(None, json.dumps(e).encode()) for e in batch])
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=quiet)
    stitch_once(settings, ch, log=quiet)
    edges_sql = f"SELECT src, dst, sum(events) FROM {db}.identity_edges GROUP BY src, dst ORDER BY src, dst"
    first_graph, first_edges = _graph(ch, db), ch.query(edges_sql).result_rows
    assert len(first_edges) > 100

    original, used = run_module._sql, []

    def refusing(lowest: int):
        def sql(name: str, database: str) -> str:
            if name == "run_keys_distinct":
                return f"SELECT {{seed:UInt64}} >= {lowest}"
            if name == "insert_run_keys":
                used.append(name)
            return original(name, database)
        return sql

    monkeypatch.setattr(run_module, "_sql", refusing(2))
    commands = []
    real_command = ch.command
    monkeypatch.setattr(ch, "command", lambda sql, *a, **k: (commands.append(k.get("parameters")), real_command(
        sql, *a, **k))[1])
    stitch_once(settings, ch, full_rebuild=True, log=quiet)
    assert used and {"seed": 2} in commands and {"seed": 0} in commands  # tried 0, built under 2
    assert _graph(ch, db) == first_graph and ch.query(edges_sql).result_rows == first_edges

    monkeypatch.setattr(run_module, "_sql", refusing(run_module.KEY_SEEDS))
    with pytest.raises(RuntimeError, match="share a 64-bit hash"):
        stitch_once(settings, ch, full_rebuild=True, log=quiet)
    assert not real_command(f"EXISTS TABLE {db}.identity_run_keys")
