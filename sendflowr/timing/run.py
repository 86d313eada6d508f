"""One timing materialization (docs/TIMING.md, "Pipeline"): read the owned messages of the committed events in one
pass (sql/timing/messages.sql: signal cleaning, owner, delivery hour, wait for the first genuine engagement),
turn them into per-person cell statistics with numpy, fit the time-to-engagement model (decay, priors, the ML
prior), estimate curves on [n, 168] blocks, write priors and the curves that changed, commit (timing_runs last,
sendflowr.timing.versions).

A run with nothing new (no newly committed events, no identity write) does nothing. Otherwise a person's curve
row is rewritten only when their statistics or cohort changed, or when the global prior moved (then everyone's
is, since every curve leans on it). The calibration is carried forward; the evaluation asset fits the next one
(sendflowr.timing.evaluation_run).
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from scipy import sparse

from sendflowr.ingest import plan
from sendflowr.sql_files import load_sql
from sendflowr.timing import versions
from sendflowr.timing.decide import EPOCH_HOW, HOURS, Calibration
from sendflowr.timing.estimate import (
    ActivityClusters,
    EstimatorParams,
    Priors,
    direct_curves,
    kernel,
    learn_clusters,
    learn_priors,
    levels,
    mixture_prior,
    person_posterior,
    smooth,
)
from sendflowr.timing.hazard import Decay, event_hour, learn_decay
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.store import EMAIL_COHORT, PHONE_COHORT, calling_codes

CHUNK = 50_000  # people per [chunk, 168] block (a writer thread sends one while the next is estimated)
PRIOR_DRIFT = 0.05  # relative change of the global prior that rewrites every curve


@dataclass
class PersonStats:
    """Sparse (person, message cell) statistics: people sorted by universal_id, rows grouped by person. A cell is
    (delivery hour of week, wait) as sendflowr.timing.hazard defines it."""

    universal_id: np.ndarray  # object [n]
    offsets: np.ndarray  # int64 [n + 1] into the flat columns
    cell: np.ndarray  # int64 [m]
    messages: np.ndarray  # float64 [m] messages in the cell
    events: np.ndarray  # float64 [m] of which engaged (at the cell's wait)
    fresh: np.ndarray  # float64 [m] summed share of the delivery hour left after each delivery
    engaged: np.ndarray  # float64 [n] engaged messages per person (unweighted: levels, evidence, buckets)
    delivered: np.ndarray  # float64 [n] messages per person (unweighted)
    horizon: int
    totals: dict[str, int] = field(default_factory=dict)  # opens, machine opens, clicks, scanner clicks, ...
    recent_hour: np.ndarray | None = None  # per person: the evaluation's genuine-open-hour rule (-1: none)

    def __len__(self) -> int:
        return int(self.universal_id.shape[0])

    @property
    def person(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def _rows(self, lo: int, hi: int, columns: np.ndarray, values: np.ndarray, width: int) -> sparse.csr_matrix:
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        return sparse.csr_matrix((values[a:b].astype(np.float32), columns[a:b], self.offsets[lo:hi + 1] - a),
                                 shape=(hi - lo, width))

    def cells(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168 * H] message counts by cell of people lo..hi."""
        return self._rows(lo, hi, self.cell, self.messages, HOURS * self.horizon)

    def delivery_hour_left(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168] the summed share of the delivery hour left after each delivery, by delivery hour."""
        m = self._rows(lo, hi, (self.cell // self.horizon).astype(np.intp), self.fresh, HOURS)
        m.sum_duplicates()
        return m

    def engagements(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168] engagements by hour of week of people lo..hi (duplicates summed)."""
        m = self._rows(lo, hi, event_hour(self.cell, self.horizon), self.events, HOURS)
        m.sum_duplicates()
        return m

    def deliveries(self, lo: int, hi: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """([hi - lo, 168] engaged, [hi - lo, 168] settled deliveries) by delivery hour of week: a delivery is
        settled once engaged or followed for the whole horizon (a recent unengaged one is still open)."""
        settled = np.where(self.cell % self.horizon == self.horizon - 1, self.messages, self.events)
        how = (self.cell // self.horizon).astype(np.intp)
        s, e = self._rows(lo, hi, how, self.events, HOURS), self._rows(lo, hi, how, settled, HOURS)
        s.sum_duplicates()
        e.sum_duplicates()
        return s, e


@dataclass
class TimingReport:
    run_id: str
    version: int = 0
    new_events: int = 0
    people: int = 0
    people_written: int = 0
    full_rewrite: bool = False
    skipped: bool = False  # nothing new since the last committed run: no new version
    by_level: dict[str, int] = field(default_factory=dict)
    cohorts: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def shares(self) -> dict[str, float]:
        t = self.totals
        return {"machine_open_share": t.get("machine_opens", 0) / max(t.get("opens", 0), 1),
                "scanner_click_share": t.get("scanner_clicks", 0) / max(t.get("clicks", 0), 1),
                "engaged_delivery_share": t.get("engaged", 0) / max(t.get("deliveries", 0), 1)}


def record_progress(client: Client, database: str, run_id: str) -> tuple[int, dict[tuple[str, int], int]]:
    """Advance the watermark to the committed ends; returns (events newly committed, committed end per range).

    Nothing is folded: every run reads the committed events straight from `events` (messages.sql), so the
    watermark only tells whether anything is new since the last run."""
    ends = plan.committed_ends(client, database)
    bounds = plan.pending_bounds(client, database, "timing_progress", ends)
    if bounds:
        client.insert_arrow(f"{database}.timing_progress", pa.table({
            "kafka_topic": pa.array([k[0] for k in bounds], pa.string()),
            "kafka_partition": pa.array([k[1] for k in bounds], pa.uint32()),
            "end_offset": pa.array([v[1] for v in bounds.values()], pa.uint64()),
            "run_id": pa.array([run_id] * len(bounds), pa.string()),
            "at": pa.array([datetime.now(UTC)] * len(bounds), pa.timestamp("us", tz="UTC"))}))
    return sum(e - s for s, e in bounds.values()), ends


def _range_parameters(ends: dict[tuple[str, int], int]) -> dict[str, list]:
    """Committed ranges as the (topic index << 32 | partition) -> end arrays messages.sql looks up."""
    topics = sorted({t for t, _ in ends})
    index = {t: i + 1 for i, t in enumerate(topics)}
    return {"topics": topics, "topic_index": [index[t] for t in topics],
            "range_keys": [(index[t] << 32) | p for t, p in ends], "range_ends": list(ends.values())}


OWNER_MAP_PREFIX = "timing_owners_"
STALE_OWNER_MAP_SECONDS = 86_400  # a run-private owner map older than this was left by a dead process


@contextmanager
def owner_map(client: Client, database: str) -> Iterator[str]:
    """A run-private Join-engine table (its name): identifier hash -> person index and universal_id.
    Dropped when the block ends (also on error); maps a killed process left behind are dropped a day later."""
    _drop_stale_owner_maps(client, database)
    name = f"{database}.{OWNER_MAP_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:12]}"
    client.command(load_sql("timing/owners_table.sql", database).replace("${owners}", name))
    try:
        client.command(load_sql("timing/owners.sql", database).replace("${owners}", name))
        yield name
    finally:
        client.command(f"DROP TABLE IF EXISTS {name}")


def _drop_stale_owner_maps(client: Client, database: str) -> None:
    names = client.query("SELECT name FROM system.tables WHERE database = {d:String} AND startsWith(name, {p:String})",
                         parameters={"d": database, "p": OWNER_MAP_PREFIX}).result_rows
    for (name,) in names:
        born = name[len(OWNER_MAP_PREFIX):].split("_")[0]
        if born.isdigit() and time.time() - int(born) > STALE_OWNER_MAP_SECONDS:
            client.command(f"DROP TABLE IF EXISTS {database}.{name}")


def owner_persons(client: Client, owners: str) -> np.ndarray:
    """universal_id by owner-map index - 1."""
    table = client.query_arrow(f"SELECT p, any(universal_id) AS universal_id FROM {owners} GROUP BY p ORDER BY p",
                               use_strings=True)
    return np.asarray(table.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)


@dataclass
class Messages:
    """One row per owned, delivered message (messages.sql), as columns: the owner's index in the run's owner map,
    the delivery hour (hours since the epoch) and second into it, the wait and whether it ended engaged."""

    p: np.ndarray
    delivered_hour: np.ndarray
    delivered_second: np.ndarray
    wait: np.ndarray
    engaged: np.ndarray
    observed_hour: int  # hours since the epoch of observed_before: later engagement was not seen
    totals: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.p.shape[0])

    def before(self, hour: int) -> Messages:
        """What was known at `hour`: later deliveries dropped, engagement after it unseen (waits censored there)."""
        keep = self.delivered_hour < hour
        seen = hour - 1 - self.delivered_hour[keep].astype(np.int64)
        wait = np.minimum(self.wait[keep].astype(np.int64), seen)
        engaged = self.engaged[keep] & (self.wait[keep].astype(np.int64) <= seen)
        return Messages(self.p[keep], self.delivered_hour[keep], self.delivered_second[keep], wait, engaged, hour)


def message_rows(client: Client, database: str, rules: SignalRules, owners: str, params: EstimatorParams,
                 observed_before: datetime | None = None,
                 ends: dict[tuple[str, int], int] | None = None) -> Messages:
    """The committed events' owned messages (messages.sql). observed_before: what is known is what happened
    before it (default now)."""
    ends = plan.committed_ends(client, database) if ends is None else ends
    observed = observed_before or datetime.now(UTC)
    table = client.query_arrow(load_sql("timing/messages.sql", database), parameters={
        **rules.parameters(), **_range_parameters(ends), "owners": owners, "horizon_hours": params.horizon_hours,
        "observed_before_ms": int(observed.timestamp() * 1000)})
    col = {name: table.column(name).to_numpy() for name in ("p", "delivered_hour", "delivered_second", "wait",
                                                            "engaged")}
    totals = {name: int(pc.sum(table.column(name)).as_py() or 0)
              for name in ("opens", "machine_opens", "clicks", "scanner_clicks", "clicked")}
    totals.update(genuine_opens=totals["opens"] - totals["machine_opens"],
                  genuine_clicks=totals["clicks"] - totals["scanner_clicks"],
                  deliveries=table.num_rows, engaged=int(col["engaged"].sum()))
    return Messages(col["p"], col["delivered_hour"], col["delivered_second"], col["wait"], col["engaged"] > 0,
                    int(observed.timestamp()) // 3600, totals)


def person_stats(m: Messages, persons: np.ndarray, params: EstimatorParams,
                 recent: int = 0) -> tuple[PersonStats, np.ndarray]:
    """Per-person sparse cell statistics, rows sorted by person (owner-map order, which is universal_id order) and
    cell; also each person's owner-map index. persons: the owner map's universal_ids (index - 1)."""
    n = len(m)
    horizon = params.horizon_hours
    how = (m.delivered_hour.astype(np.int64) + EPOCH_HOW) % HOURS
    # per (person, cell): a sort by the combined key, then sums over runs of equal keys
    cells = HOURS * horizon
    key = m.p.astype(np.int64) * cells + how * horizon + m.wait
    order = np.argsort(key)
    key = key[order]
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if n else np.zeros(0, np.int64)
    # Recent messages may weigh more (habits shift): weight 2^(-age / half-life).
    age = m.observed_hour - m.delivered_hour[order].astype(np.float64)
    w = np.exp2(-np.maximum(age, 0.0) / params.half_life_hours) if params.half_life_hours > 0 else np.ones(n)
    messages = np.add.reduceat(w, first) if n else np.zeros(0)
    events = np.add.reduceat(m.engaged[order] * w, first) if n else np.zeros(0)
    left = 1.0 - (m.delivered_second[order].astype(np.float64) + 0.5) / 3600.0
    fresh = np.add.reduceat(left * w, first) if n else np.zeros(0)
    p, cell = key[first] // cells, key[first] % cells
    starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]])) if p.size else np.zeros(0, np.int64)
    person_of = np.searchsorted(p[starts], m.p) if n else np.zeros(0, np.int64)
    engaged = np.bincount(person_of, weights=m.engaged, minlength=starts.size)
    delivered = np.bincount(person_of, minlength=starts.size).astype(np.float64)
    stats = PersonStats(universal_id=persons[p[starts] - 1], offsets=np.append(starts, p.size).astype(np.int64),
                        cell=cell.astype(np.int64), messages=messages, events=events, fresh=fresh, engaged=engaged,
                        delivered=delivered, horizon=horizon, totals=m.totals)
    if recent:
        stats.recent_hour = genuine_open_hour(m.p, m.delivered_hour.astype(np.int64) + m.wait, m.engaged,
                                              p[starts], recent)
    return stats, p[starts]


def genuine_open_hour(p: np.ndarray, hour: np.ndarray, engaged: np.ndarray, people: np.ndarray,
                      recent: int) -> np.ndarray:
    """The Braze-style rule the evaluation compares with: per person (owner indexes `people`), the most frequent
    UTC hour of day among their last `recent` genuinely engaged messages (each at its first genuine open or
    click), -1 without any. Ties go to the earliest hour."""
    p, hour = p[engaged].astype(np.int64), hour[engaged].astype(np.int64)
    order = np.lexsort((-hour, p))  # by person, newest first
    p, hour = p[order], hour[order]
    start = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]])) if p.size else np.zeros(0, np.int64)
    rank = np.arange(p.size) - np.repeat(start, np.diff(np.append(start, p.size)))
    keep = rank < recent
    slot = np.searchsorted(people, p[keep])
    counts = np.bincount(slot * 24 + hour[keep] % 24, minlength=people.size * 24).reshape(people.size, 24)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def cohort_members(client: Client, database: str, owners: str) -> pa.Table:
    """Each cohort name with the owner-map indexes of its people: the features are joined to the map in
    ClickHouse, one row per name, so no universal_id string is matched in Python."""
    sql = load_sql("timing/person_cohorts.sql", database).replace(
        "${features}", load_sql("timing/person_features.sql", database)).replace("${owners}", owners)
    return client.query_arrow(sql, parameters={"codes": list(calling_codes()), "phone": PHONE_COHORT,
                                               "email": EMAIL_COHORT}, use_strings=True)


def cohorts_by_index(table: pa.Table, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """person_cohorts for people given by their owner-map index, from cohort_members."""
    labels = table.column("label").to_pylist()
    names = [""] + [name for name in labels if name != ""]  # sorted by ClickHouse; '' (no cohort) is code 0
    code = np.zeros(int(index.max()) + 1 if index.size else 1, dtype=np.int64)
    if table.num_rows:
        ps = pa.concat_arrays(table.column("ps").chunks)
        lengths = np.diff(ps.offsets.to_numpy())
        member = ps.flatten().to_numpy().astype(np.int64)
        keep = member < code.size
        position = {name: i for i, name in enumerate(names)}
        code[member[keep]] = np.repeat(np.array([position[name] for name in labels]), lengths)[keep]
    return code[index], names


def person_cohorts(client: Client, database: str, universal_id: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each person's candidate cohort (phone calling code, else email domain, else '') as codes into names."""
    table = client.query_arrow(load_sql("timing/person_features.sql", database),
                               parameters={"codes": list(calling_codes())}, use_strings=True)
    ids = np.asarray(table.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    code = np.asarray(table.column("calling_code").to_numpy(zero_copy_only=False), dtype=object)
    domain = np.asarray(table.column("email_domain").to_numpy(zero_copy_only=False), dtype=object)
    label = np.where(code != "", PHONE_COHORT + code, np.where(domain != "", EMAIL_COHORT + domain, ""))
    order = np.argsort(ids)
    ids, label = ids[order], label[order]
    at = np.minimum(np.searchsorted(ids, universal_id), max(len(ids) - 1, 0))
    found = (ids[at] == universal_id) if len(ids) else np.zeros(len(universal_id), dtype=bool)
    person_label = np.where(found, label[at] if len(ids) else "", "")
    names, codes = np.unique(np.concatenate([[""], person_label]).astype(str), return_inverse=True)
    return codes[1:].astype(np.int64), names.tolist()


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
        lengths = np.diff(st.offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = np.repeat(st.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
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
        s, e = self.stats.deliveries(lo, hi)
        curves = direct_curves(self.decay.curves(rates), s, e, self.params)
        engaged = self.stats.engaged[lo:hi]
        return curves, engaged.astype(np.float32), engaged


@dataclass
class Inputs:
    """What a fit reads from ClickHouse: the messages, the owner map's universal_ids, the cohort members."""

    messages: Messages
    persons: np.ndarray
    members: pa.Table

    def fit(self, params: EstimatorParams, recent: int = 0, messages: Messages | None = None) -> Fit:
        stats, index = person_stats(messages or self.messages, self.persons, params, recent)
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
        messages = message_rows(client, database, rules, owners, params, observed_before, ends)
        return Inputs(messages, persons.result(), members.result())


def fit(client: Client, database: str, rules: SignalRules, params: EstimatorParams,
        observed_before: datetime | None = None, ends: dict[tuple[str, int], int] | None = None,
        recent: int = 0) -> Fit:
    return read_inputs(client, database, rules, params, observed_before, ends).fit(params, recent)


def fit_stats(stats: PersonStats, cohort_code: np.ndarray, names: list[str], params: EstimatorParams) -> Fit:
    """The model from per-person statistics: decay, priors, (optionally) the ML prior."""
    decay, _ = learn_decay(stats.cell, stats.messages, stats.events, stats.fresh, stats.horizon,
                           kernel(params.hour_bandwidth, params.day_pooling))
    priors, pc = learn_priors(cohort_code, names, stats.person, stats.cell, stats.messages, stats.events,
                              stats.fresh, decay, params)
    f = Fit(stats=stats, decay=decay, priors=priors, cohort_index=pc, params=params)
    if params.clusters > 0:
        f.clusters = learn_ml_prior(f)
    return f


def learn_ml_prior(f: Fit, sample: int = 10_000) -> ActivityClusters | None:
    """Learn the ML prior's shapes from the cohort-prior rates of data-rich people (a sample of them: typical
    weekly shapes need thousands of people, not millions)."""
    rich = np.flatnonzero((np.diff(f.stats.offsets) > 0) & (f.stats.engaged >= f.params.cluster_min_engagements))
    if rich.size == 0:
        return None
    if rich.size > sample:
        rich = np.sort(np.random.default_rng(f.params.seed).choice(rich, sample, replace=False))
    plain = Fit(f.stats, f.decay, f.priors, f.cohort_index, f.params).subset(rich)
    return learn_clusters(plain.rates()[0], f.cohort_index[rich], len(f.priors.cohorts), f.params)


def _stats_hash(f: Fit) -> np.ndarray:
    """A per-person fingerprint of the statistics and cohort (wrapping uint64 arithmetic, vectorized)."""
    st = f.stats
    with np.errstate(over="ignore"):
        mix = ((st.cell.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
               ^ (st.messages.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
               ^ (st.events.astype(np.uint64) * np.uint64(0x165667B19E3779F9)))
        mix = mix * np.uint64(0xFF51AFD7ED558CCD)
        total = np.add.reduceat(np.append(mix, np.uint64(0)), st.offsets[:-1]) if len(st) else np.zeros(0, np.uint64)
        total = np.where(np.diff(st.offsets) > 0, total, np.uint64(0))
        crc = np.array([zlib.crc32(c.encode()) for c in f.priors.cohorts], dtype=np.uint64)  # a few dozen
        return total ^ (crc[f.cohort_index] * np.uint64(0x27D4EB2F165667C5))


def _changed(previous: pa.Table | None, ids: np.ndarray, new_hash: np.ndarray) -> np.ndarray:
    """People without a committed row or whose statistics hash differs (sorted-array join)."""
    if previous is None or previous.num_rows == 0:
        return np.ones(ids.shape[0], dtype=bool)
    old_ids = np.asarray(previous.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    old_hash = previous.column("h").to_numpy().astype(np.uint64)
    at = np.minimum(np.searchsorted(old_ids, ids), old_ids.shape[0] - 1)
    return (old_ids[at] != ids) | (old_hash[at] != new_hash)


def identity_mark(client: Client, database: str) -> list:
    """Changes whenever identity writes (node rows are only ever added, with a newer updated_at)."""
    count, newest = client.query(f"SELECT count(), toString(max(updated_at)) FROM {database}.identity_nodes"
                                 ).result_rows[0]
    return [int(count), str(newest)]


def _last_mark(client: Client, database: str) -> list | None:
    rows = client.query(f"SELECT metadata FROM {database}.timing_runs WHERE kind = 'curves' "
                        "ORDER BY version DESC LIMIT 1").result_rows
    return json.loads(rows[0][0]).get("identity_mark") if rows else None


def _previous(client: Client, database: str) -> tuple[pa.Table | None, np.ndarray | None, str | None]:
    """Committed per-person stats hashes, the committed global prior and the calibration (carried forward until
    the evaluation asset fits the next one, sendflowr.timing.confidence.calibrate)."""
    head = client.query(f"SELECT version, calibration FROM {database}.timing_runs ORDER BY version DESC LIMIT 1")
    if not head.result_rows:
        return None, None, None
    version, calibration = head.result_rows[0]
    rows = client.query_arrow(
        f"SELECT universal_id, argMax(stats_hash, version) AS h FROM {database}.timing_curves "
        "WHERE version <= {v:UInt64} GROUP BY universal_id ORDER BY universal_id", parameters={"v": int(version)},
        use_strings=True)
    g = client.query(f"SELECT argMax(curve, version) FROM {database}.timing_priors "
                     "WHERE level = 'global' AND version <= {v:UInt64}", parameters={"v": int(version)}).result_rows
    prior = np.asarray(g[0][0], dtype=np.float32) if g and g[0][0] else None
    return rows, prior, calibration


def materialize(client: Client, database: str, rules: SignalRules | None = None,
                params: EstimatorParams | None = None, run_id: str | None = None, full: bool = False,
                log: Callable[[str], None] = print) -> TimingReport:
    """Check for anything new, fit, write what changed, commit (timing_runs last). The client is used from a
    side and a writer thread too: it must not hold an HTTP session (sendflowr.clickhouse.get_client's never do)."""
    rules = rules or SignalRules()
    params = params or EstimatorParams()
    report = TimingReport(run_id=run_id or f"timing-{uuid.uuid4().hex[:12]}")
    t0 = time.perf_counter()
    report.new_events, ends = record_progress(client, database, report.run_id)
    mark = identity_mark(client, database)
    if not full and report.new_events == 0 and _last_mark(client, database) == mark:
        report.skipped = True
        report.version = int(client.command(f"SELECT max(version) FROM {database}.timing_runs"))
        report.seconds["total"] = time.perf_counter() - t0
        log(f"timing: no new events and no identity change since v{report.version}: nothing to do")
        return report
    t1 = time.perf_counter()
    f = fit(client, database, rules, params, ends=ends)
    t2 = time.perf_counter()
    report.seconds.update(progress=t1 - t0, aggregate=t2 - t1)
    report.people, report.totals = len(f.stats), f.stats.totals
    report.cohorts = len(f.priors.cohorts) - 1
    version = report.version = versions.next_version(client, database)
    hashes, old_prior, calibration = _previous(client, database)
    drift = (np.inf if old_prior is None or old_prior.shape != (HOURS,)
             else float(np.max(np.abs(f.priors.global_curve - old_prior) / np.maximum(old_prior, 1e-6))))
    report.full_rewrite = full or drift > PRIOR_DRIFT
    new_hash = _stats_hash(f)
    if report.full_rewrite:
        changed = np.ones(len(f.stats), dtype=bool)
    else:
        changed = _changed(hashes, f.stats.universal_id, new_hash)
    _write_priors(client, database, f.priors, version)
    by_level: dict[str, int] = {"person": 0, "cohort": 0, "global": 0}
    cohorts = np.asarray(f.priors.cohorts, dtype=object)
    # One writer thread: chunk i goes over the wire (and ClickHouse parses and sorts it) while numpy estimates
    # chunk i + 1. At most one write in flight; the commit marker waits for all of them.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="timing-write") as writer:
        pending: Future | None = None
        for lo in range(0, len(f.stats), CHUNK):
            hi = min(lo + CHUNK, len(f.stats))
            curves, evidence, engaged = f.curves(lo, hi)
            lv = levels(engaged, f.cohort_index[lo:hi], params)
            for name in by_level:
                by_level[name] += int((lv == name).sum())
            mask = changed[lo:hi]
            if mask.any():
                # everyone in the chunk changed (a full build): views instead of a fancy-indexed copy of the curves
                rows = slice(None) if mask.all() else np.flatnonzero(mask)
                table = _curves_table(version, f.stats.universal_id[lo:hi][rows], curves[rows], evidence[rows],
                                      engaged[rows], f.stats.delivered[lo:hi][rows], lv[rows],
                                      cohorts[f.cohort_index[lo:hi][rows]], new_hash[lo:hi][rows])
                if pending is not None:
                    pending.result()
                pending = writer.submit(_insert_curves, client, database, table)
                report.people_written += table.num_rows
        if pending is not None:
            pending.result()
    report.by_level = by_level
    t3 = time.perf_counter()
    report.seconds["estimate_and_write"] = t3 - t2
    metadata = {"identity_mark": mark, "shares": report.shares(), "totals": report.totals, "by_level": by_level,
                "rules": rules.describe(), "params": params.to_dict(), "prior_drift": drift,
                "seconds": report.seconds, "new_events": report.new_events}
    versions.commit(client, database, version, report.run_id, "curves", report.people,
                    calibration or Calibration.default().to_json(), report.people_written, metadata)
    report.seconds["total"] = time.perf_counter() - t0
    log(f"timing v{version}: {report.people} people ({by_level}), {report.people_written} curve rows written, "
        f"{report.cohorts} cohorts, machine opens {report.shares()['machine_open_share']:.1%}, scanner clicks "
        f"{report.shares()['scanner_click_share']:.1%}, {report.seconds['total']:.2f}s")
    return report


def _list(matrix: np.ndarray) -> pa.Array:
    n = matrix.shape[0]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * HOURS)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel()))


def _write_priors(client: Client, database: str, priors: Priors, version: int) -> None:
    k = len(priors.cohorts)
    client.insert_arrow(f"{database}.timing_priors", pa.table({
        "level": pa.array(["global"] + ["cohort"] * (k - 1), pa.string()),
        "cohort": pa.array(priors.cohorts, pa.string()), "version": pa.array(np.full(k, version), pa.uint64()),
        "curve": _list(priors.curves), "evidence": pa.array(priors.evidence.astype(np.float32)),
        "people": pa.array(priors.people.astype(np.uint64))}))


def _insert_curves(client: Client, database: str, table: pa.Table, into: str = "timing_curves") -> None:
    """Without in-insert replacing: a run writes each person once; versions are resolved on read. (`into`: the
    benchmark's write floor sends the same rows the same way into an empty copy of the table.)"""
    client.insert_arrow(f"{database}.{into}", table, settings={"optimize_on_insert": 0})


def _curves_table(version: int, ids: np.ndarray, curves: np.ndarray, evidence: np.ndarray, engaged: np.ndarray,
                  deliveries: np.ndarray, lv: np.ndarray, cohort: np.ndarray, stats_hash: np.ndarray) -> pa.Table:
    n = ids.shape[0]
    return pa.table({
        "universal_id": pa.array(ids, pa.string()), "version": pa.array(np.full(n, version), pa.uint64()),
        "curve": _list(curves), "evidence": pa.array(evidence.astype(np.float32)),
        "engagements": pa.array(engaged.astype(np.uint32)), "deliveries": pa.array(deliveries.astype(np.uint32)),
        "fallback_level": pa.array(lv, pa.string()), "cohort": pa.array(cohort, pa.string()),
        "best_hour": pa.array(curves.argmax(axis=1).astype(np.uint8)),
        "stats_hash": pa.array(stats_hash.astype(np.uint64))})
