"""Property-based fuzzing of the OpenAPI schema (schemathesis 4): no input, valid or not, yields a 5xx.

The app serves a real snapshot loaded from ClickHouse (so a 503 "not ready" cannot hide behind the fuzzing), and
schemathesis generates both schema-conforming and schema-violating requests (its default modes) for every
operation. The schema is read from the app at import (it does not depend on data); the module fixture then
points the app at a fresh database holding a small world and loads its snapshot.
"""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from api_world import standard_world
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration

_target: dict[str, Settings] = {}
holder = SnapshotHolder(lambda: get_client(_target["settings"]), "unset", 3600)
app = create_app(Settings(api_batch_max_size=50), holder=holder, refresher=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def loaded_world(base_settings: Settings, clickhouse: Settings):
    fresh = base_settings.model_copy(update={"clickhouse_database": f"fz_{uuid.uuid4().hex[:10]}",
                                             "api_batch_max_size": 50})
    apply_migrations(fresh)
    client = get_client(fresh)
    standard_world(client, fresh.clickhouse_database)
    _target["settings"] = fresh
    holder.database = fresh.clickhouse_database
    app.state.settings = fresh
    assert holder.refresh()
    yield
    client.close()


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_yields_a_server_error(case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
