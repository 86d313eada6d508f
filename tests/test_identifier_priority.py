"""One priority order of identifiers, end to end: when the guards split a message's identifiers between two
people, ingestion (person_key), timing (the message's owner) and the decision API all name the same person.

Real Kafka and the real engine: events go through the broker, ingestion, stitching and a timing run (core
functions, no Dagster), then the API is served in-process on the same database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fastapi.testclient import TestClient

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.identity.run import stitch_once
from sendflowr.ingest.run import ingest_once
from sendflowr.kafka_io import produce_all
from sendflowr.settings import Settings
from sendflowr.timing.run import materialize
from sendflowr_api.app import create_app

pytestmark = pytest.mark.integration

PROFILE = "k01alpha"  # lower case: person_key is lower(trim(value)), so it equals the raw value here
MAILBOXES = [f"reader{i}@gmail.com" for i in range(1, 6)]  # the per-type email limit (5) of one person
EXTRA = "late.sixth@gmail.com"  # a sixth mailbox on the same profile: its edge is the one the limit blocks
HUMAN = {"user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0", "ip": "84.1.2.3"}


def _message(at: datetime, message: str, identifiers: dict[str, str]) -> list[tuple[None, bytes]]:
    def event(kind: str, moment: datetime, **extra) -> tuple[None, bytes]:
        return None, orjson.dumps({
            "event_id": uuid.uuid4().hex,
            "occurred_at": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "message_id": message,
            "event_type": kind, "identifiers": identifiers, "esp": "klaviyo", "campaign_id": "c1", **extra})
    return [event("delivered", at), event("opened", at + timedelta(hours=1), **HUMAN)]


def _uid_of(ch, db: str, identifier_type: str, raw: str) -> str:
    return ch.command(f"SELECT n.universal_id FROM {db}.identity_identifiers AS i FINAL "
                      f"INNER JOIN {db}.identity_nodes AS n FINAL ON n.node_key = i.node_key "
                      "WHERE i.identifier_type = {t:String} AND i.raw_value = {v:String}",
                      parameters={"t": identifier_type, "v": raw})


def test_a_split_message_belongs_to_one_person_in_ingestion_timing_and_the_api(settings: Settings, ch) -> None:
    db = settings.clickhouse_database
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    messages = []
    # the profile with five mailboxes, each seen on two messages (strong edges), weeks ago
    for i, mailbox in enumerate(MAILBOXES):
        for k in range(2):
            messages += _message(now - timedelta(days=30 - 2 * i - k), f"m-{i}-{k}",
                                 {"klaviyo_id": PROFILE, "email": mailbox})
    # one later message carries the profile and a sixth mailbox: the weakest, newest edge of a person at its limit
    messages += _message(now - timedelta(days=3), "split", {"klaviyo_id": PROFILE, "email": EXTRA})
    produce_all(settings, messages)

    ingest_once(settings, ch, log=lambda _: None)
    stitch_once(settings, ch, log=lambda _: None)
    person, other = _uid_of(ch, db, "klaviyo_id", PROFILE), _uid_of(ch, db, "email", EXTRA)
    assert person and other and person != other  # the guards did split the message's identifiers
    assert {_uid_of(ch, db, "email", m) for m in MAILBOXES} == {person}
    assert ch.command(f"SELECT max(shared) FROM {db}.identity_nodes FINAL") == 0  # a split, not a shared node

    # ingestion: the split message's events are keyed by its profile id, the identifier that names `person`
    keys = ch.query(f"SELECT DISTINCT person_key FROM {db}.events WHERE message_id = 'split'").result_rows
    assert keys == [(PROFILE,)]

    # timing: the message is credited to `person` (all eleven deliveries), and `other` has no curve
    materialize(ch, db, log=lambda _: None)
    curves = dict(ch.query(f"SELECT universal_id, deliveries FROM {db}.timing_curves FINAL").result_rows)
    assert curves == {person: 11}

    # the API: a decision for the message's identifiers is for `person`
    holder = SnapshotHolder(lambda: get_client(settings), db, 3600)
    holder.refresh()
    api = TestClient(create_app(settings, holder=holder, refresher=False))
    window = {"send_after": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "send_before": (now + timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    answer = api.post("/timing-decision", json={**window, "klaviyo_id": PROFILE, "email": EXTRA})
    assert answer.status_code == 200, answer.text
    assert answer.json()["universal_id"] == person
    assert answer.json()["known_person"] is True
