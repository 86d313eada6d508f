"""The decision rule (sendflowr.timing.decide): every edge of the window, ties, calibration, batch agreement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from reference import decide

from sendflowr.timing.decide import (
    HOURS,
    Calibration,
    DecisionError,
    decide_many,
    hour_of_week,
    hour_of_week_ms,
)

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, 00:00 UTC
NOW = MONDAY - timedelta(days=1)
CAL = Calibration.default()


def peaked(*hours: int, base: float = 0.05, peak: float = 0.4) -> np.ndarray:
    curve = np.full(HOURS, base, dtype=np.float32)
    curve[list(hours)] = peak
    return curve


def one(curve: np.ndarray, after: datetime, before: datetime, latency: float = 0.0, now: datetime = NOW,
        evidence: float = 10.0, level: str = "person", calibration: Calibration = CAL):
    return decide(curve, evidence=evidence, fallback_level=level, send_after=after, send_before=before,
                  latency_seconds=latency, now=now, calibration=calibration)


def test_hour_of_week_convention() -> None:
    assert hour_of_week(MONDAY) == 0
    assert hour_of_week(MONDAY + timedelta(hours=1, minutes=59)) == 1
    assert hour_of_week(MONDAY + timedelta(days=2, hours=14)) == 2 * 24 + 14  # Wednesday 14:00
    assert hour_of_week(MONDAY - timedelta(minutes=1)) == 167  # Sunday 23:59
    assert hour_of_week(datetime(1970, 1, 1, tzinfo=UTC)) == 72  # a Thursday
    # weekday() is Monday = 0, so (isoweekday - 1) * 24 + hour agrees everywhere
    moments = [MONDAY + timedelta(minutes=37 * k) for k in range(2000)]
    assert [hour_of_week(m) for m in moments] == [m.weekday() * 24 + m.hour for m in moments]


def test_picks_the_best_hour_in_the_window_and_trigger_is_delivery_minus_latency() -> None:
    curve = peaked(14)  # Monday 14:00
    d = one(curve, MONDAY, MONDAY + timedelta(days=1), latency=90.0)
    assert d.delivery_at == MONDAY + timedelta(hours=14)
    assert d.trigger_at == d.delivery_at - timedelta(seconds=90)
    assert d.expected_engagement == pytest.approx(0.4)
    assert d.fallback_level == "person"
    assert "Mon 14:00 UTC" in d.explanation
    # outside the window the peak does not exist: the best remaining hour (earliest of equals) wins
    d = one(curve, MONDAY + timedelta(hours=15), MONDAY + timedelta(hours=20))
    assert d.delivery_at == MONDAY + timedelta(hours=15)
    assert d.expected_engagement == pytest.approx(0.05)


def test_ties_go_to_the_earliest_moment() -> None:
    curve = peaked(10, 12, 13)
    d = one(curve, MONDAY, MONDAY + timedelta(days=1))
    assert d.delivery_at == MONDAY + timedelta(hours=10)
    flat = np.full(HOURS, 0.1, dtype=np.float32)
    start = MONDAY + timedelta(hours=3, minutes=20)
    assert one(flat, start, start + timedelta(days=3)).delivery_at == start


def test_window_shorter_than_an_hour() -> None:
    after = MONDAY + timedelta(hours=9, minutes=15)
    before = after + timedelta(minutes=30)
    d = one(peaked(10), after, before)
    assert d.delivery_at == after  # the only slot there is
    assert d.confidence == 1.0  # every candidate is the true best in the window: certain by construction
    # a short window straddling an hour boundary can reach the next, better hour
    d = one(peaked(10), after, after + timedelta(minutes=50))
    assert d.delivery_at == MONDAY + timedelta(hours=10)


def test_window_longer_than_a_week_uses_the_first_occurrence_of_the_best_hour() -> None:
    curve = peaked(5)  # Monday 05:00
    after = MONDAY + timedelta(hours=6)  # just missed this week's peak
    d = one(curve, after, after + timedelta(days=30))
    assert d.delivery_at == MONDAY + timedelta(days=7, hours=5)
    d = one(curve, MONDAY + timedelta(hours=1), MONDAY + timedelta(days=30))
    assert d.delivery_at == MONDAY + timedelta(hours=5)


def test_window_already_past_names_send_before() -> None:
    with pytest.raises(DecisionError) as info:
        one(peaked(3), NOW - timedelta(hours=5), NOW - timedelta(hours=1))
    assert info.value.field == "send_before"
    with pytest.raises(DecisionError) as info:
        one(peaked(3), NOW - timedelta(hours=5), NOW)  # half-open: send_before == now leaves nothing
    assert info.value.field == "send_before"


def test_empty_or_inverted_window_names_send_before() -> None:
    with pytest.raises(DecisionError) as info:
        one(peaked(3), MONDAY, MONDAY)
    assert info.value.field == "send_before"
    with pytest.raises(DecisionError) as info:
        one(peaked(3), MONDAY + timedelta(hours=2), MONDAY)
    assert info.value.field == "send_before"


def test_trigger_before_now_moves_delivery_forward() -> None:
    # Window opened in the past: deliver no earlier than now + latency, so the trigger is never before now.
    now = MONDAY + timedelta(hours=8, minutes=10)
    curve = np.full(HOURS, 0.1, dtype=np.float32)
    curve[8] = 0.9  # the current hour is best
    d = one(curve, MONDAY, MONDAY + timedelta(hours=12), latency=120.0, now=now)
    assert d.trigger_at == now
    assert d.delivery_at == now + timedelta(seconds=120)
    # latency pushes the earliest delivery past the good hour: the next best reachable slot is chosen
    d = one(curve, MONDAY, MONDAY + timedelta(hours=12), latency=3600.0, now=now)
    assert d.delivery_at == now + timedelta(hours=1)
    assert d.trigger_at == now


def test_latency_larger_than_the_window() -> None:
    # A future window shorter than the latency is fine: the trigger lands before send_after.
    after = MONDAY + timedelta(hours=10)
    d = one(peaked(10), after, after + timedelta(minutes=30), latency=7200.0)
    assert d.delivery_at == after
    assert d.trigger_at == after - timedelta(hours=2)
    # ... but not when even a trigger right now would deliver after send_before.
    now = after - timedelta(hours=1)
    with pytest.raises(DecisionError) as info:
        one(peaked(10), after, after + timedelta(minutes=30), latency=7200.0, now=now)
    assert info.value.field == "latency_estimate_seconds"


@pytest.mark.parametrize("latency", [-1.0, float("nan"), float("inf")])
def test_invalid_latency_names_the_latency_field(latency: float) -> None:
    with pytest.raises(DecisionError) as info:
        one(peaked(3), MONDAY, MONDAY + timedelta(days=1), latency=latency)
    assert info.value.field == "latency_estimate_seconds"


def test_naive_datetimes_and_bad_curves_are_refused_with_the_field() -> None:
    with pytest.raises(DecisionError) as info:
        one(peaked(3), MONDAY.replace(tzinfo=None), MONDAY + timedelta(days=1))
    assert info.value.field == "send_after"
    with pytest.raises(DecisionError) as info:
        one(np.ones(24, dtype=np.float32), MONDAY, MONDAY + timedelta(days=1))
    assert info.value.field == "curve"
    bad = peaked(3)
    bad[7] = np.nan
    with pytest.raises(DecisionError) as info:
        one(bad, MONDAY, MONDAY + timedelta(days=1))
    assert info.value.field == "curve"


def test_confidence_grows_with_margin_and_evidence_and_respects_levels() -> None:
    window = (MONDAY, MONDAY + timedelta(days=7))
    weak = one(peaked(14, peak=0.06), *window, evidence=1.0).confidence
    strong = one(peaked(14, peak=0.6), *window, evidence=1.0).confidence
    strong_more = one(peaked(14, peak=0.6), *window, evidence=50.0).confidence
    assert 0.0 <= weak < strong < strong_more <= 1.0
    cal = Calibration(knots={"person": ((0.0, 1.0), (0.2, 0.9)), "global": ((0.0, 1.0), (0.1, 0.3))}, fitted=True)
    p = one(peaked(14, peak=0.6), *window, evidence=50.0, calibration=cal)
    g = one(peaked(14, peak=0.6), *window, evidence=50.0, level="global", calibration=cal)
    c = one(peaked(14, peak=0.6), *window, evidence=50.0, level="cohort", calibration=cal)  # no knots: global's
    assert p.confidence == pytest.approx(0.9) and g.confidence == pytest.approx(0.3) and c.confidence == g.confidence


def test_calibration_round_trips_and_rejects_nonsense() -> None:
    cal = Calibration(knots={"person": ((0.0, 0.5, 2.0), (0.1, 0.4, 0.95))}, fitted=True, ece=0.03, samples=900,
                      notes={"auc": 0.8})
    again = Calibration.from_json(cal.to_json())
    assert again == cal
    assert Calibration.from_json(Calibration.default().to_json()) == Calibration.default()
    with pytest.raises(ValueError):
        Calibration(knots={"person": ((1.0, 0.0), (0.2, 0.3))})
    with pytest.raises(ValueError):
        Calibration(knots={"person": ((0.0, 1.0), (0.2, 1.3))})


def _random_requests(rng: np.random.Generator, n: int):
    curves = rng.random((n, HOURS)).astype(np.float32)
    curves[rng.random(n) < 0.1] = 0.2  # flat curves: all ties
    curves[:, rng.integers(0, HOURS, 5)] = curves.max()  # cross-row ties too
    base = np.datetime64(MONDAY.replace(tzinfo=None), "ms").astype(np.int64)
    after = base + rng.integers(-3 * 86_400_000, 10 * 86_400_000, n)
    width = np.where(rng.random(n) < 0.3, rng.integers(-3_600_000, 3_600_000, n),
                     rng.integers(1, 20 * 86_400_000, n))
    before = after + width
    latency = np.where(rng.random(n) < 0.9, rng.random(n) * 7200, rng.random(n) * 5 * 86_400)
    latency[rng.random(n) < 0.02] = -5.0
    evidence = rng.random(n) * 40
    levels = rng.choice(np.array(["person", "cohort", "global"], dtype=object), n)
    return curves, evidence, levels, after.astype("datetime64[ms]"), before.astype("datetime64[ms]"), latency


def test_decide_many_agrees_exactly_with_decide_and_isolates_bad_rows() -> None:
    rng = np.random.default_rng(5)
    curves, evidence, levels, after, before, latency = _random_requests(rng, 600)
    batch = decide_many(curves, evidence, levels, after, before, latency, MONDAY, CAL)
    assert len(batch) == 600
    errors = 0
    for i in range(600):
        a = after[i].astype(datetime).replace(tzinfo=UTC)
        b = before[i].astype(datetime).replace(tzinfo=UTC)
        try:
            d = decide(curves[i], evidence=float(evidence[i]), fallback_level=levels[i], send_after=a,
                       send_before=b, latency_seconds=float(latency[i]), now=MONDAY, calibration=CAL)
        except DecisionError as exc:
            errors += 1
            assert batch.error_field[i] == exc.field
            assert np.isnat(batch.delivery_at[i]) and np.isnan(batch.confidence[i])
            continue
        assert batch.error_field[i] is None
        assert batch.delivery_at[i] == np.datetime64(d.delivery_at.replace(tzinfo=None), "ms")
        assert batch.trigger_at[i] == np.datetime64(d.trigger_at.replace(tzinfo=None), "ms")
        assert batch.confidence[i] == d.confidence
        assert batch.expected_engagement[i] == d.expected_engagement
        assert batch.fallback_level[i] == d.fallback_level
    assert 0 < errors < 600  # both kinds of rows were exercised


def test_decide_many_is_optimal_against_a_brute_force_minute_scan() -> None:
    rng = np.random.default_rng(11)
    curves, evidence, levels, after, before, latency = _random_requests(rng, 150)
    batch = decide_many(curves, evidence, levels, after, before, latency, MONDAY, CAL)
    now_ms = np.datetime64(MONDAY.replace(tzinfo=None), "ms").astype(np.int64)
    checked = 0
    for i in np.flatnonzero(batch.error_field == None).tolist():  # noqa: E711
        lat = int(np.ceil(latency[i] * 1000))
        start = max(int(after[i].astype(np.int64)), now_ms + lat)
        end = min(int(before[i].astype(np.int64)), start + 8 * 86_400_000)
        minutes = np.arange(start, end, 60_000, dtype=np.int64)
        values = curves[i][hour_of_week_ms(minutes)]
        best = values.max()
        assert batch.expected_engagement[i] == pytest.approx(float(best))
        first = minutes[np.flatnonzero(values == best)[0]]
        chosen = int(batch.delivery_at[i].astype(np.int64))
        assert chosen <= first  # never later than the earliest minute reaching the best value
        assert curves[i][hour_of_week_ms(np.array([chosen]))[0]] == best
        assert int(batch.trigger_at[i].astype(np.int64)) >= now_ms
        checked += 1
    assert checked > 50


def test_decide_many_scalar_and_array_windows_broadcast() -> None:
    curves = np.stack([peaked(3), peaked(20), peaked(100)])
    batch = decide_many(curves, np.array([1.0, 2.0, 3.0]), np.array(["person"] * 3, dtype=object), MONDAY,
                        MONDAY + timedelta(days=7), 0.0, NOW, CAL)
    hours = (batch.delivery_at - np.datetime64(MONDAY.replace(tzinfo=None), "ms")).astype("timedelta64[h]")
    assert hours.astype(int).tolist() == [3, 20, 100]
    with pytest.raises(DecisionError) as info:
        decide_many(curves, 1.0, "person", MONDAY, np.array([np.datetime64("2026-11-10", "ms")] * 2),
                    0.0, NOW, CAL)
    assert info.value.field == "send_before"
