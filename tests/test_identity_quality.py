"""Identity quality on real services: the evaluation counts every personal identifier (exact figures on a
hand-made world), and a hard synthetic world (households, role addresses, ESP merges, placeholders, second
mailboxes, single-source events) through Kafka, ingestion and incremental identity runs: equal to a full
rebuild, people == components of the kept edges, no merged profile split, and far less glue than the rules
before the conflict guard."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_identity_incremental import _graph, _verdicts  # the graph and its verdicts as ClickHouse holds them

from sendflowr.identity.evaluate import score_identity
from sendflowr.identity.graph import EMAIL, EXTERNAL_ID, KLAVIYO_ID, PHONE, Guards
from sendflowr.identity.run import stitch_once
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch, write_ground_truth

pytestmark = pytest.mark.integration
QUIET = lambda _: None  # noqa: E731
# The rules before issue 20: one Klaviyo id per person by count, no conflict guard, customer ids ranked first.
BEFORE = Guards(max_per_type={KLAVIYO_ID: 1, EMAIL: 5, PHONE: 3, EXTERNAL_ID: 3}, exclusive_types=(),
                conflict_kinds=(), type_priority=(KLAVIYO_ID, EXTERNAL_ID, EMAIL, PHONE))


def _load(settings: Settings, ch, events: list[bytes]) -> None:
    produce_all(settings, [(None, line) for line in events])
    ingest_once(settings, ch, IngestOptions(until_caught_up=True), log=QUIET)


def test_score_counts_every_personal_identifier(settings: Settings, ch, tmp_path: Path) -> None:
    """Four people. P1: an email in two spellings, a Klaviyo id, a phone. P2: an email and a Klaviyo id; P2's
    email was seen with P1's phone once (P1 and P2 glue: no two identifiers of one kind meet anywhere). P3: an
    email and a customer id normalization rejects ('guest'), seen together. P4: an email and an old and a new
    Klaviyo id (an ESP-side profile merge)."""
    rows = [("email", "a@x.com", "a@x.com", 1), ("email", " A@X.com", "a@x.com", 1), ("klaviyo_id", "K1", "K1", 1),
            ("phone", "+14155552671", "+14155552671", 1), ("email", "b@x.com", "b@x.com", 2),
            ("klaviyo_id", "K2", "K2", 2), ("email", "c@x.com", "c@x.com", 3), ("external_id", "guest", "guest", 3),
            ("email", "d@x.com", "d@x.com", 4), ("klaviyo_id", "K4old", "K4old", 4),
            ("klaviyo_id", "K4new", "K4new", 4), ("email", "noreply@x.com", "noreply@x.com", None)]
    truth = tmp_path / "identifiers.parquet"
    pq.write_table(pa.table({
        "identifier_type": [r[0] for r in rows], "raw_value": [r[1] for r in rows], "normalized": [r[2] for r in rows],
        "person_id": pa.array([r[3] for r in rows], pa.int64()), "is_generic": [r[3] is None for r in rows],
        "generic_kind": ["junk" if r[3] is None else "" for r in rows],
        "detail": ["junk" if r[3] is None else "" for r in rows]}), truth)
    events = [{"email": "a@x.com", "klaviyo_id": "K1"}, {"klaviyo_id": "K1", "phone": "+14155552671"},
              {"email": " A@X.com"}, {"email": "b@x.com", "klaviyo_id": "K2"},
              {"email": "b@x.com", "phone": "+14155552671"}, {"email": "c@x.com", "external_id": "guest"},
              {"email": "d@x.com", "klaviyo_id": "K4old"}, {"email": "d@x.com", "klaviyo_id": "K4new"},
              {"email": "noreply@x.com", "klaviyo_id": "K2"}]
    _load(settings, ch, [json.dumps({"event_id": f"q{i}", "event_type": "opened", "identifiers": ids,
                                     "occurred_at": f"2026-10-{i + 1:02d}T10:00:00Z"}).encode()
                         for i, ids in enumerate(events)])
    stitch_once(settings, ch, log=QUIET)
    score = score_identity(ch, settings.clickhouse_database, truth)
    # 11 personal raw identifiers (the junk one is no unit); 'guest' is rejected, so not stitched
    assert (score.identifiers, score.unstitched, score.people) == (11, 1, 4)
    # true pairs: P1 C(4,2)=6, P2 1, P3 1, P4 3; predicted: P1+P2 glued (6 units) 15, P4 3
    assert (score.true_pairs, score.predicted_pairs) == (11, 18)
    assert score.precision == pytest.approx(10 / 18) and score.recall == pytest.approx(10 / 11)
    # the evidence connects every pair (the spelling seen alone joins through its value; P3 through the event)
    assert score.achievable_pairs == 11 and score.achievable_recall == 1.0
    assert score.achievable_joined == 10 and score.recall_of_achievable == pytest.approx(10 / 11)
    assert (score.glued_people, score.split_people) == (2, 1) and sorted(score.glued_ids.tolist()) == [1, 2]
    assert (score.merged_profiles, score.merged_profiles_split) == (1, 0)
    assert score_identity(ch, settings.clickhouse_database, tmp_path / "absent.parquet") is None


def test_hard_world_incremental_equals_rebuild_and_meets_the_guards(settings: Settings, ch, tmp_path: Path) -> None:
    db = settings.clickhouse_database
    config = WorldConfig(people=1200, weeks=6, seed=77, household_share=0.25, household_account_share=0.4,
                         business_share=0.08, role_prefixes=("studio", "crew", "orders"), esp_merge_share=0.2,
                         placeholder_share=0.3, second_mailbox_share=0.1, single_source_rate=0.5,
                         klaviyo_phone_rate=0.05, klaviyo_external_rate=0.03, backend_email_rate=0.08)
    world = build_world(config)
    write_ground_truth(world, tmp_path)
    lines = [line for batch in iter_event_batches(world) for line in serialize_batch(batch)]
    third = len(lines) // 3
    for part in (lines[:third], lines[third:2 * third], lines[2 * third:]):  # the world arrives in three runs
        _load(settings, ch, part)
        report = stitch_once(settings, ch, log=QUIET)
    assert report.region_nodes < report.nodes_total  # the last run recomputed only what its events touched
    incremental, verdicts = _graph(ch, db), _verdicts(ch, db)
    reasons = set(verdicts.values())
    assert {"shared identifier (conflict: email)", "shared identifier (degree guard)"} <= reasons

    # people == connected components of the kept edges (the networkx oracle)
    g = nx.Graph()
    g.add_nodes_from(incremental)
    g.add_edges_from((int(s), int(d)) for s, d in ch.query(f"SELECT DISTINCT src, dst FROM {db}.identity_edges")
                     .result_rows if (int(s), int(d)) not in verdicts)
    people: dict[str, set[int]] = {}
    for key, (uid, _, _) in incremental.items():
        people.setdefault(uid, set()).add(key)
    assert {frozenset(p) for p in people.values()} == {frozenset(c) for c in nx.connected_components(g)}

    score = score_identity(ch, db, tmp_path / "identifiers.parquet")
    # a full rebuild reproduces every id, cluster, shared flag and verdict
    stitch_once(settings, ch, full_rebuild=True, log=QUIET)
    assert _graph(ch, db) == incremental and _verdicts(ch, db) == verdicts

    print(f"\nhard world: {score.summary()}")
    assert score.merged_profiles > 20 and score.merged_profiles_split == 0
    assert score.recall_of_achievable >= 0.99 and score.precision >= 0.99

    stitch_once(settings, ch, guards=BEFORE, full_rebuild=True, forget_ids=True, log=QUIET)
    before = score_identity(ch, db, tmp_path / "identifiers.parquet")
    print(f"rules before: {before.summary()}")
    assert before.merged_profiles_split == before.merged_profiles  # the count limit split every merged profile
    assert score.glued_people * 4 < before.glued_people and score.precision > before.precision
