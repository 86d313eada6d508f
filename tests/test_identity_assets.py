"""Identity stitching on real resources: a synthetic world through Kafka, `events` and `identity_graph`."""

from __future__ import annotations

import json
import re
from contextlib import closing
from pathlib import Path

import networkx as nx
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckSeverity, materialize
from dagster_resources import resource_for

from sendflowr import lease
from sendflowr.clickhouse import get_client
from sendflowr.identity.run import IDENTITY_LEASE, stitch_once
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch, write_ground_truth
from sendflowr_assets.defs.identity.assets import identity_graph
from sendflowr_assets.defs.identity.checks import (
    IDENTITY_CHECKS,
    merge_log_acyclic,
    one_universal_id_per_identifier,
)
from sendflowr_assets.defs.ingest.assets import events

pytestmark = pytest.mark.integration

UID = re.compile(r"^sf_[0-9a-f]{16}$")



def _world_lines(out: Path) -> list[bytes]:
    world = build_world(WorldConfig(people=300, weeks=4, seed=11))
    write_ground_truth(world, out)
    return [line for batch in iter_event_batches(world) for line in serialize_batch(batch)]


def _materialize(settings: Settings, truth: Path, full_rebuild: bool = False):
    result = materialize(
        [events, identity_graph, *IDENTITY_CHECKS], resources={"sendflowr": resource_for(settings)},
        run_config={"ops": {"identity_graph": {"config": {"full_rebuild": full_rebuild,
                                                          "ground_truth": str(truth)}}}})
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # Nothing to check is a warning: no merge yet for merge_log_acyclic, a run of events that read nothing (all was
    # ingested before) for the rejected share. Everything else passes.
    merged = bool(ch_count(settings, "identity_merge_log"))
    read = bool(result.asset_materializations_for_node("events")[0].metadata["messages_read"].value)
    assert {name: e.passed for name, e in checks.items()} == {
        "rejected_share_below_threshold": read, "one_universal_id_per_identifier": True,
        "no_person_over_size_cap": True, "merge_log_acyclic": merged}
    for name, ran in (("merge_log_acyclic", merged), ("rejected_share_below_threshold", read)):
        assert ran or checks[name].severity == AssetCheckSeverity.WARN
    return result.asset_materializations_for_node("identity_graph")[0].metadata


def ch_count(settings: Settings, table: str) -> int:
    with closing(get_client(settings)) as client:
        return int(client.command(f"SELECT count() FROM {settings.clickhouse_database}.{table}"))


def _ids(ch, db: str) -> dict[int, str]:
    rows = ch.query(f"SELECT node_key, universal_id FROM {db}.identity_nodes FINAL").result_rows
    return {int(k): u for k, u in rows}


def _raw_ids(ch, db: str) -> dict[tuple[str, str], str]:
    rows = ch.query(f"SELECT toString(i.identifier_type), i.raw_value, n.universal_id "
                    f"FROM {db}.identity_identifiers AS i FINAL INNER JOIN "
                    f"(SELECT node_key, universal_id FROM {db}.identity_nodes FINAL) AS n "
                    "ON i.node_key = n.node_key WHERE i.reason = ''").result_rows
    return {(t, r): u for t, r, u in rows}


def test_identity_graph_on_a_synthetic_world(settings: Settings, ch, tmp_path: Path) -> None:
    db = settings.clickhouse_database
    lines = _world_lines(tmp_path / "world")
    truth_path = tmp_path / "world" / "identifiers.parquet"
    half = len(lines) // 2
    produce_all(settings, [(None, line) for line in lines[:half]])
    first = _materialize(settings, truth_path)
    assert first["new_events_scanned"].value > 0
    assert first["identifiers_rejected"].value > 0  # the world's junk identifiers (noreply@, 000...)
    assert ch.command(f"SELECT count() FROM {db}.identity_blocked WHERE kind = 'identifier'") == \
        first["identifiers_rejected"].value
    ids_first = _raw_ids(ch, db)

    produce_all(settings, [(None, line) for line in lines[half:]])
    meta = _materialize(settings, truth_path)
    assert meta["new_events_scanned"].value > 0

    # every non-generic ground-truth identifier maps to exactly one universal id of the right shape
    truth = pq.read_table(truth_path).to_pylist()
    ids = _raw_ids(ch, db)
    real = [t for t in truth if not t["is_generic"] and t["person_id"] is not None]
    emitted = {(t, r) for t, r in ch.query(
        f"SELECT DISTINCT id.1, id.2 FROM {db}.events ARRAY JOIN [('email', email), ('klaviyo_id', klaviyo_id), "
        "('phone', phone), ('external_id', external_id)] AS id WHERE id.2 != ''").result_rows}
    seen = [(t["identifier_type"], t["raw_value"]) for t in real if (t["identifier_type"], t["raw_value"]) in emitted]
    assert seen and set(seen) <= set(ids)  # every emitted real identifier is in the graph
    assert all(UID.match(ids[k]) for k in seen)
    per_node = ch.query(f"SELECT count() FROM (SELECT node_key FROM {db}.identity_nodes FINAL GROUP BY node_key "
                        "HAVING uniqExact(universal_id) > 1)").result_rows[0][0]
    assert per_node == 0

    # people == connected components of the accepted edges (blocked = latest verdict in the audit)
    nodes = _ids(ch, db)
    edges = ch.query(f"SELECT src, dst FROM {db}.identity_edges GROUP BY src, dst").result_rows
    blocked = {(int(s), int(d)) for s, d, r in ch.query(
        f"SELECT src, dst, argMax(reason, at) FROM {db}.identity_blocked WHERE kind = 'edge' "
        "GROUP BY src, dst").result_rows if r != "accepted"}
    g = nx.Graph()
    g.add_nodes_from(nodes)
    g.add_edges_from((int(s), int(d)) for s, d in edges if (int(s), int(d)) not in blocked)
    components = {frozenset(c) for c in nx.connected_components(g)}
    people: dict[str, set[int]] = {}
    for key, uid in nodes.items():
        people.setdefault(uid, set()).add(key)
    assert {frozenset(p) for p in people.values()} == components
    assert meta["people_total"].value == len(people)

    precision, recall = meta["pairwise_precision"].value, meta["pairwise_recall"].value
    print(f"\npairwise precision {precision:.4f} recall {recall:.4f}, people {len(people)}, "
          f"blocked edges {len(blocked)}, merges {meta['merges_this_run'].value}")
    assert precision >= 0.95
    assert recall > 0.5

    # identifiers of the first half keep their id, or their id was merged into the new one (merge log)
    merged = dict(ch.query(f"SELECT old_id, new_id FROM {db}.identity_merge_log").result_rows)
    for key, old in ids_first.items():
        new = ids[key]
        while old != new and old in merged:
            old = merged[old]
        assert old == new, key

    # no new events: nothing changes
    again = _materialize(settings, truth_path)
    assert again["new_events_scanned"].value == 0 and again["node_rows_written"].value == 0
    assert again["merges_this_run"].value == 0
    assert _ids(ch, db) == nodes

    # more events for existing people (fresh event ids, identifiers they already had) keep every id
    extra = [json.dumps({"event_id": f"extra-{i}", "event_type": "opened", "occurred_at": "2026-11-02T10:00:00Z",
                         "identifiers": {t["identifier_type"]: t["raw_value"]}}).encode()
             for i, t in enumerate(real[:200]) if (t["identifier_type"], t["raw_value"]) in ids]
    produce_all(settings, [(None, line) for line in extra])
    more = _materialize(settings, truth_path)
    assert more["new_events_scanned"].value == len(extra)
    assert more["ids_changed_this_run"].value == 0 and more["merges_this_run"].value == 0
    assert 0 < more["region_identifiers"].value < more["identifiers_total"].value  # only touched people
    assert _ids(ch, db) == nodes

    # full rebuild from all events reproduces the same ids
    rebuilt = _materialize(settings, truth_path, full_rebuild=True)
    assert rebuilt["full_rebuild"].value
    assert rebuilt["new_events_scanned"].value == ch.command(f"SELECT count() FROM {db}.events")
    assert _ids(ch, db) == nodes
    assert rebuilt["ids_changed_this_run"].value == 0

    # ... and so does a rebuild that forgets every previous id (ids derive from the graph alone)
    report = stitch_once(settings, ch, full_rebuild=True, forget_ids=True, log=lambda _: None)
    assert report.new_events == rebuilt["new_events_scanned"].value
    assert _ids(ch, db) == nodes


def test_identity_checks_catch_corrupt_graphs(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    resource = resource_for(settings)
    for check in IDENTITY_CHECKS:  # no graph, no merge yet: nothing to check is a warning, never a pass
        empty = check(sendflowr=resource)
        assert not empty.passed and empty.severity == AssetCheckSeverity.WARN and empty.metadata["skipped"].value
    # one raw email normalized into two different nodes (say, rules changed without a rebuild)
    for normalized, key in (("a@x.com", 1), ("A@x.com", 2)):  # two inserts: one block would be collapsed
        ch.command(f"INSERT INTO {db}.identity_identifiers VALUES ('email', 'A@x.com', '{normalized}', {key}, '')")
    ch.command(f"INSERT INTO {db}.identity_nodes (node_key, universal_id, updated_at) VALUES "
               "(1, 'sf_0000000000000001', '2026-01-01 00:00:00'), (2, 'sf_0000000000000002', '2026-01-01 00:00:00')")
    ch.command(f"INSERT INTO {db}.identity_merge_log (old_id, new_id, run_id, merged_at) VALUES "
               "('sf_a', 'sf_b', 'r1', now64()), ('sf_b', 'sf_c', 'r2', now64()), ('sf_c', 'sf_a', 'r3', now64())")
    dup = one_universal_id_per_identifier(sendflowr=resource)
    assert not dup.passed and dup.metadata["violations"].value == 1
    cyc = merge_log_acyclic(sendflowr=resource)
    assert not cyc.passed and cyc.metadata["violations"].value == 1


def test_docs_sql_examples_run(settings: Settings, ch) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "IDENTITY-RESOLUTION.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, flags=re.DOTALL)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 6
    for statement in statements:
        sql = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
        ch.query(sql.replace("sendflowr.", f"{settings.clickhouse_database}."))


def test_one_identity_writer_at_a_time(settings: Settings, ch) -> None:
    with lease.hold(ch, settings.clickhouse_database, IDENTITY_LEASE, "someone-else"):
        with pytest.raises(lease.LeaseHeld):
            stitch_once(settings, ch, log=lambda _: None)
    assert stitch_once(settings, ch, log=lambda _: None).people_total == 0


def _msg(i: int, **identifiers: str) -> tuple[None, bytes]:
    return None, json.dumps({"event_id": f"g{i}", "event_type": "opened", "occurred_at": f"2026-10-01T10:00:0{i}Z",
                             "identifiers": identifiers}).encode()


def test_guard_blocks_an_edge_and_audits_it_once(settings: Settings, ch, tmp_path: Path) -> None:
    db = settings.clickhouse_database
    # A phone: profile K1, then K2 while K1 is still in use (event 4): two concurrent profiles never join (K2 is
    # seen only with the phone, so the phone is no conflict node: the per-type limit decides). b@: profile K3, then
    # K4 (an ESP-side profile merge; the email vouches for both): one person.
    phone = "+1 (415) 820-7001"
    produce_all(settings, [_msg(1, phone=phone, klaviyo_id="K1"), _msg(2, phone=phone, klaviyo_id="K2"),
                           _msg(3, email="noreply@shop.com", phone="+14155552671"), _msg(4, klaviyo_id="K1"),
                           _msg(5, email="b@shop.com", klaviyo_id="K3"), _msg(6, email="b@shop.com", klaviyo_id="K4")])
    meta = _materialize(settings, tmp_path / "no-truth.parquet")
    assert "pairwise_precision" not in meta  # no ground truth: metric skipped, run fine
    assert meta["edges_blocked"].value == 1 and "per-type limit: klaviyo_id" in meta["edges_blocked_by_reason"].value
    assert meta["people_total"].value == 4  # {phone, K1}, {K2}, {b@, K3, K4}, {+14155552671}; noreply@ rejected
    assert meta["identifiers_rejected"].value == 1
    rows = ch.query(f"SELECT kind, reason FROM {db}.identity_blocked ORDER BY kind").result_rows
    assert rows == [("edge", "per-type limit: klaviyo_id"), ("identifier", "email: blocked pattern noreply")]
    people = ch.query(f"SELECT emails, klaviyo_ids, phones FROM {db}.identity_people ORDER BY identifiers DESC, "
                      "emails DESC, phones").result_rows
    assert people[0] == (["b@shop.com"], ["K3", "K4"], [])  # the merged profile
    assert people[1] == ([], ["K1"], ["+14158207001"])  # K1: earlier edge wins
    _materialize(settings, tmp_path / "no-truth.parquet")
    assert ch.command(f"SELECT count() FROM {db}.identity_blocked") == 2  # verdicts unchanged: nothing logged
