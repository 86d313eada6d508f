"""Static checks of the docker-compose stack (docker-compose.yml, Dockerfile, deploy/, workspace.yaml).

Nothing here needs a Docker engine or the network: the Compose file is validated against the Compose
Specification JSON schema vendored by check-jsonschema, then cross-checked with
sendflowr.settings.Settings, the ClickHouse init SQL, the Dagster instance config and the Dockerfile.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from sendflowr.settings import Settings, reveal

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
WORKSPACE_FILE = ROOT / "workspace.yaml"  # the embedded `dagster dev`'s
COMPOSE_WORKSPACE_FILE = ROOT / "deploy" / "dagster" / "workspace.yaml"
DAGSTER_YAML = ROOT / "deploy" / "dagster" / "dagster.yaml"
CLICKHOUSE_INIT_SQL = ROOT / "deploy" / "clickhouse" / "init" / "01-readonly-api-user.sql"
PYPROJECT = ROOT / "pyproject.toml"

ENV_PREFIX = Settings.model_config["env_prefix"]
APP_SERVICES = ("migrate", "dagster-code-server", "dagster-webserver", "dagster-daemon", "api", "webhooks")
DAGSTER_SERVICES = ("dagster-code-server", "dagster-webserver", "dagster-daemon")
ONE_SHOT = "migrate"  # applies migrations and creates the topic, then exits; the others wait for its success
READONLY_API_USER = "sendflowr_api"
INITDB_DIR = "/docker-entrypoint-initdb.d"
# The modules the image runs: the Dagster code location and the ASGI app of the API.
ENTRY_MODULES = ("sendflowr_assets.definitions", "sendflowr_api.app", "sendflowr_webhooks.app")
# Keys the api may set differently from x-sendflowr-env (it binds 0.0.0.0, reads as sendflowr_api and alone
# holds the API key).
API_ENV_OVERRIDES = {
    f"{ENV_PREFIX}CLICKHOUSE_USER",
    f"{ENV_PREFIX}CLICKHOUSE_PASSWORD",
    f"{ENV_PREFIX}API_HOST",
    f"{ENV_PREFIX}API_KEY",
}
# The webhook receiver binds 0.0.0.0, never touches ClickHouse (so gets the read-only account) and alone
# holds the ESP signing secrets, the routes it serves and the SNS topics it accepts.
WEBHOOKS_ENV_OVERRIDES = {
    f"{ENV_PREFIX}CLICKHOUSE_USER",
    f"{ENV_PREFIX}CLICKHOUSE_PASSWORD",
    f"{ENV_PREFIX}WEBHOOKS_HOST",
    f"{ENV_PREFIX}SENDGRID_VERIFICATION_KEY",
    f"{ENV_PREFIX}MAILGUN_SIGNING_KEY",
    f"{ENV_PREFIX}KLAVIYO_WEBHOOK_SECRET",
    f"{ENV_PREFIX}WEBHOOKS_EVENTS_TOKEN",
    f"{ENV_PREFIX}WEBHOOKS_ROUTES",
    f"{ENV_PREFIX}SNS_TOPIC_ARNS",
}
ENV_OVERRIDES = {"api": API_ENV_OVERRIDES, "webhooks": WEBHOOKS_ENV_OVERRIDES}


# ----------------------------------------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    # PyYAML's safe loader resolves anchors and `<<` merge keys the way Compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def setting_default(name: str) -> Any:
    """Default of a Settings field from the class itself (not the current environment)."""
    return Settings.model_fields[name].default


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        current = env.get(name, "")
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if present else arg
        if op in (":?", "?"):
            if (op == ":?" and not current) or not present:
                raise AssertionError(f"required variable {name} is unset: {arg}")
            return current
        if op in (":+", "+"):
            return arg if (current if op == ":+" else present) else ""
        return current

    return _INTERPOLATION.sub(replace, value)


def interpolated_names(text: str) -> set[str]:
    return {m.group("braced") or m.group("bare") for m in _INTERPOLATION.finditer(text) if m.group(0) != "$$"}


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: line without '=': {line!r}"
        values[key.strip()] = value.strip()
    return values


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, target) pairs of a service, for the short and the long port syntax."""
    pairs: list[tuple[int, int]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            assert published is not None, f"port {entry} is not published"
            pairs.append((int(interpolate(str(published), {})), int(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {entry!r} is exposed but not published with a fixed host port"
        pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return test if isinstance(test, str) else " ".join(test or [])


def command_argv(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_cmd() -> list[str]:
    cmds = [args for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    last = cmds[-1]
    return json.loads(last) if last.startswith("[") else shlex.split(last)


def built_from_dockerfile(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        return (ROOT / build).resolve() == ROOT and DOCKERFILE.is_file()
    context = (ROOT / build.get("context", ".")).resolve()
    return context == ROOT and build.get("dockerfile", "Dockerfile") == "Dockerfile"


def image_copies() -> dict[str, Path]:
    """Destination in the image -> file in the repository, for the final stage's plain COPY instructions."""
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for i, a in dockerfile_instructions() if i == "ENV")))
    copies = {}
    for instruction, args in dockerfile_instructions():
        parts = shlex.split(args)
        if instruction == "COPY" and not any(p.startswith("--from") for p in parts) and len(parts) == 2:
            destination = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), parts[1])
            copies[destination] = ROOT / parts[0]
    return copies


def repo_file(path: str) -> Path:
    """A file a container command names: the repository file the Dockerfile copied there, else a repo path."""
    return image_copies().get(path, ROOT / path)


def workspace_modules(workspace: Path) -> set[str]:
    config = yaml.safe_load(workspace.read_text())
    modules = set()
    for entry in config.get("load_from", []):
        for kind, target in entry.items():
            if kind == "python_module":
                modules.add(target if isinstance(target, str) else target["module_name"])
    return modules


def referenced_modules(argv: list[str]) -> set[str]:
    """Python modules a container command loads: uvicorn's module:attr, `-m mod`, dagster `-w` files."""
    if not argv:
        return set()
    modules: set[str] = set()
    program = Path(argv[0]).name
    if program == "uvicorn":
        positional = [a for a in argv[1:] if ":" in a and not a.startswith("-")]
        modules.update(a.split(":", 1)[0] for a in positional)
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-m" and program.startswith("python"):
            modules.add(value)
        if flag in ("-w", "--workspace") and program.startswith("dagster"):
            modules.update(workspace_modules(repo_file(value)))
        if flag in ("-m", "--module-name") and program.startswith("dagster"):
            modules.add(value)
    return modules


def strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def sql_statements(sql: str) -> list[str]:
    return [" ".join(part.split()) for part in strip_sql_comments(sql).split(";") if part.strip()]


# ------------------------------------------------------------------------------------ schema validation


def compose_spec_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text(encoding="utf-8"))


def schema_errors(document: Any) -> list[str]:
    schema = compose_spec_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_compose_file_is_valid_against_the_compose_spec_schema():
    errors = schema_errors(load_compose())
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(errors)


def test_the_compose_schema_rejects_an_invalid_file():
    # Guards the test above against a schema that accepts anything.
    document = load_compose()
    document["services"]["api"]["healthcheck"]["retry"] = 3  # misspelled key
    document["services"]["api"]["depends_on"]["clickhouse"]["condition"] = "healthy"  # not an enum value
    errors = schema_errors(document)
    assert any("healthcheck" in e for e in errors), errors
    assert any("depends_on" in e for e in errors), errors


def test_check_jsonschema_cli_accepts_the_compose_file():
    # The same check as `check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml`.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------- service contract


def test_expected_services_are_defined():
    assert set(services()) == {"kafka", "clickhouse", "postgres", *APP_SERVICES}


def test_migrate_is_a_one_shot_that_every_sendflowr_service_waits_for():
    all_services = services()
    migrate = all_services[ONE_SHOT]
    assert migrate["restart"] == "no", "a one-shot must not be restarted after it exits"
    argv = command_argv(migrate["command"])
    assert argv[:2] == ["sendflowr", "migrate"] and "--with-topic" in argv, argv
    # the flag exists: the CLI parses it (migrations and topic, both idempotent)
    from sendflowr.cli import build_parser

    assert build_parser().parse_args(argv[1:]).with_topic is True
    assert {k: v["condition"] for k, v in migrate["depends_on"].items()} == {
        "kafka": "service_healthy", "clickhouse": "service_healthy"}
    for name in APP_SERVICES:
        if name != ONE_SHOT:
            spec = all_services[name]["depends_on"].get(ONE_SHOT)
            assert spec == {"condition": "service_completed_successfully"}, f"{name} does not wait for migrate"
    for name in ("kafka", "clickhouse", "postgres"):
        assert ONE_SHOT not in (all_services[name].get("depends_on") or {}), f"{name} must not wait for migrate"


@pytest.mark.parametrize("name", ["kafka", "clickhouse", "postgres", *(s for s in APP_SERVICES if s != ONE_SHOT)])
def test_every_service_has_a_healthcheck(name):
    service = services()[name]
    healthcheck = service.get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
    test = healthcheck.get("test")
    argv = [test] if isinstance(test, str) else list(test or [])
    assert argv and argv[0] != "NONE", f"{name}: healthcheck test is empty or NONE"
    if argv[0] in ("CMD", "CMD-SHELL"):
        assert len(argv) > 1 and all(part.strip() for part in argv[1:]), f"{name}: empty healthcheck command"


def test_sendflowr_variables_are_settings_fields():
    fields = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", text))
    for service in services().values():
        used |= {key for key in environment(service) if key.upper().startswith(ENV_PREFIX)}
    assert used, "docker-compose.yml passes no SENDFLOWR_* variable"
    unknown = sorted(used - fields)
    assert not unknown, f"not fields of sendflowr.settings.Settings: {unknown}"


def test_sendflowr_environment_is_one_shared_list():
    shared = {key: str(value) for key, value in load_compose()["x-sendflowr-env"].items()}
    assert shared, "x-sendflowr-env is empty"
    for name in APP_SERVICES:
        env = environment(services()[name])
        missing = sorted(set(shared) - set(env))
        assert not missing, f"{name} lacks shared variables {missing}"
        allowed = ENV_OVERRIDES.get(name, set())
        changed = sorted(k for k, v in shared.items() if env[k] != v and k not in allowed)
        assert not changed, f"{name} overrides shared SENDFLOWR_* values {changed}"
        extra = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in shared and k not in allowed)
        assert not extra, f"{name} sets SENDFLOWR_* variables outside x-sendflowr-env: {extra}"


@pytest.mark.parametrize("env_source", ["compose defaults", ".env.example"])
@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_environment_builds_valid_settings(name, env_source, monkeypatch):
    dotenv = {} if env_source == "compose defaults" else read_env_file(ENV_EXAMPLE)
    all_services = services()
    env = {k: interpolate(v, dotenv) for k, v in environment(all_services[name]).items()}
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    settings = Settings()  # raises on a value Settings cannot parse

    clickhouse = all_services["clickhouse"]
    clickhouse_env = {k: interpolate(v, dotenv) for k, v in environment(clickhouse).items()}
    assert settings.clickhouse_host == "clickhouse"
    assert settings.clickhouse_port in {target for _, target in published_ports(clickhouse)}
    assert settings.clickhouse_database == clickhouse_env["CLICKHOUSE_DB"]

    kafka_env = environment(all_services["kafka"])
    assert settings.kafka_bootstrap_servers in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.kafka_partitions == int(kafka_env["KAFKA_NUM_PARTITIONS"])

    if name in ("api", "webhooks"):
        assert settings.clickhouse_user == READONLY_API_USER
        assert reveal(settings.clickhouse_password) != clickhouse_env["CLICKHOUSE_PASSWORD"]
    else:
        assert settings.clickhouse_user == clickhouse_env["CLICKHOUSE_USER"] != READONLY_API_USER
        assert reveal(settings.clickhouse_password) == clickhouse_env["CLICKHOUSE_PASSWORD"]


def test_published_ports_match_settings_defaults():
    clickhouse_url = urlsplit(setting_default("clickhouse_url"))
    kafka_port = int(setting_default("kafka_bootstrap_servers").split(",")[0].rsplit(":", 1)[1])
    expected = {
        "api": setting_default("api_port"),
        "webhooks": setting_default("webhooks_port"),
        "dagster-webserver": setting_default("dagster_port"),
        "clickhouse": clickhouse_url.port or 8123,
        "kafka": kafka_port,
    }
    published = {
        name: sorted(port for port, _ in published_ports(service))
        for name, service in services().items()
        if published_ports(service)
    }
    assert published == {name: [port] for name, port in expected.items()}

    # The processes listen on the ports that are published.
    all_services = services()
    api_argv = command_argv(all_services["api"]["command"])
    assert int(api_argv[api_argv.index("--port") + 1]) in {t for _, t in published_ports(all_services["api"])}
    web_argv = command_argv(all_services["dagster-webserver"]["command"])
    assert int(web_argv[web_argv.index("-p") + 1]) in {
        t for _, t in published_ports(all_services["dagster-webserver"])
    }
    hooks_argv = command_argv(all_services["webhooks"]["command"])
    assert int(hooks_argv[hooks_argv.index("--port") + 1]) in {t for _, t in published_ports(all_services["webhooks"])}
    shared = load_compose()["x-sendflowr-env"]
    assert int(shared[f"{ENV_PREFIX}API_PORT"]) == expected["api"]
    assert int(shared[f"{ENV_PREFIX}WEBHOOKS_PORT"]) == expected["webhooks"]
    assert int(shared[f"{ENV_PREFIX}DAGSTER_PORT"]) == expected["dagster-webserver"]


def test_depends_on_targets_exist_and_wait_for_health():
    all_services = services()
    seen = 0
    for name, service in all_services.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form with a condition"
        for target, spec in depends_on.items():
            seen += 1
            assert target in all_services, f"{name} depends on unknown service {target}"
            assert target != name, f"{name} depends on itself"
            condition = (spec or {}).get("condition")
            if target == ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                continue
            assert condition == "service_healthy", f"{name} -> {target}: {condition}"
            assert all_services[target].get("healthcheck"), f"{name} waits for {target} (no healthcheck)"
    assert seen, "no depends_on at all"
    assert set(all_services["dagster-code-server"]["depends_on"]) >= {"kafka", "clickhouse", "postgres"}
    for name in ("dagster-webserver", "dagster-daemon"):
        assert set(all_services[name]["depends_on"]) >= {"postgres", "dagster-code-server"}, name
    assert "clickhouse" in all_services["api"]["depends_on"]


def test_named_volumes_are_declared_and_hold_the_state():
    document = load_compose()
    declared = set(document.get("volumes") or {})
    mounts: dict[str, dict[str, str]] = {}
    for name, service in document["services"].items():
        for volume in service.get("volumes") or []:
            source, target = (
                (volume.get("source"), volume.get("target"))
                if isinstance(volume, dict)
                else volume.split(":")[:2]
            )
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared named volume {source}"
                mounts.setdefault(name, {})[target] = source
            else:
                assert source and (ROOT / source).exists(), f"{name} bind-mounts missing path {source}"
    assert "/var/lib/clickhouse" in mounts.get("clickhouse", {})
    assert "/var/lib/postgresql/data" in mounts.get("postgres", {})
    kafka_log_dirs = environment(document["services"]["kafka"])["KAFKA_LOG_DIRS"]
    assert kafka_log_dirs in mounts.get("kafka", {}), "Kafka's log dir is not on a named volume"
    storage = {mounts.get(name, {}).get("/opt/dagster/home/storage") for name in DAGSTER_SERVICES}
    assert len(storage) == 1 and None not in storage, "the Dagster containers do not share one storage volume"


def test_no_password_is_written_in_the_compose_file():
    document = load_compose()
    envs = [environment(service) for service in document["services"].values()]
    for key, value in document.items():
        if key.startswith("x-") and key.endswith("-env"):
            envs.append({k: str(v) for k, v in value.items()})
    checked = 0
    reference = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}$")
    for env in envs:
        for key, value in env.items():
            if "PASSWORD" in key.upper():
                checked += 1
                assert reference.match(value), f"{key} is not read from the environment: {value!r}"
                default = value.partition("-")[2].rstrip("}")
                assert not default or "change-me" in default, f"{key}: default {default!r} is no placeholder"
    assert checked >= 4, "expected ClickHouse admin, ClickHouse API and Postgres passwords"


def test_env_example_lists_every_interpolated_variable():
    documented = read_env_file(ENV_EXAMPLE)
    used = interpolated_names(COMPOSE_FILE.read_text())
    assert used, "docker-compose.yml interpolates no variable"
    missing = sorted(used - set(documented))
    assert not missing, f".env.example does not document {missing}"
    for key, value in documented.items():
        if "PASSWORD" in key:
            assert "change-me" in value, f".env.example holds a real-looking password for {key}"


# -------------------------------------------------------------------------------------------- the stores


def test_kafka_is_a_single_kraft_node_with_internal_and_host_listeners():
    all_services = services()
    kafka = all_services["kafka"]
    assert kafka["image"] == f"apache/kafka:{setting_default('kafka_version')}"
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_NUM_PARTITIONS"]) == setting_default("kafka_partitions")
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert int(env[key]) == 1, key

    cluster_id = interpolate(env["CLUSTER_ID"], {})
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64 UUID"

    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    node_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node_id == env["KAFKA_NODE_ID"]
    assert voter.rsplit(":", 1)[1] == listeners[controller].rsplit(":", 1)[1]

    internal = load_compose()["x-sendflowr-env"][f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS"]
    assert internal in advertised.values(), "containers' bootstrap address is not advertised"
    assert internal.split(":")[0] == "kafka" and internal.split(":")[1] == "19092"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    ((published, target),) = published_ports(kafka)
    assert f"localhost:{published}" in advertised.values(), "no host listener on the published port"
    host_listener = next(name for name, addr in advertised.items() if addr == f"localhost:{published}")
    assert listeners[host_listener].rsplit(":", 1)[1] == str(target)

    check = healthcheck_text(kafka)
    assert re.search(r"/opt/kafka/bin/(kafka-broker-api-versions|kafka-topics)\.sh", check), check

    # One broker: the events topic cannot have more replicas than brokers, and acks=all with
    # min.insync.replicas above the replication factor would refuse every produce.
    settings_env = load_compose()["x-sendflowr-env"]
    replication = int(settings_env[f"{ENV_PREFIX}KAFKA_REPLICATION_FACTOR"])
    min_isr = int(settings_env[f"{ENV_PREFIX}KAFKA_MIN_INSYNC_REPLICAS"])
    brokers = len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    assert min_isr <= replication <= brokers == 1
    assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == replication
    assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == min_isr


def test_clickhouse_server_is_pinned_and_checked_on_ping():
    # The pin is the engine the suite runs and at least the floor: tests/test_clickhouse_version.py.
    clickhouse = services()["clickhouse"]
    image = clickhouse["image"]
    assert re.fullmatch(r"clickhouse/clickhouse-server:\d+\.\d+\.\d+", image), image
    check = healthcheck_text(clickhouse)
    assert "/ping" in check and ("wget" in check or "clickhouse-client" in check), check
    assert ":8123/ping" in check


def test_postgres_is_checked_with_pg_isready():
    postgres = services()["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in healthcheck_text(postgres)


def test_api_reads_clickhouse_as_the_read_only_user():
    all_services = services()
    api_env = environment(all_services["api"])
    assert api_env[f"{ENV_PREFIX}CLICKHOUSE_USER"] == READONLY_API_USER
    api_password = api_env[f"{ENV_PREFIX}CLICKHOUSE_PASSWORD"]
    clickhouse = all_services["clickhouse"]
    clickhouse_env = environment(clickhouse)
    assert interpolated_names(api_password) != interpolated_names(clickhouse_env["CLICKHOUSE_PASSWORD"])
    for name in DAGSTER_SERVICES:
        assert environment(all_services[name])[f"{ENV_PREFIX}CLICKHOUSE_USER"] != READONLY_API_USER
    assert clickhouse_env.get("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT") == "1", "admin cannot CREATE USER"

    # The init SQL: a read-only user, SELECT on the SendFlowr database and nothing else, no password.
    database = setting_default("clickhouse_database")
    assert clickhouse_env["CLICKHOUSE_DB"] == database
    statements = sql_statements(CLICKHOUSE_INIT_SQL.read_text())
    user = re.escape(READONLY_API_USER)
    create = [s for s in statements if re.match(rf"(?i)CREATE USER (IF NOT EXISTS )?{user}\b", s)]
    assert len(create) == 1, statements
    assert re.search(r"(?i)\bSETTINGS\b.*\breadonly\s*=\s*1\b", create[0]), create[0]
    assert not re.search(r"(?i)\bBY\s+'", create[0]), "a password is written in the init SQL"
    grants = [s for s in statements if re.match(rf"(?i)GRANT\b.*\bTO {user}\b", s)]
    assert grants, "no GRANT to the API user"
    for grant in grants:
        match = re.fullmatch(rf"(?i)GRANT (.+?) ON (\S+) TO {user}", grant)
        assert match, grant
        assert match.group(1).strip().upper() == "SELECT", f"API user gets more than SELECT: {grant}"
        assert match.group(2) == f"{database}.*", grant

    # ... mounted where the image runs it, and followed by the Compose-generated password file.
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in clickhouse["volumes"]]
    sql_target = next(
        (m.split(":")[1] for m in mounts if Path(m.split(":")[0]).name == CLICKHOUSE_INIT_SQL.name), None
    )
    assert sql_target and sql_target.startswith(f"{INITDB_DIR}/")
    assert (ROOT / next(m.split(":")[0] for m in mounts if m.split(":")[1] == sql_target)).resolve() == (
        CLICKHOUSE_INIT_SQL.resolve()
    )
    configs = load_compose()["configs"]
    password_files = [c for c in clickhouse.get("configs", []) if c["target"].startswith(f"{INITDB_DIR}/")]
    assert len(password_files) == 1
    assert Path(password_files[0]["target"]).name > Path(sql_target).name, "password set before user exists"
    content = configs[password_files[0]["source"]]["content"]
    assert re.search(rf"(?i)ALTER USER {user} IDENTIFIED\b.*\bHOST ANY", " ".join(content.split())), content
    assert api_password in content, "API password in ClickHouse differs from the one the API uses"


# ----------------------------------------------------------------------------------- image and Dagster


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_image_entry_points_reference_existing_modules(module):
    all_services = services()
    app_services = [name for name, service in all_services.items() if built_from_dockerfile(service)]
    assert sorted(app_services) == sorted(APP_SERVICES)
    referenced = referenced_modules(dockerfile_cmd())
    for name in app_services:
        referenced |= referenced_modules(command_argv(all_services[name].get("command")))
    assert module in referenced, f"{module} is not run by the image (found {sorted(referenced)})"
    expected_path = ROOT.joinpath(*module.split(".")).with_suffix(".py").relative_to(ROOT)
    assert module_file(module), f"{module} does not exist in the repository (no {expected_path})"


def test_image_entry_points_reference_no_unknown_module():
    all_services = services()
    referenced = referenced_modules(dockerfile_cmd())
    for service in all_services.values():
        if built_from_dockerfile(service):
            referenced |= referenced_modules(command_argv(service.get("command")))
    assert referenced, "no module found in the image's commands"
    assert referenced <= set(ENTRY_MODULES), sorted(referenced - set(ENTRY_MODULES))


def test_api_healthcheck_path_is_served_by_the_api():
    check = healthcheck_text(services()["api"])
    match = re.search(r"https?://[^/'\"\s]+(/[A-Za-z0-9_\-/]*)", check)
    assert match, check
    path = match.group(1)
    sources = "\n".join(p.read_text() for p in (ROOT / "sendflowr_api").rglob("*.py"))
    assert re.search(rf"['\"]{re.escape(path)}['\"]", sources), f"no route {path} in sendflowr_api/"


def test_dockerfile_builds_the_project_with_dagster_postgres():
    instructions = dockerfile_instructions()
    stages = [args for instruction, args in instructions if instruction == "FROM"]
    assert stages == ["python:3.11-slim AS wheel", "python:3.11-slim"], stages
    env_text = " ".join(args for instruction, args in instructions if instruction == "ENV")
    home = re.search(r"DAGSTER_HOME=(\S+)", env_text)
    assert home and home.group(1) == "/opt/dagster/home"
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert re.search(r"pip install[^&;]*\bdagster-postgres\b", runs), "dagster-postgres is not installed"
    # The project goes in as a wheel (SQL as package data), never as an editable install of a source tree.
    assert re.search(r"pip wheel[^&;]*\s\.(\s|$)", runs), "the project is not built as a wheel"
    assert re.search(r"pip install[^&;]*\.whl", runs), "the project's wheel is not installed"
    assert not re.search(r"pip install[^&;]*\s-e\s", runs), "editable install in the image"

    copies = [shlex.split(args) for instruction, args in instructions if instruction == "COPY"]
    for parts in copies:
        if any(p.startswith("--from") for p in parts):
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    copied = image_copies()
    assert copied["/opt/dagster/home/dagster.yaml"] == DAGSTER_YAML
    assert copied["/opt/dagster/home/workspace.yaml"] == COMPOSE_WORKSPACE_FILE


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "exceptions (!) are not supported by this check"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in (p.strip("/") for p in patterns):
            for prefix in prefixes:
                if fnmatch.fnmatchcase(prefix, pattern):
                    return True
                if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], pattern[3:]):
                    return True
        return False

    needed = [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "deploy/dagster/dagster.yaml",
        "deploy/dagster/workspace.yaml",
        "sql/__init__.py",
        "sql/ingest/new_events.sql",
        "sql/migrations/0001_events.sql",
        "sendflowr/settings.py",
        "sendflowr/schemas/event.v1.json",
        "sendflowr_api/app.py",
        "sendflowr_assets/definitions.py",
    ]
    assert not [p for p in needed if ignored(p)], [p for p in needed if ignored(p)]
    for secret_or_local in (".env", ".venv/bin/python", ".venv-pinned/bin/python", ".git/HEAD", ".sendflowr/chdb"):
        assert ignored(secret_or_local), f"{secret_or_local} would be sent to the Docker build"


def test_dagster_yaml_uses_postgres_storage_from_env(tmp_path):
    config = yaml.safe_load(DAGSTER_YAML.read_text())
    postgres_db = config["storage"]["postgres"]["postgres_db"]
    expected = {
        "hostname": "DAGSTER_PG_HOST",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }
    for field, variable in expected.items():
        assert postgres_db.get(field) == {"env": variable}, f"{field} must be {{env: {variable}}}"
    assert "postgres_url" not in config["storage"]["postgres"]

    def literal_secrets(node: Any, path: str = "") -> list[str]:
        found = []
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}"
                if re.search(r"password|secret|postgres_url", str(key), re.I) and not (
                    isinstance(value, dict) and set(value) == {"env"}
                ):
                    found.append(here)
                found += literal_secrets(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found += literal_secrets(value, f"{path}[{i}]")
        return found

    assert not literal_secrets(config), literal_secrets(config)

    # Dagster's own instance-config schema accepts the file (shape only; env vars resolve at startup).
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(DAGSTER_YAML, tmp_path / "dagster.yaml")
    validated, _ = dagster_instance_config(str(tmp_path))
    assert "postgres" in validated["storage"]

    # Every variable it reads is set in both Dagster containers, from the same values as Postgres.
    all_services = services()
    postgres_env = environment(all_services["postgres"])
    for name in DAGSTER_SERVICES:
        env = environment(all_services[name])
        for variable in expected.values():
            assert env.get(variable), f"{name} does not set {variable}"
        assert env["DAGSTER_PG_HOST"] in all_services
        assert env["DAGSTER_PG_USER"] == postgres_env["POSTGRES_USER"]
        assert env["DAGSTER_PG_PASSWORD"] == postgres_env["POSTGRES_PASSWORD"]
        assert env["DAGSTER_PG_DB"] == postgres_env["POSTGRES_DB"]


def test_workspace_loads_the_sendflowr_code_location():
    from dagster._core.workspace.config_schema import process_workspace_config

    tool_dagster = tomllib.loads(PYPROJECT.read_text())["tool"]["dagster"]
    # The embedded `dagster dev` loads the module in process ...
    config = yaml.safe_load(WORKSPACE_FILE.read_text())
    result = process_workspace_config(config)
    assert result.success, result.errors
    (entry,) = config["load_from"]
    target = entry["python_module"]
    assert target["module_name"] == tool_dagster["module_name"] == "sendflowr_assets.definitions"
    assert target.get("location_name") == tool_dagster["code_location_name"]
    assert (WORKSPACE_FILE.parent / target["working_directory"]).resolve() == ROOT

    # ... compose's webserver and daemon reach the code server over gRPC, as Dagster documents for deployments.
    config = yaml.safe_load(COMPOSE_WORKSPACE_FILE.read_text())
    result = process_workspace_config(config)
    assert result.success, result.errors
    (entry,) = config["load_from"]
    grpc = entry["grpc_server"]
    all_services = services()
    server = command_argv(all_services["dagster-code-server"]["command"])
    assert server[:3] == ["dagster", "code-server", "start"], server
    assert grpc["host"] == "dagster-code-server" and grpc["host"] in all_services
    assert int(server[server.index("-p") + 1]) == grpc["port"]
    assert server[server.index("-m") + 1] == tool_dagster["module_name"]
    assert server[server.index("--location-name") + 1] == grpc["location_name"] == tool_dagster["code_location_name"]
    health = healthcheck_text(all_services["dagster-code-server"])
    assert "grpc-health-check" in health and f"-p {grpc['port']}" in health
    for name in ("dagster-webserver", "dagster-daemon"):
        argv = command_argv(all_services[name]["command"])
        assert repo_file(argv[argv.index("-w") + 1]).resolve() == COMPOSE_WORKSPACE_FILE.resolve(), name


def test_compose_instance_has_the_embedded_pools_run_queue_and_monitoring(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    from sendflowr.local.stack import _DAGSTER_YAML
    from sendflowr_assets.definitions import defs

    compose = yaml.safe_load(DAGSTER_YAML.read_text())
    embedded = yaml.safe_load(_DAGSTER_YAML)
    # One set of limits for both deployments: the pools the assets declare, one step each, and the run queue.
    assert compose["concurrency"] == embedded["concurrency"]
    assert compose["concurrency"]["pools"]["default_limit"] == 1
    assert compose["run_retries"] == embedded["run_retries"] == {"enabled": True}  # ingestion's dagster/max_retries
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "dagster.yaml").write_text(_DAGSTER_YAML)
    dagster_instance_config(str(tmp_path / "embedded"))  # Dagster's own schema accepts the embedded one too

    # The instance Dagster builds from it (SQLite standing in for Postgres): runs go through the run queue.
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator

    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "dagster.yaml").write_text(yaml.safe_dump({k: v for k, v in compose.items()
                                                                      if k != "storage"}))
    with DagsterInstance.from_config(str(tmp_path / "compose")) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        limits = instance.get_concurrency_config()  # what the daemon's run queue and pools read
        assert limits.run_queue_config.max_concurrent_runs == 4
        assert limits.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_retries_enabled

    monitoring = compose["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["max_runtime_seconds"] > 0
    # Every job carries a max runtime within the instance's backstop, so a hung run ends and its schedule resumes.
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]
    assert {job.name for job in jobs} >= {"ingest_events", "identity", "timing", "sendflowr_all"}
    for job in jobs:
        limit = int(job.tags["dagster/max_runtime"])
        assert 0 < limit <= monitoring["max_runtime_seconds"], job.name
