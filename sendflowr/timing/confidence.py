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

from sendflowr.timing.decide import HOUR_MS, HOURS, Calibration, decide_many
from sendflowr.timing.estimate import kernel_mass, levels

WINDOWS_HOURS = (6, 24, 72)  # window lengths the calibration is fitted over (equal shares)


def fit_posterior_calibration(f, rng: np.random.Generator, people: int = 4000, draws: int = 24,
                              windows_per_person: int = 3) -> Calibration:
    """The calibration decisions use, fitted on draws from the fitted model's posterior (no truth needed).

    f: a timing.run.Fit. People are sampled per fallback level (so every level gets its own curve)."""
    n = len(f.stats)
    if n == 0:
        return Calibration.default()
    engaged = f.stats.row_sums(0, n, f.stats.events)
    lv = levels(engaged, f.cohort_index, f.params)
    pick = np.concatenate([rng.permutation(np.flatnonzero(lv == level))[: people // 3]
                           for level in ("person", "cohort", "global")])
    pick.sort()
    mass = np.float32(kernel_mass(f.params))
    raws, hits, lvs = [], [], []
    for lo in range(0, pick.size, 2000):
        rows = pick[lo:lo + 2000]
        shape, rate, evidence = f.subset(rows).posterior()
        mean_curves = f.decay.curves(shape / rate)
        k = rows.size * windows_per_person
        person = np.repeat(np.arange(rows.size), windows_per_person)
        hours = np.asarray(WINDOWS_HOURS)[rng.integers(0, len(WINDOWS_HOURS), k)]
        start = (rng.integers(0, HOURS, k) + 24 * 7 * 3000).astype(np.int64) * HOUR_MS  # whole hours, any week
        end = start + hours * HOUR_MS
        now = datetime.fromtimestamp(0, tz=UTC)
        decided = decide_many(mean_curves[person], evidence[person], lv[rows][person], start.astype("datetime64[ms]"),
                              end.astype("datetime64[ms]"), 0.0, now, Calibration.default())
        chosen = ((decided.delivery_at.astype(np.int64) // HOUR_MS) + 72) % HOURS
        hit = np.zeros(k)
        a, b = shape / mass, rate / mass
        for _ in range(draws):
            drawn = f.decay.curves(rng.gamma(a, 1.0) / b)
            best = decide_many(drawn[person], evidence[person], lv[rows][person], start.astype("datetime64[ms]"),
                               end.astype("datetime64[ms]"), 0.0, now, Calibration.default())
            slot = ((best.delivery_at.astype(np.int64) // HOUR_MS) + 72) % HOURS
            d = np.abs(slot - chosen) % HOURS
            hit += np.minimum(d, HOURS - d) <= 1
        raws.append(decided.raw_score)
        hits.append(hit / draws)
        lvs.append(lv[rows][person])
    raw, hit, lvl = np.concatenate(raws), np.concatenate(hits), np.concatenate(lvs)
    finite = np.isfinite(raw)
    cal = fit_calibration(raw[finite], hit[finite], lvl[finite])
    return Calibration(knots=cal.knots, fitted=True, samples=int(finite.sum()),
                       notes={"source": 0.0, "draws": float(draws)})


def fit_calibration(raw: np.ndarray, hit: np.ndarray, lv: np.ndarray, max_knots: int = 64) -> Calibration:
    """Isotonic regression of hit on the raw margin score, per fallback level (finite scores only)."""
    from sklearn.isotonic import IsotonicRegression

    knots = {}
    for level in ("person", "cohort", "global"):
        rows = (lv == level) & np.isfinite(raw)
        if rows.sum() < 20:
            continue
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw[rows], hit[rows])
        x, y = iso.X_thresholds_, iso.y_thresholds_
        if x.size > max_knots:
            keep = np.unique(np.linspace(0, x.size - 1, max_knots).round().astype(np.int64))
            x, y = x[keep], y[keep]
        knots[level] = (tuple(float(v) for v in x), tuple(float(v) for v in y))
    if "global" not in knots:
        knots["global"] = Calibration.default().knots["global"]
    return Calibration(knots=knots, fitted=True, samples=int(np.isfinite(raw).sum()))
