"""The randomized control arm: which decisions get a uniformly random moment instead of the model's choice.

Assignment is a pure function of (universal_id, campaign_id): a 64-bit hash h of the two. A decision is in the
control arm when the top 53 bits of h, read as a fraction in [0, 1), fall below the control share. So a retry, a
batch and a single call for the same person and campaign always land in the same arm and, when the window is the
same, on the same moment; without a campaign_id a person's arm is the same for every request (a standing holdout).

The control moment is uniform over the whole seconds of the window that the latency still allows, [start,
send_before) with start = max(send_after, now + latency) (the treatment's own earliest moment: the trigger is
never before now). It is drawn so that retries agree: a first moment p1, uniform over the whole window, is kept
while it is still reachable (p1 >= start); once it is not (the window has begun), a second draw p2, uniform over
[start, send_before), is used. Conditioned on either branch the moment is uniform over [start, send_before), so
the mixture is too.
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache

import numpy as np

DEMO_CONTROL_SHARE = 0.10  # what `sendflowr up` and `sendflowr campaign` use unless SENDFLOWR_API_CONTROL_SHARE is set
TREATMENT, CONTROL = "treatment", "control"
_MASK = (1 << 64) - 1
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_SALT_ARM, _SALT_P1, _SALT_P2 = 0x5F3759DF2A6E1C45, 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03
_FRACTION = 2.0 ** -53


def demo_control_share(configured: float) -> float:
    """The share the demo runs with: SENDFLOWR_API_CONTROL_SHARE when the environment sets it, else DEMO_CONTROL_SHARE
    (the library default, 0, leaves a user's sends alone until they choose a control group)."""
    return configured if "SENDFLOWR_API_CONTROL_SHARE" in os.environ else DEMO_CONTROL_SHARE


@lru_cache(maxsize=4096)
def campaign_key(campaign_id: str | None) -> int:
    """64-bit key of a campaign id (None and '' alike: requests without a campaign)."""
    digest = hashlib.blake2b((campaign_id or "").encode(), digest_size=8, person=b"sf-arm-v1").digest()
    return int.from_bytes(digest, "big")


# The same functions twice: on Python ints for a few decisions (no array set-up), on uint64 columns for a batch;
# tests/test_decisions_arms.py holds the two equal.

def _mix(z: int) -> int:
    # splitmix64's finalizer: every input bit moves every output bit
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def arm_hash(uid: int, campaign: int) -> int:
    return _mix(uid ^ campaign ^ _SALT_ARM)


def in_control(h: int, share: float) -> bool:
    return (h >> 11) * _FRACTION < share


def draws(h: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) for the control moment, from the same hash."""
    return (_mix(h ^ _SALT_P1) >> 11) * _FRACTION, (_mix(h ^ _SALT_P2) >> 11) * _FRACTION


def control_moment(after_ms: int, before_ms: int, start_ms: int, u1: float, u2: float) -> int:
    """Epoch ms of a control moment: a whole second in [start, before), uniform (module docstring); `start` itself
    when the reachable part of the window holds no whole second. Needs start < before."""
    after_s, before_s, start_s = -(-after_ms // 1000), -(-before_ms // 1000), -(-start_ms // 1000)
    if before_s <= start_s:
        return start_ms
    first = after_s + math.floor(u1 * max(before_s - after_s, 0))
    return 1000 * (first if first >= start_s else start_s + math.floor(u2 * (before_s - start_s)))


_M1_64, _M2_64 = np.uint64(_M1), np.uint64(_M2)


def _mix_many(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1_64
        z = (z ^ (z >> np.uint64(27))) * _M2_64
        return z ^ (z >> np.uint64(31))


def arm_hashes(uid: np.ndarray, campaign: np.ndarray | int) -> np.ndarray:
    return _mix_many(np.asarray(uid, np.uint64) ^ np.asarray(campaign, np.uint64) ^ np.uint64(_SALT_ARM))


def in_control_many(h: np.ndarray, share: float) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * _FRACTION < share


def salts(k: int, seed: int) -> np.ndarray:
    """k distinct 64-bit salts derived from `seed` (for `uniforms_many`)."""
    return _mix_many(np.uint64(seed) + np.arange(1, k + 1, dtype=np.uint64))


def uniforms_many(h: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """[n, k] uniforms in (0, 1), never 0 or 1, one per hash and salt (explore.py's draws)."""
    return ((_mix_many(h[:, None] ^ salt[None, :]) >> np.uint64(11)).astype(np.float64) + 0.5) * _FRACTION


def draws_many(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return tuple((_mix_many(h ^ np.uint64(salt)) >> np.uint64(11)).astype(np.float64) * _FRACTION
                 for salt in (_SALT_P1, _SALT_P2))


def control_moments(after_ms: np.ndarray, before_ms: np.ndarray, start_ms: np.ndarray, u1: np.ndarray,
                    u2: np.ndarray) -> np.ndarray:
    """`control_moment` per row."""
    after_s, before_s, start_s = (-np.floor_divide(-x, 1000) for x in (after_ms, before_ms, start_ms))
    first = after_s + np.floor(u1 * np.maximum(before_s - after_s, 0)).astype(np.int64)
    second = start_s + np.floor(u2 * np.maximum(before_s - start_s, 0)).astype(np.int64)
    moment = np.where(first >= start_s, first, second) * 1000
    return np.where(before_s > start_s, moment, start_ms)
