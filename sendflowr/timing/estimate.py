"""The rate estimator on [n, 168] arrays (docs/TIMING.md, "The model").

Input per person (sendflowr.timing.hazard): N[u] genuine engagements in hour of week u, X[u] the decay-weighted
hours their messages waited unengaged at u (exposure). The rate r[u] = N[u] / X[u] is when the person engages,
corrected for when mail was there to be engaged with; hazard.Decay turns rates into the curves decisions use.

1. Smoothing: N and X are spread over neighbouring hours (circular Gaussian) and, more weakly, over the same
   hour on the other days of the week, before dividing (a kernel-weighted rate, so sparse hours borrow).
2. Priors: the global rate G = smoothed N / smoothed X of everyone's sums; a cohort's rate is shrunk toward G
   with `cohort_strength` pseudo-exposure per hour.
3. Person: an overall level lambda = (sum N + a) / (expected N under the prior + a) (Poisson-Gamma), then
   r[u] = (N~[u] + k) / (X~[u] + k / (lambda * R[u])): a Gamma prior worth k pseudo-engagements at the prior
   mean, so the data win where engagements are many and a few unanswered messages barely move a low rate
   (k = prior_strength).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from scipy import sparse

from sendflowr.timing.decide import HOURS
from sendflowr.timing.hazard import Decay


@dataclass(frozen=True)
class EstimatorParams:
    prior_strength: float = 0.5  # k: pseudo-engagements per hour pulling a person toward their prior
    level_strength: float = 2.0  # a: pseudo-engagements pulling a person's overall level toward the prior's
    hour_bandwidth: float = 1.5  # Gaussian sigma (hours) of neighbouring-hour smoothing
    day_pooling: float = 0.7  # weight of the same hour on the other days of the week
    cohort_strength: float = 200.0  # pseudo-exposure per hour pulling a cohort toward the global rate
    direct_strength: float = 12.0  # pseudo-deliveries the hazard model's value is worth against direct outcomes
    pooling_strength: float = 20.0  # pseudo-engagements pulling a prior's hour toward its day-pooled rate
    horizon_hours: int = 168  # a message is followed this long after its delivery hour
    half_life_hours: float = 0.0  # a message's weight halves with this age (habits shift); 0: all weigh the same
    min_person_engagements: int = 3  # from here on a curve is labelled 'person'
    min_cohort_people: int = 30  # a cohort needs this many people with deliveries to be learned
    clusters: int = 12  # activity clusters of the ML prior (0 = off: cohort priors only)
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
    return np.asarray(x @ kernel(params.hour_bandwidth, params.day_pooling))


def rate(events: np.ndarray, exposure: np.ndarray, params: EstimatorParams,
         toward: np.ndarray | None = None, strength: float = 0.0) -> np.ndarray:
    """Rate of summed statistics (1-D, 168) that pools only as much as the data need: each hour's own
    estimate (neighbouring hours of the same day) shrunk toward the day-pooled estimate with `pooling_strength`
    pseudo-engagements, so a cohort with thousands of engagements keeps its weekday/weekend differences and
    a small one borrows from the other days. Optionally also shrunk toward another rate (the global one)."""
    local = kernel(params.hour_bandwidth, 0.0)
    n_local, x_local = events @ local, exposure @ local
    n_pool, x_pool = smooth(events, params), smooth(exposure, params)
    overall = float(events.sum() / max(exposure.sum(), 1e-9))
    pooled = (n_pool + 1e-3 * overall) / (x_pool + 1e-3)  # an hour no message waited near: the overall rate
    if toward is not None:
        pooled = (n_pool + strength * toward) / (x_pool + strength)
    k = params.pooling_strength
    return ((n_local + k) / (x_local + k / np.maximum(pooled, 1e-9))).astype(np.float32)


@dataclass(frozen=True)
class Priors:
    rates: np.ndarray  # float32 [len(cohorts), 168] engagement rates by hour of week, row 0 = global
    curves: np.ndarray  # float32 [len(cohorts), 168] the curves decisions use (Decay.curves of the rates)
    cohorts: list[str]  # learned cohorts (index 0 = '' = global)
    evidence: np.ndarray  # float64 engagements per cohort
    people: np.ndarray  # int64 per cohort

    @property
    def global_curve(self) -> np.ndarray:
        return self.curves[0]

    @property
    def global_evidence(self) -> float:
        return float(self.evidence[0])


def cell_sums(key: np.ndarray, cell: np.ndarray, values: np.ndarray, groups: int, cells: int) -> np.ndarray:
    """[groups, cells] sums of values by (group key, cell): a group's message statistics as one row."""
    return np.bincount(key * cells + cell, weights=values, minlength=groups * cells).reshape(groups, cells)


@dataclass
class CohortSums:
    """What the priors are learned from, per cohort row (0 = no learned cohort): messages and engaged messages by
    cell [k, 168 * H], the delivery hour's share left by delivery hour of week [k, 168], people [k]. Sums over
    people, so a build in slices of the messages adds them up slice by slice (sendflowr.timing.slices)."""

    messages: np.ndarray
    events: np.ndarray
    fresh: np.ndarray
    people: np.ndarray

    def __add__(self, other: CohortSums) -> CohortSums:
        return CohortSums(self.messages + other.messages, self.events + other.events, self.fresh + other.fresh,
                          self.people + other.people)

    def rows(self, keep: np.ndarray) -> CohortSums:
        """Row 0 plus the rows `keep` (ascending, > 0); every other row's sums go to row 0."""
        rest = np.ones(self.people.shape[0], dtype=bool)
        rest[keep] = False

        def fold(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[rest].sum(axis=0, keepdims=True), a[keep]])
        return CohortSums(fold(self.messages), fold(self.events), fold(self.fresh), fold(self.people))


def cohort_sums(row: np.ndarray, k: int, cell: np.ndarray, messages: np.ndarray, events: np.ndarray,
                fresh: np.ndarray, horizon: int, people: np.ndarray | None = None) -> CohortSums:
    """CohortSums of flat (person, cell) statistics whose cohort row is `row` (per statistics row)."""
    cells = HOURS * horizon
    return CohortSums(cell_sums(row, cell, messages, k, cells), cell_sums(row, cell, events, k, cells),
                      cell_sums(row, cell // horizon, fresh, k, HOURS),
                      np.zeros(k, np.int64) if people is None else people)


def learned_cohorts(people: np.ndarray, params: EstimatorParams) -> np.ndarray:
    """The cohort rows (> 0) with enough people with deliveries to be learned."""
    return np.flatnonzero((people >= params.min_cohort_people) & (np.arange(people.shape[0]) > 0))


def learn_priors(person_cohort: np.ndarray, cohort_names: list[str], person: np.ndarray, cell: np.ndarray,
                 messages: np.ndarray, events: np.ndarray, fresh: np.ndarray, decay: Decay,
                 params: EstimatorParams) -> tuple[Priors, np.ndarray]:
    """Global and cohort rates from flat (person, cell) statistics. Cohorts with fewer than min_cohort_people
    people are dropped (their people fall back to global); returns the priors and each person's index into
    priors.cohorts."""
    sums, cohorts, pc = sums_by_cohort(person_cohort, cohort_names, person, cell, messages, events, fresh,
                                       decay.horizon, params)
    return priors_from_sums(sums, cohorts, decay, params), pc


def sums_by_cohort(person_cohort: np.ndarray, cohort_names: list[str], person: np.ndarray, cell: np.ndarray,
                   messages: np.ndarray, events: np.ndarray, fresh: np.ndarray, horizon: int,
                   params: EstimatorParams) -> tuple[CohortSums, list[str], np.ndarray]:
    """CohortSums of flat (person, cell) statistics over the learned cohorts, their names (row 0: '' = global)
    and each person's row."""
    kept = learned_cohorts(np.bincount(person_cohort, minlength=len(cohort_names)), params)
    remap = np.zeros(len(cohort_names), dtype=np.int64)
    remap[kept] = np.arange(1, kept.size + 1)
    pc = remap[person_cohort]
    sums = cohort_sums(pc[person], kept.size + 1, cell, messages, events, fresh, horizon,
                       np.bincount(pc, minlength=kept.size + 1))
    return sums, [""] + [cohort_names[c] for c in kept], pc


def priors_from_sums(sums: CohortSums, cohorts: list[str], decay: Decay, params: EstimatorParams) -> Priors:
    """Global and cohort rates and curves from CohortSums whose rows are `cohorts` (row 0: global)."""
    k, H = len(cohorts), decay.horizon
    e = sums.events.reshape(k, HOURS, H)
    x = sums.messages @ decay.exposure + decay.g[0] * sums.fresh  # [k, 168] exposure per cohort
    n = np.zeros((k, HOURS))
    for j in range(H):  # engaged at wait j after a delivery in hour h: engaged in hour h + j
        n += np.roll(e[:, :, j], j, axis=1)
    x_all, n_all = x.sum(axis=0), n.sum(axis=0)
    rates = np.empty((k, HOURS), dtype=np.float32)
    rates[0] = g = rate(n_all, x_all, params)
    for i in range(1, k):  # one 168-vector per cohort (a few dozen), not per person
        rates[i] = rate(n[i], x[i], params, toward=g, strength=params.cohort_strength)
    settled = decay.settled(np.arange(HOURS * H), sums.messages, sums.events).reshape(k, HOURS, H)
    curves = direct_curves(decay.curves(rates), e.sum(axis=2), settled.sum(axis=2), params)
    return Priors(rates=rates, curves=curves, cohorts=list(cohorts),
                  evidence=np.concatenate([[n_all.sum()], n[1:].sum(axis=1)]),
                  people=np.concatenate([[sums.people.sum()], sums.people[1:]]).astype(np.int64))


def direct_curves(model: np.ndarray, engaged, delivered, params: EstimatorParams) -> np.ndarray:
    """What deliveries at an hour actually returned, with the hazard model's value as the prior.

    model: [k, 168] the hazard model's engagement probability by delivery hour; engaged / delivered: [k, 168]
    settled deliveries by delivery hour and how many were engaged (dense or sparse). Where a person (or cohort)
    was mailed often at an hour, the outcome rate there wins, whatever drives it (in some worlds the delivery
    moment itself matters, not only when people read); elsewhere the hazard model extrapolates from when they
    engage. Smoothed over neighbouring hours of the same day only: the model already carries the weekly shape."""
    local = kernel(params.hour_bandwidth, 0.0)
    s, e = np.asarray(engaged @ local), np.asarray(delivered @ local)
    k = np.float32(params.direct_strength)
    return ((s + k * model) / (e + k)).astype(np.float32)


def person_posterior(x_smooth: np.ndarray, n_smooth, expected: np.ndarray, total: np.ndarray,
                     prior: np.ndarray, params: EstimatorParams) -> tuple[np.ndarray, np.ndarray]:
    """Gamma posterior of the rates as (shape, rate) numerators [n, 168]: mean = shape / rate. From smoothed
    exposure and engagements, each row's raw totals (engagements expected under its prior, engagements seen) and
    its prior rate. Works in place on x_smooth (it becomes the rate term)."""
    level = ((total + params.level_strength) / (expected + params.level_strength)).astype(np.float32)
    # Gamma prior worth `prior_strength` pseudo-engagements at every hour (so 1/mean pseudo-exposure): a few
    # messages without engagement barely move a low rate, many engagements move any rate.
    k = np.float32(params.prior_strength)
    pseudo = np.multiply(level[:, None], prior, dtype=np.float32)
    np.maximum(pseudo, np.float32(1e-6), out=pseudo)
    np.divide(k, pseudo, out=pseudo)
    x_smooth += pseudo
    shape = np.asarray(n_smooth, dtype=np.float32) + k
    return shape, x_smooth


def posterior_terms(x, n, prior: np.ndarray, params: EstimatorParams) -> tuple[np.ndarray, np.ndarray]:
    """person_posterior from raw exposure x and engagements n by hour of week ([k, 168], dense or sparse)."""
    if sparse.issparse(x):
        expected = np.asarray(x.multiply(prior).sum(axis=1)).ravel()
    else:
        expected = (np.asarray(x) * prior).sum(axis=1)
    total = np.asarray(n.sum(axis=1)).ravel()
    return person_posterior(smooth(x, params).astype(np.float32), smooth(n, params), expected, total, prior, params)


def kernel_mass(params: EstimatorParams) -> float:
    """How many times the smoothing counts each observation (the kernel's row sum): smoothed counts divided by
    it are the information the data really hold."""
    return float(kernel(params.hour_bandwidth, params.day_pooling)[0].sum())


def person_curves(x, n, prior: np.ndarray, params: EstimatorParams) -> np.ndarray:
    """Posterior mean rates from raw exposure x and engagements n by hour of week ([k, 168], dense or sparse)."""
    shape, rate_term = posterior_terms(x, n, prior, params)
    shape /= rate_term
    return shape


@dataclass(frozen=True)
class ActivityClusters:
    """The ML prior: K typical weekly rate shapes learned by k-means (scikit-learn) from data-rich people's
    rates, and P(cluster | cohort). A person's prior becomes the mixture of the shapes weighted by the posterior
    of their own exposure and engagements (Poisson likelihood), so a few engagements at 03:00 UTC place them
    among night owls or far-east readers, which no phone or email cohort can."""

    shapes: np.ndarray  # float32 [K, 168], mean 1
    cohort_mix: np.ndarray  # float64 [n_cohorts, K], rows sum to 1


def learn_clusters(rich_rates: np.ndarray, rich_cohort: np.ndarray, n_cohorts: int,
                   params: EstimatorParams) -> ActivityClusters | None:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    k = params.clusters
    if k <= 0 or rich_rates.shape[0] < 5 * k:
        return None
    # float64: scikit-learn's float32 distances take a slow upcasting path
    shapes = (rich_rates / np.maximum(rich_rates.mean(axis=1, keepdims=True), 1e-9)).astype(np.float64)
    # One thread: on a busy 2-core box OpenMP's spinning threads made the fit 3x slower (3.1 s against 0.9 s),
    # and the curve writer and ClickHouse run beside it.
    with threadpool_limits(1):
        model = KMeans(n_clusters=k, n_init=2, random_state=params.seed).fit(shapes)
    centers = np.maximum(model.cluster_centers_, 1e-3)
    centers = (centers / centers.mean(axis=1, keepdims=True)).astype(np.float32)
    counts = np.zeros((n_cohorts, k))
    np.add.at(counts, (rich_cohort, model.labels_), 1.0)
    overall = counts.sum(axis=0) / counts.sum()
    mix = (counts + 5.0 * overall) / (counts.sum(axis=1, keepdims=True) + 5.0)
    return ActivityClusters(shapes=centers, cohort_mix=mix)


def mixture_prior(x: np.ndarray, n, prior: np.ndarray, cohort: np.ndarray,
                  clusters: ActivityClusters, params: EstimatorParams) -> np.ndarray:
    """[k, 168] prior rates: cluster shapes at each row's prior level, weighted by P(cluster | cohort, own data).
    n: engagements, dense or sparse rows."""
    level = prior.mean(axis=1, keepdims=True)  # [k, 1]
    shapes = clusters.shapes  # [K, 168]
    expected = (np.asarray(x) @ shapes.T) * level  # [k, K] expected engagements under each cluster at the level
    total = np.asarray(n.sum(axis=1)).reshape(-1, 1)
    lam = (total + params.level_strength) / (expected + params.level_strength)
    loglik = np.asarray(n @ np.log(shapes).T) + total * np.log(lam) - lam * expected
    logpost = loglik + np.log(clusters.cohort_mix[cohort])
    logpost -= logpost.max(axis=1, keepdims=True)
    w = np.exp(logpost)
    w /= w.sum(axis=1, keepdims=True)
    return ((w.astype(np.float32) @ shapes) * level).astype(np.float32)  # one dtype: BLAS, not numpy's loop


def levels(engagements: np.ndarray, cohort_index: np.ndarray, params: EstimatorParams) -> np.ndarray:
    return np.where(engagements >= params.min_person_engagements, "person",
                    np.where(cohort_index > 0, "cohort", "global")).astype(object)
