"""When genuine opens happen (WorldConfig.open_delay), and the truth that follows from it.

Mechanisms, per person (habits.kind):

- lognormal, the original world: P(open | delivered at d) = the person's curve at d's UTC hour (propensity x
  relative attention, curves.py); the open comes an independent lognormal delay later (median 35 min).
- hazard (hazard.py): a continuous hazard following the person's attention, fading with the message's age.
- sessions (sessions.py): discrete habitual check sessions; a waiting message's chance falls with the
  number of sessions it has waited through.
- mixed: each person on hazard or sessions (habits.MIXED_SESSIONS_SHARE on sessions).

Clicks, re-opens and unsubscribes follow the open's moment (simulate.py), whatever the mechanism.

The truth (true_curves.parquet, truth.py): p_open[person, h] = P(genuine open | the message is delivered at a
uniformly random moment of UTC hour-of-week h), in the person's final regime (habits.py: the habits in force
from the settle week to the world's end), computed from the same process that draws the events: the
lognormal curve itself; the hazard's exact integral averaged over the hour by 8-point Gauss-Legendre; the
session schedule's exact piecewise-linear chance averaged by the trapezoid rule on its own knots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sendflowr.synth import fmt, hazard, sessions
from sendflowr.synth.habits import HAZARD, LOGNORMAL, SESSIONS, Habits, end_weeks

if TYPE_CHECKING:
    from sendflowr.synth.world import World

MINUTE, HOUR = 60_000, 3_600_000


def lognormal_delay(rng: np.random.Generator, n: int) -> np.ndarray:
    """The original delay from delivery to a genuine open (ms): lognormal, median 35 min, 20 s - 72 h."""
    return np.clip(rng.lognormal(np.log(35 * MINUTE), 1.3, size=n), 20_000, 72 * HOUR).astype(np.int64)


def draw_opens(world: World, person: np.ndarray, deliver: np.ndarray, rng: np.random.Generator,
               u_open: np.ndarray | None = None,
               delay: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(opened, open_at ms) of messages delivered to `person` at `deliver` (ms). `u_open` and `delay` are
    the lognormal mechanism's uniform and delay (drawn from `rng` when not given); the other mechanisms draw
    from `rng`. open_at is meaningful where opened."""
    n = person.size
    if u_open is None:
        u_open = rng.random(n)
    if delay is None:
        delay = lognormal_delay(rng, n)
    how = fmt.hour_of_week(deliver)
    habits = world.habits
    if habits is None:
        return u_open < world.curves[person, how], deliver + delay
    opened = np.zeros(n, dtype=bool)
    open_at = deliver + delay
    kind, weeks = habits.kind[person], habits.week_of(deliver)

    r = np.flatnonzero(kind == LOGNORMAL)
    p = world.curves[person[r], how[r]].astype(np.float64)
    moving = np.flatnonzero(habits.moving[person[r]])
    if moving.size:
        who, at = person[r[moving]], r[moving]
        p[moving] = (habits.shapes(who, weeks[at])[np.arange(moving.size), how[at]]
                     * world.people.propensity[who])
    opened[r] = u_open[r] < p

    r = np.flatnonzero(kind == HAZARD)
    if r.size:
        h, who = habits.hazard, person[r]
        opened[r], open_at[r] = hazard.draw(habits.shapes(who, weeks[r]), h.tau[who], h.beta[who], deliver[r], rng)
    r = np.flatnonzero(kind == SESSIONS)
    if r.size:
        s, who = habits.sessions, person[r]
        opened[r], open_at[r] = sessions.draw(world.config.seed, habits.schedule(who, weeks[r]), s.jitter[who],
                                              s.rho[who], s.scale[who], who, deliver[r], rng)
    return opened, open_at


def true_curves(habits: Habits, curves: np.ndarray, week: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(people, 168) float32 truth, and each person's propensity (the truth's maximum). The truth is the final
    regime's; `week` gives the curves of another world week's regime instead (the same computation). The
    lognormal curves built by curves.py stay as they are for people whose habits never move."""
    curves = curves.copy()
    propensity = habits.people.propensity.copy()
    kind = habits.kind

    def weeks(rows: np.ndarray) -> np.ndarray:
        return end_weeks(habits, rows) if week is None else np.full(rows.size, week)

    rows = np.flatnonzero((kind == LOGNORMAL) & habits.moving)
    if rows.size:
        curves[rows] = (habits.shapes(rows, weeks(rows)) * propensity[rows, None]).astype(np.float32)
    rows = np.flatnonzero(kind == HAZARD)
    if rows.size:
        h = habits.hazard
        curves[rows] = hazard.true_p_open(habits.shapes(rows, weeks(rows)), h.tau[rows], h.beta[rows])
    rows = np.flatnonzero(kind == SESSIONS)
    if rows.size:
        s = habits.sessions
        curves[rows] = sessions.true_p_open(habits.schedule(rows, weeks(rows)), s.jitter[rows], s.rho[rows],
                                            s.scale[rows])
    timed = np.flatnonzero(kind != LOGNORMAL)
    propensity[timed] = curves[timed].max(axis=1)
    return curves, propensity
