"""TRUE engagement curves: P(genuine open | delivered at UTC hour-of-week h), h = weekday*24 + hour, Monday=0.

Each archetype is a smooth local-time daily profile (separate weekday and weekend shapes). A person gets
their archetype with individual noise (peak shift, width, weekend weight, hour-level jitter), the profile
is evaluated at their local time for each UTC hour (fixed offset, so half-hour zones interpolate
naturally), scaled to a maximum of 1 and multiplied by the person's propensity. The result is the absolute
open probability: `p_open[person, h] = propensity[person] * shape[person, h]`.
"""

from __future__ import annotations

import numpy as np

from sendflowr.synth.people import ARCHETYPES, People

HOURS = 168
FLOOR = 0.18  # some chance to open at any hour (relative to the peak)

# (peak local hour, spread in hours, weight) for weekdays, then weekends.
PROFILES: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[tuple[float, float, float], ...]]] = {
    "morning": (((7.5, 1.3, 1.0), (12.5, 1.5, 0.3), (19.5, 2.0, 0.2)), ((9.5, 2.0, 0.6), (19.0, 2.5, 0.25))),
    "lunch": (((12.5, 1.2, 1.0), (8.5, 1.5, 0.25), (20.0, 2.0, 0.25)), ((13.0, 2.5, 0.4),)),
    "evening": (((20.5, 1.8, 1.0), (13.0, 2.0, 0.2)), ((19.5, 2.5, 0.9), (11.0, 2.5, 0.3))),
    "weekend": (((20.0, 2.5, 0.25),), ((10.5, 2.0, 1.0), (16.0, 2.5, 0.8))),
    "night": (((2.5, 1.8, 1.0), (14.5, 1.5, 0.3)), ((3.5, 2.0, 0.9),)),
}
assert tuple(PROFILES) == ARCHETYPES


def _bumps(hod: np.ndarray, shift: np.ndarray, width: np.ndarray, bumps) -> np.ndarray:
    total = np.zeros_like(hod)
    for peak, spread, weight in bumps:
        d = (hod - (peak + shift) + 12.0) % 24.0 - 12.0  # circular distance on the 24 h clock
        total += weight * np.exp(-0.5 * (d / (spread * width)) ** 2)
    return total


def build_curves(people: People, rng: np.random.Generator, chunk: int = 50_000) -> np.ndarray:
    """(people, 168) float32 absolute open probabilities in UTC hour-of-week."""
    n = len(people)
    shift = rng.normal(0.0, 0.75, size=n)
    width = rng.lognormal(0.0, 0.15, size=n)
    weekend_weight = rng.lognormal(0.0, 0.25, size=n)
    out = np.empty((n, HOURS), dtype=np.float32)
    utc_mid = np.arange(HOURS, dtype=np.float64) + 0.5
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start
        local = (utc_mid[None, :] + people.utc_offset_hours[sl, None].astype(np.float64)) % HOURS
        day = np.floor(local / 24.0)
        hod = local - 24.0 * day
        weekend = day >= 5
        s, w, we = shift[sl, None], width[sl, None], weekend_weight[sl, None]
        intensity = np.full((m, HOURS), FLOOR)
        arch = people.archetype[sl]
        for a, name in enumerate(ARCHETYPES):
            rows = np.flatnonzero(arch == a)
            if rows.size == 0:
                continue
            weekday_bumps, weekend_bumps = PROFILES[name]
            h, ss, ww = hod[rows], s[rows], w[rows]
            wk = _bumps(h, ss, ww, weekday_bumps)
            en = _bumps(h, ss, ww, weekend_bumps) * we[rows]
            intensity[rows] += np.where(weekend[rows], en, wk)
        intensity *= rng.lognormal(0.0, 0.12, size=(m, HOURS))
        shape = intensity / intensity.max(axis=1, keepdims=True)
        out[sl] = (shape * people.propensity[sl, None]).astype(np.float32)
    return out
