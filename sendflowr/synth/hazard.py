"""Open delay as a continuous hazard (WorldConfig.open_delay "hazard"): a message waiting unread is opened at
rate

    lambda(t) = beta * a(t) * exp(-(t - d) / tau)      for d <= t < d + HORIZON hours, 0 after,

d the delivery, a(t) the person's relative attention at t (their curve's shape: piecewise constant on UTC
hours, max 1, see curves.py) and the exponential the message sinking in the inbox. A message delivered at
03:00 waits, fading, for the morning's attention. P(open | d) = 1 - exp(-Lambda(d)), Lambda the integral of
lambda over the horizon: closed form per hour segment, so events and truth use the same exact integral.

tau is per person (lognormal, median DECAY_MEDIAN_HOURS); beta is set so that the best hour's P(open) is
about the person's drawn propensity (the world then records the exact maximum as the propensity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.synth.curves import HOURS

HORIZON = 72  # hours after delivery during which a message can still be opened
DECAY_MEDIAN_HOURS, DECAY_SIGMA, DECAY_MIN, DECAY_MAX = 6.0, 0.5, 1.5, 36.0
MIN_DELAY_MS = 20_000  # nobody opens within 20 s of delivery (as the lognormal delay's floor)
HOUR_MS = 3_600_000
# Gauss-Legendre nodes on [0, 1): the average over the delivery moment within the hour of a smooth function.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)
NODES, WEIGHTS = (_NODES + 1.0) / 2.0, _WEIGHTS / 2.0


@dataclass(frozen=True)
class HazardParams:
    tau: np.ndarray  # (people,) hours: how fast a waiting message fades
    beta: np.ndarray  # (people,) scale of the hazard (0 for people who never open)


def draw_tau(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(DECAY_MEDIAN_HOURS), DECAY_SIGMA, n), DECAY_MIN, DECAY_MAX)


def exposure(shape: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """(m, 168, nodes) Lambda / beta for a delivery at UTC hour-of-week h plus NODES of an hour.

    Segment k of the horizon covers hour h+k: [0, 1-u) for k = 0, [k-u, k+1-u) up to k = HORIZON-1 and
    [HORIZON-u, HORIZON) for k = HORIZON. The middle segments' integrals factor as exp(u/tau) * g_k, so
    their sum is one circular correlation of the shape with g (done by FFT)."""
    shape = np.asarray(shape, dtype=np.float64)
    m = shape.shape[0]
    tau = np.asarray(tau, dtype=np.float64)[:, None]
    k = np.arange(HOURS, dtype=np.float64)[None, :]
    g = np.where((k >= 1) & (k <= HORIZON - 1), tau * (np.exp(-k / tau) - np.exp(-(k + 1) / tau)), 0.0)
    middle = np.fft.irfft(np.fft.rfft(shape, axis=1) * np.conj(np.fft.rfft(g, axis=1)), n=HOURS, axis=1)
    u = NODES[None, None, :]
    t = tau[:, :, None]
    first = shape[:, :, None] * t * (1.0 - np.exp(-(1.0 - u) / t))
    last = np.roll(shape, -HORIZON, axis=1)[:, :, None] * t * (np.exp(-(HORIZON - u) / t)
                                                                 - np.exp(-HORIZON / t))
    out = first + np.exp(u / t) * middle[:, :, None] + last
    return out.reshape(m, HOURS, NODES.size)


def _by_chunks(shape: np.ndarray, tau: np.ndarray, per_chunk, chunk: int = 2048) -> list[np.ndarray]:
    """per_chunk(exposure, rows) over blocks of people (the exposure is 168 x nodes floats per person)."""
    return [per_chunk(exposure(shape[lo:lo + chunk], tau[lo:lo + chunk]), slice(lo, lo + chunk))
            for lo in range(0, shape.shape[0], chunk)]


def calibrate_beta(shape: np.ndarray, tau: np.ndarray, target: np.ndarray) -> np.ndarray:
    """beta giving about `target` at the best hour (exactly at the best hour's average exposure)."""
    target = np.minimum(np.asarray(target, dtype=np.float64), 0.999)
    parts = _by_chunks(shape, tau, lambda lam, rows: -np.log1p(-target[rows]) / (lam @ WEIGHTS).max(axis=1))
    return np.concatenate(parts) if parts else np.zeros(0)


def true_p_open(shape: np.ndarray, tau: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """(m, 168) P(genuine open | delivered at a uniform moment of UTC hour-of-week h)."""
    beta = np.asarray(beta, dtype=np.float64)
    parts = _by_chunks(shape, tau, lambda lam, rows: -np.expm1(-lam * beta[rows, None, None]) @ WEIGHTS)
    return np.concatenate(parts) if parts else np.zeros((0, HOURS))


def draw(shape: np.ndarray, tau: np.ndarray, beta: np.ndarray, deliver: np.ndarray,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(opened, open_at ms) for deliveries at `deliver` (ms), each row with its attention shape (m, 168):
    inverse transform of the cumulative hazard, segment by segment."""
    n = deliver.shape[0]
    hour = deliver // HOUR_MS
    u = (deliver - hour * HOUR_MS).astype(np.float64) / HOUR_MS
    k = np.arange(HORIZON + 1)
    how = (hour[:, None] + k[None, :] + 72) % HOURS  # fmt.hour_of_week of each hour of the horizon
    a = np.take_along_axis(np.asarray(shape, dtype=np.float64), how, axis=1)
    t = tau[:, None]
    lo = np.clip(k[None, :] - u[:, None], 0.0, HORIZON)
    hi = np.clip(k[None, :] + 1 - u[:, None], 0.0, HORIZON)
    segment = beta[:, None] * a * t * (np.exp(-lo / t) - np.exp(-hi / t))
    cum = np.cumsum(segment, axis=1)
    e = rng.exponential(1.0, n)
    opened = e < cum[:, -1]
    open_at = np.full(n, -1, dtype=np.int64)
    r = np.flatnonzero(opened)
    if r.size:
        ks = np.argmax(cum[r] >= e[r, None], axis=1)
        before = np.where(ks > 0, cum[r, np.maximum(ks - 1, 0)], 0.0)
        rate = beta[r] * a[r, ks] * tau[r]
        left = np.exp(-lo[r, ks] / tau[r]) - (e[r] - before) / rate
        s = -tau[r] * np.log(np.maximum(left, np.exp(-hi[r, ks] / tau[r])))
        open_at[r] = deliver[r] + np.maximum(np.round(s * HOUR_MS).astype(np.int64), MIN_DELAY_MS)
    return opened, open_at
