"""The ClickHouse release: servers older than the floor are refused at connect time with a message naming the
floor, and docker-compose.yml pins the very release whose engine (chdb-core) the whole suite runs on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import sendflowr.clickhouse as clickhouse_module
from sendflowr.clickhouse import SERVER_VERSION_FLOOR, ClickHouseTooOld, get_client, require_supported_version

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.mark.parametrize("version", ["25.8.2.29", "25.12.1.1", "26.1.2.1", "24.3", "", "unknown"])
def test_older_servers_are_refused_naming_the_floor(version):
    with pytest.raises(ClickHouseTooOld) as refused:
        require_supported_version(version, "http://ch:8123")
    assert "26.3 or later" in str(refused.value) and "http://ch:8123" in str(refused.value)


@pytest.mark.parametrize("version", ["26.3.9.1", "26.9.2.1", "26.10.1", "27.1.1.5"])
def test_the_floor_and_newer_servers_are_accepted(version):
    require_supported_version(version, "http://ch:8123")  # raises if refused


@pytest.mark.integration
def test_a_real_server_below_the_floor_is_refused_on_connect(clickhouse, monkeypatch):
    client = get_client(clickhouse, with_database=False)
    version = client.server_version
    client.close()
    # Raise the floor above the engine the tests run: the same server must now be refused, before any query.
    monkeypatch.setattr(clickhouse_module, "SERVER_VERSION_FLOOR", (99, 1))
    with pytest.raises(ClickHouseTooOld, match=rf"is version {re.escape(version)}; SendFlowr needs ClickHouse 99\.1"):
        get_client(clickhouse, with_database=False)


@pytest.mark.integration
def test_compose_pins_the_engine_the_suite_runs(clickhouse):
    client = get_client(clickhouse, with_database=False)
    try:
        engine = client.server_version  # chDB reports e.g. 26.9.2.1 for ClickHouse 26.9.2
    finally:
        client.close()
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["clickhouse"]["image"]
    pinned = image.split(":", 1)[1]
    assert engine.split(".")[:3] == pinned.split("."), (
        f"docker-compose.yml runs ClickHouse {pinned} but the tests run engine {engine}: pin the chdb-core release "
        "that carries the compose server (pyproject.toml), or move the compose pin to the tested engine")
    assert tuple(int(p) for p in pinned.split(".")[:2]) >= SERVER_VERSION_FLOOR
