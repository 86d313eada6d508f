"""The Dagster code location on real resources: materialize() the assets and read what the UI would show; the
ingestion sensor against the real broker and engine; the resource's one client per run."""

from __future__ import annotations

import json
import uuid

import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    SensorResult,
    SkipReason,
    asset,
    build_sensor_context,
    instance_for_test,
    materialize,
    validate_run_config,
)
from dagster_resources import resource_for

from sendflowr.kafka_io import ensure_topic, produce_all
from sendflowr.settings import Settings
from sendflowr_assets.definitions import defs
from sendflowr_assets.defs.decisions.assets import decision_log
from sendflowr_assets.defs.ingest.assets import events
from sendflowr_assets.defs.ingest.checks import (
    INGESTION_CHECKS,
    no_duplicate_event_ids,
    no_events_from_the_future,
    no_reused_event_ids,
)
from sendflowr_assets.defs.ingest.sensors import INGEST_JOB, INGEST_SLOT_TAG, ingest_sensor
from sendflowr_assets.resources import SendflowrResource

pytestmark = pytest.mark.integration


def _event(i: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "event_type": "opened", "occurred_at": "2026-10-01T10:00:00Z",
                       "identifiers": {"email": f"person{i % 50}@example.com"}}).encode()


def _spread(values: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [(uuid.uuid4().bytes, value) for value in values]  # random keys: every partition gets some


def test_materialize_events_reports_counts_and_runs_checks(settings: Settings, ch) -> None:
    messages = [(None, _event(i)) for i in range(300)] + [(None, _event(5)), (None, b"{broken")]
    produce_all(settings, messages)

    result = materialize([events, *INGESTION_CHECKS], resources={"sendflowr": resource_for(settings)})

    assert result.success
    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["messages_read"].value == 302
    assert metadata["rows_inserted"].value == 300
    assert metadata["rows_rejected"].value == 1
    assert metadata["duplicates_dropped"].value == 1
    assert metadata["lag_left"].value == 0
    assert metadata["events_per_second"].value > 0
    assert metadata["dagster/row_count"].value == 300
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"rejected_share_below_threshold": True, "no_duplicate_event_ids": True,
                      "no_reused_event_ids": True, "no_events_from_the_future": True, "offsets_contiguous": True}
    assert ch.command(f"SELECT count() FROM {settings.clickhouse_database}.events") == 300

    # The next run inserts 20 rows; the table holds 320: the UI's row count is the table's.
    produce_all(settings, [(None, _event(i)) for i in range(300, 320)])
    metadata = materialize([events], resources={"sendflowr": resource_for(settings)}
                           ).asset_materializations_for_node("events")[0].metadata
    assert (metadata["rows_inserted"].value, metadata["dagster/row_count"].value) == (20, 320)


def test_rejected_share_check_fails_above_threshold(settings: Settings) -> None:
    produce_all(settings, [(None, _event(1))] + [(None, b"nope")] * 3)
    result = materialize(
        [events], resources={"sendflowr": resource_for(settings)},
        run_config={"ops": {"events": {"config": {"max_rejected_share": 0.5}}}})
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == "rejected_share_below_threshold"
    assert not evaluation.passed
    assert evaluation.metadata["rejected_share"].value == pytest.approx(0.75)


def test_ingestion_checks_warn_on_an_empty_table_and_fail_on_violations(settings: Settings, ch) -> None:
    resource, db = resource_for(settings), settings.clickhouse_database
    for check in INGESTION_CHECKS:  # nothing ingested yet: nothing to check is a warning, never a pass
        empty = check(sendflowr=resource)
        assert not empty.passed and empty.severity == AssetCheckSeverity.WARN and empty.metadata["skipped"].value
    columns = "event_id, event_type, occurred_at, kafka_topic, kafka_partition, kafka_offset, ingested_at"
    ch.command(f"INSERT INTO {db}.events ({columns}) VALUES ('a', 'opened', '2026-10-01 10:00:00', "
               f"'{settings.kafka_topic}', 0, 0, '2026-10-01 10:00:00'), ('a', 'opened', '2026-10-01 10:00:00', "
               f"'{settings.kafka_topic}', 0, 1, '2026-10-01 10:00:00'), ('b', 'opened', '2026-10-03 10:00:00', "
               f"'{settings.kafka_topic}', 0, 2, '2026-10-01 10:00:00'), ('c', 'opened', '2026-10-01 10:59:00', "
               f"'{settings.kafka_topic}', 0, 3, '2026-10-02 10:00:00'), ('c', 'opened', '2026-10-01 11:00:00', "
               f"'{settings.kafka_topic}', 0, 4, '2026-10-02 10:00:00')")
    duplicates, future = no_duplicate_event_ids(sendflowr=resource), no_events_from_the_future(sendflowr=resource)
    assert not duplicates.passed and duplicates.severity == AssetCheckSeverity.ERROR
    assert duplicates.metadata["violations"].value == 1
    assert duplicates.metadata["examples"].value == [["a", "2026-10-01 10:00:00", "2"]]  # c's two are two hours
    reused = no_reused_event_ids(sendflowr=resource)  # c, a minute apart across an hour: kept twice, a warning
    assert not reused.passed and reused.severity == AssetCheckSeverity.WARN
    assert reused.metadata["examples"].value == [["c", "2"]]
    assert not future.passed and future.metadata["violations"].value == 1
    assert future.metadata["examples"].value[0][0] == "b"


# ------------------------------------------------------------------------------------------------ the resource

seen: list = []  # what the probe assets saw, in order


@asset
def probe_a(sendflowr: SendflowrResource) -> MaterializeResult:
    client = sendflowr.client()
    seen.append(client)
    return MaterializeResult(metadata={"log_comment": client.command("SELECT getSetting('log_comment')")})


@asset(deps=[probe_a])
def probe_b(sendflowr: SendflowrResource) -> MaterializeResult:
    seen.append(sendflowr.client())
    return MaterializeResult()


def test_a_run_has_one_client_tagged_with_the_run_and_closed_at_the_end(settings: Settings) -> None:
    seen.clear()
    result = materialize([probe_a, probe_b], resources={"sendflowr": resource_for(settings)})
    assert result.success
    assert len(seen) == 2 and seen[0] is seen[1]  # both assets of the run used one client
    # the engine saw the run's tag on the statement
    comment = json.loads(result.asset_materializations_for_node("probe_a")[0].metadata["log_comment"].value)
    assert comment == {"dagster_run_id": result.run_id, "dagster_job": result.dagster_run.job_name}
    assert not seen[0].http.pools  # torn down: its connections are closed

    seen.clear()
    second = materialize([probe_a, probe_b], resources={"sendflowr": resource_for(settings)})
    assert seen[0] is seen[1] and json.loads(second.asset_materializations_for_node("probe_a")[0]
                                             .metadata["log_comment"].value)["dagster_run_id"] == second.run_id


# ------------------------------------------------------------------------------------------------ the sensor


@pytest.fixture
def logged(settings: Settings) -> Settings:
    """The test's settings with its own decision log topic, not created yet (as before the API's first decision)."""
    return settings.model_copy(update={"decision_log_topic": f"decisions-{uuid.uuid4().hex[:10]}"})


def _tick(instance: DagsterInstance, settings: Settings) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources={"sendflowr": resource_for(settings)}) as context:
        return ingest_sensor(context)


def test_the_sensor_launches_a_run_only_for_new_offsets(logged: Settings) -> None:
    job = defs.resolve_job_def(INGEST_JOB)
    resources = {"sendflowr": resource_for(logged)}
    with instance_for_test() as instance:
        assert isinstance(_tick(instance, logged), SkipReason)  # empty topic, no decision log topic yet

        produce_all(logged, _spread([_event(i) for i in range(200)]))
        first = _tick(instance, logged)
        (request,) = first.run_requests
        assert request.asset_selection == [AssetKey("events")]  # the decision log has nothing new
        assert request.tags[INGEST_SLOT_TAG] == "0"
        validate_run_config(job, request.run_config)
        assert _tick(instance, logged).run_requests[0].run_key == request.run_key  # same ranges, same key

        # A run of the slot still in progress: no second run for it.
        instance.create_run_for_job(job_def=job, run_config=request.run_config, tags=request.tags)
        assert "still in progress" in _tick(instance, logged).skip_message

    with instance_for_test() as instance:
        materialize([events], resources=resources, run_config=request.run_config)
        assert "nothing new" in _tick(instance, logged).skip_message  # everything ingested: no run

        produce_all(logged, _spread([_event(i) for i in range(200, 210)]))
        ensure_topic(logged, logged.decision_log_topic)
        produce_all(logged, _spread([b"{not a decision"] * 3), topic=logged.decision_log_topic)
        (both,) = _tick(instance, logged).run_requests
        assert both.asset_selection == [AssetKey("decision_log"), AssetKey("events")]
        assert both.run_key != request.run_key
        result = materialize([events, decision_log], resources=resources, run_config=both.run_config)
        assert result.asset_materializations_for_node("events")[0].metadata["rows_inserted"].value == 10
        assert result.asset_materializations_for_node("decision_log")[0].metadata["rows_rejected"].value == 3
        assert "nothing new" in _tick(instance, logged).skip_message
