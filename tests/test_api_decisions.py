"""The decision API against the real ClickHouse engine: rows written with the migrations' schema, loaded by the
real stores into the snapshot, served through FastAPI (TestClient runs the app in-process)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from api_world import (
    COHORT,
    COHORT_PEAK,
    GLOBAL_PEAK,
    commit,
    derived_uid,
    how,
    peaked_curve,
    standard_world,
    window,
    write_curves,
    z,
)
from fastapi.testclient import TestClient

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
def db(base_settings: Settings, clickhouse: Settings):
    """A fresh migrated database on the session's chDB endpoint (no Kafka here: the decision log is off; its tests
    are tests/test_decision_log.py)."""
    settings = base_settings.model_copy(update={"clickhouse_database": f"api_{uuid.uuid4().hex[:10]}",
                                                "api_batch_max_size": 10_000, "decision_log_topic": ""})
    apply_migrations(settings)
    client = get_client(settings)
    yield settings, client
    client.close()


def make_client(settings: Settings, refresh: bool = True) -> tuple[TestClient, SnapshotHolder]:
    holder = SnapshotHolder(lambda: get_client(settings), settings.clickhouse_database, 3600)
    if refresh:
        holder.refresh()
    return TestClient(create_app(settings, holder=holder, refresher=False)), holder


@pytest.fixture
def world(db):
    settings, client = db
    people = standard_world(client, settings.clickhouse_database)
    api, holder = make_client(settings)
    with api:
        yield api, people, settings, client, holder


def body(**fields) -> dict:
    after, before = window()
    return {"send_after": z(after), "send_before": z(before), "latency_estimate_seconds": 300, **fields}


def test_seed_contract_person_curve_and_key_order(world) -> None:
    api, people, *_ = world
    jane = people["jane"]
    r = api.post("/timing-decision", json=body(email="Jane.Doe@gmail.com", klaviyo_id="k_jane"))
    assert r.status_code == 200, r.text
    assert list(r.json())[:3] == ["universal_id", "trigger_timestamp_utc", "confidence_score"]
    assert r.text.startswith('{"universal_id":"sf_')
    d = r.json()
    assert d["universal_id"] == jane.universal_id and d["fallback_level"] == "person" and d["known_person"]
    assert ISO_Z.match(d["trigger_timestamp_utc"]) and ISO_Z.match(d["delivery_timestamp_utc"])
    delivery = datetime.fromisoformat(d["delivery_timestamp_utc"])
    trigger = datetime.fromisoformat(d["trigger_timestamp_utc"])
    assert delivery - trigger == timedelta(seconds=300)
    assert how(delivery) == jane.peak  # version 1's curve; the uncommitted version 2 peaks at 90
    assert 0 <= d["confidence_score"] <= 1 and d["snapshot_version"].startswith("t1.")


def test_spellings_and_ids_resolve_like_stitching(world) -> None:
    api, people, *_ = world
    jane, kim = people["jane"], people["kim"]
    # a raw spelling the graph never saw normalizes to jane's node
    assert api.post("/timing-decision", json=body(email=" JANE.doe+promo@Gmail.com")).json()["universal_id"] \
        == jane.universal_id
    # a merged-away id resolves to the survivor
    r = api.post("/timing-decision", json=body(universal_id="sf_00000000000000aa")).json()
    assert r["universal_id"] == jane.universal_id and r["fallback_level"] == "person"
    # identifiers of two people: the klaviyo_id decides (guards' type priority)
    assert api.post("/timing-decision", json=body(email="omar@shop.io", klaviyo_id="k_kim")).json()[
        "universal_id"] == kim.universal_id
    # an explicit universal_id wins over identifiers
    assert api.post("/timing-decision", json=body(email="omar@shop.io", universal_id=kim.universal_id)).json()[
        "universal_id"] == kim.universal_id
    # known identifier + a new one: still the known person
    assert api.post("/timing-decision", json=body(phone="+1 (415) 555-2671", external_id="brand-new")).json()[
        "universal_id"] == people["omar"].universal_id


def test_unknown_people_get_stitching_id_cohort_or_global_and_low_confidence(world) -> None:
    api, people, *_ = world
    new = {"email": "someone.new@acme.com", "external_id": "x-991"}
    r = api.post("/timing-decision", json=body(**new)).json()
    assert r["universal_id"] == derived_uid(new) and not r["known_person"]
    assert r["fallback_level"] == "cohort" and how(datetime.fromisoformat(r["delivery_timestamp_utc"])) == COHORT_PEAK
    g = api.post("/timing-decision", json=body(email="maria@elsewhere.org")).json()
    assert g["fallback_level"] == "global" and how(datetime.fromisoformat(g["delivery_timestamp_utc"])) == GLOBAL_PEAK
    assert g["universal_id"] == derived_uid({"email": "maria@elsewhere.org"})
    person = api.post("/timing-decision", json=body(klaviyo_id="k_kim")).json()
    assert g["confidence_score"] < person["confidence_score"]
    # stitched but without a curve yet: known, cohort prior by email domain
    lee = api.post("/timing-decision", json=body(email="lee@acme.com")).json()
    assert lee["known_person"] and lee["universal_id"] == people["lee"].universal_id
    assert lee["fallback_level"] == "cohort"


BAD = [
    ({"send_after": "2026-13-40T00:00:00Z"}, "send_after"),
    ({"send_after": "2030-01-10T00:00:00"}, "send_after"),  # naive
    ({"send_after": 1767225600}, "send_after"),  # a number, not a timestamp string
    ({"send_before": "SEND_AFTER"}, "send_before"),  # replaced below by send_before == send_after
    ({"latency_estimate_seconds": -1}, "latency_estimate_seconds"),
    ({"latency_estimate_seconds": 10**9}, "latency_estimate_seconds"),
    ({"latency_estimate_seconds": "300"}, "latency_estimate_seconds"),
    ({"email": None}, None),  # no identifier at all
    ({"colour": "blue"}, "colour"),  # unknown field
    ({"universal_id": "sf_XYZ"}, "universal_id"),
    ({"email": ""}, "email"),
    ({"email": "\ud800@corp.io"}, "email"),  # a lone surrogate is not text
    ({"phone": "+1\udfff"}, "phone"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
def test_bad_input_is_422_naming_the_field(world, change, field) -> None:
    api, *_ = world
    payload = body(**{"email": "jane.doe@gmail.com", **change})
    if change.get("send_before") == "SEND_AFTER":
        payload["send_before"] = payload["send_after"]
    # json.dumps escapes lone surrogates as \ud800, as any client may send them
    r = api.post("/timing-decision", content=json.dumps(payload), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert all(e["msg"] and "input" not in e for e in r.json()["detail"])  # inputs are never echoed
    if field is None:
        assert any(loc == ["body"] for loc in locs) and "at least one identifier" in r.text
    else:
        assert ["body", field] in locs, locs


def test_undecidable_and_unusable_requests_name_the_field(world) -> None:
    api, *_ = world
    past = api.post("/timing-decision", json={**body(email="jane.doe@gmail.com"),
                                              "send_after": "2020-01-01T00:00:00Z",
                                              "send_before": "2020-01-08T00:00:00+02:00"})
    assert past.status_code == 422 and past.json()["detail"][0]["loc"] == ["body", "send_before"]
    after = datetime.now(UTC) + timedelta(minutes=1)
    short = api.post("/timing-decision", json=body(email="jane.doe@gmail.com", send_after=z(after),
                                                   send_before=z(after + timedelta(minutes=10)),
                                                   latency_estimate_seconds=3600))
    assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "latency_estimate_seconds"]
    odd_key = api.post("/timing-decision", content=json.dumps(body(email="jane.doe@gmail.com", **{"\ud800": 1})),
                       headers={"Content-Type": "application/json"})  # a field name that is not text
    assert odd_key.status_code == 422 and odd_key.json()["detail"][0]["loc"] == ["body"]
    generic = api.post("/timing-decision", json=body(email="noreply@shop.com", phone="0000000000"))
    assert generic.status_code == 422
    detail = {tuple(e["loc"]): e["msg"] for e in generic.json()["detail"]}
    assert "noreply" in detail[("body", "email")] and detail[("body", "phone")].startswith("phone:")
    # a rejected identifier next to a good one is ignored
    ok = api.post("/timing-decision", json=body(email="noreply@shop.com", klaviyo_id="k_kim"))
    assert ok.status_code == 200 and ok.json()["fallback_level"] == "person"


def test_batch_agrees_with_single_decisions_and_isolates_bad_rows(world) -> None:
    api, people, settings, *_ = world
    rng = np.random.default_rng(3)
    pool = [{"email": "Jane.Doe@gmail.com"}, {"klaviyo_id": "k_kim"}, {"phone": "+14155552671"},
            {"email": "lee@acme.com"}, {"universal_id": "sf_00000000000000aa"}]
    recipients = []
    for i in range(10_000):
        kind = int(rng.integers(0, 8))
        recipients.append(pool[kind] if kind < len(pool) else
                          {"email": f"new{i}@acme.com"} if kind == 5 else
                          {"email": "noreply@shop.com"} if kind == 6 else {"external_id": f"ext-{i}"})
    payload = {**body(), "recipients": recipients}
    r = api.post("/timing-decisions", json=payload)
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    assert len(out["decisions"]) == 10_000 and [d["index"] for d in out["decisions"]] == list(range(10_000))
    failed = [d for d in out["decisions"] if d.get("error")]
    assert out["failed"] == len(failed) == sum(rc == {"email": "noreply@shop.com"} for rc in recipients) > 0
    assert all(d["error"]["field"] == "email" and "noreply" in d["error"]["message"] for d in failed)
    for i in rng.choice(10_000, 40, replace=False).tolist():
        if out["decisions"][i].get("error"):
            continue
        single = api.post("/timing-decision", json=body(**recipients[i])).json()
        batch = out["decisions"][i]
        assert list(batch)[1:4] == ["universal_id", "trigger_timestamp_utc", "confidence_score"]
        for key in ("universal_id", "trigger_timestamp_utc", "confidence_score", "fallback_level"):
            assert batch[key] == single[key], (i, recipients[i], key)

    too_many = api.post("/timing-decisions", json={**body(), "recipients": [{"klaviyo_id": "k"}] * 10_001})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "recipients"]
    empty = api.post("/timing-decisions", json={**body(), "recipients": [{"klaviyo_id": "k_kim"}, {}]}).json()
    assert empty["decided"] == 1 and empty["decisions"][1]["error"]["field"] == "identifiers"
    bad_row = api.post("/timing-decisions", json={**body(), "recipients": [{"klaviyo_id": "k"}, {"emial": "x"}]})
    assert bad_row.status_code == 422 and ["body", "recipients", 1, "emial"] in [
        e["loc"] for e in bad_row.json()["detail"]]


def test_readiness_refresh_swaps_to_a_newer_version(db) -> None:
    settings, client = db
    api, holder = make_client(settings)
    with api:
        r = api.get("/readyz")
        assert r.status_code == 503 and "timing" in r.json()["detail"]
        assert api.post("/timing-decision", json=body(klaviyo_id="k_kim")).status_code == 503
        people = standard_world(client, settings.clickhouse_database)
        assert holder.refresh() is True
        ready = api.get("/readyz").json()
        assert ready["ready"] and ready["timing_version"] == 1 and ready["people_with_curves"] == 3
        assert ready["age_seconds"] >= 0 and ready["snapshot_version"].startswith("t1.")
        jane = people["jane"]
        first = api.post("/timing-decision", json=body(klaviyo_id="k_jane")).json()
        assert how(datetime.fromisoformat(first["delivery_timestamp_utc"])) == jane.peak
        assert holder.refresh() is False  # nothing new
        held = holder.current
        commit(client, settings.clickhouse_database, 2, 1)  # commits version 2's rows (jane now peaks at 90)
        assert holder.current is held  # nothing changes until the refresher loads it
        assert holder.refresh() is True and holder.current is not held
        second = api.post("/timing-decision", json=body(klaviyo_id="k_jane")).json()
        assert how(datetime.fromisoformat(second["delivery_timestamp_utc"])) == 90
        assert second["snapshot_version"].startswith("t2.") and api.get("/readyz").json()["timing_version"] == 2
        # a new identity run is a change too
        write_curves(client, settings.clickhouse_database, 3, ["sf_0000000000000001"], peaked_curve(3)[None, :])
        assert holder.refresh() is False  # uncommitted rows are not a new version


def test_refresh_failure_keeps_serving_the_loaded_snapshot(world) -> None:
    api, people, settings, client, holder = world
    client.command(f"DROP TABLE {settings.clickhouse_database}.identity_nodes")
    commit(client, settings.clickhouse_database, 2, 1)
    assert holder.refresh_safely() is False and holder.failures == 1
    r = api.post("/timing-decision", json=body(klaviyo_id="k_kim"))
    assert r.status_code == 200 and r.json()["snapshot_version"].startswith("t1.")
    ready = api.get("/readyz").json()
    assert ready["ready"] and ready["refresh_failures"] == 1 and ready["detail"]


def test_api_key_is_required_when_configured(db) -> None:
    settings, client = db
    standard_world(client, settings.clickhouse_database)
    api, _ = make_client(settings.model_copy(update={"api_key": "s3cret-key"}))
    with api:
        missing = api.post("/timing-decision", json=body(klaviyo_id="k_kim"))
        wrong = api.post("/timing-decision", json=body(klaviyo_id="k_kim"), headers={"X-API-Key": "s3cret-kez"})
        assert missing.status_code == wrong.status_code == 401 and missing.json() == wrong.json()
        assert missing.headers["WWW-Authenticate"] == "X-API-Key"
        assert api.post("/people/lookup", json={"klaviyo_id": "k_kim"}).status_code == 401
        ok = api.post("/timing-decision", json=body(klaviyo_id="k_kim"), headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        assert api.get("/healthz").status_code == 200 and api.get("/readyz").status_code == 200
        assert "sendflowr_api_auth_failures_total 3.0" in api.get("/metrics").text


def test_lookup_by_any_identifier_and_by_id(world) -> None:
    open_api, people, settings, *_ = world
    # A lookup returns a person's identifiers: never without a key configured on the server.
    assert open_api.post("/people/lookup", json={"email": "JaneDoe@googlemail.com"}).status_code == 403
    assert open_api.get("/people/sf_00000000000000aa").status_code == 403
    keyed, _ = make_client(settings.model_copy(update={"api_key": "lookup-key"}))
    with keyed as api:
        api.headers["X-API-Key"] = "lookup-key"
        _lookups(api, people)


def _lookups(api, people) -> None:
    jane = people["jane"]
    r = api.post("/people/lookup", json={"email": "JaneDoe@googlemail.com"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["universal_id"] == jane.universal_id and p["known_person"]
    assert [i["value"] for i in p["identifiers"]["email"]] == ["janedoe@gmail.com"]
    assert [i["value"] for i in p["identifiers"]["klaviyo_id"]] == ["k_jane"]
    assert p["timing"]["fallback_level"] == "person" and p["timing"]["best_hour_of_week"] == jane.peak
    assert len(p["timing"]["curve"]) == 168 and p["timing_version"] == 1 and ISO_Z.match(p["materialized_at"])
    assert p["merged_ids"] == ["sf_00000000000000aa"]
    merged = api.get("/people/sf_00000000000000aa").json()
    assert merged["universal_id"] == jane.universal_id and merged["redirected_from"] == "sf_00000000000000aa"
    assert api.get("/people/sf_0123456789abcdef").status_code == 404
    assert api.get("/people/not-an-id").status_code == 422
    unknown = api.post("/people/lookup", json={"email": "fresh@acme.com"}).json()
    assert not unknown["known_person"] and unknown["identifiers"] == {}
    assert unknown["timing"]["fallback_level"] == "cohort" and unknown["timing"]["cohort"] == COHORT


def test_metrics_and_logs_never_show_identifiers(world, caplog) -> None:
    api, *_ = world
    caplog.set_level(logging.DEBUG, logger="sendflowr")
    for _ in range(3):
        assert api.post("/timing-decision", json=body(email="Jane.Doe@gmail.com")).status_code == 200
    api.post("/timing-decision", json=body(email="maria@elsewhere.org"))
    api.post("/timing-decision", json=body(email="jane.doe@gmail.com", latency_estimate_seconds=-5))
    text = api.get("/metrics").text
    assert 'sendflowr_api_decisions_total{endpoint="single",fallback_level="person"} 3.0' in text
    assert 'sendflowr_api_decisions_total{endpoint="single",fallback_level="global"} 1.0' in text
    assert 'sendflowr_api_requests_total{route="/timing-decision",status="422"} 1.0' in text
    assert "sendflowr_api_snapshot_timing_version 1.0" in text
    assert "decision email=h:" in caplog.text
    assert "Jane.Doe" not in caplog.text and "elsewhere" not in caplog.text


def test_openapi_documents_every_field_and_example(world) -> None:
    api, *_ = world
    spec = api.get("/openapi.json").json()
    req = spec["components"]["schemas"]["TimingDecisionRequest"]
    assert set(req["properties"]) == {"email", "klaviyo_id", "phone", "external_id", "universal_id",
                                      "send_after", "send_before", "latency_estimate_seconds", "campaign_id",
                                      "message_id"}
    assert all(prop.get("description") for prop in req["properties"].values())
    assert set(req["required"]) == {"send_after", "send_before"}  # the seed's request stays valid
    schemas = spec["components"]["schemas"]
    assert schemas["BatchDecisionRequest"]["properties"]["campaign_id"]["description"]
    assert schemas["Recipient"]["properties"]["message_id"]["description"]
    resp = schemas["TimingDecision"]
    assert list(resp["properties"])[:3] == ["universal_id", "trigger_timestamp_utc", "confidence_score"]
    assert list(resp["properties"])[-1] == "arm" and "control" in resp["properties"]["arm"]["description"]
    assert schemas["BatchDecisionItem"]["properties"]["arm"]["description"]
    responses = spec["paths"]["/timing-decision"]["post"]["responses"]
    assert {"200", "401", "422", "503"} <= set(responses)
    assert api.get("/docs").status_code == 200
