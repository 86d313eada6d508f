"""TRUE engagement curves: P(genuine open | delivered at UTC hour-of-week h), h = weekday*24 + hour, Monday=0.

Each archetype is a smooth local-time daily profile (separate weekday and weekend shapes). A person gets
their archetype with individual noise (peak shift, width, weekend weight, hour-level jitter), the profile
is evaluated at their local time for each UTC hour (fixed offset, so half-hour zones interpolate
naturally), scaled to a maximum of 1 and multiplied by the person's propensity. The result is the absolute
open probability: `p_open[person, h] = propensity[person] * shape[person, h]`. That is the truth of the original
(lognormal) open delay; for the hazard and session mechanisms the shape is the person's attention and
opens.py derives the truth from it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Attention:
    """What a person's curve is made of, kept when a world needs more than the curve (habits.py): the relative
    attention (the curve divided by the propensity, max 1) and the individual noise to rebuild it for another
    archetype or a drifted rhythm."""

    shape: np.ndarray  # (people, 168) float32, max 1 per person
    shift: np.ndarray  # (people,) hours the archetype's peaks move for this person
    width: np.ndarray  # (people,) factor on the peaks' spreads
    weekend_weight: np.ndarray  # (people,)
    noise: np.ndarray | None  # (people, 168) float32 hour-level factors (kept when habits move)


def _intensity(offsets: np.ndarray, archetype: np.ndarray, shift: np.ndarray, width: np.ndarray,
               weekend_weight: np.ndarray) -> np.ndarray:
    """(m, 168) relative intensity (before hour-level noise) of each row's archetype in its local time."""
    m = offsets.shape[0]
    utc_mid = np.arange(HOURS, dtype=np.float64) + 0.5
    local = (utc_mid[None, :] + offsets[:, None].astype(np.float64)) % HOURS
    day = np.floor(local / 24.0)
    hod = local - 24.0 * day
    weekend = day >= 5
    s, w, we = shift[:, None], width[:, None], weekend_weight[:, None]
    intensity = np.full((m, HOURS), FLOOR)
    for a, name in enumerate(ARCHETYPES):
        rows = np.flatnonzero(archetype == a)
        if rows.size == 0:
            continue
        weekday_bumps, weekend_bumps = PROFILES[name]
        h, ss, ww = hod[rows], s[rows], w[rows]
        wk = _bumps(h, ss, ww, weekday_bumps)
        en = _bumps(h, ss, ww, weekend_bumps) * we[rows]
        intensity[rows] += np.where(weekend[rows], en, wk)
    return intensity


def build_curves(people: People, rng: np.random.Generator, chunk: int = 50_000, keep_attention: bool = False,
                 keep_noise: bool = False) -> tuple[np.ndarray, Attention | None]:
    """(people, 168) float32 absolute open probabilities in UTC hour-of-week, and (when asked) what they are
    made of."""
    n = len(people)
    shift = rng.normal(0.0, 0.75, size=n)
    width = rng.lognormal(0.0, 0.15, size=n)
    weekend_weight = rng.lognormal(0.0, 0.25, size=n)
    out = np.empty((n, HOURS), dtype=np.float32)
    shapes = np.empty((n, HOURS), dtype=np.float32) if keep_attention else None
    noises = np.empty((n, HOURS), dtype=np.float32) if keep_attention and keep_noise else None
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start
        intensity = _intensity(people.utc_offset_hours[sl], people.archetype[sl], shift[sl], width[sl],
                               weekend_weight[sl])
        noise = rng.lognormal(0.0, 0.12, size=(m, HOURS))
        intensity *= noise
        shape = intensity / intensity.max(axis=1, keepdims=True)
        out[sl] = (shape * people.propensity[sl, None]).astype(np.float32)
        if shapes is not None:
            shapes[sl] = shape
        if noises is not None:
            noises[sl] = noise
    if not keep_attention:
        return out, None
    return out, Attention(shape=shapes, shift=shift, width=width, weekend_weight=weekend_weight, noise=noises)


def attention_shapes(people: People, attention: Attention, rows: np.ndarray, archetype: np.ndarray,
                     drift_hours: np.ndarray) -> np.ndarray:
    """(m, 168) float64 relative attention of `rows` with another archetype and their rhythm moved
    `drift_hours` later (the same individual peaks, spreads and hour-level noise)."""
    assert attention.noise is not None, "build_curves(keep_noise=True) keeps what this needs"
    intensity = _intensity(people.utc_offset_hours[rows], archetype, attention.shift[rows] + drift_hours,
                           attention.width[rows], attention.weekend_weight[rows])
    intensity *= attention.noise[rows]
    return intensity / intensity.max(axis=1, keepdims=True)
