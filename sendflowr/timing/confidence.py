"""Confidence from the model's own uncertainty (docs/TIMING.md, "Confidence").

`confidence_score` is P(the chosen slot is within one hour of the person's best slot in the window). No ground
truth exists on a user's data, so the calibration (raw margin score -> probability, per fallback level) is
fitted against the model's posterior instead: for a sample of people and windows, rates are drawn from each
person's Gamma posterior, each draw's best slot is compared with the slot chosen from the posterior mean, and
the share of draws within an hour is regressed (isotonic) on the raw score. If the posterior is honest, so
are the confidences; the evaluation measures that against a synthetic world's truth.

The posterior of a rate is Gamma(shape, rate) with the estimator's smoothed counts (estimate.person_posterior);
the smoothing counts each observation kernel_mass times, so the draws divide both terms by it: same mean,
the variance of the information actually held.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from sendflowr.timing.decide import EPOCH_HOW, HOUR_MS, HOURS, Calibration, decide_many
from sendflowr.timing.estimate import direct_curves, kernel_mass, levels

WINDOWS_HOURS = (6, 24, 72)  # window lengths the calibration is fitted over (equal shares)


def fit_posterior_calibration(f, rng: np.random.Generator, people: int = 3000, draws: int = 16) -> Calibration:
    """The calibration decisions use, fitted on draws from the fitted model's posterior (no truth needed).

    f: a timing.run.Fit. People are sampled per fallback level (so every level gets its own curve), one window
    each, of a length drawn from WINDOWS_HOURS, starting on a random hour of the week."""
    n = len(f.stats)
    if n == 0:
        return Calibration.default()
    engaged = f.stats.row_sums(0, n, f.stats.events)
    lv = levels(engaged, f.cohort_index, f.params)
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(lv == level))[: people // 3]
                                   for level in ("person", "cohort", "global")]))
    sub = f.subset(pick)
    shape, rate, evidence = sub.posterior()
    mean = sub.curves()[0]
    k = pick.size
    length = np.asarray(WINDOWS_HOURS)[rng.integers(0, len(WINDOWS_HOURS), k)]
    start_slot = rng.integers(0, HOURS, k)
    start = (start_slot + 24 * 7 * 3000 - EPOCH_HOW).astype(np.int64) * HOUR_MS  # that hour of week, any week
    decided = decide_many(mean, evidence, lv[pick], start.astype("datetime64[ms]"),
                          (start + length * HOUR_MS).astype("datetime64[ms]"), 0.0,
                          datetime.fromtimestamp(0, tz=UTC), Calibration.default())
    chosen = ((decided.delivery_at.astype(np.int64) // HOUR_MS) + EPOCH_HOW) % HOURS
    mass = np.float32(kernel_mass(f.params))
    a, b = shape / mass, rate / mass
    s, e = sub.stats.deliveries(0, k)
    hit = np.zeros(k)
    for _ in range(draws):
        drawn = direct_curves(f.decay.curves(rng.gamma(a, 1.0).astype(np.float32) / b), s, e, f.params)
        for hours in WINDOWS_HOURS:  # the draw's best slot in each window (ties: earliest, as decisions)
            rows = np.flatnonzero(length == hours)
            slots = (start_slot[rows, None] + np.arange(hours)[None, :]) % HOURS
            best = slots[np.arange(rows.size), drawn[rows[:, None], slots].argmax(axis=1)]
            d = np.abs(best - chosen[rows]) % HOURS
            hit[rows] += np.minimum(d, HOURS - d) <= 1
    raw, level = decided.raw_score, lv[pick]
    finite = np.isfinite(raw)
    cal = fit_calibration(raw[finite], hit[finite] / draws, level[finite])
    return Calibration(knots=cal.knots, fitted=True, samples=int(finite.sum()),
                       notes={"posterior_draws": float(draws)})


def fit_calibration(raw: np.ndarray, hit: np.ndarray, lv: np.ndarray, max_knots: int = 64) -> Calibration:
    """Isotonic regression of hit (0/1 or a share) on the raw margin score, per fallback level (finite scores
    only): each block of the fit contributes its first and last score as knots, interpolated between."""
    knots = {}
    for level in ("person", "cohort", "global"):
        rows = (lv == level) & np.isfinite(raw)
        if rows.sum() < 20:
            continue
        x, y = _isotonic_knots(raw[rows], np.asarray(hit, dtype=np.float64)[rows])
        if x.size > max_knots:
            keep = np.unique(np.linspace(0, x.size - 1, max_knots).round().astype(np.int64))
            x, y = x[keep], y[keep]
        knots[level] = (tuple(float(v) for v in x), tuple(float(v) for v in y))
    if "global" not in knots:
        knots["global"] = Calibration.default().knots["global"]
    return Calibration(knots=knots, fitted=True, samples=int(np.isfinite(raw).sum()))


def _isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import isotonic_regression

    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    fit = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True)
    starts = fit.blocks[:-1]
    ends = fit.blocks[1:] - 1
    kx = np.column_stack([values[starts], values[ends]]).ravel()
    ky = np.clip(np.repeat(fit.x[starts], 2), 0.0, 1.0)
    keep = np.concatenate([[True], kx[1:] != kx[:-1]])  # a one-value block gives its knot once
    return kx[keep], ky[keep]
