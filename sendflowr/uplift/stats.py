"""Statistics of the uplift: engagement rates per arm with a bootstrap over people, and the size of a control arm.

Interval method: a Poisson bootstrap over units of people. Every unit (a person, or a fixed hash group of
people once there are more than a cap of them) gets an independent Poisson(1) weight per resample; a rate is
sum(weight * engaged) / sum(weight * decisions) over the unit's decisions in one arm. A person's decisions (several
campaigns, both arms) always move together, so the repeated decisions of one person are not counted as independent
evidence. The 95% interval is the 2.5th and 97.5th percentiles of the resampled statistic; a resample where an
arm has no decision at all is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 1000
SEED = 20_251_207  # fixed: the same outcomes give the same interval on every run


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"point": self.point, "ci95": [self.low, self.high]}


def poisson_weights(units: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, units] float32 Poisson(1) weights (one draw per unit and resample)."""
    return np.random.default_rng(seed).poisson(1.0, (resamples, units)).astype(np.float32)


def _interval(point: float, samples: np.ndarray) -> Interval:
    samples = samples[np.isfinite(samples)]
    if not len(samples) or not math.isfinite(point):
        return Interval(point, math.nan, math.nan)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Interval(point, float(low), float(high))


@dataclass(frozen=True)
class ArmComparison:
    """One group of decisions: per arm the decisions and engagements, rates and the uplift of treatment."""

    treatment_decisions: int
    treatment_engaged: int
    control_decisions: int
    control_engaged: int
    treatment_rate: Interval
    control_rate: Interval
    uplift: Interval  # treatment rate - control rate (absolute, in engagement probability)
    relative_uplift: Interval  # treatment rate / control rate - 1

    def to_dict(self) -> dict:
        return {"treatment": {"decisions": self.treatment_decisions, "engaged": self.treatment_engaged,
                              "rate": self.treatment_rate.to_dict()},
                "control": {"decisions": self.control_decisions, "engaged": self.control_engaged,
                            "rate": self.control_rate.to_dict()},
                "uplift": self.uplift.to_dict(), "relative_uplift": self.relative_uplift.to_dict()}


def compare_arms(treatment_n: np.ndarray, treatment_e: np.ndarray, control_n: np.ndarray, control_e: np.ndarray,
                 weights: np.ndarray) -> ArmComparison:
    """Per unit (aligned arrays): decisions and engaged decisions in each arm; weights from poisson_weights."""
    sums = np.stack([treatment_n, treatment_e, control_n, control_e], axis=1).astype(np.float32)
    tn, te, cn, ce = (float(x) for x in sums.sum(axis=0))
    boot = (weights @ sums).astype(np.float64)  # [resamples, 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_rate, c_rate = boot[:, 1] / boot[:, 0], boot[:, 3] / boot[:, 2]
        t_point, c_point = te / tn if tn else math.nan, ce / cn if cn else math.nan
        return ArmComparison(
            treatment_decisions=int(tn), treatment_engaged=int(te), control_decisions=int(cn),
            control_engaged=int(ce), treatment_rate=_interval(t_point, t_rate), control_rate=_interval(c_point, c_rate),
            uplift=_interval(t_point - c_point, t_rate - c_rate),
            relative_uplift=_interval(t_point / c_point - 1 if c_point else math.nan, t_rate / c_rate - 1))


def decisions_needed(base_rate: float, uplift: float, control_share: float, alpha: float = 0.05,
                     power: float = 0.8) -> int:
    """Decisions (both arms together) for a two-sided test at level `alpha` to detect an absolute uplift of the
    engagement rate from `base_rate` (the control arm's) with probability `power`, when `control_share` of
    decisions are in the control arm. Normal approximation for two proportions with unequal arms:
        n = (z_{1-alpha/2} + z_{power})^2 * (p_t (1 - p_t) / (1 - s) + p_c (1 - p_c) / s) / uplift^2.
    Independent decisions; decisions of the same people are correlated, so multiply by the design effect
    1 + (m - 1) * icc for m decisions per person (docs/EVALUATION.md)."""
    if not 0 < control_share < 1:
        raise ValueError("control_share must be in (0, 1)")
    treated = base_rate + uplift
    if not (0 < base_rate < 1 and 0 < treated < 1 and uplift != 0):
        raise ValueError("need 0 < base_rate < 1, 0 < base_rate + uplift < 1 and a nonzero uplift")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    variance = treated * (1 - treated) / (1 - control_share) + base_rate * (1 - base_rate) / control_share
    return math.ceil(z * z * variance / (uplift * uplift))
