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
import os

import numpy as np

DEMO_CONTROL_SHARE = 0.10  # what `sendflowr up` and `sendflowr campaign` use unless SENDFLOWR_API_CONTROL_SHARE is set
TREATMENT, CONTROL = "treatment", "control"
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SALT_ARM, _SALT_P1, _SALT_P2 = (np.uint64(0x5F3759DF2A6E1C45), np.uint64(0x9E3779B97F4A7C15),
                                 np.uint64(0xD1B54A32D192ED03))
_FRACTION = 2.0 ** -53


def demo_control_share(configured: float) -> float:
    """The share the demo runs with: SENDFLOWR_API_CONTROL_SHARE when the environment sets it, else DEMO_CONTROL_SHARE
    (the library default, 0, leaves a user's sends alone until they choose a control group)."""
    return configured if "SENDFLOWR_API_CONTROL_SHARE" in os.environ else DEMO_CONTROL_SHARE


def campaign_key(campaign_id: str | None) -> int:
    """64-bit key of a campaign id (None and '' alike: requests without a campaign)."""
    digest = hashlib.blake2b((campaign_id or "").encode(), digest_size=8, person=b"sf-arm-v1").digest()
    return int.from_bytes(digest, "big")


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: every input bit moves every output bit
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * _FRACTION


def assign(uid: np.ndarray, campaign: np.ndarray | int, share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in control, u1, u2) per decision: uid uint64 ids, campaign keys (one or per decision), share in [0, 1].
    u1, u2 are independent uniforms in [0, 1) for the control moment, from the same hash."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(uid, np.uint64) ^ np.asarray(campaign, np.uint64) ^ _SALT_ARM)
        return _unit(h) < share, _unit(_mix(h ^ _SALT_P1)), _unit(_mix(h ^ _SALT_P2))


def _ceil_seconds(ms: np.ndarray) -> np.ndarray:
    return -np.floor_divide(-ms, 1000)


def control_moments(after_ms: np.ndarray, before_ms: np.ndarray, start_ms: np.ndarray, u1: np.ndarray,
                    u2: np.ndarray) -> np.ndarray:
    """Epoch ms of each control moment: a whole second in [start, before), uniform (module docstring); `start`
    itself when the reachable part of the window holds no whole second. Needs start < before."""
    after_s, before_s, start_s = _ceil_seconds(after_ms), _ceil_seconds(before_ms), _ceil_seconds(start_ms)
    first = after_s + np.floor(u1 * np.maximum(before_s - after_s, 0)).astype(np.int64)
    second = start_s + np.floor(u2 * np.maximum(before_s - start_s, 0)).astype(np.int64)
    moment = np.where(first >= start_s, first, second) * 1000
    return np.where(before_s > start_s, moment, start_ms)
