"""Exploration (SENDFLOWR_API_EXPLORATION): Thompson sampling from the timing model's uncertainty, cheap enough for
the API.

A greedy decision always picks a person's best hour by their curve, so the hours a sender's fixed schedule never
covers stay what the model extrapolated. Thompson sampling picks the best hour of one draw from the posterior
instead: an hour is tried about as often as it may be the best one, often where evidence is thin, rarely where it
is thick, and what it returns refines the curve for the next decision.

The snapshot holds each person's curve (the posterior mean) and evidence, not their posterior, so a draw is
approximated as

    drawn(h) = curve(h) * exp(scale * sigma(evidence) * z(h)),
    z(h) = sum_{f=1..F} a_f * (u_f cos(2 pi f h / 168) + v_f sin(2 pi f h / 168)),  u, v standard normal,

a smooth random function of the hour of week with unit variance. sigma and a_f were measured on the timing model's
own posterior draws (`bench/exploration.py --calibrate`: Gamma draws of each person's hourly rates, as
sendflowr.timing.confidence makes them, turned into curves), from the log ratio of a draw to the served curve with
its mean over the week removed (a level shift moves no choice): sigma is its root mean square at each evidence knot
(people grouped by their engagements), a_f^2 the spectrum of its correlation over hours (averaged over every
starting hour: the sender's schedule is not built in), the first F = 12 frequencies kept (95% of the variance) and
rescaled to unit variance. Beyond the last knot sigma shrinks like a Poisson rate's relative error,
1 / sqrt(1 + evidence). `scale` is the setting: 1 draws at the posterior's width, less explores less, 0 is greedy.

Draws are deterministic: u and v come from the control arm's 64-bit hash of (universal_id, campaign_id) (arms.py)
under their own salts, so a retry, a batch and a single call get the same draw and the same moment. They are
quantized (u, v to 1/64, the modes to 2^-16), so that z is a sum of exactly representable products and every
summation order (one row, or a BLAS product over ten thousand) gives the same bits.

Only treatment decisions explore: the control arm stays uniform (arms.py). The explored moment is chosen by the
decision rule itself (sendflowr.timing.decide) from the drawn curve: the same candidates, inside the window, the
trigger never before now.
"""

from __future__ import annotations

import numpy as np

from sendflowr.decisions import arms
from sendflowr.timing.decide import HOURS

GREEDY, THOMPSON, RANDOM = "greedy", "thompson", "random"  # the rule that chose a served moment (decision log)
POLICIES = (GREEDY, THOMPSON, RANDOM)

# Measured by `bench/exploration.py --calibrate` on the weekly_slots world (4,000 people, seed 11): the RMS of a
# posterior draw's log ratio to the served curve (weekly mean removed) by the person's engagements ...
EVIDENCE_KNOTS = (0.0, 1.0, 2.0, 3.0, 4.4, 6.4, 9.3, 13.3, 17.8)
SIGMA_KNOTS = (0.633, 0.578, 0.539, 0.504, 0.464, 0.408, 0.342, 0.265, 0.198)
# ... and the amplitude of each weekly frequency f = 1..F of its correlation over hours (unit variance in all).
AMPLITUDES = (0.652, 0.482, 0.363, 0.274, 0.206, 0.152, 0.116, 0.111, 0.111, 0.110, 0.104, 0.092)
_W_STEP, _MODE_STEP = 64.0, 65536.0  # quantization (module docstring): exact sums in float64
_SALT = 0x243F6A8885A308D3  # the draws' hash: the arm hash under another salt, so arm and draw are independent


def _modes() -> np.ndarray:
    """[2F, 168] float64: a_f cos and a_f sin of each frequency, quantized to 2^-16."""
    h = np.arange(HOURS) * (2.0 * np.pi / HOURS)
    a = np.asarray(AMPLITUDES) / np.sqrt(np.square(AMPLITUDES).sum())  # unit variance per hour
    f = np.arange(1, len(AMPLITUDES) + 1)[:, None]
    modes = np.concatenate([a[:, None] * np.cos(f * h), a[:, None] * np.sin(f * h)])
    return np.round(modes * _MODE_STEP) / _MODE_STEP


MODES = _modes()
_SALTS = arms.salts(MODES.shape[0], _SALT)


def sigma(evidence: np.ndarray) -> np.ndarray:
    """Posterior width of a curve's log (its shape) for people with this much evidence."""
    e = np.asarray(evidence, np.float64)
    last_e, last_s = EVIDENCE_KNOTS[-1], SIGMA_KNOTS[-1]
    tail = last_s * np.sqrt((1.0 + last_e) / (1.0 + np.maximum(e, last_e)))
    return np.where(e <= last_e, np.interp(e, EVIDENCE_KNOTS, SIGMA_KNOTS), tail)


def normals(uid: np.ndarray, campaign: np.ndarray | int) -> np.ndarray:
    """[n, 2F] standard normals (Box-Muller) from the hash of (universal_id, campaign key), quantized to 1/64."""
    h = arms.arm_hashes(uid, campaign) ^ np.uint64(_SALT)
    u = arms.uniforms_many(h, _SALTS)  # [n, 2F] in (0, 1)
    half = MODES.shape[0] // 2
    radius = np.sqrt(-2.0 * np.log(u[:, :half]))
    angle = (2.0 * np.pi) * u[:, half:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return np.round(z * _W_STEP) / _W_STEP


def drawn_curves(curves: np.ndarray, evidence: np.ndarray, uid: np.ndarray, campaign: np.ndarray | int,
                 scale: float) -> np.ndarray:
    """float32 [n, 168]: each row's approximate posterior draw (module docstring), deterministic per
    (universal_id, campaign)."""
    z = normals(uid, campaign) @ MODES  # exact: every product and partial sum is representable
    z *= scale * sigma(evidence)[:, None]
    drawn = z.astype(np.float32)  # element-wise from here on: the same bits for a row alone or in a batch
    np.exp(drawn, out=drawn)
    drawn *= curves
    return drawn
