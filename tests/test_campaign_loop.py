"""End to end, the demo's closed loop on a small world: `sendflowr generate` into the real broker, the assets on the
real engine, `sendflowr campaign` rounds through the decision API under uvicorn (its decision log to Kafka), the
world's true curves answering, the events and decisions ingested, and timing_uplift: the measured uplift is
significant and its interval holds the uplift the ground truth predicts for the same decisions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import materialize
from dagster_resources import resource_for

from sendflowr.campaign import truth
from sendflowr.campaign.cli import campaign
from sendflowr.clickhouse import get_client
from sendflowr.kafka_io import ensure_topic
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, generate
from sendflowr_assets.defs.decisions.assets import UPLIFT_CHECK, decision_log, timing_uplift
from sendflowr_assets.defs.identity.assets import identity_graph
from sendflowr_assets.defs.ingest.assets import events
from sendflowr_assets.defs.timing.assets import timing_curves

pytestmark = pytest.mark.integration
ANCHOR = datetime(2026, 6, 1, tzinfo=UTC)



@pytest.mark.parametrize("with_message_ids", [True, False], ids=["by-message-id", "by-nearest-delivery"])
def test_the_measured_uplift_holds_the_truth_and_is_significant(settings: Settings, tmp_path: Path,
                                                                 with_message_ids: bool) -> None:
    loop = settings.model_copy(update={"decision_log_topic": f"decisions-{uuid.uuid4().hex[:8]}"})
    ensure_topic(loop, loop.decision_log_topic)
    world = tmp_path / "world"
    # A fixed past: the world, the rounds, their arms and outcomes are the same on every run (seeded), so the
    # assertions below hold or fail reproducibly rather than by the luck of the day.
    config = WorldConfig(people=3000, weeks=6, seed=23, end=ANCHOR - timedelta(days=1))
    generate(config, world, to_kafka=loop)
    resources = {"sendflowr": resource_for(loop)}
    assert materialize([events, identity_graph, timing_curves], resources=resources).success

    lines: list[str] = []
    rounds, counts = campaign(loop, world, rounds=3, control_share=0.5, with_message_ids=with_message_ids,
                              now=ANCHOR, log=lines.append)
    decided = sum(r.decided for r in rounds)
    assert len(rounds) == 3 and decided > 0.95 * 3 * 2900 and all(r.events > r.decided for r in rounds)
    starts = [r.window[0] for r in rounds]
    assert [s - starts[0] for s in starts] == [timedelta(weeks=w) for w in range(3)]
    # the last window, its slowest deliveries and the engagement horizon all lie before `now`
    assert rounds[-1].window[1] + timedelta(hours=6 + loop.uplift_horizon_hours) < ANCHOR
    assert counts["sendflowr_api_decision_log_delivered_total"] == decided  # every decision recorded, none lost

    result = materialize([events, decision_log, timing_uplift], resources=resources,
                         run_config={"ops": {"timing_uplift": {"config": {"ground_truth": str(world)}}}})
    assert result.success
    client = get_client(loop)
    assert int(client.command(f"SELECT count() FROM {loop.clickhouse_database}.decision_log")) == decided
    metadata = result.asset_materializations_for_node("timing_uplift")[0].metadata
    report = metadata["report"].value
    overall = report["groups"][0]
    assert overall["kind"] == "overall" and overall["enough_data"]
    # about 98% delivered at once; the world's late deliveries (30 min - 6 h) are the rest
    assert 0.95 < report["compliance"] < 1.0
    assert overall["treatment"]["decisions"] + overall["control"]["decisions"] > 0.95 * decided

    expected = truth.truth_uplift(world)
    assert expected["treatment_decisions"] + expected["control_decisions"] == decided
    low, high = overall["relative_uplift"]["ci95"]
    print(f"measured relative uplift {overall['relative_uplift']['point']:+.3f} [{low:+.3f}, {high:+.3f}], "
          f"truth {expected['relative_uplift']:+.3f}; absolute {overall['uplift']['point']:+.4f} "
          f"{overall['uplift']['ci95']}, truth (opens) {expected['uplift']:+.4f}; "
          f"compliance {report['compliance']:.4f}")
    assert overall["uplift"]["ci95"][0] > 0  # significant at this size
    assert low <= expected["relative_uplift"] <= high  # the interval holds the truth
    assert metadata["ground_truth"].value["relative_uplift"] == pytest.approx(expected["relative_uplift"])
    check = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in check if c.check_name == UPLIFT_CHECK] == [(UPLIFT_CHECK, True)]
