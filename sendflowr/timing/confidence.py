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

from sendflowr.timing.decide import CANDIDATE_BUCKETS, EPOCH_HOW, HOUR_MS, HOURS, Calibration, decide_many
from sendflowr.timing.estimate import direct_curves, kernel_mass, levels


def fit_posterior_calibration(f, rng: np.random.Generator, people: int = 6000, draws: int = 16,
                              sharpness: float = 1.0) -> Calibration:
    """The calibration decisions use, fitted on draws from the fitted model's posterior (no truth needed).

    f: a timing.fit.Fit. People are sampled per fallback level (so every level gets its own curve), one window
    each, of a length spread over the candidate buckets, starting on a random hour of the week."""
    n = len(f.stats)
    if n == 0:
        return Calibration.default()
    lv = levels(f.stats.engaged, f.cohort_index, f.params)
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(lv == level))[: people // 3]
                                   for level in ("person", "cohort", "global")]))
    sub = f.subset(pick)
    shape, rate, _ = sub.posterior()
    mean, evidence, _ = sub.curves()
    k = pick.size
    # window lengths spread over the candidate buckets (a bucket, then a length inside it)
    upper = np.asarray(CANDIDATE_BUCKETS[:-1] + (HOURS,))
    lower = np.concatenate([[2], upper[:-1] + 1])
    bucket = rng.integers(0, upper.size, k)
    length = rng.integers(lower[bucket], upper[bucket] + 1)
    start_slot = rng.integers(0, HOURS, k)
    start = (start_slot + 24 * 7 * 3000 - EPOCH_HOW).astype(np.int64) * HOUR_MS  # that hour of week, any week
    decided = decide_many(mean, evidence, lv[pick], start.astype("datetime64[ms]"),
                          (start + length * HOUR_MS).astype("datetime64[ms]"), 0.0,
                          datetime.fromtimestamp(0, tz=UTC), Calibration.default())
    chosen = ((decided.delivery_at.astype(np.int64) // HOUR_MS) + EPOCH_HOW) % HOURS
    mass = np.float32(kernel_mass(f.params))
    a, b = shape / mass, rate / mass
    s, e = sub.stats.deliveries(0, k, f.decay)
    level = mean.mean(axis=1, keepdims=True)
    hit = np.zeros(k)
    for _ in range(draws):
        drawn = direct_curves(f.decay.curves(rng.gamma(a, 1.0).astype(np.float32) / b), s, e, f.params)
        if sharpness < 1.0:  # as held-out outcomes say the curve's shape may be: the served curve's contrasts
            # shrunk to what they predicted, the draw's own noise kept
            drawn = drawn - (1.0 - sharpness) * (mean - level)
        for hours in np.unique(length):  # the draw's best slot in each window (ties: earliest, as decisions)
            rows = np.flatnonzero(length == hours)
            slots = (start_slot[rows, None] + np.arange(hours)[None, :]) % HOURS
            best = slots[np.arange(rows.size), drawn[rows[:, None], slots].argmax(axis=1)]
            d = np.abs(best - chosen[rows]) % HOURS
            hit[rows] += np.minimum(d, HOURS - d) <= 1
    raw, level = decided.raw_score, lv[pick]
    finite = np.isfinite(raw)
    cal = fit_calibration(raw[finite], hit[finite] / draws, level[finite], decided.candidates[finite])
    return Calibration(knots=cal.knots, fitted=True, samples=int(finite.sum()),
                       notes={"posterior_draws": float(draws)})


def fit_calibration(raw: np.ndarray, hit: np.ndarray, lv: np.ndarray, candidates: np.ndarray | None = None,
                    max_knots: int = 64) -> Calibration:
    """Isotonic regression of hit (0/1 or a share) on the raw margin score, per fallback level and, given the
    windows' candidate counts, per level and candidate bucket (finite scores only): each block of the fit
    contributes its first and last score as knots, interpolated between."""
    knots = {}
    groups = [(level, lv == level) for level in ("person", "cohort", "global")]
    if candidates is not None:
        bucket = np.searchsorted(CANDIDATE_BUCKETS, candidates)
        groups += [(f"{level}/{b}", (lv == level) & (bucket == b)) for level in ("person", "cohort", "global")
                   for b in range(len(CANDIDATE_BUCKETS))]
    for key, group in groups:
        rows = group & np.isfinite(raw)
        if rows.sum() < 20:
            continue
        x, y = _isotonic_knots(raw[rows], np.asarray(hit, dtype=np.float64)[rows])
        if x.size > max_knots:
            keep = np.unique(np.linspace(0, x.size - 1, max_knots).round().astype(np.int64))
            x, y = x[keep], y[keep]
        knots[key] = (tuple(float(v) for v in x), tuple(float(v) for v in y))
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


def calibrate(inputs, f, rng: np.random.Generator, holdout_weeks: float = 2.0):
    """(Predictive, Calibration) for a fitted model, from the user's own events only: the held-out deliveries
    (sendflowr.timing.predictive) say how much of the curves' shape is real and what their values deliver; the
    confidence map is fitted on posterior draws shaped by that; expected engagement maps through what held-out
    deliveries observed. inputs: the timing.fit.Inputs f was fitted from."""
    from dataclasses import replace

    from sendflowr.timing.predictive import evaluate_predictive

    predictive = evaluate_predictive(inputs, f.params, holdout_weeks)
    cal = fit_posterior_calibration(f, rng, sharpness=predictive.sharpness)
    notes = {**cal.notes, "sharpness": predictive.sharpness, "heldout_deliveries": float(predictive.deliveries)}
    engagement = predictive.calibration if predictive.deliveries >= 50 else None
    return predictive, replace(cal, notes=notes, engagement=engagement)
