"""The time-to-engagement (hazard) model's structure: how long a delivered message waits, and what that says
about the hours of the week (docs/TIMING.md, "The model").

A delivered message waits in the inbox until its first genuine engagement. Its hazard of being engaged in
clock hour t (hour of week u = how(t)), j hours after the delivery hour, is

    lambda(t) = r[u] * g[j]

r: the person's engagement rate by hour of the week (when they read mail), g: how attention to a message
fades as it sinks in the inbox (shared by everyone, learned). So every hour a message waits unengaged is
exposure at that hour of the week, weighted by g: a sender who only mails at 10:00 still learns that a
person reads at 20:00, from the messages that waited until then.

Statistics are discrete: a message is a cell (h, J): delivered in hour of week h, and at risk for the wait
offsets j = 0..J (J: the hour of its first engagement, or the last hour it was seen waiting, capped at the
horizon H - 1); engaged or censored there. The delivery hour itself counts only for the part of it left
after the delivery (`fresh`, from the delivery minute): a message delivered at 08:40 missed whoever read at
08:15. For a person:

    N[u] = engagements in hour of week u
    X[u] = sum over messages of g[0] * fresh at u = h, and of g[j] at u = (h + j) % 168 for 1 <= j <= J

and the value of a delivery at a uniformly random moment of hour h (what a curve stores, what decisions
maximize; half of the delivery hour is left on average) is the chance of an engagement within the horizon:

    V[h] = 1 - exp(-(r[h] * g[0] / 2 + sum_{j >= 1} r[(h + j) % 168] * g[j]))
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sendflowr.timing.decide import HOURS


def cell_of(how: np.ndarray, wait: np.ndarray, horizon: int) -> np.ndarray:
    return how.astype(np.int64) * horizon + wait.astype(np.int64)


def event_hour(cell: np.ndarray, horizon: int) -> np.ndarray:
    """Hour of week of the engagement (or censoring) of each cell."""
    return ((cell // horizon + cell % horizon) % HOURS).astype(np.intp)


@dataclass(frozen=True)
class Decay:
    """g[j], j = 0..H-1 hours after the delivery hour, normalized to g[0] = 1."""

    g: np.ndarray  # float64 [H]

    @property
    def horizon(self) -> int:
        return int(self.g.shape[0])

    @cached_property
    def exposure(self) -> np.ndarray:
        """[168 * H, 168] float32: row (h, J) = sum_{1 <= j <= J} g[j] at hour (h + j) % 168: a message's
        exposure after its delivery hour (that hour's part is g[0] * fresh, added apart)."""
        H = self.horizon
        out = np.zeros((HOURS, H, HOURS), dtype=np.float64)
        cum = np.zeros((HOURS, HOURS))  # running exposure of a message delivered at h, by hour of week
        h = np.arange(HOURS)
        for j in range(1, H):
            cum[h, (h + j) % HOURS] += self.g[j]
            out[:, j, :] = cum
        return out.reshape(HOURS * H, HOURS).astype(np.float32)

    def smoothed_exposure(self, params) -> np.ndarray:
        """exposure @ the estimator's smoothing kernel (cached per kernel): smoothing a person's exposure is then
        part of the one sparse product that builds it."""
        from sendflowr.timing.estimate import kernel

        key = (params.hour_bandwidth, params.day_pooling)
        cache = self.__dict__.setdefault("_smoothed", {})
        if key not in cache:
            cache[key] = (self.exposure @ kernel(*key)).astype(np.float32)
        return cache[key]

    @cached_property
    def observed_share(self) -> np.ndarray:
        """[H] the share of a message's engagement chance within the horizon that has passed once it has waited
        through offset j (the delivery hour counts half, as in `value`); 1 at j = H - 1."""
        mass = np.cumsum(self.g) - self.g[0] / 2
        return mass / mass[-1]

    def settled(self, cell: np.ndarray, messages: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Settled deliveries of cell rows, the denominator of what deliveries returned: an engaged message, or
        one followed through the horizon, counts whole; a message still waiting counts by the share of its
        chance that has passed. (Not engaged-or-horizon alone: a recent campaign's engaged messages would count
        and its unengaged ones not, and its hour would look several times better than it was.)"""
        wait = cell % self.horizon
        return events + (messages - events) * self.observed_share[wait]

    @cached_property
    def value(self) -> np.ndarray:
        """[168, 168] float32 Q: the cumulative hazard of a delivery at a random moment of hour h is (r @ Q)[h],
        Q[u, h] = g[0] / 2 at u = h and the sum of g[j], j >= 1, with (h + j) % 168 = u."""
        q = np.zeros((HOURS, HOURS))
        h = np.arange(HOURS)
        q[h, h] += self.g[0] / 2
        for j in range(1, self.horizon):
            q[(h + j) % HOURS, h] += self.g[j]
        return q.astype(np.float32)

    def curves(self, rate: np.ndarray) -> np.ndarray:
        """Engagement probability within the horizon by delivery hour, from rates [n, 168] (or [168])."""
        cumulative = np.asarray(rate, dtype=np.float32) @ self.value
        return (-np.expm1(-cumulative)).astype(np.float32)


def learn_decay(cell: np.ndarray, messages: np.ndarray, events: np.ndarray, fresh: np.ndarray, horizon: int,
                smoothing: np.ndarray | None = None, iterations: int = 60) -> tuple[Decay, np.ndarray]:
    """g and the pooled rate r[u] by alternating Poisson maximum likelihood on everyone's summed cells.

    cell/messages/events/fresh: flat (cell, messages, engaged messages, summed share of the delivery hour left)
    rows, any persons. A sender
    who mails in a few weekly slots leaves most (hour of week, wait) pairs unseen, so on its own the weekly rate
    could absorb any decay; the rate is therefore smoothed with the estimator's kernel (`smoothing`: the same
    hour on other days is alike), and g is kept non-increasing (attention fades as a message sinks) and smooth
    over j. The pooled rate mixes people, so g is the decay of an average reader."""
    H = horizon
    return decay_from_sums(np.bincount(cell, weights=messages, minlength=HOURS * H),
                           np.bincount(cell, weights=events, minlength=HOURS * H),
                           np.bincount(cell // H, weights=fresh, minlength=HOURS), horizon, smoothing, iterations)


def decay_from_sums(messages: np.ndarray, events: np.ndarray, fresh: np.ndarray, horizon: int,
                    smoothing: np.ndarray | None = None, iterations: int = 60) -> tuple[Decay, np.ndarray]:
    """learn_decay from everyone's sums: messages and events by cell [168 * H], the delivery hour's share left by
    delivery hour of week [168] (a build in slices adds these up slice by slice)."""
    from scipy.optimize import isotonic_regression

    H = horizon
    c = np.asarray(messages, dtype=np.float64).reshape(HOURS, H)
    ev = np.asarray(events, dtype=np.float64).reshape(HOURS, H)
    at_risk = np.cumsum(c[:, ::-1], axis=1)[:, ::-1]  # messages still waiting at offset j
    at_risk[:, 0] = fresh  # the delivery hour: what was left
    h = np.arange(HOURS)[:, None]
    u = ((h + np.arange(H)[None, :]) % HOURS).ravel()  # clock hour of (h, j)
    k = np.eye(HOURS) if smoothing is None else np.asarray(smoothing, dtype=np.float64)
    ev_u = np.bincount(u, weights=ev.ravel(), minlength=HOURS) @ k
    ev_j = ev.sum(axis=0)
    g = np.ones(H)
    r = np.ones(HOURS)
    for _ in range(iterations):
        exposure_u = np.bincount(u, weights=(at_risk * g[None, :]).ravel(), minlength=HOURS) @ k
        r = (ev_u + 1e-3) / (exposure_u + 1e-3)
        denominator = (at_risk * r[u.reshape(HOURS, H)]).sum(axis=0)
        raw = np.where(denominator > 0, ev_j / np.maximum(denominator, 1e-12), 0.0)
        g = _smooth_decay(raw, denominator)
        g = np.maximum(isotonic_regression(g, weights=denominator + 1e-9, increasing=False).x, 1e-9)
        g, r = g / g[0], r * g[0]
    return Decay(g=g), r


def _smooth_decay(g: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted smoothing over the wait offset j in log space, bandwidth growing with j; positive."""
    H = g.shape[0]
    j = np.arange(H, dtype=np.float64)
    width = 0.3 + 0.1 * j
    d = j[None, :] - j[:, None]
    k = np.exp(-0.5 * (d / width[:, None]) ** 2) * weight[None, :]
    floor = max(float(g[g > 0].min()) if (g > 0).any() else 1e-6, 1e-6) * 0.1
    logg = np.log(np.maximum(g, floor))
    smoothed = (k @ logg) / np.maximum(k.sum(axis=1), 1e-12)
    return np.exp(smoothed)
