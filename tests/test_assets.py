"""The Dagster code location on real resources: materialize() the assets and read what the UI would show."""

from __future__ import annotations

import json

import pytest
from dagster import materialize

from sendflowr.clickhouse import password_for
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr_assets.assets.ingestion import events
from sendflowr_assets.checks.ingestion_checks import INGESTION_CHECKS
from sendflowr_assets.definitions import defs
from sendflowr_assets.resources import SendflowrResource

pytestmark = pytest.mark.integration


def _resource(settings: Settings) -> SendflowrResource:
    return SendflowrResource(
        clickhouse_url=settings.clickhouse_url, clickhouse_user=settings.clickhouse_user,
        clickhouse_password=password_for(settings), clickhouse_database=settings.clickhouse_database,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers, kafka_topic=settings.kafka_topic)


def _event(i: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "event_type": "opened", "occurred_at": "2026-10-01T10:00:00Z",
                       "identifiers": {"email": f"person{i % 50}@example.com"}}).encode()


def test_definitions_load_with_jobs_schedule_and_checks() -> None:
    repo = defs.get_repository_def()
    assert {"ingest_events", "sendflowr_all"} <= {job.name for job in repo.get_all_jobs()}
    assert repo.get_schedule_def("ingest_schedule").cron_schedule == Settings().ingest_cron
    check_names = {key.name for check in INGESTION_CHECKS for key in check.check_keys}
    assert check_names == {"no_duplicate_event_ids", "no_events_from_the_future", "offsets_contiguous"}


def test_materialize_events_reports_counts_and_runs_checks(settings: Settings, ch) -> None:
    messages = [(None, _event(i)) for i in range(300)] + [(None, _event(5)), (None, b"{broken")]
    produce_all(settings, messages)

    result = materialize([events, *INGESTION_CHECKS], resources={"sendflowr": _resource(settings)})

    assert result.success
    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["messages_read"].value == 302
    assert metadata["rows_inserted"].value == 300
    assert metadata["rows_rejected"].value == 1
    assert metadata["duplicates_dropped"].value == 1
    assert metadata["lag_left"].value == 0
    assert metadata["events_per_second"].value > 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"rejected_share_below_threshold": True, "no_duplicate_event_ids": True,
                      "no_events_from_the_future": True, "offsets_contiguous": True}
    assert ch.command(f"SELECT count() FROM {settings.clickhouse_database}.events") == 300


def test_rejected_share_check_fails_above_threshold(settings: Settings) -> None:
    produce_all(settings, [(None, _event(1))] + [(None, b"nope")] * 3)
    result = materialize(
        [events], resources={"sendflowr": _resource(settings)},
        run_config={"ops": {"events": {"config": {"max_rejected_share": 0.5}}}})
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == "rejected_share_below_threshold"
    assert not evaluation.passed
    assert evaluation.metadata["rejected_share"].value == pytest.approx(0.75)
