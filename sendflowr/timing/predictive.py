"""Predictive evaluation on the user's own events: no ground truth needed (docs/EVALUATION.md).

The model is fitted on what was known at a cut (`holdout_weeks` + the horizon before the end of the data), and
predicts, for every message delivered after the cut whose outcome is complete, the chance it is genuinely
engaged within the horizon: its person's curve at the delivery hour. Scored against what happened: log-loss,
Brier score and AUC, next to baselines (the global curve, the person's cohort curve, and the genuine-open-hour
rule), with a reliability table of the predictions.

The same held-out deliveries tell how much of the curve's shape is real: do deliveries at hours a person's curve
rates higher get engaged more? `sharpness` is the slope of the outcome on the prediction, both as deviations from
the person's curve mean (1: the hourly contrasts are as large as predicted; 0: the person engages alike whenever
mail arrives). The confidence calibration reads it (sendflowr.timing.confidence): it
is fitted on draws of the curve with its contrasts shrunk to what these held-out outcomes support.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sendflowr.timing.decide import EPOCH_HOW, HOURS

EPS = 1e-6


@dataclass
class Predictive:
    cut_hour: int = 0  # hours since the epoch: the model is fitted on what was known then
    deliveries: int = 0  # held-out deliveries scored
    people: int = 0
    engaged_share: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> log_loss, brier, auc
    reliability: list[tuple[float, float, int]] = field(default_factory=list)  # (mean predicted, observed, n)
    sharpness: float = 1.0
    calibration: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 1.0), (0.0, 1.0))  # predicted -> observed

    def to_dict(self) -> dict:
        return {"cut_hour": self.cut_hour, "deliveries": self.deliveries, "people": self.people,
                "engaged_share": self.engaged_share, "metrics": self.metrics, "reliability": self.reliability,
                "sharpness": self.sharpness,
                "calibration": [list(self.calibration[0]), list(self.calibration[1])]}


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties counted half)."""
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return {"log_loss": float(-np.mean(np.where(y, np.log(p), np.log1p(-p)))),
            "brier": float(np.mean((p - y) ** 2)), "auc": auc(p, y)}


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Equal-count bins of the prediction: (mean predicted, observed share, deliveries)."""
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, p.size)):
        out.append((float(p[chunk].mean()), float(y[chunk].mean()), int(chunk.size)))
    return out


def sharpness(p: np.ndarray, mean: np.ndarray, y: np.ndarray) -> float:
    """Slope of outcomes on predictions, both as deviations from the person's curve mean (least squares with an
    intercept, clipped to [0, 1]): how much of the curves' contrast between hours is real. Every held-out delivery
    counts, a person's only one too (a weekly sender's two-week hold-out gives most people one or two); errors in
    a person's level are noise here, not bias, as they do not follow the hour. 1 when there are too few to tell."""
    if p.size < 50:
        return 1.0
    dp = p.astype(np.float64) - mean
    dy = y.astype(np.float64) - mean
    dp -= dp.mean()
    denominator = float((dp * dp).sum())
    return min(max(float((dp * (dy - dy.mean())).sum() / denominator), 0.0), 1.0) if denominator > 0 else 0.0


def isotonic_map(p: np.ndarray, y: np.ndarray, knots: int = 32) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Predicted -> observed engagement, monotone (what `expected_engagement` is mapped through)."""
    from scipy.optimize import isotonic_regression

    if p.size < 50:
        return (0.0, 1.0), (0.0, 1.0)
    order = np.argsort(p, kind="stable")
    chunks = np.array_split(order, min(200, p.size))
    x = np.array([p[c].mean() for c in chunks])
    obs = np.array([y[c].mean() for c in chunks])
    w = np.array([c.size for c in chunks], dtype=np.float64)
    fitted = isotonic_regression(obs, weights=w, increasing=True).x
    pick = np.unique(np.linspace(0, x.size - 1, min(knots, x.size)).round().astype(np.int64))
    return tuple(float(v) for v in x[pick]), tuple(float(np.clip(v, 0, 1)) for v in fitted[pick])


def hour_of_week(hours_since_epoch: np.ndarray) -> np.ndarray:
    return ((hours_since_epoch.astype(np.int64) + EPOCH_HOW) % HOURS).astype(np.intp)


def evaluate_predictive(inputs, params, holdout_weeks: float = 2.0, recent: int = 20) -> Predictive:
    """Fit on what was known at the cut, score the held-out deliveries whose outcome is complete.

    inputs: a timing.fit.Inputs read up to now (or up to an evaluation's own cut)."""
    m = inputs.messages
    out = Predictive()
    if len(m) == 0:
        return out
    # outcomes are complete a horizon after delivery (or at once when the data stopped long ago, as a
    # synthetic world's do)
    complete_before = int(min(m.observed_hour - params.horizon_hours, int(m.delivered_hour.max()) + 1))
    first = int(m.delivered_hour.min())
    cut = int(max(complete_before - holdout_weeks * HOURS, first + (complete_before - first) // 2))
    held = (m.delivered_hour >= cut) & (m.delivered_hour < complete_before)
    out.cut_hour = cut
    if held.sum() < 50:
        return out
    f = inputs.fit(params, recent=recent, messages=m.before(cut))
    owners = m.p[held].astype(np.int64)
    how = hour_of_week(m.delivered_hour[held])
    y = m.engaged[held].astype(bool)
    known_owner = np.searchsorted(f.stats_owner, owners)
    known_owner = np.minimum(known_owner, max(f.stats_owner.size - 1, 0))
    known = (f.stats_owner.size > 0) & (f.stats_owner[known_owner] == owners) if f.stats_owner.size else \
        np.zeros(owners.size, bool)
    ours = np.empty(owners.size, np.float32)
    cohort = np.empty(owners.size, np.float32)
    mean = np.empty(owners.size, np.float64)  # of the person's curve over the week
    person_rate = np.empty(owners.size, np.float64)
    rows = np.unique(known_owner[known])
    if rows.size:
        sub = f.subset(rows)
        curves = sub.curves()[0]
        at = np.searchsorted(rows, known_owner[known])
        ours[known] = curves[at, how[known]]
        mean[known] = curves.mean(axis=1)[at]
        cohort[known] = f.priors.curves[f.cohort_index[rows][at], how[known]]
        rate = (f.stats.engaged[rows] + 1.0) / (f.stats.delivered[rows] + 1.0 / max(f.priors.global_curve.mean(),
                                                                                      EPS))
        person_rate[known] = rate[at]
    unknown = ~known
    if unknown.any():
        names = inputs.cohort_names(owners[unknown])
        lookup = {name: i for i, name in enumerate(f.priors.cohorts)}
        index = np.array([lookup.get(name, 0) for name in names], dtype=np.int64)
        ours[unknown] = cohort[unknown] = f.priors.curves[index, how[unknown]]
        mean[unknown] = f.priors.curves[index].mean(axis=1)
        person_rate[unknown] = f.priors.global_curve.mean()
    global_p = f.priors.global_curve[how]
    genuine = np.full(owners.size, -1)
    if rows.size:
        genuine[known] = f.stats.recent_hour[rows][np.searchsorted(rows, known_owner[known])]
    hod = (m.delivered_hour[held].astype(np.int64)) % 24
    match = (genuine >= 0) & (np.minimum((hod - genuine) % 24, (genuine - hod) % 24) <= 1)
    out.deliveries, out.people, out.engaged_share = int(y.size), int(np.unique(owners).size), float(y.mean())
    out.metrics = {"ours": scores(ours, y), "cohort_curve": scores(cohort, y), "global_curve": scores(global_p, y),
                   "person_rate": scores(person_rate, y),
                   "genuine_open_hour": {"auc": auc(match.astype(np.float64) + 1e-3 * person_rate, y)}}
    out.reliability = reliability(ours, y)
    out.sharpness = sharpness(ours, mean, y)
    out.calibration = isotonic_map(ours.astype(np.float64), y.astype(np.float64))
    return out


def reliability_png(p: Predictive) -> str:
    """Base64 PNG: predicted engagement of held-out deliveries against what was observed, per decile."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if p.reliability:
        pred, observed, count = zip(*p.reliability, strict=True)
        top = max(max(pred), max(observed), 1e-3) * 1.05
        ax.plot([0, top], [0, top], color="grey", ls=":")
        ax.plot(pred, observed, marker="o", label="curve value")
        x, y = p.calibration
        ax.plot(x, y, lw=1, label="expected_engagement map")
        ax.legend(fontsize=7)
    ax.set_xlabel("predicted engagement (curve at the delivery hour)")
    ax.set_ylabel("observed engagement of held-out deliveries")
    ax.set_title(f"held-out reliability ({p.deliveries} deliveries)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
