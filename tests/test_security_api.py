"""Issue 16 on the decision API: H2 (a person's identifiers to anyone who knows one email), M3 (a 64 MiB body read
before the key is checked; the batch limit checked only after parsing), the start-up refusal off loopback, web
pages, and the read-only ClickHouse user the API uses in the embedded stack. Real engine, real snapshot."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from api_world import standard_world, window, z
from fastapi.testclient import TestClient

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.errors import SendflowrError
from sendflowr.local.chdb_access import READER_USER
from sendflowr.local.stack import api_env
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration
KEY = "api-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def world(base_settings: Settings, clickhouse: Settings):
    settings = base_settings.model_copy(update={"clickhouse_database": f"sapi_{uuid.uuid4().hex[:10]}",
                                                "api_batch_max_size": 50})
    apply_migrations(settings)
    client = get_client(settings)
    people = standard_world(client, settings.clickhouse_database)
    client.close()
    return settings, people


def api(settings: Settings, holder_settings: Settings | None = None) -> TestClient:
    holder = SnapshotHolder(lambda: get_client(holder_settings or settings), settings.clickhouse_database, 3600)
    assert holder.refresh()
    return TestClient(create_app(settings, holder=holder, refresher=False))


def decision(**identifiers) -> dict:
    after, before = window()
    return {"send_after": z(after), "send_before": z(before), "latency_estimate_seconds": 300, **identifiers}


def test_one_email_does_not_reveal_a_person_without_a_key(world) -> None:
    settings, people = world
    jane = people["jane"]
    with api(settings) as client:
        for response in (client.post("/people/lookup", json={"email": "Jane.Doe@gmail.com"}),
                         client.get(f"/people/{jane.universal_id}")):
            assert response.status_code == 403 and "SENDFLOWR_API_KEY" in response.json()["detail"]
            assert "k_jane" not in response.text and "janedoe" not in response.text
        assert client.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com")).status_code == 200
    with api(settings.model_copy(update={"api_key": KEY})) as client:
        assert client.post("/people/lookup", json={"email": "Jane.Doe@gmail.com"}).status_code == 401
        found = client.post("/people/lookup", json={"email": "Jane.Doe@gmail.com"}, headers={"X-API-Key": KEY})
        assert found.status_code == 200 and found.json()["universal_id"] == jane.universal_id


def test_the_api_refuses_to_start_off_loopback_without_a_key(world) -> None:
    settings, _ = world
    with pytest.raises(SendflowrError, match="SENDFLOWR_API_KEY"):
        create_app(Settings(api_host="0.0.0.0"), refresher=False)
    create_app(Settings(api_host="0.0.0.0", api_key=KEY), refresher=False)
    create_app(Settings(api_host="0.0.0.0", api_allow_unauthenticated=True), refresher=False)  # the opt-out
    # started by hand on 0.0.0.0 with loopback settings: a request from the network still finds it closed
    holder = SnapshotHolder(lambda: get_client(settings), settings.clickhouse_database, 3600)
    assert holder.refresh()
    app = create_app(settings, holder=holder, refresher=False)
    with TestClient(app, base_url="http://192.0.2.10:8000") as remote:
        assert remote.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com")).status_code == 403
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        assert local.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com")).status_code == 200


def test_hostile_bodies_get_a_4xx(world) -> None:
    settings, _ = world
    bodies = [b"[" * 100_000 + b"]" * 100_000, b'{"recipients":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
              b'{"email": "\\ud800"}', b"\xff\xfe", b'{"send_after": "0001-01-01T00:00:00+01:00"}',
              b'{"latency_estimate_seconds": 1e400}', b"", b"null"]
    with api(settings.model_copy(update={"api_key": KEY})) as client:
        for path in ("/timing-decision", "/timing-decisions", "/people/lookup"):
            for body in bodies:
                response = client.post(path, content=body, headers={"Content-Type": "application/json",
                                                                     "X-API-Key": KEY})
                assert 400 <= response.status_code < 500, (path, body[:40], response.status_code)


async def asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Call the app as a server would; report the status and how many body chunks it asked for."""
    asked, sent = [], []

    async def receive():
        asked.append(1)
        if chunks:
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "app": app}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, len(asked)


def test_the_key_is_checked_before_the_body_is_read(world) -> None:
    settings, _ = world
    app = create_app(settings.model_copy(update={"api_key": KEY}), refresher=False)
    megabyte = b"x" * (1 << 20)
    for path in ("/timing-decision", "/timing-decisions", "/people/lookup"):
        for headers in ([(b"content-length", str(64 << 20).encode())], [(b"x-api-key", b"wrong")]):
            status, asked = asyncio.run(asgi_call(app, "POST", path, [(b"content-type", b"application/json"),
                                                                        *headers], [megabyte] * 64))
            assert (status, asked) == (401, 0), path  # answered without reading a byte of the 64 MiB


def test_bodies_are_bounded_before_they_are_parsed(world) -> None:
    settings, _ = world
    bounded = settings.model_copy(update={"api_key": KEY, "api_max_body_bytes": 1 << 20})
    app = create_app(bounded, refresher=False)
    auth = [(b"x-api-key", KEY.encode()), (b"content-type", b"application/json")]
    status, asked = asyncio.run(asgi_call(app, "POST", "/timing-decisions",
                                          [*auth, (b"content-length", str(64 << 20).encode())], [b"x"] * 4))
    assert (status, asked) == (413, 0)
    status, asked = asyncio.run(asgi_call(app, "POST", "/timing-decisions", auth,  # chunked: cut at the limit
                                          [b"{" + b" " * (256 << 10)] * 64))
    assert status == 413 and asked <= 6


def test_the_batch_limit_is_checked_before_recipients_are_validated(world) -> None:
    settings, _ = world
    after, before = window()
    # Every recipient is malformed too: had the models been built first, FastAPI would list those errors instead.
    body = {"send_after": z(after), "send_before": z(before), "latency_estimate_seconds": 300,
            "recipients": [{"email": "a@b.co", "unknown_field": i} for i in range(settings.api_batch_max_size + 1)]}
    with api(settings) as client:
        response = client.post("/timing-decisions", json=body)
        assert response.status_code == 422
        assert response.json()["detail"] == [{"loc": ["body", "recipients"], "type": "too_long",
                                              "msg": f"at most {settings.api_batch_max_size} recipients per "
                                                     f"request, got {settings.api_batch_max_size + 1}"}]
        body["recipients"] = body["recipients"][:2]
        assert client.post("/timing-decisions", json=body).json()["detail"][0]["type"] == "extra_forbidden"


def test_web_pages_get_no_answers_from_the_api(world) -> None:
    settings, _ = world
    with api(settings) as client:
        cross = client.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com"),
                            headers={"Origin": "http://evil.example", "Host": "127.0.0.1:8000"})
        assert cross.status_code == 403
        rebound = client.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com"),
                              headers={"Origin": "http://evil.example:8000", "Host": "evil.example:8000"})
        assert rebound.status_code == 403
        # the API's own /docs page calling the API: same origin, a loopback Host
        own = client.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com"),
                          headers={"Origin": "http://127.0.0.1:8000", "Host": "127.0.0.1:8000",
                                   "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 200


def test_the_embedded_stack_api_reads_as_the_read_only_user(world) -> None:
    settings, people = world
    env = api_env(settings)
    assert env["SENDFLOWR_CLICKHOUSE_USER"] == READER_USER
    reader = settings.model_copy(update={"clickhouse_user": READER_USER})
    with api(reader) as client:  # snapshot loaded by the read-only user, lookups' point query too
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"]
        answer = client.post("/timing-decision", json=decision(email="Jane.Doe@gmail.com"))
        assert answer.status_code == 200 and answer.json()["universal_id"] == people["jane"].universal_id
    with api(reader.model_copy(update={"api_key": KEY})) as client:
        found = client.post("/people/lookup", json={"email": "Jane.Doe@gmail.com"}, headers={"X-API-Key": KEY})
        assert found.status_code == 200 and found.json()["identifiers"]["klaviyo_id"][0]["value"] == "k_jane"
    reader_client = get_client(reader)
    with pytest.raises(Exception, match="READONLY|readonly"):
        reader_client.command(f"TRUNCATE TABLE {settings.clickhouse_database}.timing_curves")
    reader_client.close()
