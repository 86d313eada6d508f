"""The phenomena knobs of the synthetic world (config.py's last block) and its presets: each knob does what
it says, leaves the other random streams alone, and the ground truth is the simulation's own open rate."""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict

import numpy as np
import orjson
import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_synth import _ms, _np  # the same column readers

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch, write_ground_truth
from sendflowr.synth.cli import add_cli
from sendflowr.synth.clients import CLICK_UA, SCANNERS
from sendflowr.synth.curves import HOURS
from sendflowr.synth.fmt import hour_of_week
from sendflowr.synth.habits import HAZARD, SESSIONS
from sendflowr.synth.hazard import HORIZON
from sendflowr.synth.opens import draw_opens, true_curves
from sendflowr.synth.people import ARCHETYPES, ZONES
from sendflowr.synth.presets import PRESETS, preset
from sendflowr.synth.sessions import WEEK_MINUTES
from sendflowr.synth.truth import new_manifest

HOUR, DAY = 3_600_000, 86_400_000
WEEK = 7 * DAY
MONDAY = 3 * DAY  # epoch + MONDAY is a Monday 00:00 UTC
SMALL = dict(people=600, weeks=8, campaigns_per_week=4.0, seed=21)


def _events(world) -> pa.Table:
    return pa.concat_tables(iter_event_batches(world, 50_000))


def _lines(world, batch_size: int) -> list[bytes]:
    return [line for batch in iter_event_batches(world, batch_size) for line in serialize_batch(batch)]


def _end_ms(config: WorldConfig) -> int:
    return int(config.end.timestamp() * 1000)


def _within(observed: float, p: float, n: int, z: float = 4.0) -> bool:
    return abs(observed - p) <= z * np.sqrt(max(p * (1 - p), 1e-4) / n)


# --- the ground truth is the simulation's open rate ----------------------------------------------------------

MECHANISMS = ("lognormal", "hazard", "sessions")


@pytest.mark.parametrize("drift", [False, True], ids=["steady", "drifting"])
@pytest.mark.parametrize("open_delay", MECHANISMS)
def test_true_curve_is_the_simulated_open_rate(open_delay, drift):
    """For a few people and hours, many deliveries at uniform moments of UTC hour-of-week h, in the period
    the truth covers (from manifest.truth_from on), are opened at the rate p_open[h]: the best, the worst, the
    hour where the truth turns fastest and a random hour of each person."""
    knobs = dict(drift_share=1.0, drift_hours=4.0, switch_share=0.5) if drift else {}
    world = build_world(WorldConfig(**SMALL, open_delay=open_delay, **knobs))
    rng = np.random.default_rng(5)
    settled = int(world.config.start.timestamp() * 1000) + world.habits.settle * WEEK if drift else 0
    first_monday = max((settled + MONDAY) // WEEK, (_end_ms(world.config) + MONDAY) // WEEK - 4) + 1
    candidates = np.flatnonzero(world.people.propensity > 0.2)
    if drift:
        habits = world.habits
        switched = candidates[habits.end_archetype[candidates] != world.people.archetype[candidates]]
        moved = candidates[habits.drift[candidates] != 0]
        people = [int(switched[0]), int(moved[0]), int(moved[1])]
    else:
        people = rng.choice(candidates, 3, replace=False).tolist()
    n = 3_000
    for person in people:
        curve = world.curves[person].astype(np.float64)
        steepest = int(np.argmax(np.abs(np.roll(curve, -1) - np.roll(curve, 1))))  # where the truth turns
        for h in (int(curve.argmax()), int(curve.argmin()), steepest, int(rng.integers(0, HOURS))):
            weeks = first_monday + rng.permutation(n)  # one delivery per week: independent session jitter
            deliver = weeks * WEEK - MONDAY + h * HOUR + rng.integers(0, HOUR, n)
            assert (hour_of_week(deliver) == h).all()
            opened, at = draw_opens(world, np.full(n, person), deliver, rng)
            assert _within(opened.mean(), curve[h], n), (person, h, opened.mean(), curve[h])
            assert (at[opened] > deliver[opened]).all()


@pytest.mark.parametrize("open_delay", MECHANISMS[1:])
def test_open_rates_in_the_event_stream_match_the_truth(open_delay):
    """The events themselves (simulate_campaign) agree with p_open: the genuine open rate of deliveries in the
    settled period equals the mean truth of their (person, delivery hour), for heavy and sparse readers."""
    config = WorldConfig(people=1_500, weeks=8, campaigns_per_week=6.0, seed=31, share_heavy=0.4,
                         apple_mpp_share=0.0, open_delay=open_delay, drift_share=0.3, switch_share=0.1)
    world = build_world(config)
    table = _events(world)
    etype, origin, dup = _np(table, "event_type"), _np(table, "_origin"), _np(table, "_duplicate")
    person, ts, message = _np(table, "_person"), _ms(table, "_ts"), _np(table, "message_id")
    truth_from = int(np.datetime64(new_manifest(world).truth_from.rstrip("Z"), "ms").astype(np.int64))
    # sessions may wait up to M_SESSIONS sessions: keep deliveries whose opens cannot fall after the end
    cutoff = _end_ms(config) - 7 * DAY
    delivered = (etype == "delivered") & ~dup & (ts >= truth_from) & (ts < cutoff)
    opened = set(message[(etype == "opened") & (origin == "human") & ~dup])
    y = np.array([m in opened for m in message[delivered]], dtype=float)
    p = world.curves[person[delivered], hour_of_week(ts[delivered])].astype(float)
    assert y.size > 2_000
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / y.size
    low = p < np.median(p)  # and in each half of the truth's range
    for rows in (low, ~low):
        assert abs(y[rows].mean() - p[rows].mean()) < 4 * np.sqrt((p[rows] * (1 - p[rows])).sum()) / rows.sum()


def test_hazard_open_times_follow_the_hazard():
    """The moment of a hazard open: its distribution over the horizon equals 1 - exp(-cumulative hazard),
    integrated here minute by minute from the definition (not the module's closed form)."""
    world = build_world(WorldConfig(**SMALL, open_delay="hazard"))
    h = world.habits
    person = int(np.flatnonzero(world.people.propensity > 0.5)[0])
    shape = h.attention.shape[person].astype(np.float64)
    tau, beta = h.hazard.tau[person], h.hazard.beta[person]
    rng = np.random.default_rng(9)
    d = ((_end_ms(world.config) + MONDAY) // WEEK) * WEEK - MONDAY + 26 * HOUR + 17 * 60_000  # Tue 02:17 UTC
    n = 40_000
    opened, at = draw_opens(world, np.full(n, person), np.full(n, d), rng)
    minutes = np.arange(HORIZON * 60) + 0.5
    rate = beta * shape[hour_of_week(d + (minutes * 60_000).astype(np.int64))] * np.exp(-minutes / 60 / tau) / 60
    cdf = 1 - np.exp(-np.cumsum(rate))
    for horizon_h in (1, 3, 8, 24, 72):
        expected = cdf[horizon_h * 60 - 1]
        observed = ((at - d <= horizon_h * HOUR) & opened).mean()
        assert _within(observed, expected, n), (horizon_h, observed, expected)


def test_session_opens_happen_at_the_persons_check_sessions():
    """A session open comes seconds to minutes after one of the person's sessions (within its jitter), never
    in between; and a message delivered at night local time waits for the morning instead of being opened
    at night (unlike the original lognormal delay)."""
    world = build_world(WorldConfig(**SMALL, open_delay="sessions"))
    s = world.habits.sessions
    people = np.flatnonzero(world.people.propensity > 0)
    rng = np.random.default_rng(2)
    n = 20_000
    who = rng.choice(people, n)
    deliver = _end_ms(world.config) + rng.integers(0, 30 * WEEK, n)
    opened, at = draw_opens(world, who, deliver, rng)
    assert 0.1 < opened.mean() < 0.9
    who, at = who[opened], at[opened]
    minute = ((at + MONDAY) % WEEK) / 60_000
    sched = s.first.minutes[who]  # no drift or switch in this world: the first schedule is in force
    apart = (minute[:, None] - sched) % WEEK_MINUTES
    nearest = np.where(sched < WEEK_MINUTES, np.minimum(apart, WEEK_MINUTES - apart), np.inf).min(axis=1)
    assert (nearest <= s.jitter[who] + 15).all()  # the session's jitter, then at most 15 min of reading
    assert (nearest > 30).mean() < 0.01 < (nearest > 5).mean()

    def night_open_share(open_delay: str) -> float:
        w = build_world(WorldConfig(**SMALL, open_delay=open_delay))
        p = w.people
        morning = np.flatnonzero((p.archetype == ARCHETYPES.index("morning")) & (p.propensity > 0))
        r = np.random.default_rng(3)
        k = 20_000
        who = r.choice(morning, k)
        offset = (p.utc_offset_hours[who] * HOUR).astype(np.int64)
        tuesday = ((_end_ms(w.config) + MONDAY) // WEEK) * WEEK - MONDAY + DAY
        d = tuesday + 2 * HOUR - offset + r.integers(0, 2 * HOUR, k) + r.integers(0, 50, k) * WEEK
        o, t = draw_opens(w, who, d, r)
        local_hour = ((t[o] + offset[o]) // HOUR) % 24
        return float((local_hour < 5).mean())

    assert night_open_share("sessions") < 0.15 < 0.5 < night_open_share("lognormal")
    assert night_open_share("hazard") < 0.5


def test_drift_moves_habits_and_settles_for_the_last_third():
    config = WorldConfig(**SMALL, open_delay="hazard", drift_share=0.5, drift_hours=4.0, switch_share=0.2)
    world = build_world(config)
    h = world.habits
    drifting = np.flatnonzero(h.drift != 0)
    switching = np.flatnonzero(h.end_archetype != world.people.archetype)
    assert 0.4 < drifting.size / len(world.people) < 0.6 and 0.12 < switching.size / len(world.people) < 0.28
    assert (np.abs(h.drift[drifting]) >= 2.0).all() and (np.abs(h.drift[drifting]) <= 4.0).all()
    assert ((h.switch_week[switching] >= 1) & (h.switch_week[switching] <= h.settle)).all()
    # the start regime's attention moved by the drift (circular cross-correlation peaks at the drift)
    steady = drifting[h.switch_week[drifting] > h.settle]
    start = h.shapes(steady, np.zeros(steady.size, dtype=np.int64))
    end = h.shapes(steady, np.full(steady.size, h.settle))
    lag = np.array([np.argmax([np.dot(np.roll(a, k), b) for k in range(-8, 9)]) - 8 for a, b in zip(start, end,
                                                                                                   strict=True)])
    assert np.mean(np.abs(lag - h.drift[steady]) <= 1.0) > 0.9
    # from the settle week on nothing moves; before it, the truth of that week's regime differs
    settled, _ = true_curves(h, world.curves, week=h.settle)
    assert np.array_equal(settled, world.curves)
    early, _ = true_curves(h, world.curves, week=0)
    moved = np.unique(np.concatenate([drifting, switching]))
    assert np.abs(early[moved] - world.curves[moved]).max(axis=1).mean() > 0.03
    still = np.setdiff1d(np.arange(len(world.people)), moved)
    assert np.array_equal(early[still], world.curves[still])
    # ... and the simulation follows the early regime in the first week
    person = int(moved[np.argmax(np.abs(early[moved] - world.curves[moved]).max(axis=1))])
    hour = int(np.argmax(np.abs(early[person] - world.curves[person])))
    start_ms = int(config.start.timestamp() * 1000)  # on the hour
    first = start_ms + int((hour - hour_of_week(np.array([start_ms]))[0]) % HOURS) * HOUR
    n = 4_000
    rng = np.random.default_rng(4)
    deliver = first + rng.integers(0, HOUR, n)
    assert (h.week_of(deliver) == 0).all() and (hour_of_week(deliver) == hour).all()
    opened, _ = draw_opens(world, np.full(n, person), deliver, rng)
    assert _within(opened.mean(), early[person, hour], n)
    assert not _within(opened.mean(), world.curves[person, hour], n)


# --- the other knobs --------------------------------------------------------------------------------------------


def _top_slots_share(world, k: int = 4) -> float:
    table = _events(world)
    sent = _np(table, "event_type") == "sent"
    how = hour_of_week(_ms(table, "_ts")[sent])
    counts = np.sort(np.bincount(how, minlength=HOURS))[::-1]
    return float(counts[:k].sum() / counts.sum())


def test_weekly_slots_carry_most_sends():
    world = build_world(preset("weekly_slots", people=800))
    per_slot = np.sort(np.bincount(hour_of_week(world.campaigns.send_ms), minlength=HOURS))[::-1]
    assert per_slot[:world.config.send_slots].sum() >= round(world.config.slot_share * len(world.campaigns))
    assert _top_slots_share(world) >= 0.8  # >= 80% of sends (messages) in <= 4 weekly slots
    assert _top_slots_share(build_world(WorldConfig(**SMALL))) < 0.8  # not so by default
    with pytest.raises(SendflowrError, match="slot_share needs send_slots"):
        WorldConfig(slot_share=0.5)


def _machine_open_delays(world) -> np.ndarray:
    table = _events(world)
    etype, origin, dup = _np(table, "event_type"), _np(table, "_origin"), _np(table, "_duplicate")
    ts, message = _ms(table, "_ts"), _np(table, "message_id")
    delivered = dict(zip(message[(etype == "delivered") & ~dup], ts[(etype == "delivered") & ~dup], strict=True))
    machine = np.flatnonzero((origin == "apple_mpp") & ~dup)
    return ts[machine] - np.array([delivered[m] for m in message[machine]])


def test_late_mpp_prefetches():
    late_config = WorldConfig(**SMALL, mpp_late_share=0.3)
    delays = _machine_open_delays(build_world(late_config))
    late = delays > 10 * 60_000
    assert delays.size > 2_000 and _within(late.mean(), 0.3, delays.size)
    assert delays.min() >= 1_000 and delays.max() <= 6 * HOUR
    # log-uniform between 10 minutes and 6 hours: the median late prefetch comes about an hour after delivery
    assert 45 * 60_000 < np.median(delays[late]) < 80 * 60_000
    assert (delays[late] > 3 * HOUR).mean() > 0.15
    prompt = _machine_open_delays(build_world(WorldConfig(**SMALL)))
    assert prompt.max() <= 10 * 60_000


def test_scanners_with_browser_user_agents_stay_machine_like():
    world = build_world(WorldConfig(**SMALL, scanner_share=0.2, scanner_browser_ua_share=0.5))
    table = _events(world)
    etype, origin, dup = _np(table, "event_type"), _np(table, "_origin"), _np(table, "_duplicate")
    ts, message, ua, ip = _ms(table, "_ts"), _np(table, "message_id"), _np(table, "user_agent"), _np(table, "ip")
    campaign, url = _np(table, "campaign_id"), _np(table, "url")
    delivered = dict(zip(message[(etype == "delivered") & ~dup], ts[(etype == "delivered") & ~dup], strict=True))
    scans = np.flatnonzero((origin == "scanner") & ~dup)
    browsers, vendor_uas = set(CLICK_UA.values()), {s[1] for s in SCANNERS}
    ranges = {f"{a}.{b}." for _, _, (a, b) in SCANNERS}
    visits: dict[str, list[int]] = defaultdict(list)
    for i in scans:
        visits[message[i]].append(int(i))
    posing = 0
    links = dict(zip(world.campaigns.ids, world.campaigns.n_links.tolist(), strict=True))
    for m, rows in visits.items():
        agents = {ua[i] for i in rows}
        assert len(agents) == 1  # one visit, one user agent
        agent = agents.pop()
        assert agent in browsers or agent in vendor_uas
        posing += agent in browsers
        assert all(any(ip[i].startswith(r) for r in ranges) for i in rows)  # still the gateway's addresses
        assert all(1_000 <= ts[i] - delivered[m] <= 30_000 for i in rows)  # still seconds after delivery
        assert len({url[i] for i in rows}) == links[campaign[rows[0]]]  # still every link
    assert len(visits) > 500 and _within(posing / len(visits), 0.5, len(visits))


def test_zone_mixed_people_carry_another_countrys_phone(tmp_path):
    world = build_world(WorldConfig(**SMALL, phone_share=0.9, zone_mix_share=0.3))
    write_ground_truth(world, tmp_path)
    people = pq.read_table(tmp_path / "people.parquet").to_pandas()
    zone_country = {z[0]: z[3] for z in ZONES}
    mixed = people.tz.map(zone_country) != people.home_country
    assert _within(mixed.mean(), 0.3, len(people))
    ids = pq.read_table(tmp_path / "identifiers.parquet").to_pandas()
    phones = ids[(ids.identifier_type == "phone") & ~ids.is_generic].drop_duplicates("normalized")
    region = phones.normalized.map(lambda v: phonenumbers.region_code_for_number(phonenumbers.parse(v)))
    home = phones.person_id.astype(int).map(people.set_index("person_id").home_country)
    assert len(phones) > 300 and (region == home).all()  # numbers follow the home country, not the zone
    # the +1 cohort (what timing groups people by) now spans zones far from America
    nanp = phones[region.isin(["US", "CA"]).to_numpy()].person_id.astype(int)
    offsets = people.set_index("person_id").utc_offset_hours[nanp]
    assert (offsets >= 0).sum() > 10 and (offsets < 0).sum() > 100
    plain = build_world(WorldConfig(**SMALL))
    assert (plain.people.countries == np.array([z[3] for z in ZONES], dtype=object)[plain.people.zone]).all()


# --- streams, determinism, presets, validation ----------------------------------------------------------------


def _by_event_id(world) -> dict[str, tuple[bytes, str]]:
    """event_id -> (line, origin) of every event, copies included once."""
    out = {}
    for batch in iter_event_batches(world, 50_000):
        for line, origin in zip(serialize_batch(batch), _np(batch, "_origin"), strict=True):
            out[orjson.loads(line)["event_id"]] = (line, origin)
    return out


def test_a_knob_changes_only_its_own_events():
    """One random stream per concern: turning a knob on leaves every event it is not about byte-identical.
    (No unsubscribes here: who receives later campaigns would follow the opens.)"""
    quiet = dict(SMALL, unsubscribe_rate=0.0)
    base = _by_event_id(build_world(WorldConfig(**quiet)))
    knobs = _by_event_id(build_world(WorldConfig(**quiet, mpp_late_share=0.3, scanner_browser_ua_share=0.5)))
    changed = {eid for eid in base.keys() | knobs.keys() if base.get(eid) != knobs.get(eid)}
    origins = {(base.get(eid) or knobs.get(eid))[1] for eid in changed}
    assert len(changed) > 100 and origins == {"apple_mpp", "scanner"}
    # another delay mechanism: sends, deliveries, bounces, prefetches and scanner clicks happen identically
    # (which identifiers an event carries is drawn per event of the campaign, so those may move)
    hazard = _by_event_id(build_world(WorldConfig(**quiet, open_delay="hazard")))

    def what(entry: tuple[bytes, str] | None) -> dict | None:
        return None if entry is None else {k: v for k, v in orjson.loads(entry[0]).items() if k != "identifiers"}

    kept = [eid for eid, (_, origin) in base.items() if origin != "human"]
    assert len(kept) > 10_000 and all(what(hazard.get(eid)) == what(base[eid]) for eid in kept)
    humans = [eid for eid, (_, origin) in base.items() if origin == "human"]
    assert sum(what(hazard.get(eid)) == what(base[eid]) for eid in humans) < 0.5 * len(humans)


def test_knobbed_worlds_are_deterministic():
    config = WorldConfig(**SMALL, send_slots=3, slot_share=0.6, open_delay="mixed", mpp_late_share=0.2,
                         scanner_browser_ua_share=0.3, drift_share=0.3, switch_share=0.1, zone_mix_share=0.2)
    first = _lines(build_world(config), 20_000)
    assert first == _lines(build_world(config), 7_919)
    assert first != _lines(build_world(dataclasses.replace(config, seed=22)), 20_000)
    kinds = build_world(config).habits.kind
    assert set(np.unique(kinds)) == {HAZARD, SESSIONS}


def test_presets_build_and_weekly_slots_meets_the_issue():
    assert {"baseline", "weekly_slots", "shifting_habits"} <= set(PRESETS) and len(PRESETS) >= 4
    assert PRESETS["baseline"].config == WorldConfig()
    configs = [p.config for p in PRESETS.values()]
    assert len({(c.people, c.campaigns_per_week, c.open_delay, c.send_slots) for c in configs}) == len(configs)
    slots = PRESETS["weekly_slots"].config
    assert slots.send_slots <= 4 and slots.slot_share >= 0.8 and slots.open_delay == "sessions"
    assert slots.mpp_late_share == 0.3
    shifting = PRESETS["shifting_habits"].config
    assert shifting.open_delay == "hazard" and shifting.drift_share > 0 and shifting.zone_mix_share > 0
    assert shifting.scanner_browser_ua_share > 0
    for name, p in PRESETS.items():
        assert 5_000 <= p.config.people <= 20_000 and 8 <= p.config.weeks <= 16, name
        small = build_world(preset(name, people=200, seed=3))
        assert small.curves.shape == (200, HOURS) and np.isfinite(small.curves).all()
        truth_from = np.datetime64(new_manifest(small).truth_from[:-1], "ms").astype(np.int64)
        sends = np.sort(small.campaigns.send_ms)
        assert (sends[len(sends) - -(-len(sends) // 3):] >= truth_from).all(), name  # a hold-out's truth holds
        assert np.allclose(small.curves.max(axis=1), small.people.propensity, atol=1e-6)
        assert (small.curves >= 0).all() and (small.curves <= 1).all()
    with pytest.raises(SendflowrError, match="unknown preset"):
        preset("nope")


def test_cli_generate_with_a_preset_and_overrides(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "--preset", "shifting_habits", "--people", "250", "--weeks", "4",
                              "--seed", "6", "--no-kafka", "--no-progress"])
    assert args.handler(args, Settings(home=tmp_path)) == 0
    assert "shifting_habits world: 250 people" in capsys.readouterr().out
    manifest = orjson.loads((tmp_path / "world" / "manifest.json").read_bytes())
    params = manifest["parameters"]
    assert params["people"] == 250 and params["weeks"] == 4 and manifest["seed"] == 6
    assert params["open_delay"] == "hazard" and params["drift_share"] == PRESETS["shifting_habits"].config.drift_share
    sends = pq.read_table(tmp_path / "world" / "campaigns.parquet").column("send_time").to_numpy()
    third = np.sort(sends)[len(sends) - max(1, -(-len(sends) // 3)):]
    assert manifest["truth_from"] < params["end"] and (third >= np.datetime64(manifest["truth_from"][:-1])).all()
    people = pq.read_table(tmp_path / "world" / "people.parquet").to_pandas()
    assert set(people.open_delay) == {"hazard"} and (people.drift_hours != 0).any()
    curves = pq.read_table(tmp_path / "world" / "true_curves.parquet")
    p_open = np.stack(curves.column("p_open").to_numpy(zero_copy_only=False))
    assert np.array_equal(curves.column("best_hour").to_numpy(), p_open.argmax(axis=1))
    assert np.allclose(p_open.max(axis=1), people.propensity.to_numpy(), atol=1e-6)


@pytest.mark.parametrize("knobs, message", [
    (dict(open_delay="poisson"), "open_delay"),
    (dict(send_slots=200), "send_slots"),
    (dict(mpp_late_share=1.5), "mpp_late_share"),
    (dict(drift_hours=-1.0), "drift_hours"),
    (dict(zone_mix_share=-0.1), "zone_mix_share"),
])
def test_bad_knobs_are_named(knobs, message):
    with pytest.raises(SendflowrError, match=message):
        WorldConfig(**knobs)
