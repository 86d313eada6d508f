"""Evaluation arithmetic: expected calibration error and the isotonic calibration fit."""

from __future__ import annotations

import numpy as np
import pytest

from sendflowr.timing.decide import Calibration
from sendflowr.timing.evaluate import expected_calibration_error, fit_calibration


def test_ece_is_small_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    hit = rng.random(p.size) < p
    ece, table = expected_calibration_error(p, hit)
    assert ece < 0.01
    assert len(table) == 10 and sum(n for _, _, n in table) == p.size
    overconfident, _ = expected_calibration_error(np.minimum(p * 1.5, 1.0), hit)
    assert overconfident > 0.1
    constant, table = expected_calibration_error(np.full(1000, 0.7), np.arange(1000) < 700)
    assert constant < 1e-9 and len(table) == 1 and table[0][2] == 1000
    assert abs(table[0][0] - 0.7) < 1e-9 and abs(table[0][1] - 0.7) < 1e-9


def test_isotonic_calibration_fixes_a_monotone_miscalibration_per_level() -> None:
    rng = np.random.default_rng(2)
    n = 60_000
    raw = rng.exponential(1.0, n)
    levels = rng.choice(np.array(["person", "cohort", "global"], dtype=object), n)
    truth = np.where(levels == "person", 1 - np.exp(-raw), 0.5 * (1 - np.exp(-raw)))  # levels differ
    hit = rng.random(n) < truth
    default = Calibration.default()
    before, _ = expected_calibration_error(default.apply(raw, levels), hit)
    fitted = fit_calibration(raw[: n // 2], hit[: n // 2], levels[: n // 2])
    assert fitted.fitted and set(fitted.knots) == {"person", "cohort", "global"}
    after, _ = expected_calibration_error(fitted.apply(raw[n // 2:], levels[n // 2:]), hit[n // 2:])
    assert after < 0.02 < before
    assert Calibration.from_json(fitted.to_json()) == fitted
    # certain-by-construction decisions (no candidate more than an hour away) stay at confidence 1
    assert fitted.apply(np.array([np.inf]), np.array(["cohort"], dtype=object))[0] == 1.0


def test_calibration_per_window_size_bucket_and_engagement_map() -> None:
    from sendflowr.timing.decide import CANDIDATE_BUCKETS, decide_many

    cal = Calibration(knots={"person": ((0.0, 1.0), (0.1, 0.2)), "person/5": ((0.0, 1.0), (0.01, 0.02)),
                             "global": ((0.0, 1.0), (0.3, 0.3))},
                      fitted=True, engagement=((0.0, 0.5, 1.0), (0.0, 0.1, 0.2)))
    raw, lv = np.array([0.5, 0.5, 0.5]), np.array(["person", "person", "cohort"], dtype=object)
    # a week-long window falls in the last bucket; a short one has no bucketed knots: the level's
    np.testing.assert_allclose(cal.apply(raw, lv, np.array([169, 3, 169])), [0.015, 0.15, 0.3])
    np.testing.assert_allclose(cal.apply(raw, lv), [0.15, 0.15, 0.3])  # no window sizes: per level
    assert len(CANDIDATE_BUCKETS) == 6 and Calibration.from_json(cal.to_json()) == cal
    # expected engagement is the curve value mapped through what held-out deliveries observed
    curve = np.full((1, 168), 0.5, dtype=np.float32)
    t0 = np.datetime64("2026-12-01T00:00:00", "ms")
    from datetime import UTC, datetime
    batch = decide_many(curve, 5.0, "person", t0, t0 + np.timedelta64(24, "h"), 0.0,
                        datetime(2026, 11, 1, tzinfo=UTC), cal)
    assert batch.expected_engagement[0] == pytest.approx(0.1) and batch.candidates[0] == 24


def test_sharpness_tells_real_contrasts_from_spurious_ones_with_one_delivery_a_person() -> None:
    from sendflowr.timing.predictive import auc, scores, sharpness

    rng = np.random.default_rng(5)
    for per in (12, 1):  # a daily sender's hold-out, and a weekly one's: a single delivery a person
        people = 48_000 // per
        level = np.repeat(rng.uniform(0.1, 0.4, people), per)  # the person's curve mean
        off = np.repeat(rng.uniform(-0.05, 0.05, people), per)  # the truth's level differs, whatever the hour
        contrast = rng.uniform(-0.08, 0.08, level.size)  # what the curve predicts around its mean
        for real in (1.0, 0.5, 0.0):  # the truth has all, half or none of the predicted contrast
            y = rng.random(level.size) < level + off + real * contrast
            slope = sharpness(level + contrast, level, y)
            assert abs(slope - real) < 0.15, (per, real, slope)
    assert sharpness(np.full(10, 0.2), np.full(10, 0.2), np.ones(10, bool)) == 1.0  # too few to tell
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    s = scores(np.array([0.5, 0.5]), np.array([True, False]))
    assert s["log_loss"] == pytest.approx(np.log(2)) and s["brier"] == pytest.approx(0.25)
