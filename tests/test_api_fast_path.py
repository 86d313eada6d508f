"""POST /timing-decision's fast path (sendflowr_api.decisions.fast_decisions) answers exactly like FastAPI's own
handler: pydantic's JSON parser accepts no body that Python's json + the model rejects, and over HTTP the two
paths give byte-identical responses (decisions, 422s, 401s) on an in-memory snapshot (no services). Coalesced
decisions agree with single ones on both sides of the scalar/column switch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_api_service import _one, _requests, _same, synthetic_snapshot

from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.service import COLUMN_MIN, decide_requests
from sendflowr.decisions.snapshot import DecisionSnapshot, SnapshotHolder
from sendflowr.settings import Settings
from sendflowr.timing.decide import decide_many
from sendflowr_api.app import create_app
from sendflowr_api.models import TimingDecisionRequest

N = 30
START = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"send_after": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
          "send_before": (START + timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ"), "latency_estimate_seconds": 300}
SLOW = "application/json; charset=utf-8"  # a JSON content type the fast path leaves to FastAPI


def _snapshot() -> DecisionSnapshot:
    return synthetic_snapshot(N, seed=5, without_curve=5, version=1)


@pytest.fixture(scope="module", params=["", "s3cret"], ids=["open", "keyed"])
def api(request):
    holder = SnapshotHolder(lambda: None, "unused", 3600)
    holder.current = _snapshot()
    with TestClient(create_app(Settings(api_key=request.param, decision_log_topic=""), holder=holder,
                                     refresher=False)) as client:
        yield client, request.param


def _both(client: TestClient, raw: bytes, key: str | None):
    out = []
    for content_type in ("application/json", SLOW):
        headers = {"Content-Type": content_type, **({"X-API-Key": key} if key is not None else {})}
        r = client.post("/timing-decision", content=raw, headers=headers)
        out.append((r.status_code, r.content))
    return out


BODIES = [
    {"klaviyo_id": "K3", **WINDOW},
    {"email": "Some.One+tag@Corp.io", "phone": "+14155552671", **WINDOW},
    {"external_id": "x-9", "universal_id": "sf_0123456789abcdef", **WINDOW},
    {"klaviyo_id": "K1", **WINDOW, "latency_estimate_seconds": -1},
    {"klaviyo_id": "K1", **WINDOW, "latency_estimate_seconds": "300"},
    {"klaviyo_id": "K1", **WINDOW, "send_after": "2026-01-10T00:00:00"},
    {"klaviyo_id": "K1", **WINDOW, "send_before": WINDOW["send_after"]},
    {"klaviyo_id": "K1", **WINDOW, "send_befor": WINDOW["send_before"]},
    {"email": "not an address", **WINDOW},
    {"email": "user@example.com", **WINDOW, "latency_estimate_seconds": 6 * 86400},
    WINDOW,
]
RAW = [b"", b"{", b"[]", b"null", b'{"klaviyo_id": "K1"}', b'{"klaviyo_id": "\\ud800", "send_after": 1}',
       json.dumps({"klaviyo_id": "K2", **WINDOW}).encode().replace(b"300", b"NaN"),
       b'{"klaviyo_id": "K2", "klaviyo_id": "K4", ' + json.dumps(WINDOW).encode()[1:]]


@pytest.mark.parametrize("raw", [json.dumps(b).encode() for b in BODIES] + RAW)
def test_fast_and_fastapi_paths_answer_byte_for_byte(api, raw) -> None:
    client, key = api
    for presented in ({key or None, "wrong", None} if key else {None}):
        fast, slow = _both(client, raw, presented)
        assert fast == slow, (raw, presented)
        if key and presented != key:  # FastAPI reads the body before the key: bad JSON is a 422 first
            assert fast[0] in (401, 422)


def test_fast_path_serves_the_seed_contract(api) -> None:
    client, key = api
    r = client.post("/timing-decision", json={"klaviyo_id": "K3", **WINDOW}, headers={"X-API-Key": key})
    assert r.status_code == 200
    assert list(r.json())[:3] == ["universal_id", "trigger_timestamp_utc", "confidence_score"]
    if key:
        r = client.post("/timing-decision", json={"klaviyo_id": "K3", **WINDOW}, headers={"X-API-Key": key + "x"})
        assert r.status_code == 401 and r.json() == {"detail": "missing or invalid API key"}


def test_well_formed_requests_never_reach_fastapis_routing(api) -> None:
    """The fast path answers a well-formed request before routing; everything else goes on to FastAPI's route."""
    client, key = api
    route = next(r for r in client.app.router.routes if getattr(r, "path", "") == "/timing-decision")
    reached, inner = [], route.app

    async def counting(scope, receive, send) -> None:
        reached.append(scope["path"])
        await inner(scope, receive, send)

    route.app = counting
    try:
        fast, slow = _both(client, json.dumps({"klaviyo_id": "K3", **WINDOW}).encode(), key or None)
    finally:
        route.app = inner
    assert fast[0] == slow[0] == 200 and fast == slow
    assert reached == ["/timing-decision"]  # the SLOW content type's request only


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=8), st.sampled_from(["2026-01-10T00:00:00Z", "2026-01-10T00:00:00+01:00",
                                                           "2026-01-10T00:00:00", "sf_0123456789abcdef", "\ud800"]))
_fields = st.sampled_from(["email", "klaviyo_id", "phone", "external_id", "universal_id", "send_after",
                           "send_before", "latency_estimate_seconds", "other"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_fields, _scalars), max_size=8), keep_window=st.booleans())
def test_json_parser_accepts_nothing_the_fastapi_path_rejects(pairs, keep_window) -> None:
    items = ([(k, v) for k, v in WINDOW.items()] if keep_window else []) + pairs
    # duplicate keys kept: the text is built by hand, so both parsers see them
    raw = ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items) + "}").encode("utf-8",
                                                                                               "surrogatepass")
    try:
        fast = TimingDecisionRequest.model_validate_json(raw)
    except ValidationError:
        return  # rejected: the request goes to FastAPI's handler
    assert fast == TimingDecisionRequest.model_validate(json.loads(raw))


def test_few_requests_decided_together_agree_with_each_alone() -> None:
    """decide_requests resolves fewer than COLUMN_MIN requests with scalar lookups, more as columns: both agree
    with decide_one, flush sizes either side of the switch."""
    snapshot, now = _snapshot(), datetime.now(UTC)
    reqs = _requests(9, 60)
    at = 0
    for size in (1, 2, COLUMN_MIN - 1, COLUMN_MIN, COLUMN_MIN + 1, 3, 20):
        chunk = reqs[at:at + size]
        at += size
        for req, result in zip(chunk, decide_requests(snapshot, NormalizeCache(), chunk, now), strict=True):
            _same(result, _one(snapshot, req, now))


def test_a_client_gone_mid_body_gets_what_fastapi_gives(api) -> None:
    client, key = api
    app = client.app

    async def post(content_type: bytes) -> list[dict]:
        messages = [{"type": "http.request", "body": b'{"klaviyo_id": "K3", ', "more_body": True},
                    {"type": "http.disconnect"}]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/timing-decision", "raw_path": b"/timing-decision", "root_path": "",
                 "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
                 "headers": [(b"content-type", content_type), (b"x-api-key", key.encode())]}
        await app(scope, receive, send)
        return sent

    fast, slow = (client.portal.call(post, ct) for ct in (b"application/json", SLOW.encode()))
    assert fast == slow and fast[0]["status"] == 400


def test_one_row_decisions_equal_the_vector_rule_field_for_field() -> None:
    """decide_many takes a plain-Python path for one row (a lone API request): on random rows (ties, errors of
    every kind, windows past, short and long) it equals the vector path in every column."""
    from test_timing_decide import CAL, MONDAY, _random_requests

    rng = np.random.default_rng(17)
    curves, evidence, levels, after, before, latency = _random_requests(rng, 400)
    curves[rng.random(400) < 0.02, 5] = np.nan
    curves[rng.random(400) < 0.02, 9] = -1.0
    evidence[rng.random(400) < 0.02] = np.inf
    after[rng.random(400) < 0.02] = np.datetime64("NaT")
    whole = decide_many(curves, evidence, levels, after, before, latency, MONDAY, CAL)
    fields = ("delivery_at", "trigger_at", "confidence", "expected_engagement", "fallback_level", "error_field",
              "error_message", "raw_score")
    for i in range(400):
        one = decide_many(curves[i:i + 1], evidence[i:i + 1], levels[i:i + 1], after[i:i + 1], before[i:i + 1],
                          latency[i:i + 1], MONDAY, CAL)
        for name in fields:
            a, b = getattr(one, name), getattr(whole, name)[i:i + 1]
            assert a.dtype == b.dtype and a.shape == b.shape, (i, name)
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f") or (a.dtype.kind == "M" and np.isnat(a).all()
                                                                            and np.isnat(b).all()), (i, name)
    assert len({f for f in whole.error_field if f}) >= 4  # several kinds of errors were exercised
