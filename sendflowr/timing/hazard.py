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
horizon H - 1); engaged or censored there. For a person:

    N[u] = engagements in hour of week u,   X[u] = sum over messages, j <= J, (h + j) % 168 = u of g[j]

and the value of a delivery in hour h (what a curve stores, what decisions maximize) is the chance of an
engagement within the horizon:

    V[h] = 1 - exp(-sum_j r[(h + j) % 168] * g[j])
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
        """[168 * H, 168] float32: row (h, J) = sum_{j <= J} g[j] at hour (h + j) % 168 (a message's exposure)."""
        H = self.horizon
        out = np.zeros((HOURS, H, HOURS), dtype=np.float64)
        cum = np.zeros((HOURS, HOURS))  # running exposure of a message delivered at h, by hour of week
        h = np.arange(HOURS)
        for j in range(H):
            cum[h, (h + j) % HOURS] += self.g[j]
            out[:, j, :] = cum
        return out.reshape(HOURS * H, HOURS).astype(np.float32)

    @cached_property
    def value(self) -> np.ndarray:
        """[168, 168] float32 Q with Q[u, h] = sum_{j: (h + j) % 168 = u} g[j]: cumulative hazard = r @ Q."""
        q = np.zeros((HOURS, HOURS))
        h = np.arange(HOURS)
        for j in range(self.horizon):
            q[(h + j) % HOURS, h] += self.g[j]
        return q.astype(np.float32)

    def curves(self, rate: np.ndarray) -> np.ndarray:
        """Engagement probability within the horizon by delivery hour, from rates [n, 168] (or [168])."""
        cumulative = np.asarray(rate, dtype=np.float32) @ self.value
        return (-np.expm1(-cumulative)).astype(np.float32)


def learn_decay(cell: np.ndarray, messages: np.ndarray, events: np.ndarray, horizon: int,
                iterations: int = 30) -> tuple[Decay, np.ndarray]:
    """g and the pooled rate r[u] by alternating Poisson maximum likelihood on everyone's summed cells.

    cell/messages/events: flat (cell, count of messages, count of engaged messages) rows, any persons. The
    pooled rate mixes people, so g is the decay of an average reader; it is smoothed over j (wider for long
    waits, where engagements are few) and kept positive."""
    H = horizon
    c = np.bincount(cell, weights=messages, minlength=HOURS * H).reshape(HOURS, H)
    ev = np.bincount(cell, weights=events, minlength=HOURS * H).reshape(HOURS, H)
    at_risk = np.cumsum(c[:, ::-1], axis=1)[:, ::-1]  # messages still waiting at offset j
    h = np.arange(HOURS)[:, None]
    u = (h + np.arange(H)[None, :]) % HOURS  # clock hour of (h, j)
    ev_u = np.bincount(u.ravel(), weights=ev.ravel(), minlength=HOURS)
    ev_j = ev.sum(axis=0)
    g = np.ones(H)
    r = np.full(HOURS, ev.sum() / max(at_risk.sum(), 1e-9))
    for _ in range(iterations):
        r = (ev_u + 1e-3) / (np.bincount(u.ravel(), weights=(at_risk * g[None, :]).ravel(), minlength=HOURS) + 1e-3)
        denominator = (at_risk * r[u]).sum(axis=0)
        g = np.where(denominator > 0, ev_j / np.maximum(denominator, 1e-12), 0.0)
        g = _smooth_decay(g, denominator)
        scale = g[0] if g[0] > 0 else 1.0
        g, r = g / scale, r * scale
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
