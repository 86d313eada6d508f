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
    apply_migrations(fresh.model_copy(update={"events_ttl_days": 30}))
    client = get_client(fresh)
    assert "toIntervalDay(30)" in client.command(f"SHOW CREATE TABLE {fresh.clickhouse_database}.events")
    apply_migrations(fresh.model_copy(update={"events_ttl_days": 0}))
    assert "TTL" not in client.command(f"SHOW CREATE TABLE {fresh.clickhouse_database}.events")


def test_unreachable_clickhouse_is_a_clear_error(base_settings: Settings) -> None:
    from sendflowr.local.processes import free_port

    nowhere = base_settings.model_copy(update={"clickhouse_url": f"http://127.0.0.1:{free_port()}"})
    from sendflowr.clickhouse import ClickHouseUnavailable

    with pytest.raises(ClickHouseUnavailable, match="did not answer"):
        apply_migrations(nowhere, wait=1)


def test_event_ids_written_before_the_hash_column_are_found_by_it(fresh: Settings, tmp_path: Path) -> None:
    """Migration 0018 adds `id_hash`, which the duplicate check probes first (sql/ingest/known_ids.sql): ids
    ingested before it must answer that probe exactly like later ones, whether their part was rewritten yet or
    not."""
    earlier = [m for m in discover() if m.version < 18]
    for migration in earlier:
        (tmp_path / migration.path.name).write_text(migration.path.read_text())
    apply_migrations(fresh, tmp_path)
    client, db = get_client(fresh), fresh.clickhouse_database
    client.command(f"INSERT INTO {db}.event_ids (event_id, kafka_topic, kafka_partition, kafka_offset) "
                   "SELECT concat('old-', toString(number)), 't', 0, number FROM numbers(1000)")
    assert apply_migrations(fresh) == ["0018_event_ids_hash.sql"]
    client.command(f"INSERT INTO {db}.event_ids (event_id, kafka_topic, kafka_partition, kafka_offset) "
                   "SELECT concat('new-', toString(number)), 't', 1, number FROM numbers(1000)")
    [(agree, rows)] = client.query(f"SELECT countIf(id_hash = cityHash64(event_id)), count() FROM {db}.event_ids")\
        .result_rows
    assert (agree, rows) == (2000, 2000)
    probe = ["old-7", "new-7", "old-999", "never-seen"]
    found = client.query(f"SELECT event_id FROM {db}.event_ids PREWHERE id_hash IN "
                         "(SELECT cityHash64(arrayJoin({ids:Array(String)}))) ORDER BY event_id",
                         parameters={"ids": probe}).result_rows
    assert [r[0] for r in found] == ["new-7", "old-7", "old-999"]
