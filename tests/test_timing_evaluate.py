"""Evaluation arithmetic: expected calibration error and the isotonic calibration fit."""

from __future__ import annotations

import numpy as np

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
