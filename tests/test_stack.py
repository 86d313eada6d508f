"""`sendflowr up` / `down` end to end, as `make demo` runs them: real broker, chDB endpoint, synthetic
world into Kafka, `dagster dev`, a run of every asset launched through the webserver, the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sendflowr.clickhouse import get_client
from sendflowr.local.processes import free_port, port_in_use
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration


def _sendflowr(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sendflowr.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _events(state: Path, clickhouse_port: int) -> int:
    # as any SendFlowr process reaches the endpoint: the client finds the state directory's password itself
    settings = Settings(home=state, clickhouse_url=f"http://127.0.0.1:{clickhouse_port}")
    client = get_client(settings)
    try:
        return client.command("SELECT count() FROM sendflowr.events")
    finally:
        client.close()


def _clickhouse_user_of(state: Path, service: str) -> str:
    pid = (state / "run" / f"{service}.pid").read_text().strip()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"SENDFLOWR_CLICKHOUSE_USER="))


def test_up_materializes_everything_and_down_keeps_data(tmp_path: Path) -> None:
    ports = {"api": free_port(), "dagster": free_port(), "clickhouse": free_port(), "kafka": free_port(),
             "controller": free_port(), "webhooks": free_port()}
    env = {**os.environ,
           "SENDFLOWR_HOME": str(tmp_path / "state"),
           "SENDFLOWR_API_PORT": str(ports["api"]),
           "SENDFLOWR_DAGSTER_PORT": str(ports["dagster"]),
           "SENDFLOWR_WEBHOOKS_PORT": str(ports["webhooks"]),
           "SENDFLOWR_CLICKHOUSE_URL": f"http://127.0.0.1:{ports['clickhouse']}",
           "SENDFLOWR_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['kafka']}",
           "SENDFLOWR_KAFKA_CONTROLLER_PORT": str(ports["controller"])}
    try:
        first = _sendflowr(env, "up", "--people", "300")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "run " in first.stdout and ": SUCCESS" in first.stdout
        manifest = json.loads((tmp_path / "state" / "world" / "manifest.json").read_text())
        ready = _json(f"http://127.0.0.1:{ports['api']}/readyz")
        # the API serves a decision snapshot of the run's timing curves
        assert ready["ready"] is True and ready["timing_version"] >= 1 and ready["people_with_curves"] > 0
        # every synthetic event is valid: each distinct event_id lands exactly once, re-deliveries dropped
        events = _events(tmp_path / "state", ports["clickhouse"])
        assert events == manifest["unique_events"] > 0
        # the endpoint asks for its password; the API reads as the read-only user
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"http://127.0.0.1:{ports['clickhouse']}/?query=SELECT+1", timeout=10)
        assert anonymous.value.code == 403
        assert _clickhouse_user_of(tmp_path / "state", "api") == "sendflowr_api"

        down = _sendflowr(env, "down")
        assert down.returncode == 0, down.stderr
        assert not any(port_in_use("127.0.0.1", port) for port in ports.values())

        again = _sendflowr(env, "up", "--people", "300", "--no-materialize")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "not producing again" in again.stdout
        assert _events(tmp_path / "state", ports["clickhouse"]) == events
        assert _json(f"http://127.0.0.1:{ports['api']}/readyz")["timing_version"] == ready["timing_version"]
    finally:
        _sendflowr(env, "down")


def test_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {**os.environ, "SENDFLOWR_HOME": str(tmp_path / "state"),
               "SENDFLOWR_CLICKHOUSE_URL": f"http://127.0.0.1:{port}"}
        result = _sendflowr(env, "clickhouse", "start", timeout=60)
    assert result.returncode == 2
    assert str(port) in result.stderr and "SENDFLOWR_CLICKHOUSE_URL" in result.stderr
    assert "Traceback" not in result.stderr
