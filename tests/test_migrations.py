"""Migrations against the real engine: ordered, idempotent, checked, with failures that name the file."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sendflowr.clickhouse import get_client
from sendflowr.migrations import MigrationError, apply_migrations, discover
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh(base_settings: Settings, clickhouse: Settings) -> Settings:
    return base_settings.model_copy(update={"clickhouse_database": f"m_{uuid.uuid4().hex[:10]}"})


def _tables(settings: Settings) -> set[str]:
    client = get_client(settings)
    return {row[0] for row in client.query("SELECT name FROM system.tables WHERE database = {d:String}",
                                           parameters={"d": settings.clickhouse_database}).result_rows}


def test_applies_every_migration_once_in_order(fresh: Settings) -> None:
    applied = apply_migrations(fresh)
    assert applied == [m.path.name for m in discover()]
    assert {"events", "rejected_events", "ingest_ranges", "ingest_staging", "event_ids",
            "schema_migrations"} <= _tables(fresh)
    assert apply_migrations(fresh) == []
    rows = get_client(fresh).query(f"SELECT version FROM {fresh.clickhouse_database}.schema_migrations "
                                   "ORDER BY version").result_rows
    assert [r[0] for r in rows] == sorted(m.version for m in discover())


def test_edited_applied_migration_is_reported(fresh: Settings, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE IF NOT EXISTS ${database}.a (x UInt8) "
                                             "ENGINE = MergeTree ORDER BY x;\n")
    assert apply_migrations(fresh, tmp_path) == ["0001_first.sql"]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE IF NOT EXISTS ${database}.a (x UInt16) "
                                             "ENGINE = MergeTree ORDER BY x;\n")
    with pytest.raises(MigrationError, match="0001_first.sql was changed"):
        apply_migrations(fresh, tmp_path)


def test_failing_migration_names_file_and_statement(fresh: Settings, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE IF NOT EXISTS ${database}.ok (x UInt8) "
                                          "ENGINE = MergeTree ORDER BY x;\n")
    (tmp_path / "0002_broken.sql").write_text("SELECT 1;\nCREATE TABLE ${database}.broken (x NoSuchType) "
                                              "ENGINE = MergeTree ORDER BY x;\n")
    with pytest.raises(MigrationError, match=r"0002_broken.sql failed at statement 2"):
        apply_migrations(fresh, tmp_path)
    assert "ok" in _tables(fresh)  # what succeeded stays applied; rerunning resumes at 0002


def test_badly_named_file_is_refused(fresh: Settings, tmp_path: Path) -> None:
    (tmp_path / "create_things.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="NNNN_lower_snake.sql"):
        apply_migrations(fresh, tmp_path)


def test_events_ttl_follows_the_setting(fresh: Settings) -> None:
    """Events and their ids expire together: an id outlives its event by under an hour (its hour rounds down), so
    the duplicate check never holds ids of events long gone, nor drops a copy of an event still stored."""
    apply_migrations(fresh.model_copy(update={"events_ttl_days": 30}))
    client, db = get_client(fresh), fresh.clickhouse_database
    assert "TTL toDateTime(occurred_at) + toIntervalDay(30)" in client.command(f"SHOW CREATE TABLE {db}.events")
    assert "TTL (occurred_hour + toIntervalDay(30)) + toIntervalHour(1)" in client.command(
        f"SHOW CREATE TABLE {db}.event_ids")
    apply_migrations(fresh.model_copy(update={"events_ttl_days": 7}))
    assert "toIntervalDay(7)" in client.command(f"SHOW CREATE TABLE {db}.event_ids")
    apply_migrations(fresh.model_copy(update={"events_ttl_days": 0}))
    for table in ("events", "event_ids"):
        assert "TTL" not in client.command(f"SHOW CREATE TABLE {db}.{table}")


def test_unreachable_clickhouse_is_a_clear_error(base_settings: Settings) -> None:
    from sendflowr.local.processes import free_port

    nowhere = base_settings.model_copy(update={"clickhouse_url": f"http://127.0.0.1:{free_port()}"})
    from sendflowr.clickhouse import ClickHouseUnavailable

    with pytest.raises(ClickHouseUnavailable, match="did not answer"):
        apply_migrations(nowhere, wait=1)


def _migrated_up_to(settings: Settings, tmp_path: Path, version: int) -> None:
    for migration in discover():
        if migration.version < version:
            (tmp_path / migration.path.name).write_text(migration.path.read_text())
    apply_migrations(settings, tmp_path)


def test_event_ids_ingested_before_they_were_sorted_by_hour_are_carried_over(fresh: Settings, tmp_path: Path) -> None:
    """Migration 0019 rebuilds event_ids sorted by (hour, id hash) from events: every id ingested before it keeps
    its Kafka coordinates and gains its event's hour, and a probe by (hour, id) finds it. A run that failed after
    the exchange is completed by the next, with each id once."""
    _migrated_up_to(fresh, tmp_path, 19)
    client, db = get_client(fresh), fresh.clickhouse_database
    rows = ("SELECT concat('old-', toString(number)) AS id, "
            "toDateTime64('2026-03-30 22:00:00', 3, 'UTC') + number * 600 AS at, "
            "'t' AS topic, number % 3 AS part, number AS off FROM numbers(1000)")
    client.command(f"INSERT INTO {db}.events (event_id, occurred_at, kafka_topic, kafka_partition, kafka_offset) "
                   f"{rows}")
    client.command(f"INSERT INTO {db}.event_ids (event_id, kafka_topic, kafka_partition, kafka_offset) "
                   f"SELECT id, topic, part, off FROM ({rows})")
    [migration] = [m for m in discover() if m.version == 19]
    for statement in migration.statements(db)[:4]:  # up to the exchange: the old table is left as event_ids_next
        client.command(statement)
    assert apply_migrations(fresh) == ["0019_event_ids_by_hour.sql"]
    assert "event_ids_next" not in _tables(fresh)
    expected = client.query(f"SELECT toStartOfHour(occurred_at), event_id, kafka_topic, kafka_partition, kafka_offset "
                            f"FROM {db}.events ORDER BY event_id").result_rows
    got = client.query(f"SELECT occurred_hour, event_id, kafka_topic, kafka_partition, kafka_offset "
                       f"FROM {db}.event_ids ORDER BY event_id").result_rows
    assert got == expected and len(got) == 1000
    assert len({hour for hour, *_ in got}) == 167  # 1000 events ten minutes apart
    probe = [("2026-03-30 23:00:00", "old-7"), ("2026-03-30 22:00:00", "old-7"), ("2026-04-06 20:00:00", "old-999")]
    found = client.query(f"SELECT toString(occurred_hour), event_id FROM {db}.event_ids "
                         "WHERE (occurred_hour, event_id) IN (SELECT toDateTime(d, 'UTC'), i FROM "
                         "(SELECT arrayJoin({probe:Array(Tuple(String, String))}) AS p, p.1 AS d, p.2 AS i)) "
                         "ORDER BY event_id", parameters={"probe": probe}).result_rows
    assert found == [("2026-03-30 23:00:00", "old-7"), ("2026-04-06 20:00:00", "old-999")]  # old-7 at 23:10
