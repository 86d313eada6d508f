"""Habits over the weeks: which open-delay mechanism each person follows (WorldConfig.open_delay), and
people whose rhythm drifts (drift_share, drift_hours) or who switch archetype (switch_share).

Regimes. In world week w (w = 0 .. weeks-1 from the world's start; anything later stays in the last week's
regime) a person's archetype is their end archetype from their switch week on, else their first one, and
their rhythm is moved `drift * min(1, w / settle)` hours later (drift may be negative). Habits stop moving at
week `settle`: the start of the world's last third, or earlier so that the last third of the campaigns is
sent in it (whole weeks). The truth, the final regime, then holds exactly for every delivery from
manifest.truth_from, the period an evaluation scores (holding out up to the last third of the campaigns).
A message lives under the regime of the week it is delivered in (habits move slowly; one waiting across a
week boundary keeps them).

A regime is a relative attention shape (curves.attention_shapes: the person's own peaks, spreads and noise,
with another archetype and/or moved) for the lognormal and hazard mechanisms, and a check-session schedule
(sessions.py: the schedule drawn for that archetype, moved) for the sessions mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sendflowr.synth import hazard, sessions
from sendflowr.synth.config import WorldConfig
from sendflowr.synth.curves import Attention, attention_shapes
from sendflowr.synth.people import ARCHETYPES, People

KINDS = ("lognormal", "hazard", "sessions")
LOGNORMAL, HAZARD, SESSIONS = range(3)
NEVER = np.iinfo(np.int32).max
WEEK_MS = 7 * 86_400_000
SETTLED_SHARE = 1 / 3
MIXED_SESSIONS_SHARE = 0.5  # open_delay "mixed": share of people on check sessions (the rest: hazard)
_CACHED_WEEKS = 4


def settle_week(weeks: int, start_ms: int, send_ms: np.ndarray) -> int:
    """First world week in which every person is in their final regime: the world's last third (whole weeks,
    at least the last week), earlier if needed so that the last third of the campaigns is sent in it."""
    third = len(send_ms) - max(1, math.ceil(len(send_ms) * SETTLED_SHARE))
    by_campaigns = int((np.sort(send_ms)[third] - start_ms) // WEEK_MS) if len(send_ms) else weeks
    return max(0, min(weeks - max(1, math.ceil(weeks * SETTLED_SHARE)), by_campaigns))


def needs_habits(config: WorldConfig) -> bool:
    return config.open_delay != "lognormal" or config.drift_share > 0 or config.switch_share > 0


@dataclass(eq=False)
class Habits:
    people: People
    attention: Attention
    kind: np.ndarray  # (people,) int8 index into KINDS
    drift: np.ndarray  # (people,) hours the rhythm has moved by the final regime (0: no drift)
    end_archetype: np.ndarray  # (people,) int8
    switch_week: np.ndarray  # (people,) int32 world week of the archetype switch, NEVER without one
    start_ms: int
    weeks: int
    settle: int
    hazard: hazard.HazardParams | None = None
    sessions: sessions.SessionParams | None = None
    _shapes: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.moving = (self.drift != 0) | (self.switch_week != NEVER)
        self.moving_rows = np.flatnonzero(self.moving)
        self.moving_at = np.full(self.kind.shape[0], -1, dtype=np.int64)
        self.moving_at[self.moving_rows] = np.arange(self.moving_rows.size)

    @property
    def end_week(self) -> int:
        return self.weeks - 1

    def week_of(self, ms: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(ms, dtype=np.int64) - self.start_ms) // WEEK_MS, 0, self.weeks - 1)

    def drift_at(self, rows: np.ndarray, weeks: np.ndarray) -> np.ndarray:
        progress = np.ones(weeks.shape) if self.settle <= 0 else np.minimum(1.0, weeks / self.settle)
        return self.drift[rows] * progress

    def archetype_at(self, rows: np.ndarray, weeks: np.ndarray) -> np.ndarray:
        return np.where(weeks >= self.switch_week[rows], self.end_archetype[rows], self.people.archetype[rows])

    def _moving_shapes(self, week: int) -> np.ndarray:
        """(moving people, 168) float32 attention of everyone whose habits move, in `week`'s regime."""
        cached = self._shapes.get(week)
        if cached is None:
            rows = self.moving_rows
            weeks = np.full(rows.size, week)
            cached = attention_shapes(self.people, self.attention, rows, self.archetype_at(rows, weeks),
                                      self.drift_at(rows, weeks)).astype(np.float32)
            if len(self._shapes) >= _CACHED_WEEKS:
                del self._shapes[min(self._shapes)]
            self._shapes[week] = cached
        return cached

    def shapes(self, rows: np.ndarray, weeks: np.ndarray) -> np.ndarray:
        """(m, 168) float64 relative attention of `rows` in the regime of world week `weeks` (per row)."""
        out = self.attention.shape[rows].astype(np.float64)
        moving = np.flatnonzero(self.moving[rows])
        for week in np.unique(weeks[moving]).tolist():
            sel = moving[weeks[moving] == week]
            out[sel] = self._moving_shapes(int(week))[self.moving_at[rows[sel]]]
        return out

    def schedule(self, rows: np.ndarray, weeks: np.ndarray) -> sessions.Schedule:
        """Check sessions of `rows` in the regime of world week `weeks` (per row)."""
        assert self.sessions is not None
        first, second = self.sessions.first.take(rows), self.sessions.second.take(rows)
        switched = (weeks >= self.switch_week[rows])[:, None]
        base = sessions.Schedule(np.where(switched, second.minutes, first.minutes),
                                 np.where(switched, second.weight, first.weight), first.count)
        grid = sessions.GRID_MINUTES
        moved = np.round(self.drift_at(rows, weeks) * 60 / grid).astype(np.int64) * grid
        return base.shifted(moved) if moved.any() else base


def build_habits(config: WorldConfig, people: People, attention: Attention, send_ms: np.ndarray,
                 rng: Callable[[int], np.random.Generator]) -> Habits:
    """Every person's habits; `rng(k)` gives the k-th random stream of this concern (0 mechanisms, 1 drift,
    2 hazard, 3 sessions), so one knob never shifts another's draws."""
    n = len(people)
    kind = np.full(n, LOGNORMAL, dtype=np.int8)
    if config.open_delay == "mixed":
        kind[:] = np.where(rng(0).random(n) < MIXED_SESSIONS_SHARE, SESSIONS, HAZARD)
    elif config.open_delay != "lognormal":
        kind[:] = KINDS.index(config.open_delay)

    start_ms = int(config.start.timestamp() * 1000)
    settle = settle_week(config.weeks, start_ms, send_ms)
    r = rng(1)
    drifting = r.random(n) < config.drift_share
    size = config.drift_hours * r.uniform(0.5, 1.0, n) * np.where(r.random(n) < 0.5, -1.0, 1.0)
    drift = np.where(drifting, size, 0.0)
    switching = (r.random(n) < config.switch_share) & (settle >= 1)
    other = ((people.archetype + r.integers(1, len(ARCHETYPES), n)) % len(ARCHETYPES)).astype(np.int8)
    week = r.integers(1, max(settle, 1) + 1, n)
    habits = Habits(people=people, attention=attention, kind=kind, drift=drift,
                    end_archetype=np.where(switching, other, people.archetype).astype(np.int8),
                    switch_week=np.where(switching, week, NEVER).astype(np.int32), start_ms=start_ms,
                    weeks=config.weeks, settle=settle)

    target = people.propensity.astype(np.float64)
    if (kind == HAZARD).any():
        tau = hazard.draw_tau(rng(2), n)
        beta = np.zeros(n)
        rows = np.flatnonzero(kind == HAZARD)
        beta[rows] = hazard.calibrate_beta(habits.shapes(rows, end_weeks(habits, rows)), tau[rows], target[rows])
        habits.hazard = hazard.HazardParams(tau=tau, beta=beta)
    if (kind == SESSIONS).any():
        r = rng(3)
        weekday, weekend = sessions.draw_counts(r, n)
        jitter = r.choice(sessions.JITTERS, n).astype(np.int64)
        rho = r.uniform(0.35, 0.75, n)
        a = attention
        first = sessions.build_schedule(r, people.archetype, people.utc_offset_hours, a.shift, a.width,
                                        a.weekend_weight, weekday, weekend)
        second = first
        if switching.any():
            end = sessions.build_schedule(r, habits.end_archetype, people.utc_offset_hours, a.shift, a.width,
                                          a.weekend_weight, weekday, weekend)
            sw = switching[:, None]
            second = sessions.Schedule(np.where(sw, end.minutes, first.minutes),
                                       np.where(sw, end.weight, first.weight), first.count)
        habits.sessions = sessions.SessionParams(first=first, second=second, jitter=jitter, rho=rho,
                                                 scale=np.zeros(n))
        rows = np.flatnonzero(kind == SESSIONS)
        habits.sessions.scale[rows] = sessions.calibrate_scale(habits.schedule(rows, end_weeks(habits, rows)),
                                                               rho[rows], target[rows])
    return habits


def end_weeks(habits: Habits, rows: np.ndarray) -> np.ndarray:
    return np.full(rows.size, habits.end_week)
