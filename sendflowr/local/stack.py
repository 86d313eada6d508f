"""`sendflowr up` / `sendflowr down`: the whole embedded stack on one machine.

Order: Kafka broker -> ClickHouse endpoint (chDB) -> migrations -> synthetic events into Kafka (once per
state dir) -> `dagster dev` -> a run of every asset, launched through the webserver so it shows in the
UI -> the API. `down` stops them in reverse; data stays under SENDFLOWR_HOME for the next `up`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sendflowr.decisions.arms import demo_control_share
from sendflowr.errors import SendflowrError
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.chdb_access import READER_USER, embedded_password
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.migrations import apply_migrations
from sendflowr.settings import PROJECT_ROOT, Settings, reveal

DAGSTER = "dagster"
API = "api"
WEBHOOKS = "webhooks"
_DAGSTER_YAML = """\
# Written by `sendflowr up`: local SQLite storage under this folder keeps runs and lineage across restarts.
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1   # one ingestion step at a time (asset pool sendflowr_ingest)
  runs:
    max_concurrent_runs: 4
run_retries:
  enabled: true        # a failed ingestion run is retried (its job's dagster/max_retries); other jobs set none
"""


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def _bin(name: str) -> str:
    # The console scripts installed beside this interpreter (the project's venv), else the PATH's.
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SendflowrError(f"`{name}` is not installed; run `make install`")
    return found


def _start_service(settings: Settings, name: str, argv: list[str], env: dict[str, str], health_url: str,
                   host: str, port: int, port_setting: str, timeout: float) -> int:
    """Start a long-running child once: reuse it when it already answers, else spawn and wait for health."""
    pid = processes.running_pid(settings, name)
    if pid is not None and _http_ok(health_url):
        return pid
    processes.require_free_port(host, port, port_setting)
    pid = processes.spawn(settings, name, argv, env=env, cwd=PROJECT_ROOT)
    processes.wait_until(lambda: _http_ok(health_url), timeout=timeout, what=name, pid=pid,
                         log=processes.log_file(settings, name), interval=1.0)
    return pid


def start_dagster(settings: Settings, timeout: float = 180) -> int:
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(_DAGSTER_YAML)
    return _start_service(
        settings, DAGSTER,
        [_bin("dagster"), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(settings.dagster_port)],
        {**settings.as_env(), "DAGSTER_HOME": str(settings.dagster_home)},
        f"http://127.0.0.1:{settings.dagster_port}/server_info", "127.0.0.1", settings.dagster_port,
        "SENDFLOWR_DAGSTER_PORT", timeout)


def api_env(settings: Settings) -> dict[str, str]:
    """The API's environment: on the embedded endpoint it reads as the read-only user, as in docker-compose."""
    env = settings.as_env()
    reader = settings.model_copy(update={"clickhouse_user": READER_USER})
    if not reveal(settings.clickhouse_password) and embedded_password(reader):
        env["SENDFLOWR_CLICKHOUSE_USER"] = READER_USER
    return env


def start_api(settings: Settings, timeout: float = 60) -> int:
    return _start_service(
        settings, API,
        [_bin("uvicorn"), "sendflowr_api.app:app", "--host", settings.api_host, "--port", str(settings.api_port)],
        api_env(settings), f"http://{settings.api_host}:{settings.api_port}/healthz", settings.api_host,
        settings.api_port, "SENDFLOWR_API_PORT", timeout)


def start_webhooks(settings: Settings, timeout: float = 60) -> int:
    return _start_service(
        settings, WEBHOOKS,
        [_bin("uvicorn"), "sendflowr_webhooks.app:app", "--host", settings.webhooks_host,
         "--port", str(settings.webhooks_port)],
        settings.as_env(), f"http://{settings.webhooks_host}:{settings.webhooks_port}/healthz",
        settings.webhooks_host, settings.webhooks_port, "SENDFLOWR_WEBHOOKS_PORT", timeout)


def produce_world_once(settings: Settings, people: int, seed: int) -> None:
    """Generate the synthetic world into Kafka the first time only: a restart must not produce it twice."""
    marker = settings.home / "world" / ".produced"
    if marker.exists():
        print(f"synthetic events already in Kafka ({marker.read_text().strip()}); not producing again")
        return
    command = [sys.executable, "-m", "sendflowr.cli", "generate", "--people", str(people), "--seed", str(seed),
               "--out", str(settings.home / "world")]
    if subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **settings.as_env()}).returncode != 0:
        raise SendflowrError("generating the synthetic world failed (see above)")
    marker.write_text(json.dumps({"people": people, "seed": seed}))


def _api_readiness(base: str, timeout: float = 120.0) -> str:
    """/readyz once the API has loaded its decision snapshot (a background load after start-up); its 503 body
    (why not ready) when no timing run is materialized yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            if "has not finished" not in body or time.monotonic() >= deadline:  # a definite "not ready: why"
                return body
        time.sleep(0.5)


def up(settings: Settings, people: int, seed: int, materialize: bool = True) -> None:
    print(f"state directory: {settings.home}")
    # the demo measures its own uplift: a control arm unless the environment chose a share (docs/EVALUATION.md)
    settings = settings.model_copy(update={"api_control_share": demo_control_share(settings.api_control_share)})
    kafka = LocalKafka(settings)
    kafka.start()
    created = ensure_topic(settings)
    print(f"kafka: {settings.kafka_bootstrap_servers}, topic {settings.kafka_topic!r} "
          f"({'created' if created else 'exists'}, {settings.kafka_partitions} partitions)")
    if settings.decision_log_topic:
        ensure_topic(settings, settings.decision_log_topic)
    chdb_server.start_background(settings)
    applied = apply_migrations(settings)
    print(f"clickhouse: {settings.clickhouse_url} (chDB at {settings.chdb_data_dir}); "
          f"{len(applied)} migration(s) applied")
    produce_world_once(settings, people, seed)
    start_dagster(settings)
    print(f"dagster: http://127.0.0.1:{settings.dagster_port} (DAGSTER_HOME={settings.dagster_home})")
    if materialize:
        launched = subprocess.run([sys.executable, "-m", "sendflowr_assets.launch", "sendflowr_all",
                                   "--port", str(settings.dagster_port)], cwd=PROJECT_ROOT,
                                  env={**os.environ, **settings.as_env()})
        if launched.returncode != 0:
            raise SendflowrError(f"materializing every asset did not succeed; see the run in the Dagster UI "
                                 f"and {processes.log_file(settings, DAGSTER)}")
    start_api(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    print(f"api: {base} (docs {base}/docs)")
    print(f"api readiness: {_api_readiness(base)}")
    start_webhooks(settings)
    print(f"webhooks: http://{settings.webhooks_host}:{settings.webhooks_port}/webhooks/<provider> "
          "(docs/CONNECTORS.md)")
    print("stop everything with `make down` (data stays in the state directory)")


def down(settings: Settings) -> None:
    for name in (WEBHOOKS, API, DAGSTER):
        print(f"{name}: {'stopped' if processes.stop(settings, name) else 'not running'}")
    print(f"clickhouse: {'stopped' if processes.stop(settings, chdb_server.PROCESS_NAME) else 'not running'}")
    kafka = LocalKafka(settings)
    was_running = kafka.is_running()
    kafka.stop()
    print(f"kafka: {'stopped' if was_running else 'not running'}")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start the embedded stack and run every asset once")
    parser.add_argument("--people", type=int, default=5000, help="people in the synthetic world (first start)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic world")
    parser.add_argument("--no-materialize", action="store_true", help="start services only")
    parser.set_defaults(handler=lambda args, settings: up(settings, args.people, args.seed,
                                                          not args.no_materialize) or 0)
    stop = subparsers.add_parser("down", help="stop everything `up` started; data is kept")
    stop.set_defaults(handler=lambda args, settings: down(settings) or 0)
