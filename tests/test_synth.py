"""The synthetic world: determinism, contract, ground truth, and the realism the pipeline has to undo."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sendflowr import kafka_io
from sendflowr.errors import SendflowrError
from sendflowr.events import EVENT_TYPES, IDENTIFIER_TYPES, validate_event
from sendflowr.settings import Settings
from sendflowr.synth import (
    WorldConfig,
    build_world,
    generate,
    iter_event_batches,
    serialize_batch,
    write_ground_truth,
)
from sendflowr.synth import stream as stream_module
from sendflowr.synth.campaigns import POPULAR_HOURS_UTC
from sendflowr.synth.cli import add_cli
from sendflowr.synth.fmt import hour_of_week

# Small enough to validate every event with jsonschema; rare outcomes made common enough to appear.
CONFIG = WorldConfig(people=500, weeks=4, campaigns_per_week=6.0, seed=11, unsubscribe_rate=0.03,
                     complaint_rate=0.003)
# For the statistics: many heavy readers, none behind Apple MPP (so every genuine open is visible).
CURVE_CONFIG = WorldConfig(people=2000, weeks=6, campaigns_per_week=6.0, seed=13, share_heavy=0.5,
                           apple_mpp_share=0.0)
NOW = CONFIG.end + timedelta(days=1)  # validate as if ingested right after the world ended
CONTRACT_KEYS = {"event_id", "event_type", "occurred_at", "identifiers", "esp", "message_id", "campaign_id",
                 "user_agent", "ip", "url", "bounce_type", "machine_open"}


def _lines(world, batch_size=20_000) -> list[bytes]:
    return [line for batch in iter_event_batches(world, batch_size) for line in serialize_batch(batch)]


def _np(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


def _ms(table: pa.Table, name: str) -> np.ndarray:
    return _np(table, name).astype("datetime64[ms]").astype(np.int64)


@pytest.fixture(scope="module")
def world():
    return build_world(CONFIG)


@pytest.fixture(scope="module")
def emitted(world):
    """(stream-ordered table with truth columns, serialized lines, parsed events)."""
    tables, lines = [], []
    for batch in iter_event_batches(world, 20_000):
        tables.append(batch)
        lines += serialize_batch(batch)
    return pa.concat_tables(tables), lines, [orjson.loads(line) for line in lines]


@pytest.fixture(scope="module")
def truth_dir(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("truth")
    write_ground_truth(world, out)
    return out


def test_same_seed_gives_identical_bytes_whatever_the_batch_size(emitted):
    _, lines, _ = emitted
    again = _lines(build_world(CONFIG), batch_size=7_919)
    assert len(again) == len(lines) > 10_000
    assert again == lines


def test_different_seed_gives_a_different_world(emitted, world):
    _, lines, _ = emitted
    other = build_world(WorldConfig(people=CONFIG.people, weeks=CONFIG.weeks,
                                    campaigns_per_week=CONFIG.campaigns_per_week, seed=CONFIG.seed + 1))
    other_lines = _lines(other)
    assert other_lines[:1000] != lines[:1000]
    assert not set(other_lines) & set(lines)
    assert not np.array_equal(other.people.zone, world.people.zone)


def test_every_event_passes_the_contract(emitted):
    _, lines, events = emitted
    for line, event in zip(lines, events, strict=True):
        validate_event(event, now=NOW)
        assert orjson.dumps(event) == line  # canonical compact JSON, exactly what orjson would write
        assert set(event) <= CONTRACT_KEYS
        assert event["occurred_at"].endswith("Z") and len(event["occurred_at"]) == 24  # ms precision
        assert set(event["identifiers"]) <= set(IDENTIFIER_TYPES) and all(event["identifiers"].values())
        assert ("url" in event) == (event["event_type"] == "clicked")
        assert ("bounce_type" in event) == (event["event_type"] == "bounced")
        if event["event_type"] in ("opened", "clicked"):
            assert event["user_agent"] and event["ip"]
        assert event.get("machine_open", True) is True  # only ever set to true, and only sometimes
    assert {e["event_type"] for e in events} == set(EVENT_TYPES)
    assert {e["bounce_type"] for e in events if "bounce_type" in e} == {"hard", "soft", "dropped"}
    assert {e["esp"] for e in events} == {"klaviyo", "sendgrid", "synthetic"}


def test_event_ids_are_unique_except_byte_identical_retries(emitted):
    table, lines, events = emitted
    counts = Counter(e["event_id"] for e in events)
    repeated = {eid for eid, c in counts.items() if c > 1}
    assert max(counts.values()) == 2
    flagged = _np(table, "_duplicate")
    assert 0 < len(repeated) == flagged.sum() < 0.05 * len(lines)
    first_seen: dict[str, int] = {}
    for i, event in enumerate(events):
        eid = event["event_id"]
        if eid in repeated:
            if eid in first_seen:
                assert lines[i] == lines[first_seen[eid]]  # the retry is byte-identical
                assert flagged[i] and not flagged[first_seen[eid]]  # ... and comes later in the stream
            else:
                first_seen[eid] = i
    assert {events[i]["event_id"] for i in np.flatnonzero(flagged)} == repeated


def test_stream_is_in_arrival_order_with_late_events(emitted):
    table, _, events = emitted
    arrival, occurred = _ms(table, "_arrival"), _ms(table, "_ts")
    assert np.all(np.diff(arrival) >= 0)
    parsed = np.array([datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000 for e in events])
    assert np.array_equal(parsed.round().astype(np.int64), occurred)
    behind = occurred < np.maximum.accumulate(occurred) - 5 * 60_000  # over 5 minutes out of order
    late = _np(table, "_late")
    assert 0 < behind.sum() < 0.1 * len(events)
    assert behind[~late].sum() < behind.sum()  # out-of-order mostly comes from the late share
    assert occurred.max() <= int(CONFIG.end.timestamp() * 1000)


def test_non_generic_identifiers_map_to_exactly_one_person(truth_dir, emitted):
    ids = pq.read_table(truth_dir / "identifiers.parquet").to_pandas()
    assert set(ids.columns) >= {"identifier_type", "raw_value", "normalized", "person_id", "is_generic"}
    personal = ids[~ids.is_generic]
    assert personal.person_id.notna().all()
    assert personal.groupby(["identifier_type", "normalized"]).person_id.nunique().max() == 1
    assert personal.groupby(["identifier_type", "raw_value"]).person_id.nunique().max() == 1
    shared = ids[ids.generic_kind == "shared"]
    assert len(shared) and shared.groupby(["identifier_type", "normalized"]).person_id.nunique().min() >= 2
    junk = ids[ids.generic_kind == "junk"]
    assert junk.person_id.isna().all() and {"info@company.com", "0000000000"} <= set(junk.raw_value)
    # a generic normalized value never doubles as someone's personal identifier
    generic = ids[ids.is_generic]
    assert not set(zip(personal.identifier_type, personal.normalized, strict=True)) & set(
        zip(generic.identifier_type, generic.normalized, strict=True))

    table, _, events = emitted
    owner = {(t, r): p for t, r, p in zip(personal.identifier_type, personal.raw_value, personal.person_id,
                                          strict=True)}
    known = set(zip(ids.identifier_type, ids.raw_value, strict=True))
    person = _np(table, "_person")
    junk_people: dict[str, set[int]] = defaultdict(set)
    for p, event in zip(person, events, strict=True):
        for kind, raw in event["identifiers"].items():
            assert (kind, raw) in known
            if (kind, raw) in owner:
                assert owner[(kind, raw)] == p
            elif raw in set(junk.raw_value):
                junk_people[raw].add(int(p))
    assert max(len(people) for people in junk_people.values()) >= 2  # junk would glue strangers together
    emails = [e["identifiers"]["email"] for e in events if "email" in e["identifiers"]]
    assert any(e != e.strip().lower() for e in emails)  # case and whitespace noise reaches the stream


def test_phones_normalize_to_valid_e164(truth_dir):
    ids = pq.read_table(truth_dir / "identifiers.parquet").to_pandas()
    phones = ids[(ids.identifier_type == "phone") & (ids.generic_kind != "junk")]
    assert len(phones) > 100 and phones.raw_value.nunique() > phones.normalized.nunique() * 0.5
    assert (phones.raw_value != phones.normalized).any()  # human formats, not only E.164
    for raw, normalized in zip(phones.raw_value, phones.normalized, strict=True):
        number = phonenumbers.parse(raw, "US")
        assert phonenumbers.is_valid_number(number), raw
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == normalized


def test_identifier_sets_depend_on_the_source(emitted):
    _, _, events = emitted
    by_esp: dict[str, Counter] = defaultdict(Counter)
    for event in events:
        by_esp[event["esp"]][tuple(sorted(event["identifiers"]))] += 1
    klaviyo, sendgrid, synthetic = by_esp["klaviyo"], by_esp["sendgrid"], by_esp["synthetic"]
    assert sum(c for k, c in klaviyo.items() if "klaviyo_id" in k) > 0.6 * sum(klaviyo.values())
    assert sendgrid.most_common(1)[0][0] == ("email",)
    for counter in (sendgrid, synthetic):  # a profile id only when the person has nothing else
        assert all(k == ("klaviyo_id",) for k in counter if "klaviyo_id" in k)
    assert sum(c for k, c in synthetic.items() if {"phone", "external_id"} & set(k)) > 0.4 * sum(
        synthetic.values())
    assert len({k for counter in by_esp.values() for k in counter}) >= 6  # stitching has work to do


def _cross_source_shares(config: WorldConfig) -> dict[str, float]:
    """Per source, the share of events (of people holding the other identifier) that carry it."""
    events = [orjson.loads(line) for line in _lines(build_world(config))]
    kl = [e["identifiers"] for e in events if e["esp"] == "klaviyo" and "klaviyo_id" in e["identifiers"]]
    backend = [e["identifiers"] for e in events if e["esp"] == "synthetic" and {"phone", "external_id"} & set(
        e["identifiers"])]
    return {"klaviyo+phone": sum("phone" in i for i in kl) / len(kl),
            "klaviyo+external_id": sum("external_id" in i for i in kl) / len(kl),
            "backend+email": sum("email" in i for i in backend) / len(backend)}


def test_cross_source_identifier_rates_are_configurable():
    """Events that carry identifiers of two sources are what lets stitching bridge them; their frequency is a
    WorldConfig knob (0 = each source keeps to its own identifiers, as before)."""
    small = dict(people=400, weeks=4, campaigns_per_week=6.0, seed=5)
    off = _cross_source_shares(WorldConfig(**small, klaviyo_phone_rate=0.0, klaviyo_external_rate=0.0,
                                           backend_email_rate=0.0))
    default = _cross_source_shares(WorldConfig(**small))
    high = _cross_source_shares(WorldConfig(**small, klaviyo_phone_rate=0.5, klaviyo_external_rate=0.5,
                                            backend_email_rate=0.5))
    assert off["klaviyo+phone"] == off["klaviyo+external_id"] == off["backend+email"] == 0.0
    for key in default:
        assert default[key] > off[key]
        assert high[key] > 2 * default[key]  # roughly proportional to the rate times identifier ownership
    with pytest.raises(SendflowrError, match="klaviyo_phone_rate"):
        WorldConfig(klaviyo_phone_rate=1.5)


def test_genuine_opens_follow_the_true_curve():
    world = build_world(CURVE_CONFIG)
    table = pa.concat_tables(iter_event_batches(world))
    etype, origin, dup = _np(table, "event_type"), _np(table, "_origin"), _np(table, "_duplicate")
    person, ts, message = _np(table, "_person"), _ms(table, "_ts"), _np(table, "message_id")
    people = world.people
    heavy = (people.segment == 2) & ~people.apple_mpp  # every genuine open of these is visible
    cutoff = int(CONFIG.end.timestamp() * 1000) - 4 * 86_400_000  # opens of later mail may fall after end
    delivered = (etype == "delivered") & ~dup & heavy[person] & (ts < cutoff)
    opened = set(message[(etype == "opened") & (origin == "human") & ~dup])
    who, hour = person[delivered], hour_of_week(ts[delivered])
    y = np.array([m in opened for m in message[delivered]], dtype=float)
    p = world.curves[who, hour].astype(float)
    n = y.size
    assert n > 1000
    # Calibration: the open rate is what the true curves predict, within 4 standard errors.
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / n

    # Per (person, delivery hour) cell, observed opens track expected opens from the person's own curve
    # far better than from a random other heavy user's curve under the same exposure.
    cells = who.astype(np.int64) * 168 + hour
    keys, inverse = np.unique(cells, return_inverse=True)
    observed = np.bincount(inverse, weights=y)

    def corr_with(curves: np.ndarray) -> float:
        expected = np.bincount(inverse, weights=curves[who, hour].astype(float))
        return float(np.corrcoef(observed, expected)[0, 1])

    rng = np.random.default_rng(0)
    pool = np.flatnonzero(heavy)
    null = []
    for _ in range(20):
        permuted = world.curves.copy()
        permuted[pool] = world.curves[rng.permutation(pool)]
        null.append(corr_with(permuted))
    threshold = np.mean(null) + 4 * np.std(null)
    assert corr_with(world.curves) > threshold
    assert len(keys) > 500


def _phenomenon(table, origin_name: str, has_it: np.ndarray, at_least: int) -> tuple[np.ndarray, np.ndarray]:
    """The (non-duplicate) events a phenomenon emitted, at least `at_least`, all of people who have it, and each
    one's delay (ms) after its message's delivery."""
    etype, origin, dup = _np(table, "event_type"), _np(table, "_origin"), _np(table, "_duplicate")
    ts, message, person = _ms(table, "_ts"), _np(table, "message_id"), _np(table, "_person")
    rows = np.flatnonzero((origin == origin_name) & ~dup)
    assert len(rows) > at_least
    assert has_it[person[rows]].all()
    delivered = (etype == "delivered") & ~dup
    delivered_at = dict(zip(message[delivered], ts[delivered], strict=True))
    return rows, ts[rows] - np.array([delivered_at[m] for m in message[rows]])


def test_machine_opens_come_within_ten_minutes_from_apple(emitted, world):
    table, _, events = emitted
    etype, origin, dup, person = (_np(table, c) for c in ("event_type", "_origin", "_duplicate", "_person"))
    machine, delays = _phenomenon(table, "apple_mpp", world.people.apple_mpp, at_least=300)
    assert delays.min() >= 0 and delays.max() <= 600_000
    for i in machine:
        assert events[i]["user_agent"] == "Mozilla/5.0" and events[i]["ip"].startswith("17.")
    flagged = np.array([events[i].get("machine_open", False) for i in machine])
    esp = np.array([events[i]["esp"] for i in machine])
    assert 0 < flagged.sum() < (esp == "sendgrid").sum()
    assert (esp[flagged] == "sendgrid").all()
    assert all(e.get("machine_open") is None for i, e in enumerate(events) if origin[i] != "apple_mpp")
    # Nearly every delivery to an MPP user gets its prefetch open.
    mpp_deliveries = (etype == "delivered") & ~dup & world.people.apple_mpp[person]
    assert len(machine) > 0.9 * mpp_deliveries.sum()
    # Human opens elsewhere carry real mail-client user agents.
    human_uas = {events[i]["user_agent"] for i in np.flatnonzero((origin == "human") & (etype == "opened"))
                 if not world.people.apple_mpp[person[i]]}
    assert len(human_uas) >= 5 and "Mozilla/5.0" not in human_uas


def test_scanner_clicks_hit_every_link_within_seconds(emitted, world):
    table, _, events = emitted
    etype, origin, dup, message = (_np(table, c) for c in ("event_type", "_origin", "_duplicate", "message_id"))
    scans, delays = _phenomenon(table, "scanner", world.people.behind_scanner, at_least=100)
    assert (etype[scans] == "clicked").all()
    assert delays.min() >= 1_000 and delays.max() <= 30_000
    links = {cid: int(n) for cid, n in zip(world.campaigns.ids, world.campaigns.n_links, strict=True)}
    urls: dict[str, set[str]] = defaultdict(set)
    for i in scans:
        urls[message[i]].add(events[i]["url"])
    campaign_of = {message[i]: events[i]["campaign_id"] for i in scans}
    assert all(len(u) == links[campaign_of[m]] for m, u in urls.items())  # every link, once
    humans = np.flatnonzero((origin == "human") & (etype == "clicked") & ~dup)
    assert {events[i]["user_agent"] for i in scans}.isdisjoint({events[i]["user_agent"] for i in humans})


def test_suppression_bounces_and_unsubscribes(emitted, world):
    table, _, events = emitted
    etype, dup, person, ts = _np(table, "event_type"), _np(table, "_duplicate"), _np(table, "_person"), _ms(
        table, "_ts")
    bouncers = world.people.hard_bouncer
    delivered_people = set(person[(etype == "delivered")])
    assert not delivered_people & set(np.flatnonzero(bouncers))
    kinds: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for i in np.flatnonzero((etype == "bounced") & ~dup):
        kinds[int(person[i])].append((int(ts[i]), events[i]["bounce_type"]))
    for p in np.flatnonzero(bouncers):
        sequence = [k for _, k in sorted(kinds[int(p)])]
        if sequence:
            assert sequence[0] == "hard" and set(sequence[1:]) <= {"dropped"}
    unsubscribed = {int(person[i]): int(ts[i]) for i in np.flatnonzero(etype == "unsubscribed")}
    assert unsubscribed
    sent = np.flatnonzero(etype == "sent")
    for i in sent:
        t = unsubscribed.get(int(person[i]))
        assert t is None or ts[i] <= t + 20 * 60_000  # a campaign already going out may still arrive


def test_exposure_is_biased_towards_popular_hours(world):
    hours = (world.campaigns.send_ms // 3_600_000) % 24
    popular = np.isin(hours, POPULAR_HOURS_UTC).mean()
    assert popular > 0.5 > len(POPULAR_HOURS_UTC) / 24
    assert len(np.unique(hours)) >= 6  # but not only those hours


def test_events_stream_lazily_in_exact_batches(world, monkeypatch):
    calls = []
    real = stream_module.simulate_campaign

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "simulate_campaign", counting)
    batches = iter_event_batches(world, 1_000)
    first, second = next(batches), next(batches)
    assert first.num_rows == second.num_rows == 1_000
    assert len(calls) < len(world.campaigns) // 2  # the rest of the history is not simulated yet


def test_serializer_handles_plain_tables_and_dicts(emitted):
    table, lines, events = emitted
    sample = table.slice(0, 3_000)
    plain = pa.table({name: (sample.column(name).combine_chunks().dictionary_decode()
                             if pa.types.is_dictionary(sample.column(name).type) else sample.column(name))
                      for name in sample.column_names})
    assert serialize_batch(plain) == lines[:3_000]
    assert serialize_batch(events[:50]) == lines[:50]


def test_generate_writes_ground_truth_and_a_matching_manifest(tmp_path):
    config = WorldConfig(people=400, weeks=3, campaigns_per_week=5.0, seed=5)
    manifest = generate(config, tmp_path, jsonl=True)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    truth = pq.read_table(tmp_path / "event_truth.parquet").to_pandas()
    assert manifest.events == len(lines) == len(truth)
    assert list(truth.event_id) == [e["event_id"] for e in events]
    assert manifest.events_by_type == {t: sum(e["event_type"] == t for e in events) for t in EVENT_TYPES}
    ids = Counter(e["event_id"] for e in events)
    assert manifest.duplicates == sum(c - 1 for c in ids.values()) == truth.duplicate.sum() > 0
    assert manifest.unique_events == len(ids)
    unique = ~truth.duplicate.to_numpy()
    kind = np.array([e["event_type"] for e in events])
    origin = truth.origin.astype(str).to_numpy()
    assert manifest.machine_opens == ((origin == "apple_mpp") & (kind == "opened") & unique).sum() > 0
    assert manifest.machine_opens_flagged == sum(
        bool(e.get("machine_open")) for e, u in zip(events, unique, strict=True) if u)
    assert manifest.scanner_clicks == ((origin == "scanner") & (kind == "clicked") & unique).sum() > 0
    assert manifest.human_opens == ((origin == "human") & (kind == "opened") & unique).sum() > 0
    assert manifest.late_events == truth.late.sum() > 0

    on_disk = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert on_disk["events_by_type"] == manifest.events_by_type and on_disk["seed"] == 5
    people = pq.read_table(tmp_path / "people.parquet").to_pandas()
    assert len(people) == 400 and {"person_id", "tz", "utc_offset_hours", "archetype", "propensity",
                                   "apple_mpp", "behind_scanner"} <= set(people.columns)
    assert set(people.archetype) == {"morning", "lunch", "evening", "weekend", "night"}
    curves = pq.read_table(tmp_path / "true_curves.parquet")
    p_open = np.stack(curves.column("p_open").to_numpy(zero_copy_only=False))
    assert p_open.shape == (400, 168)
    assert np.allclose(p_open.max(axis=1), people.propensity.to_numpy(), atol=1e-6)
    assert np.array_equal(curves.column("best_hour").to_numpy(), p_open.argmax(axis=1))
    assert (people.propensity == 0).any()  # some people never engage


def test_generate_produces_to_kafka_keyed_by_person(tmp_path, monkeypatch):
    produced: list[tuple[bytes, bytes]] = []

    def fake_produce_all(settings, messages, topic=None, on_progress=None, producer=None):
        for key, value in messages:
            produced.append((key, value))
        return kafka_io.ProduceReport(sent=len(produced))

    monkeypatch.setattr(kafka_io, "ensure_topic", lambda settings, **kw: True)
    monkeypatch.setattr(kafka_io, "produce_all", fake_produce_all)
    config = WorldConfig(people=300, weeks=2, campaigns_per_week=4.0, seed=9)
    manifest = generate(config, tmp_path, to_kafka=Settings(home=tmp_path), jsonl=True)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [v for _, v in produced] == lines and manifest.kafka["produced"] == len(lines)
    persons = pq.read_table(tmp_path / "event_truth.parquet").column("person_id").to_numpy()
    key_of: dict[int, bytes] = {}
    for (key, _), p in zip(produced, persons, strict=True):
        assert key_of.setdefault(int(p), key) == key
    assert len(set(key_of.values())) == len(key_of)  # one key per person, never shared
    identifiers = set(pq.read_table(tmp_path / "identifiers.parquet").column("raw_value").to_pylist())
    assert not {k.decode() for k in key_of.values()} & identifiers


def test_kafka_unreachable_is_a_user_error(tmp_path, monkeypatch):
    def down(settings, **kw):
        raise kafka_io.KafkaUnavailable("no broker")

    monkeypatch.setattr(kafka_io, "ensure_topic", down)
    with pytest.raises(SendflowrError, match="no broker"):
        generate(WorldConfig(people=50, weeks=1), tmp_path, to_kafka=Settings(home=tmp_path))


def _cli(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_generate_writes_the_world_and_reports(tmp_path, capsys):
    args = _cli(["generate", "--people", "300", "--weeks", "2", "--seed", "4", "--no-kafka", "--jsonl",
                 "--no-progress"])
    assert args.handler(args, Settings(home=tmp_path)) == 0
    out = capsys.readouterr().out.strip()
    world = tmp_path / "world"
    assert len(out.splitlines()) == 1 and "300 people" in out and str(world) in out and "events/s" in out
    manifest = orjson.loads((world / "manifest.json").read_bytes())
    assert manifest["parameters"]["people"] == 300 and manifest["seed"] == 4
    assert f"{manifest['events']} events" in out
    assert len((world / "events.jsonl").read_bytes().splitlines()) == manifest["events"]


@pytest.mark.parametrize("argv, message", [
    (["--people", "0"], "people"),
    (["--weeks", "0"], "weeks"),
    (["--end", "next tuesday"], "ISO 8601"),
    (["--end", (datetime.now(UTC) + timedelta(days=30)).isoformat()], "future"),
])
def test_cli_rejects_bad_arguments(tmp_path, argv, message):
    args = _cli(["generate", "--no-kafka", "--no-progress", *argv])
    with pytest.raises(SendflowrError, match=message):
        args.handler(args, Settings(home=tmp_path))
