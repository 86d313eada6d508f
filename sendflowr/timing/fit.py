"""The fitted timing model: from what ClickHouse holds (Inputs) to the decay, priors and ML prior (fit_stats), and
every person's posterior and curve (Fit) (docs/TIMING.md, "The model")."""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from threadpoolctl import threadpool_limits

from sendflowr.timing.estimate import (
    ActivityClusters,
    CohortSums,
    EstimatorParams,
    Priors,
    direct_curves,
    kernel,
    learn_clusters,
    mixture_prior,
    person_posterior,
    priors_from_sums,
    smooth,
    sums_by_cohort,
)
from sendflowr.timing.hazard import Decay, decay_from_sums
from sendflowr.timing.owners import cohort_members, cohorts_by_index, owner_map, owner_persons
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import Messages, PersonStats, cell_positions, message_rows, person_stats

CHUNK = 50_000  # people per [chunk, 168] block (a writer thread sends one while the next is estimated)
ML_PRIOR_SAMPLE = 10_000  # data-rich people the ML prior's shapes are learned from


@dataclass
class Fit:
    stats: PersonStats
    decay: Decay
    priors: Priors
    cohort_index: np.ndarray  # per person, into priors.cohorts
    params: EstimatorParams
    clusters: ActivityClusters | None = None  # the ML prior, when enabled and learnable
    stats_owner: np.ndarray | None = None  # each stats row's owner-map index (ascending), when read from a run

    def subset(self, rows: np.ndarray) -> Fit:
        """The same model over some people (rows of stats, ascending)."""
        st = self.stats
        offsets, take = cell_positions(st.offsets, rows)
        sub = PersonStats(universal_id=st.universal_id[rows], offsets=offsets, cell=st.cell[take],
                          messages=st.messages[take], events=st.events[take], fresh=st.fresh[take],
                          engaged=st.engaged[rows], delivered=st.delivered[rows], horizon=st.horizon)
        return Fit(sub, self.decay, self.priors, self.cohort_index[rows], self.params, self.clusters)

    def rates(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(posterior mean rates [k, 168], engagements) for people lo..hi."""
        shape, rate, engaged = self.posterior(lo, hi)
        shape /= rate
        return shape, engaged

    def raw_hours(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(exposure [k, 168], engagements [k, 168]) of people lo..hi by hour of week, unsmoothed, dense."""
        st = self.stats
        x = np.asarray(st.cells(lo, hi) @ self.decay.exposure + st.delivery_hour_left(lo, hi) * np.float32(
            self.decay.g[0]))
        return x.astype(np.float32), st.engagements(lo, hi).toarray().astype(np.float32)

    def posterior(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Gamma shape [k, 168], Gamma rate [k, 168], engagements) of the rates of people lo..hi."""
        with threadpool_limits(1):  # BLAS threads cost more than they give at [k, 168] x [168, K]: one thread
            # took ~20% less CPU for a whole build on the 2-core box, where ClickHouse and the writer run beside it
            return self._posterior(lo, hi)

    def _posterior(self, lo: int, hi: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hi = len(self.stats) if hi is None else hi
        st = self.stats
        prior = np.take(self.priors.rates, self.cohort_index[lo:hi], axis=0)
        cells, left = st.cells(lo, hi), st.delivery_hour_left(lo, hi)
        g0 = np.float32(self.decay.g[0])
        x = np.asarray(cells @ self.decay.exposure + left * g0)  # [k, 168] exposure by hour of week
        n = st.engagements(lo, hi)
        if self.clusters is not None:  # the ML prior, for people with something of their own to place them by
            mixed = mixture_prior(x, n, prior, self.cohort_index[lo:hi], self.clusters, self.params)
            prior = np.where((st.engaged[lo:hi] > 0)[:, None], mixed, prior)
        expected = np.einsum("ij,ij->i", x, prior)
        total = np.asarray(n.sum(axis=1), dtype=np.float64).ravel()
        # smoothing folded into the exposure rows: one sparse product, no dense [k, 168] x [168, 168] one
        x_smooth = np.asarray(cells @ self.decay.smoothed_exposure(self.params)) + smooth(left, self.params) * g0
        shape, rate = person_posterior(x_smooth, smooth(n, self.params), expected, total, prior, self.params)
        return shape, rate, total

    def curves(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(curves [k, 168], evidence, engagements) for people lo..hi: evidence = engagements seen."""
        hi = len(self.stats) if hi is None else hi
        rates, _ = self.rates(lo, hi)
        s, e = self.stats.deliveries(lo, hi, self.decay)
        curves = direct_curves(self.decay.curves(rates), s, e, self.params)
        engaged = self.stats.engaged[lo:hi]
        return curves, engaged.astype(np.float32), engaged

@dataclass
class Inputs:
    """What a fit reads from ClickHouse: the messages, the owner map's universal_ids, the cohort members."""

    messages: Messages | None  # None once a full build has its statistics (run._full_build lets them go)
    persons: np.ndarray
    members: pa.Table

    def fit(self, params: EstimatorParams, recent: int = 0, messages: Messages | None = None) -> Fit:
        return self.fit_from(*self.stats(params, recent, messages), params)

    def stats(self, params: EstimatorParams, recent: int = 0,
              messages: Messages | None = None) -> tuple[PersonStats, np.ndarray]:
        """Per-person statistics and each row's owner-map index (the first half of fit)."""
        return person_stats(messages or self.messages, self.persons, params, recent)

    def fit_from(self, stats: PersonStats, index: np.ndarray, params: EstimatorParams) -> Fit:
        """The model from statistics this Inputs gave (the second half of fit)."""
        cohort_code, names = cohorts_by_index(self.members, index)
        f = fit_stats(stats, cohort_code, names, params)
        f.stats_owner = index
        return f

    def cohort_names(self, owners: np.ndarray) -> list[str]:
        """The cohort name (maybe unlearned) of people given by owner-map index."""
        code, names = cohorts_by_index(self.members, owners)
        return [names[c] for c in code]

def read_inputs(client: Client, database: str, rules: SignalRules, params: EstimatorParams,
                observed_before: datetime | None = None, ends: dict[tuple[str, int], int] | None = None) -> Inputs:
    with owner_map(client, database) as owners, ThreadPoolExecutor(1, thread_name_prefix="timing-side") as side:
        # The owner map's universal_ids and cohorts are read on a side thread while the events pass runs
        # (ClickHouse has a core to spare in its single-threaded stretches, and during the numpy sums).
        persons = side.submit(owner_persons, client, owners)
        members = side.submit(cohort_members, client, database, owners)
        if params.clusters > 0:  # scikit-learn's import (~0.8 s) while the engine works, not after it
            side.submit(importlib.import_module, "sklearn.cluster")
        messages = message_rows(client, database, rules, owners, params, observed_before, ends)
        return Inputs(messages, persons.result(), members.result())

def fit(client: Client, database: str, rules: SignalRules, params: EstimatorParams,
        observed_before: datetime | None = None, ends: dict[tuple[str, int], int] | None = None,
        recent: int = 0) -> Fit:
    return read_inputs(client, database, rules, params, observed_before, ends).fit(params, recent)

def fit_stats(stats: PersonStats, cohort_code: np.ndarray, names: list[str], params: EstimatorParams) -> Fit:
    """The model from per-person statistics: decay, priors, (optionally) the ML prior."""
    sums, cohorts, pc = sums_by_cohort(cohort_code, names, stats.person, stats.cell, stats.messages, stats.events,
                                       stats.fresh, stats.horizon, params)
    decay, priors = model_from_sums(sums, cohorts, stats.horizon, params)
    f = Fit(stats=stats, decay=decay, priors=priors, cohort_index=pc, params=params)
    if params.clusters > 0:
        f.clusters = learn_ml_prior(f)
    return f

def model_from_sums(sums: CohortSums, cohorts: list[str], horizon: int,
                    params: EstimatorParams) -> tuple[Decay, Priors]:
    """The decay (from everyone's sums: every person is in one row) and the priors, from CohortSums."""
    decay, _ = decay_from_sums(sums.messages.sum(axis=0), sums.events.sum(axis=0), sums.fresh.sum(axis=0), horizon,
                               kernel(params.hour_bandwidth, params.day_pooling))
    return decay, priors_from_sums(sums, cohorts, decay, params)

def learn_ml_prior(f: Fit, sample: int = ML_PRIOR_SAMPLE) -> ActivityClusters | None:
    """Learn the ML prior's shapes from the cohort-prior rates of data-rich people (a sample of them: typical
    weekly shapes need thousands of people, not millions)."""
    rich = rich_sample(np.where(np.diff(f.stats.offsets) > 0, f.stats.engaged, 0.0), f.params, sample)
    if rich.size == 0:
        return None
    return ml_prior_of(Fit(f.stats, f.decay, f.priors, f.cohort_index, f.params).subset(rich))


def rich_sample(engaged: np.ndarray, params: EstimatorParams, sample: int = ML_PRIOR_SAMPLE) -> np.ndarray:
    """Positions (ascending) of the people the ML prior learns from: at most `sample` of those with at least
    cluster_min_engagements engaged messages, drawn with the params' seed."""
    rich = np.flatnonzero(engaged >= params.cluster_min_engagements)
    if rich.size > sample:
        rich = np.sort(np.random.default_rng(params.seed).choice(rich, sample, replace=False))
    return rich


def ml_prior_of(plain: Fit) -> ActivityClusters | None:
    """The ML prior from a fit over the sampled people alone (no clusters yet: their cohort-prior rates)."""
    return learn_clusters(plain.rates()[0], plain.cohort_index, len(plain.priors.cohorts), plain.params)
