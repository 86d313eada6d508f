"""Open delay as discrete check sessions (WorldConfig.open_delay "sessions").

Each person checks mail at a few habitual local times a day: 2-4 on weekdays, 1-3 at other times on
weekends, placed in two-hour bins chosen from their archetype's profile (at least an hour apart). Every
occurrence is jittered uniformly within +-J minutes (J = 10, 15 or 20 per person; the jitter of one
occurrence is the same for every message waiting then). A message waits for the first session after its
delivery and is opened at its j-th session (j = 0, 1, ...) with probability

    q = g * w_k * rho ** j,      at most M_SESSIONS sessions, then it is buried,

w_k the session's thoroughness (the person's attention at that time of day, relative to their best
session), rho (0.35-0.75 per person) how fast a waiting message loses its chance, g the person's scale (set
so the best session's P(open) is their drawn propensity). A message delivered at 03:00 waits for the
morning session; the open comes seconds to minutes after the session starts.

Truth. With P_k = 1 - prod_j (1 - g w_{k+j} rho^j) the chance of a message whose first session is k,
P(open | delivered at d) is P_k before session k's jitter window and moves linearly to P_{k+1} across it
(the uniform jitter's CDF). That function is piecewise linear with knots at session +- J; session times and
J are whole multiples of GRID_MINUTES, so its average over each UTC hour is exact with the trapezoid rule on
a GRID_MINUTES grid: the truth is computed exactly from the schedule, the events drawn from the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.synth import fmt
from sendflowr.synth.curves import FLOOR, HOURS, PROFILES, _bumps
from sendflowr.synth.people import ARCHETYPES

M_SESSIONS = 10
GRID_MINUTES = 5
WEEK_MINUTES = 7 * 24 * 60
MINUTE_MS = 60_000
WEEK_MS = WEEK_MINUTES * MINUTE_MS
MONDAY_MS = 3 * 86_400_000  # epoch + this is a multiple of WEEK_MS at Monday 00:00 UTC (fmt.hour_of_week)
WEEKDAY_COUNTS, WEEKDAY_COUNT_P = (2, 3, 4), (0.30, 0.45, 0.25)
WEEKEND_COUNTS, WEEKEND_COUNT_P = (1, 2, 3), (0.35, 0.45, 0.20)
SLOTS = 5 * max(WEEKDAY_COUNTS) + 2 * max(WEEKEND_COUNTS)
JITTERS = (10, 15, 20)  # minutes; 2 J stays below the hour between sessions, so windows never overlap
PAD = 10**9  # minute value of an unused column (sorts last, never reached)
_JITTER_SALT = 21


@dataclass(frozen=True)
class Schedule:
    """Weekly check sessions in UTC minutes of the week (Monday 00:00 = 0), sorted, padded with PAD."""

    minutes: np.ndarray  # (m, SLOTS) int64
    weight: np.ndarray  # (m, SLOTS) float64 thoroughness, max 1 per person
    count: np.ndarray  # (m,) int64 sessions per week

    def take(self, rows: np.ndarray) -> Schedule:
        return Schedule(self.minutes[rows], self.weight[rows], self.count[rows])

    def shifted(self, minutes: np.ndarray) -> Schedule:
        """The same habits `minutes` later (whole GRID_MINUTES), re-sorted within the week."""
        valid = self.minutes < PAD
        moved = np.where(valid, (self.minutes + minutes[:, None]) % WEEK_MINUTES, PAD)
        order = np.argsort(moved, axis=1, kind="stable")
        return Schedule(np.take_along_axis(moved, order, axis=1), np.take_along_axis(self.weight, order, axis=1),
                        self.count)


@dataclass(frozen=True)
class SessionParams:
    first: Schedule  # habits under the person's first archetype (all people of the world)
    second: Schedule  # under their end archetype (equal to `first` when they never switch)
    jitter: np.ndarray  # (people,) minutes
    rho: np.ndarray  # (people,)
    scale: np.ndarray  # (people,) g


def draw_counts(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.choice(WEEKDAY_COUNTS, size=n, p=WEEKDAY_COUNT_P),
            rng.choice(WEEKEND_COUNTS, size=n, p=WEEKEND_COUNT_P))


def build_schedule(rng: np.random.Generator, archetype: np.ndarray, offset_hours: np.ndarray, shift: np.ndarray,
                   width: np.ndarray, weekend_weight: np.ndarray, weekday_count: np.ndarray,
                   weekend_count: np.ndarray) -> Schedule:
    """Sessions placed in two-hour local bins drawn (without replacement, Gumbel top-k) by the archetype's
    profile, 30-90 minutes into the bin on the GRID_MINUTES grid."""
    m = archetype.shape[0]
    centers = np.arange(12, dtype=np.float64) * 2.0 + 1.0
    utc_offset = np.round(np.asarray(offset_hours, dtype=np.float64) * 60).astype(np.int64)
    local, weight = [], []
    for day_kind, count, days in ((0, weekday_count, range(5)), (1, weekend_count, range(5, 7))):
        profile = np.zeros((m, 12))
        for a, name in enumerate(ARCHETYPES):
            rows = np.flatnonzero(archetype == a)
            if rows.size:
                profile[rows] = _bumps(np.broadcast_to(centers, (rows.size, 12)), shift[rows, None],
                                       width[rows, None], PROFILES[name][day_kind])
        keys = np.log(profile + 0.02) + rng.gumbel(size=(m, 12))
        bins = np.argsort(-keys, axis=1)[:, :max(count.max(initial=1), 1)]
        minute = bins * 120 + 30 + GRID_MINUTES * rng.integers(0, 60 // GRID_MINUTES + 1, size=bins.shape)
        hour = minute / 60.0
        strength = np.zeros(minute.shape)
        for a, name in enumerate(ARCHETYPES):
            rows = np.flatnonzero(archetype == a)
            if rows.size:
                strength[rows] = FLOOR + _bumps(hour[rows], shift[rows, None], width[rows, None],
                                                PROFILES[name][day_kind])
        if day_kind:
            strength *= weekend_weight[:, None]
        used = np.arange(bins.shape[1])[None, :] < count[:, None]
        for day in days:
            local.append(np.where(used, day * 1440 + minute, -1))
            weight.append(np.where(used, strength, 0.0))
    local_all, weight_all = np.concatenate(local, axis=1), np.concatenate(weight, axis=1)
    minutes = np.where(local_all >= 0, (local_all - utc_offset[:, None]) % WEEK_MINUTES, PAD)
    order = np.argsort(minutes, axis=1, kind="stable")
    minutes = np.take_along_axis(minutes, order, axis=1)
    weight_all = np.take_along_axis(weight_all, order, axis=1)
    weight_all /= np.maximum(weight_all.max(axis=1, keepdims=True), 1e-12)
    pad = SLOTS - minutes.shape[1]
    if pad > 0:
        minutes = np.pad(minutes, ((0, 0), (0, pad)), constant_values=PAD)
        weight_all = np.pad(weight_all, ((0, 0), (0, pad)))
    count = 5 * weekday_count + 2 * weekend_count
    return Schedule(minutes[:, :SLOTS].astype(np.int64), weight_all[:, :SLOTS], count.astype(np.int64))


def _cyclic(values: np.ndarray, index: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, index % count[:, None], axis=1)


def _waiting_weights(schedule: Schedule, rho: np.ndarray) -> np.ndarray:
    """(m, SLOTS, M_SESSIONS) w_{k+j} rho^j: the j-th session's weight for a message first waiting at k."""
    m = schedule.count.size
    k = np.arange(SLOTS)[:, None] + np.arange(M_SESSIONS)[None, :]
    index = (k[None, :, :] % schedule.count[:, None, None]).reshape(m, -1)
    w = np.take_along_axis(schedule.weight, index, axis=1).reshape(m, SLOTS, M_SESSIONS)
    return w * rho[:, None, None] ** np.arange(M_SESSIONS)[None, None, :]


def chances(schedule: Schedule, rho: np.ndarray, scale: np.ndarray,
            waiting: np.ndarray | None = None) -> np.ndarray:
    """(m, SLOTS) P_k: P(open) of a message whose first session is k (0 for unused columns)."""
    waiting = _waiting_weights(schedule, rho) if waiting is None else waiting
    p = 1.0 - np.prod(1.0 - scale[:, None, None] * waiting, axis=2)
    return np.where(np.arange(SLOTS)[None, :] < schedule.count[:, None], p, 0.0)


def calibrate_scale(schedule: Schedule, rho: np.ndarray, target: np.ndarray, iterations: int = 40) -> np.ndarray:
    """g in [0, 1] with max_k P_k = target (bisection; P_k grows with g, and is 1 at the best session at g=1)."""
    target = np.minimum(np.asarray(target, dtype=np.float64), 0.999)
    waiting = _waiting_weights(schedule, rho)
    lo, hi = np.zeros(target.shape), np.ones(target.shape)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        high = chances(schedule, rho, mid, waiting).max(axis=1, initial=0.0) > target
        hi, lo = np.where(high, mid, hi), np.where(high, lo, mid)
    return np.where(target > 0, (lo + hi) / 2, 0.0)


def _window_ends(schedule: Schedule, jitter: np.ndarray) -> np.ndarray:
    """(m, SLOTS + 2) sorted ends of the jitter windows (minutes from this Monday): the previous week's last
    session, this week's sessions, next week's first; PAD after."""
    m = schedule.minutes.shape[0]
    rows = np.arange(m)
    c = schedule.count
    ends = np.full((m, SLOTS + 2), PAD, dtype=np.int64)
    ends[:, 0] = schedule.minutes[rows, c - 1] + jitter - WEEK_MINUTES
    valid = schedule.minutes < PAD
    ends[:, 1:SLOTS + 1] = np.where(valid, schedule.minutes + jitter[:, None], PAD)
    ends[rows, c + 1] = schedule.minutes[:, 0] + jitter + WEEK_MINUTES
    return ends


def _first_candidate(ends: np.ndarray, at_minutes: np.ndarray) -> np.ndarray:
    """Per row and query: the number of window ends at or before it (row-wise searchsorted)."""
    m, width = ends.shape
    span = 4 * WEEK_MINUTES + PAD
    base = (np.arange(m, dtype=np.int64) * span)[:, None]
    flat = (np.minimum(ends, PAD) + 2 * WEEK_MINUTES + base).ravel()
    queries = at_minutes + 2 * WEEK_MINUTES + base
    return np.searchsorted(flat, queries.ravel(), side="right").reshape(queries.shape) - base // span * width


def true_p_open(schedule: Schedule, jitter: np.ndarray, rho: np.ndarray, scale: np.ndarray,
                chunk: int = 512) -> np.ndarray:
    """(m, 168) P(genuine open | delivered at a uniform moment of UTC hour-of-week h), exactly."""
    m = schedule.minutes.shape[0]
    out = np.zeros((m, HOURS))
    grid = np.arange(0, WEEK_MINUTES + 1, GRID_MINUTES, dtype=np.int64)
    per_hour = 60 // GRID_MINUTES
    trapezoid = np.full(per_hour + 1, 1.0 / per_hour)
    trapezoid[[0, -1]] /= 2
    for lo in range(0, m, chunk):
        sl = slice(lo, min(m, lo + chunk))
        part = schedule.take(np.arange(sl.start, sl.stop))
        j = jitter[sl].astype(np.int64)
        p = chances(part, rho[sl], scale[sl])
        ends = _window_ends(part, j)
        first = _first_candidate(ends, np.broadcast_to(grid, (part.count.size, grid.size)))
        end = np.take_along_axis(ends, first, axis=1)
        stay = np.clip((end - grid[None, :]) / (2.0 * j[:, None]), 0.0, 1.0)  # P(session `first` is after x)
        f = stay * _cyclic(p, first - 1, part.count) + (1 - stay) * _cyclic(p, first, part.count)
        hours = np.arange(HOURS)[:, None] * per_hour + np.arange(per_hour + 1)[None, :]
        out[sl] = f[:, hours] @ trapezoid
    return out


def jitter_ms(seed: int, person: np.ndarray, week: np.ndarray, k: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """The realized jitter of occurrence (person, Monday-week, session k), uniform in [-J, J] minutes: a hash,
    so every message waiting for that occurrence sees the same moment."""
    key = (person.astype(np.uint64) << np.uint64(28)) | (week.astype(np.uint64) << np.uint64(6)) | k.astype(
        np.uint64)
    u = (fmt.mix64(key ^ fmt.salt(seed, _JITTER_SALT)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.round((2.0 * u - 1.0) * jitter * MINUTE_MS).astype(np.int64)


def draw(seed: int, schedule: Schedule, jitter: np.ndarray, rho: np.ndarray, scale: np.ndarray,
         person: np.ndarray, deliver: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(opened, open_at ms) for deliveries at `deliver` (ms); row i uses schedule row i (the person's habits
    in force at delivery)."""
    n = deliver.shape[0]
    since_monday = deliver + MONDAY_MS
    week, in_week = np.divmod(since_monday, WEEK_MS)
    j = jitter.astype(np.int64)
    ends = _window_ends(schedule, j)
    first = _first_candidate(ends, (in_week // MINUTE_MS)[:, None])[:, 0]
    c = schedule.count

    def occurrence(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(absolute ms, weight) of the index-th session counted from this week's first (may be negative)."""
        weeks_on, k = np.divmod(index, c[:, None])
        minute = np.take_along_axis(schedule.minutes, k, axis=1)
        at = ((week[:, None] + weeks_on) * WEEK_MS - MONDAY_MS + minute * MINUTE_MS
              + jitter_ms(seed, person[:, None], week[:, None] + weeks_on, k, j[:, None]))
        return at, np.take_along_axis(schedule.weight, k, axis=1)

    candidate, _ = occurrence((first - 1)[:, None])
    first = first + (candidate[:, 0] <= deliver)  # its jitter put the session before the delivery
    at, weight = occurrence((first - 1)[:, None] + np.arange(M_SESSIONS)[None, :])
    q = scale[:, None] * weight * rho[:, None] ** np.arange(M_SESSIONS)[None, :]
    hit = rng.random((n, M_SESSIONS)) < q
    opened = hit.any(axis=1)
    session_at = at[np.arange(n), np.argmax(hit, axis=1)]
    read = np.clip(rng.lognormal(np.log(90_000), 0.8, n), 5_000, 15 * MINUTE_MS).astype(np.int64)
    return opened, np.where(opened, session_at + read, -1)
