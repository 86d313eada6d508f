"""The curve estimator, on [n, 168] arrays (docs/TIMING.md, "The estimator").

Input per person and delivery hour of week h: E[h] deliveries and S[h] weighted genuine engagement of those
deliveries. Modelling engagement GIVEN the delivery hour (a rate S/E) is the exposure correction: a person
who only ever receives mail at 10:00 has E = 0 elsewhere, so nothing is claimed there beyond the prior,
instead of histogramming open times that can only follow 10:00.

1. Smoothing: E and S are spread over neighbouring hours (circular Gaussian) and, more weakly, over the same
   hour on the other days of the week, before dividing (a kernel-weighted rate, so sparse hours borrow).
2. Priors: global rate G = sum over people of smoothed S / smoothed E; a cohort's rate is shrunk toward G
   with `cohort_strength` pseudo-deliveries per hour.
3. Person: an overall level lambda = (sum S + a) / (expected S under the prior + a) (Poisson-Gamma), then
   r[h] = (S~[h] + k) / (E~[h] + k / (lambda * R[h])): a Gamma prior worth k pseudo-engagements at the prior
   mean, so the data win where engagements are many and a few unanswered deliveries barely move a low rate
   (k = prior_strength).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from scipy import sparse

from sendflowr.timing.decide import HOURS


@dataclass(frozen=True)
class EstimatorParams:
    prior_strength: float = 1.0  # k: pseudo-engagements per hour pulling a person toward their prior
    level_strength: float = 2.0  # a: pseudo-engagements pulling a person's overall level toward the prior's
    hour_bandwidth: float = 1.5  # Gaussian sigma (hours) of neighbouring-hour smoothing
    day_pooling: float = 0.7  # weight of the same hour on the other days of the week
    cohort_strength: float = 200.0  # pseudo-deliveries per hour pulling a cohort toward the global curve
    min_person_engagements: int = 3  # from here on a curve is labelled 'person'
    min_cohort_people: int = 30  # a cohort needs this many people with deliveries to be learned
    clusters: int = 0  # activity clusters of the ML prior (0 = off: cohort priors only)
    cluster_min_engagements: int = 5  # people the clusters are learned from
    seed: int = 7

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@cache
def kernel(bandwidth: float, day_pooling: float) -> np.ndarray:
    """Symmetric [168, 168] smoothing weights (circular over the week)."""
    h = np.arange(HOURS)
    delta = (h[None, :] - h[:, None] + HOURS // 2) % HOURS - HOURS // 2  # in [-84, 84)
    day = np.round(delta / 24.0)
    within = delta - 24.0 * day
    weight = np.exp(-0.5 * (within / bandwidth) ** 2) * np.where(day == 0, 1.0, day_pooling)
    weight[np.abs(within) > 3 * bandwidth + 0.5] = 0.0
    return weight.astype(np.float32)


def smooth(x, params: EstimatorParams) -> np.ndarray:
    """x [n, 168] (dense, or scipy sparse rows: a product per stored value) times the kernel, dense."""
    out = x @ kernel(params.hour_bandwidth, params.day_pooling)
    return np.asarray(out)


def rate(engagement: np.ndarray, deliveries: np.ndarray, params: EstimatorParams,
         toward: np.ndarray | None = None, strength: float = 0.0) -> np.ndarray:
    """Smoothed rate of summed statistics (1-D, 168), optionally shrunk toward another rate curve."""
    s, e = smooth(engagement, params), smooth(deliveries, params)
    if toward is None:
        # An hour no delivery ever came near gets the overall rate rather than 0/0.
        overall = float(engagement.sum() / max(deliveries.sum(), 1e-9))
        return ((s + 1e-3 * overall) / (e + 1e-3)).astype(np.float32)
    return ((s + strength * toward) / (e + strength)).astype(np.float32)


@dataclass(frozen=True)
class Priors:
    global_curve: np.ndarray  # float32 [168]
    global_evidence: float
    cohorts: list[str]  # learned cohorts (index 0 = '' = global)
    curves: np.ndarray  # float32 [len(cohorts), 168], row 0 = global
    evidence: np.ndarray  # float64 per cohort
    people: np.ndarray  # int64 per cohort


def learn_priors(person_cohort: np.ndarray, cohort_names: list[str], person: np.ndarray, how: np.ndarray,
                 deliveries: np.ndarray, weight: np.ndarray, params: EstimatorParams) -> tuple[Priors, np.ndarray]:
    """Global and cohort curves from sparse (person, how) statistics. Cohorts with fewer than
    min_cohort_people people are dropped (their people fall back to global); returns the priors and each
    person's index into priors.cohorts."""
    n_cohorts = len(cohort_names)
    e_all = np.bincount(how, weights=deliveries, minlength=HOURS)
    s_all = np.bincount(how, weights=weight, minlength=HOURS)
    g = rate(s_all, e_all, params)
    size = np.bincount(person_cohort, minlength=n_cohorts)
    keep = (size >= params.min_cohort_people) & (np.arange(n_cohorts) > 0)
    kept = np.flatnonzero(keep)
    remap = np.zeros(n_cohorts, dtype=np.int64)
    remap[kept] = np.arange(1, kept.size + 1)
    pc = remap[person_cohort]
    key = pc[person] * HOURS + how
    e_c = np.bincount(key, weights=deliveries, minlength=(kept.size + 1) * HOURS).reshape(-1, HOURS)
    s_c = np.bincount(key, weights=weight, minlength=(kept.size + 1) * HOURS).reshape(-1, HOURS)
    curves = np.empty((kept.size + 1, HOURS), dtype=np.float32)
    curves[0] = g
    for i in range(1, kept.size + 1):  # one 168-vector per cohort (a few dozen), not per person
        curves[i] = rate(s_c[i], e_c[i], params, toward=g, strength=params.cohort_strength)
    priors = Priors(global_curve=g, global_evidence=float(s_all.sum()), cohorts=[""] + [cohort_names[k] for k in kept],
                    curves=curves, evidence=np.concatenate([[s_all.sum()], s_c[1:].sum(axis=1)]),
                    people=np.concatenate([[person_cohort.size], size[kept]]))
    return priors, pc


def person_curves(e, s, prior: np.ndarray, params: EstimatorParams) -> np.ndarray:
    """[n, 168] posterior curves from deliveries e, weighted engagement s (dense arrays or scipy sparse rows:
    the same math) and each row's prior rate."""
    if sparse.issparse(e):
        expected = np.asarray(e.multiply(prior).sum(axis=1)).ravel()
        total = np.asarray(s.sum(axis=1)).ravel()
    else:
        expected, total = (e * prior).sum(axis=1), s.sum(axis=1)
    level = ((total + params.level_strength) / (expected + params.level_strength)).astype(np.float32)
    # Gamma prior worth `prior_strength` pseudo-engagements at every hour (so 1/mean pseudo-deliveries): a few
    # deliveries without engagement barely move a low rate, many engagements move any rate.
    k = np.float32(params.prior_strength)
    pseudo = np.multiply(level[:, None], prior, dtype=np.float32)  # the prior mean, in place from here on
    np.maximum(pseudo, np.float32(1e-6), out=pseudo)
    np.divide(k, pseudo, out=pseudo)
    pseudo += smooth(e, params)
    curve = smooth(s, params)
    curve += k
    curve /= pseudo
    return curve.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ActivityClusters:
    """The ML prior: K typical weekly shapes learned by k-means (scikit-learn) from data-rich people's curves,
    and P(cluster | cohort). A person's prior becomes the mixture of the shapes weighted by the posterior of
    their own deliveries and engagements (Poisson likelihood), so a few engagements at 03:00 UTC place them
    among night owls or far-east readers, which no phone or email cohort can."""

    shapes: np.ndarray  # float32 [K, 168], mean 1
    cohort_mix: np.ndarray  # float64 [n_cohorts, K], rows sum to 1


def learn_clusters(rich_curves: np.ndarray, rich_cohort: np.ndarray, n_cohorts: int,
                   params: EstimatorParams) -> ActivityClusters | None:
    from sklearn.cluster import KMeans

    k = params.clusters
    if k <= 0 or rich_curves.shape[0] < 5 * k:
        return None
    shapes = rich_curves / np.maximum(rich_curves.mean(axis=1, keepdims=True), 1e-9)
    model = KMeans(n_clusters=k, n_init=3, random_state=params.seed).fit(shapes)
    centers = np.maximum(model.cluster_centers_, 1e-3)
    centers = (centers / centers.mean(axis=1, keepdims=True)).astype(np.float32)
    counts = np.zeros((n_cohorts, k))
    np.add.at(counts, (rich_cohort, model.labels_), 1.0)
    overall = counts.sum(axis=0) / counts.sum()
    mix = (counts + 5.0 * overall) / (counts.sum(axis=1, keepdims=True) + 5.0)
    return ActivityClusters(shapes=centers, cohort_mix=mix)


def mixture_prior(e: np.ndarray, s: np.ndarray, prior: np.ndarray, cohort: np.ndarray,
                  clusters: ActivityClusters, params: EstimatorParams) -> np.ndarray:
    """[n, 168] priors: cluster shapes at each row's prior level, weighted by P(cluster | cohort, own data)."""
    level = prior.mean(axis=1, keepdims=True)  # [n, 1]
    shapes = clusters.shapes  # [K, 168]
    expected = (e @ shapes.T) * level  # [n, K] expected engagement under each cluster at the prior's level
    lam = (s.sum(axis=1, keepdims=True) + params.level_strength) / (expected + params.level_strength)
    loglik = s @ np.log(shapes).T + s.sum(axis=1, keepdims=True) * np.log(lam) - lam * expected
    logpost = loglik + np.log(clusters.cohort_mix[cohort])
    logpost -= logpost.max(axis=1, keepdims=True)
    w = np.exp(logpost)
    w /= w.sum(axis=1, keepdims=True)
    return ((w @ shapes) * level).astype(np.float32)
