"""Evaluation on a synthetic world with ground truth (docs/TIMING.md, "Reading the evaluation").

The model is fitted on what was observed BEFORE the held-out campaigns only (later engagement is censored).
Every person the identity graph maps to a true person then gets one decision per held-out campaign: a window
of `window_hours` from the campaign's send time. Each method's choice is scored by the person's TRUE curve at
the chosen hour; the oracle takes the true best hour of the window. Methods: ours (decide on the fitted curve),
random time in the window (its exact expectation), the window start, our global curve's best hour, the best
single hour for everyone under the truth (the ceiling of any one-size rule), the most frequent hour of day of
the person's last 20 opens (raw opens, machines included, as naive tools do) and of their last 20 genuine
engagements after signal cleaning (the Braze-style rule).

Reported per bucket of genuine engagements in the training period (0, 1-4, 5-19, 20+): expected engagement
as a share of the oracle's, lift over each baseline with a 95% bootstrap interval (people resampled), top-slot
accuracy (within one hour of the oracle), and calibration: the confidence the model derives from its own
posterior (nothing fitted on the truth) against the truth, and, as a diagnostic only, an isotonic calibration
fitted on half of the people's truth and measured on the other half.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from sendflowr.sql_files import load_sql
from sendflowr.timing.confidence import calibrate, fit_calibration
from sendflowr.timing.decide import HOUR_MS, HOURS, Calibration, decide_many, hour_of_week_ms
from sendflowr.timing.estimate import EstimatorParams, levels
from sendflowr.timing.fit import Fit, learn_ml_prior, read_inputs
from sendflowr.timing.owners import person_cohorts
from sendflowr.timing.signals import SignalRules

BUCKETS = ((0, 0, "0"), (1, 4, "1-4"), (5, 19, "5-19"), (20, 10**9, "20+"))
BASELINES = ("random", "window_start", "global_best_hour", "best_single_hour", "recent_open_hour",
             "genuine_open_hour")
METHODS = ("ours",) + BASELINES


@dataclass
class EvalConfig:
    holdout_share: float = 0.25  # the last quarter of campaigns (by send time) is held out
    window_hours: int = 24
    max_decisions: int = 200_000
    bootstrap: int = 400
    seed: int = 17
    recent_opens: int = 20
    keep_details: bool = False  # keep the per-decision arrays on the report (analysis)


@dataclass
class EvalReport:
    cutoff: datetime
    decisions: int
    people: int
    buckets: dict[str, dict] = field(default_factory=dict)
    overall: dict = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration.default)  # the model's own (what is served)
    ece: float = 0.0  # of the model's own confidence, against the truth
    ece_by_level: dict[str, dict] = field(default_factory=dict)
    reliability: list[tuple[float, float, int]] = field(default_factory=list)
    ece_truth_fitted: float = 0.0  # diagnostic: a calibration fitted on half of the truth, measured on the rest
    ml: dict = field(default_factory=dict)
    signals: dict[str, int] = field(default_factory=dict)  # what the signal cleaning found (training period)
    predictive: dict = field(default_factory=dict)  # the evaluation without ground truth, inside the training period
    plots: dict[str, str] = field(default_factory=dict)  # name -> base64 PNG
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"cutoff": self.cutoff.isoformat(), "decisions": self.decisions, "people": self.people,
                "buckets": self.buckets, "overall": self.overall, "ece": self.ece,
                "ece_by_level": self.ece_by_level, "ece_truth_fitted": self.ece_truth_fitted,
                "reliability": self.reliability, "ml": self.ml, "signals": self.signals,
                "calibration": self.calibration.to_json()}


def truth_people(client: Client, database: str, truth_dir: Path) -> pa.Table:
    """universal_id -> the true person most of its accepted identifiers belong to."""
    owners = load_sql("identity/identifier_owners.sql", database)
    ids = client.query_arrow(f"SELECT identifier_type, raw_value, universal_id FROM ({owners}) WHERE shared = 0",
                             use_strings=True)
    truth = pq.read_table(truth_dir / "identifiers.parquet",
                          columns=["identifier_type", "raw_value", "person_id", "is_generic"])
    truth = truth.filter(pc.and_(pc.invert(truth.column("is_generic")), pc.is_valid(truth.column("person_id"))))
    joined = ids.join(truth.select(["identifier_type", "raw_value", "person_id"]),
                      ["identifier_type", "raw_value"], join_type="inner")
    counts = joined.group_by(["universal_id", "person_id"]).aggregate([([], "count_all")])
    counts = counts.sort_by([("universal_id", "ascending"), ("count_all", "descending")])
    uid = np.asarray(counts.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    first = np.ones(uid.shape[0], dtype=bool)
    first[1:] = uid[1:] != uid[:-1]
    return pa.table({"universal_id": pa.array(uid[first].tolist(), pa.string()),
                     "person_id": counts.column("person_id").to_numpy()[first]})


def recent_open_hour(client: Client, database: str, before: datetime, universal_id: np.ndarray,
                     recent: int) -> np.ndarray:
    """Most frequent UTC hour of day among each person's last `recent` opens (all opens), -1 without opens."""
    owners = load_sql("identity/identifier_owners.sql", database)
    rows = client.query_arrow(
        f"WITH owner AS (SELECT raw_value AS v, universal_id FROM ({owners}) "
        "WHERE shared = 0 AND identifier_type = 'email') "
        "SELECT universal_id, topK(1)(h)[1] AS hour FROM ("
        "  SELECT universal_id, toHour(occurred_at) AS h FROM ("
        "    SELECT e.occurred_at AS occurred_at, o.universal_id AS universal_id "
        f"    FROM {database}.events AS e INNER JOIN owner AS o ON o.v = e.email "
        "    WHERE e.event_type = 'opened' AND e.occurred_at < {before:DateTime64(3, 'UTC')}) "
        "  ORDER BY occurred_at DESC LIMIT {recent:UInt32} BY universal_id) "
        "GROUP BY universal_id ORDER BY universal_id",
        parameters={"before": before, "recent": recent}, use_strings=True)
    ids = np.asarray(rows.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    hours = rows.column("hour").to_numpy().astype(np.int64)
    out = np.full(universal_id.shape[0], -1, dtype=np.int64)
    if ids.size:
        at = np.minimum(np.searchsorted(ids, universal_id), ids.size - 1)
        found = ids[at] == universal_id
        out[found] = hours[at[found]]
    return out


def expected_calibration_error(confidence: np.ndarray, hit: np.ndarray, bins: int = 10
                               ) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE over equal-width bins, and (mean confidence, hit rate, count) per non-empty bin."""
    idx = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, weights=confidence, minlength=bins)
    acc = np.bincount(idx, weights=hit.astype(np.float64), minlength=bins)
    total = max(int(count.sum()), 1)
    ece = float(np.abs(acc - conf).sum() / total)
    table = [(float(conf[b] / count[b]), float(acc[b] / count[b]), int(count[b])) for b in range(bins) if count[b]]
    return ece, table


def _bucket_of(engagements: np.ndarray) -> np.ndarray:
    out = np.zeros(engagements.shape[0], dtype=np.int64)
    for b, (lo, hi, _) in enumerate(BUCKETS):
        out[(engagements >= lo) & (engagements <= hi)] = b
    return out


def _circ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % HOURS
    return np.minimum(d, HOURS - d)


def evaluate(client: Client, database: str, truth_dir: Path, rules: SignalRules | None = None,
             params: EstimatorParams | None = None, config: EvalConfig | None = None) -> EvalReport:
    rules, params, config = rules or SignalRules(), params or EstimatorParams(), config or EvalConfig()
    rng = np.random.default_rng(config.seed)
    campaigns = pq.read_table(truth_dir / "campaigns.parquet", columns=["send_time"])
    sends = np.sort(campaigns.column("send_time").to_numpy().astype("datetime64[ms]").astype(np.int64))
    first_held = int(np.floor(sends.size * (1 - config.holdout_share)))
    held = sends[first_held:]
    cutoff = datetime.fromtimestamp(int(held[0]) / 1000, tz=UTC)
    inputs = read_inputs(client, database, rules, params, observed_before=cutoff)
    base = inputs.fit(replace(params, clusters=0), recent=config.recent_opens)
    # Both priors on the same statistics: the non-ML cohort prior and the ML activity-cluster prior.
    ml_params = replace(params, clusters=params.clusters or 12)
    ml = Fit(base.stats, base.decay, base.priors, base.cohort_index, ml_params)
    ml.clusters = learn_ml_prior(ml)
    use_ml = params.clusters > 0 and ml.clusters is not None
    f = ml if use_ml else base

    people = truth_people(client, database, truth_dir)
    uid = np.asarray(people.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    person_id = people.column("person_id").to_numpy().astype(np.int64)
    true = pq.read_table(truth_dir / "true_curves.parquet", columns=["p_open"]).column("p_open")
    true_curves = pa.concat_arrays([c.flatten() for c in true.chunks]).to_numpy().reshape(-1, HOURS)[person_id]

    curves, evidence, engagements, lv, cohort_index, known_row = _curves_for(client, database, f, uid, params)
    other = base if use_ml else ml
    other_curves = _curves_for(client, database, other, uid, params)[0] if ml.clusters is not None else None
    recent = recent_open_hour(client, database, cutoff, uid, config.recent_opens)
    genuine = np.where(known_row >= 0, f.stats.recent_hour[np.maximum(known_row, 0)], -1) \
        if len(f.stats) else np.full(uid.shape[0], -1)

    # decisions: every (person, held-out campaign), subsampled to max_decisions
    n_people, n_held = uid.shape[0], held.size
    total = n_people * n_held
    pick = np.arange(total) if total <= config.max_decisions else \
        np.sort(rng.choice(total, config.max_decisions, replace=False))
    row, start = pick // n_held, held[pick % n_held]
    end = start + config.window_hours * HOUR_MS
    now = datetime.fromtimestamp(int(held.min()) / 1000 - 1, tz=UTC)
    after, before = start.astype("datetime64[ms]"), end.astype("datetime64[ms]")
    cal = Calibration.default()

    def decide_on(c: np.ndarray, ev=None, level="person"):
        return decide_many(c, np.zeros(row.size) if ev is None else ev, level, after, before, 0.0, now, cal)

    ours = decide_on(curves[row], evidence[row], lv[row])
    oracle = decide_on(true_curves[row])
    glob = decide_on(np.broadcast_to(f.priors.global_curve, (row.size, HOURS)), level="global")
    single = decide_on(np.broadcast_to(true_curves.mean(axis=0), (row.size, HOURS)), level="global")
    t = true_curves[row]
    r = np.arange(row.size)

    def value_at(ms: np.ndarray) -> np.ndarray:
        return t[r, hour_of_week_ms(ms)]

    def ms(batch) -> np.ndarray:
        return batch.delivery_at.astype(np.int64)

    # random in the window: exact expectation over the window's hours (whole hours: windows start on the hour
    # or the partial first hour is weighted by its length)
    offsets = np.arange(config.window_hours + 1, dtype=np.int64) * HOUR_MS
    edges = np.minimum((start[:, None] // HOUR_MS) * HOUR_MS + offsets[None, :], end[:, None])
    edges[:, 0] = start
    lengths = np.diff(edges, axis=1).astype(np.float64)
    hours = hour_of_week_ms(edges[:, :-1])
    random_value = (t[r[:, None], hours] * lengths).sum(axis=1) / lengths.sum(axis=1)
    oracle_slot = hour_of_week_ms(ms(oracle))
    random_hit = ((_circ(hours, oracle_slot[:, None]) <= 1) * lengths).sum(axis=1) / lengths.sum(axis=1)

    chosen = {"ours": ms(ours), "window_start": start, "global_best_hour": ms(glob), "best_single_hour": ms(single),
              "recent_open_hour": _hour_of_day_in_window(recent[row], start, end),
              "genuine_open_hour": _hour_of_day_in_window(genuine[row], start, end)}
    value = {m: value_at(c) for m, c in chosen.items()} | {"random": random_value}
    hit = {m: (_circ(hour_of_week_ms(c), oracle_slot) <= 1).astype(np.float64) for m, c in chosen.items()}
    hit["random"] = random_hit
    best = value_at(ms(oracle))

    report = EvalReport(cutoff=cutoff, decisions=int(row.size), people=int(n_people), signals=f.stats.totals)
    bucket = _bucket_of(engagements)[row]
    if other_curves is not None:
        alt = decide_on(other_curves[row], evidence[row], lv[row])
        alt_value = value_at(ms(alt))
        ml_value, plain_value = (value["ours"], alt_value) if use_ml else (alt_value, value["ours"])
        report.ml = _ml_summary(ml_value, plain_value, best, row, bucket, config, rng)
        report.ml["used"] = bool(use_ml)
        report.ml["clusters"] = int(ml_params.clusters)
    for b, (_, _, name) in enumerate(BUCKETS):
        report.buckets[name] = _summarize(bucket == b, row, value, best, hit, config, rng)
    report.overall = _summarize(np.ones(row.size, dtype=bool), row, value, best, hit, config, rng)

    # confidence: the model's own calibration (as a timing run commits it) against the truth
    predictive, report.calibration = calibrate(inputs, f, np.random.default_rng(config.seed))
    report.predictive = predictive.to_dict()
    raw, ok = ours.raw_score, ~np.isnan(ours.raw_score)
    conf = report.calibration.apply(raw[ok], ours.fallback_level[ok], ours.candidates[ok])
    got = hit["ours"][ok]
    report.ece, report.reliability = expected_calibration_error(conf, got)
    for level in ("person", "cohort", "global"):
        rows = ours.fallback_level[ok] == level
        if rows.any():
            report.ece_by_level[level] = {"ece": expected_calibration_error(conf[rows], got[rows])[0],
                                          "mean_confidence": float(conf[rows].mean()),
                                          "hit_rate": float(got[rows].mean()), "decisions": int(rows.sum())}
    # diagnostic only: how well a calibration fitted on half of the truth would do on the other half
    half = rng.random(n_people) < 0.5
    fit_rows, test_rows = ok & half[row], ok & ~half[row]
    held_fit = fit_calibration(raw[fit_rows], hit["ours"][fit_rows], ours.fallback_level[fit_rows])
    report.ece_truth_fitted, _ = expected_calibration_error(
        held_fit.apply(raw[test_rows], ours.fallback_level[test_rows]), hit["ours"][test_rows])
    report.plots = plots(report, f, true_curves, curves, engagements)
    if config.keep_details:
        report.details = {"row": row, "start": start, "chosen": chosen, "value": value, "best": best,
                          "oracle": ms(oracle), "bucket": bucket, "curves": curves, "true_curves": true_curves,
                          "confidence": ours.raw_score, "level": ours.fallback_level, "hit": hit}
    return report


def _hour_of_day_in_window(hod: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The first moment in [start, end) at hour of day hod (UTC); the window start when hod < 0 or absent."""
    first_hour = start // HOUR_MS
    delta = (hod - (first_hour % 24)) % 24
    at = np.where(hod >= 0, np.maximum((first_hour + delta) * HOUR_MS, start), start)
    return np.where(at < end, at, start)


def _curves_for(client: Client, database: str, f: Fit, uid: np.ndarray, params: EstimatorParams):
    """Fitted curves for the evaluated people; people without training deliveries get their cohort's prior
    (or the global one), exactly as the API would serve them. Also each person's row in f.stats (-1: none)."""
    n = uid.shape[0]
    curves = np.empty((n, HOURS), dtype=np.float32)
    evidence = np.zeros(n, dtype=np.float64)
    engagements = np.zeros(n, dtype=np.float64)
    pos = np.full(n, -1, dtype=np.int64)
    ids = f.stats.universal_id
    if len(ids):
        at = np.minimum(np.searchsorted(ids, uid), len(ids) - 1)
        pos = np.where(ids[at] == uid, at, -1)
    known = pos >= 0
    if known.any():
        all_curves, all_evidence, all_engaged = f.curves()
        curves[known], evidence[known] = all_curves[pos[known]], all_evidence[pos[known]]
        engagements[known] = all_engaged[pos[known]]
    cohort_index = np.zeros(n, dtype=np.int64)
    cohort_index[known] = f.cohort_index[pos[known]]
    if (~known).any():
        code, names = person_cohorts(client, database, uid[~known])
        lookup = {name: i for i, name in enumerate(f.priors.cohorts)}
        mapped = np.array([lookup.get(name, 0) for name in names], dtype=np.int64)  # a few dozen names
        cohort_index[~known] = mapped[code]
        curves[~known] = f.priors.curves[cohort_index[~known]]  # no data of their own: the cohort's curve
    return curves, evidence, engagements, levels(engagements, cohort_index, params), cohort_index, pos


def _ml_summary(ml: np.ndarray, plain: np.ndarray, best: np.ndarray, person_row: np.ndarray, bucket: np.ndarray,
                config: EvalConfig, rng: np.random.Generator) -> dict:
    """ML prior vs the non-ML cohort prior per bucket: shares of the oracle and the lift with a 95% interval."""
    out: dict = {"buckets": {}}
    for b, (_, _, name) in enumerate(list(BUCKETS) + [(0, 0, "all")]):
        rows = bucket == b if name != "all" else np.ones(bucket.size, dtype=bool)
        if not rows.any() or plain[rows].sum() <= 0:
            continue
        people, inverse = np.unique(person_row[rows], return_inverse=True)
        weights = rng.poisson(1.0, size=(config.bootstrap, people.size)).astype(np.float64)
        a = weights @ np.bincount(inverse, weights=ml[rows], minlength=people.size)
        c = weights @ np.bincount(inverse, weights=plain[rows], minlength=people.size)
        lo, hi = np.percentile(a / np.maximum(c, 1e-12) - 1.0, [2.5, 97.5])
        oracle = float(best[rows].sum())
        out["buckets"][name] = {"share_ml": float(ml[rows].sum() / oracle),
                                "share_non_ml": float(plain[rows].sum() / oracle),
                                "lift": float(ml[rows].sum() / plain[rows].sum() - 1.0),
                                "ci95": [float(lo), float(hi)]}
    return out


def _summarize(rows: np.ndarray, person_row: np.ndarray, value: dict, best: np.ndarray, hit: dict,
               config: EvalConfig, rng: np.random.Generator) -> dict:
    if not rows.any():
        return {"decisions": 0}
    # Per-person sums, then a Poisson bootstrap over people (each person's decisions move together).
    people, inverse = np.unique(person_row[rows], return_inverse=True)
    sums = {m: np.bincount(inverse, weights=value[m][rows], minlength=people.size) for m in METHODS}
    oracle = float(best[rows].sum())
    weights = rng.poisson(1.0, size=(config.bootstrap, people.size)).astype(np.float64)
    boot = {m: weights @ sums[m] for m in METHODS}
    out = {"decisions": int(rows.sum()), "people": int(people.size),
           "oracle_mean": oracle / rows.sum(),
           "share_of_oracle": {m: float(value[m][rows].sum() / oracle) if oracle > 0 else None for m in METHODS},
           "top_slot_within_1h": {m: float(hit[m][rows].mean()) for m in METHODS},
           "lift": {}}
    for b in BASELINES:
        base = float(value[b][rows].sum())
        if base <= 0:
            continue
        ratios = boot["ours"] / np.maximum(boot[b], 1e-12) - 1.0
        lo, hi = np.percentile(ratios, [2.5, 97.5])
        out["lift"][b] = {"lift": float(value["ours"][rows].sum() / base - 1.0), "ci95": [float(lo), float(hi)]}
    return out


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: EvalReport, f: Fit, true_curves: np.ndarray, curves: np.ndarray,
          engagements: np.ndarray) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    hours = np.arange(HOURS)
    axes[0].plot(hours, f.priors.global_curve, color="black", lw=2, label="global")
    for i in range(1, min(len(f.priors.cohorts), 6)):
        axes[0].plot(hours, f.priors.curves[i], lw=1, label=f.priors.cohorts[i])
    axes[0].set_ylabel("engagement / delivery")
    axes[0].legend(fontsize=7, ncol=3)
    rich = np.flatnonzero(engagements >= 5)[:3]
    for k, i in enumerate(rich):
        axes[1].plot(hours, true_curves[i], color=f"C{k}", lw=1, ls="--")
        axes[1].plot(hours, curves[i], color=f"C{k}", lw=2, label=f"person {k}: fitted (solid) vs true (dashed)")
    axes[1].set_xlabel("UTC hour of week (0 = Monday 00:00)")
    axes[1].legend(fontsize=7)
    out["curves"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if report.reliability:
        conf, acc, count = zip(*report.reliability, strict=True)
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.scatter(conf, acc, s=np.clip(np.array(count) / max(count) * 300, 10, 300))
        ax.plot(conf, acc)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share within 1 h of the true best slot")
    ax.set_title(f"calibration (held-out ECE {report.ece:.3f})")
    out["calibration"] = _png(fig)
    return out
