"""Property-based fuzzing of the OpenAPI schema (schemathesis 4): no input, valid or not, yields a 5xx.

The app serves a real snapshot loaded from ClickHouse (so a 503 "not ready" cannot hide behind the fuzzing), and
schemathesis generates both schema-conforming and schema-violating requests (its default modes) for every
operation. The schema is read from the app at import (it does not depend on data); the module fixture then
points the app at a fresh database holding a small world and loads its snapshot.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC

import pytest
import schemathesis
from api_world import standard_world
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration

_target: dict[str, Settings] = {}
holder = SnapshotHolder(lambda: get_client(_target["settings"]), "unset", 3600)
app = create_app(Settings(api_batch_max_size=50, decision_log_topic=""), holder=holder, refresher=False)
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


_any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates included
_identifiers = st.fixed_dictionaries({}, optional={
    "email": _any_text, "klaviyo_id": _any_text, "phone": _any_text, "external_id": _any_text,
    "universal_id": st.one_of(_any_text, st.from_regex(r"\Asf_[0-9a-f]{16}\Z"))})
_moment = st.one_of(_any_text, st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
                    st.integers(), st.none())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(ids=_identifiers, after=_moment, before=_moment,
       latency=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), _any_text))
def test_any_text_in_any_field_is_never_a_server_error(ids, after, before, latency) -> None:
    """Beyond the schema: arbitrary Unicode (lone surrogates too, as JSON escapes them) in every field."""
    client = TestClient(app, raise_server_exceptions=False)
    window = {"send_after": after, "send_before": before, "latency_estimate_seconds": latency}
    for path, payload in (("/timing-decision", {**ids, **window}), ("/people/lookup", ids),
                          ("/timing-decisions", {**window, "recipients": [ids, ids]})):
        r = client.post(path, content=json.dumps(payload), headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (path, payload, r.text)
