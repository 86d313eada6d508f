"""The decision rule, shared by the API and the evaluation: pure numpy, no I/O.

Hour of week (how) is `(iso_weekday - 1) * 24 + hour` in UTC, 0 = Monday 00:00-00:59 UTC. A curve holds 168
expected genuine-engagement values, one per delivery hour of week.

Rule (docs/TIMING.md): the window is half-open, delivery in [send_after, send_before). The earliest usable
delivery is `max(send_after, now + latency)`, so the trigger (delivery - latency) is never before `now`.
Candidates are that moment and every later hour boundary in the window, at most one week of them (the curve
repeats weekly); the candidate with the highest curve value wins, ties go to the earliest.

Confidence is P(the chosen slot is within one hour of the person's true best slot in the window), obtained
from a raw margin score through a fitted `Calibration` (per fallback level). A window whose candidates all
lie within one hour of the chosen one is certain by construction (confidence 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

HOURS = 168
HOUR_MS = 3_600_000
EPOCH_HOW = 72  # 1970-01-01 00:00 UTC was a Thursday: hour of week 3 * 24
MAX_CANDIDATES = HOURS + 1  # the (possibly mid-hour) first moment, then 168 hour boundaries
LEVELS = ("person", "cohort", "global")
# Upper bounds (inclusive) of a window's candidate count per calibration bucket: how likely a pick is to land
# within an hour of the best depends on how many hours it was picked from.
CANDIDATE_BUCKETS = (4, 8, 16, 32, 64, MAX_CANDIDATES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class DecisionError(ValueError):
    """No decision is possible for this request; `.field` names the request field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Calibration:
    """Raw margin score -> probability that the chosen slot is within an hour of the true best one.

    Piecewise-linear through (x, y) knots per fallback level, or per "level/bucket" (bucket: the index of the
    window's candidate count in CANDIDATE_BUCKETS), which wins when present; monotone (fitted by isotonic
    regression), flat beyond the ends. `fitted` is False for the default mapping used before any fit.
    """

    knots: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    fitted: bool = False
    ece: float | None = None  # expected calibration error measured on held-out decisions when fitted
    samples: int = 0
    notes: dict[str, float] = field(default_factory=dict)
    # curve value -> engagement observed on held-out deliveries (monotone knots); None: the curve value as is
    engagement: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        for level, (x, y) in self.knots.items():
            if len(x) != len(y) or not x:
                raise ValueError(f"calibration knots for {level!r} need equal, non-empty x and y")
            if any(b < a for a, b in zip(x, x[1:], strict=False)):
                raise ValueError(f"calibration x for {level!r} must be non-decreasing")
            if any(not 0.0 <= v <= 1.0 for v in y):
                raise ValueError(f"calibration y for {level!r} must be probabilities")

    @classmethod
    def default(cls) -> Calibration:
        # Uncalibrated: a gentle, monotone guess (a large margin relative to the noise -> confident).
        x = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
        y = (0.15, 0.25, 0.35, 0.5, 0.65, 0.8, 0.9)
        return cls(knots={level: (x, y) for level in LEVELS})

    def to_json(self) -> str:
        return json.dumps({"knots": {k: [list(x), list(y)] for k, (x, y) in self.knots.items()},
                           "fitted": self.fitted, "ece": self.ece, "samples": self.samples,
                           "notes": self.notes,
                           "engagement": [list(v) for v in self.engagement] if self.engagement else None},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        knots = {k: (tuple(float(v) for v in x), tuple(float(v) for v in y)) for k, (x, y) in data["knots"].items()}
        engagement = data.get("engagement")
        return cls(knots=knots, fitted=bool(data.get("fitted", False)), ece=data.get("ece"),
                   samples=int(data.get("samples", 0)), notes=dict(data.get("notes", {})),
                   engagement=(tuple(map(float, engagement[0])), tuple(map(float, engagement[1])))
                   if engagement else None)

    def engagement_of(self, value: np.ndarray) -> np.ndarray:
        """Expected engagement of a delivery the curve values at `value` (as observed on held-out deliveries)."""
        value = np.asarray(value, dtype=np.float64)
        return np.interp(value, *self.engagement) if self.engagement else value

    def apply(self, raw: np.ndarray, levels: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for raw scores (inf -> 1: certain by construction); unknown levels use 'global'."""
        raw = np.asarray(raw, dtype=np.float64)
        keys = np.asarray(levels, dtype=object).tolist()
        if candidates is not None and self._bucketed:
            buckets = np.searchsorted(CANDIDATE_BUCKETS, np.asarray(candidates)).tolist()
            keys = [f"{level}/{bucket}" for level, bucket in zip(keys, buckets, strict=True)]
        # rows per key in a dict: a few keys over any number of rows, without sorting an object array
        groups: dict[object, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        out = np.empty(raw.shape, dtype=np.float64)
        for key, rows in groups.items():
            out[rows] = np.interp(raw[rows], *self._knots_of(key))
        out[np.isposinf(raw)] = 1.0
        return out

    @property
    def _bucketed(self) -> bool:
        return any("/" in k for k in self.knots)

    def _knots_of(self, key: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """A key's knots, else its level's, else the global ones."""
        return (self.knots.get(key) or self.knots.get(str(key).split("/")[0]) or self.knots.get("global")
                or next(iter(self.knots.values())))


@dataclass(frozen=True)
class DecisionBatch:
    """Column results of decide_many; rows with error_field set (not None) have no decision (NaT / NaN)."""

    delivery_at: np.ndarray  # datetime64[ms]
    trigger_at: np.ndarray  # datetime64[ms]
    confidence: np.ndarray  # float64
    expected_engagement: np.ndarray  # float64
    fallback_level: np.ndarray  # object
    error_field: np.ndarray  # object: None or the request field to blame
    error_message: np.ndarray  # object: None or why
    raw_score: np.ndarray  # float64 margin score before calibration (inf = certain by construction)
    candidates: np.ndarray  # int64 moments the choice was made from (0 for failed rows)

    def __len__(self) -> int:
        return int(self.delivery_at.shape[0])


def hour_of_week_ms(ms: np.ndarray) -> np.ndarray:
    """Hour of week of epoch milliseconds (UTC)."""
    return ((np.floor_divide(ms, HOUR_MS) + EPOCH_HOW) % HOURS).astype(np.intp)


def hour_of_week(moment: datetime) -> int:
    return int(hour_of_week_ms(np.array([_to_ms(moment, "moment")]))[0])


def _to_ms(moment: datetime, name: str) -> int:
    if not isinstance(moment, datetime):
        raise DecisionError(name, f"{name} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise DecisionError(name, f"{name} must be timezone-aware (UTC)")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _ms_column(value, n: int, name: str) -> np.ndarray:
    """int64 epoch ms, length n, from a datetime or a datetime64 array (naive values are read as UTC)."""
    if isinstance(value, datetime):
        return np.full(n, _to_ms(value, name), dtype=np.int64)
    arr = np.asarray(value)
    if arr.dtype.kind != "M":
        raise DecisionError(name, f"{name} must be a datetime or a datetime64 array")
    if arr.shape not in ((n,), ()):
        raise DecisionError(name, f"{name} has {arr.size} values for {n} rows")
    # NaT's int64 value is int64 min, the missing marker decide_many checks; astype copies.
    out = arr.astype("datetime64[ms]").astype(np.int64)
    return out if arr.shape == (n,) else np.full(n, out, np.int64)


def _latency_column(value, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in ((n,), ()):
        raise DecisionError("latency_estimate_seconds", f"latency has {arr.size} values for {n} rows")
    return np.full(n, arr, np.float64)  # a copy, like broadcast + copy, without broadcast_to's set-up


def decide_many(curves: np.ndarray, evidence: np.ndarray, fallback_levels: np.ndarray, send_after, send_before,
                latency_seconds, now: datetime, calibration: Calibration) -> DecisionBatch:
    """Vectorized decide(): one row per curve; a bad row gets error_field/error_message, never an exception
    (only malformed argument shapes raise DecisionError)."""
    curves = np.asarray(curves, dtype=np.float32)
    if curves.ndim != 2 or curves.shape[1] != HOURS:
        raise DecisionError("curve", f"curves must have shape (n, {HOURS}), got {curves.shape}")
    n = curves.shape[0]
    evidence = np.asarray(evidence, dtype=np.float64)
    if evidence.shape != (n,):
        evidence = np.broadcast_to(evidence, (n,))
    levels = np.asarray(fallback_levels, dtype=object)
    levels = levels.copy() if levels.shape == (n,) else np.broadcast_to(levels, (n,)).copy()
    after = _ms_column(send_after, n, "send_after")
    before = _ms_column(send_before, n, "send_before")
    latency = _latency_column(latency_seconds, n)
    now_ms = _to_ms(now, "now")

    if n == 1:  # a lone request (the API at low load): the same rule in plain Python, without array set-up
        return _decide_row(curves[0], float(evidence[0]), levels, int(after[0]), int(before[0]), float(latency[0]),
                           now_ms, calibration)
    err_field = np.full(n, None, dtype=object)
    err_msg = np.full(n, None, dtype=object)

    nat = np.iinfo(np.int64).min
    bad_latency = ~np.isfinite(latency) | (latency < 0)
    # Clipped at ~30,000 years so that absurd latencies fail on the window check instead of overflowing.
    lat_ms = np.ceil(np.clip(np.where(bad_latency, 0.0, latency), 0.0, 1e12) * 1000.0).astype(np.int64)
    start = np.maximum(after, now_ms + lat_ms)  # earliest delivery whose trigger is not before now
    # In order of blame: a row's error is the first check it fails.
    checks = (
        (after == nat, "send_after", "send_after is missing"),
        (before == nat, "send_before", "send_before is missing"),
        (before <= after, "send_before", "send_before must be later than send_after (the window is empty)"),
        (before <= now_ms, "send_before", "the window is already past: send_before is not after now"),
        (bad_latency, "latency_estimate_seconds", "latency must be a finite number of seconds >= 0"),
        (start >= before, "latency_estimate_seconds",
         "latency is larger than what is left of the window: a trigger now would deliver after send_before"),
        (~np.isfinite(curves).all(axis=1) | (curves < 0).any(axis=1), "curve", "curve values must be finite and >= 0"),
        (~np.isfinite(evidence) | (evidence < 0), "evidence", "evidence must be finite and >= 0"),
    )
    bad = np.logical_or.reduce([mask for mask, _, _ in checks])
    if bad.any():  # rare: the per-check assignments only when some row fails
        for mask, name, message in checks:
            rows = mask & (err_field == None)  # noqa: E711 (element-wise on an object array)
            err_field[rows] = name
            err_msg[rows] = message
    ok = ~bad

    start = np.where(ok, start, 0)  # keep failed rows (NaT = int64 min) out of the arithmetic below
    # Candidates: the first moment, then the hour boundaries after it inside the window (at most a week),
    # in time order, so argmax's first maximum is the earliest moment on ties. Candidate j sits at position
    # j - 1 hours after the first boundary's hour, so its hour of week is (first_slot + j - 1) % 168: the
    # values are one contiguous run of a doubled curve per row (a block copy, not a per-element gather).
    first_boundary = (np.floor_divide(start, HOUR_MS) + 1) * HOUR_MS  # strictly after start
    boundaries = np.clip(-np.floor_divide(first_boundary - before, HOUR_MS), 0, MAX_CANDIDATES - 1)
    count = np.where(ok, boundaries + 1, 0)  # valid candidates form a prefix of this length
    first_slot = hour_of_week_ms(first_boundary)
    doubled = np.concatenate([curves, curves, curves[:, :1]], axis=1)
    # sliding_window_view(doubled, MAX_CANDIDATES, axis=1), built directly (its checks cost more than a small n)
    step_row, step_col = doubled.strides
    windows = np.lib.stride_tricks.as_strided(doubled, (n, doubled.shape[1] - MAX_CANDIDATES + 1, MAX_CANDIDATES),
                                              (step_row, step_col, step_col), writeable=False)
    rows = np.arange(n)
    values = windows[rows, (first_slot - 1) % HOURS]  # [n, 169], a copy
    position = np.arange(MAX_CANDIDATES, dtype=np.int16)
    valid = position[None, :] < count[:, None]
    scored = np.where(valid, values, np.float32(-np.inf))
    best = np.argmax(scored, axis=1)  # first maximum = earliest on ties
    chosen_ms = np.where(best == 0, start, first_boundary + (best - 1).astype(np.int64) * HOUR_MS)
    best_value = values[rows, best].astype(np.float64)

    # Margin score: best vs the best candidate more than an hour away (circularly), relative to the best,
    # scaled by sqrt(1 + evidence) (noise of a rate shrinks like 1/sqrt(n)).
    dist = np.abs(position[None, :] - best.astype(np.int16)[:, None])  # candidates are consecutive hours
    far = valid & (dist > 1) & (dist < HOURS - 1)
    runner_up = np.where(far, scored, np.float32(-np.inf)).max(axis=1).astype(np.float64)
    has_far = far.any(axis=1)
    rel = np.where(best_value > 0, (best_value - np.where(has_far, runner_up, 0.0)) / np.maximum(best_value, 1e-12),
                   0.0)
    raw = np.where(has_far, rel * np.sqrt(1.0 + np.where(ok, evidence, 0.0)), np.inf)
    confidence = calibration.apply(raw, levels, count)

    delivery = np.where(ok, chosen_ms, nat).astype("datetime64[ms]")
    trigger = np.where(ok, chosen_ms - lat_ms, nat).astype("datetime64[ms]")
    return DecisionBatch(
        delivery_at=delivery, trigger_at=trigger,
        confidence=np.where(ok, confidence, np.nan),
        expected_engagement=np.where(ok, calibration.engagement_of(best_value), np.nan),
        fallback_level=levels, error_field=err_field, error_message=err_msg, raw_score=np.where(ok, raw, np.nan),
        candidates=count.astype(np.int64),
    )


def _decide_row(curve: np.ndarray, evidence: float, levels: np.ndarray, after: int, before: int, latency: float,
                now_ms: int, calibration: Calibration) -> DecisionBatch:
    """decide_many for one row, step for step (same checks in the same order, same float32 comparisons, same
    float64 arithmetic; tests/test_timing_decide.py compares it with the vector path on random rows)."""
    nat = np.iinfo(np.int64).min
    bad_latency = not math.isfinite(latency) or latency < 0
    lat_ms = math.ceil(min(max(0.0 if bad_latency else latency, 0.0), 1e12) * 1000.0)
    start = max(after, now_ms + lat_ms)
    error = None
    if after == nat:
        error = ("send_after", "send_after is missing")
    elif before == nat:
        error = ("send_before", "send_before is missing")
    elif before <= after:
        error = ("send_before", "send_before must be later than send_after (the window is empty)")
    elif before <= now_ms:
        error = ("send_before", "the window is already past: send_before is not after now")
    elif bad_latency:
        error = ("latency_estimate_seconds", "latency must be a finite number of seconds >= 0")
    elif start >= before:
        error = ("latency_estimate_seconds",
                 "latency is larger than what is left of the window: a trigger now would deliver after send_before")
    elif not np.isfinite(curve).all() or (curve < 0).any():
        error = ("curve", "curve values must be finite and >= 0")
    elif not math.isfinite(evidence) or evidence < 0:
        error = ("evidence", "evidence must be finite and >= 0")
    if error is not None:
        nan, never = np.array([np.nan]), np.array([nat], "datetime64[ms]")
        return DecisionBatch(delivery_at=never, trigger_at=never.copy(),
                             confidence=nan, expected_engagement=nan.copy(), fallback_level=levels,
                             error_field=np.array([error[0]], object), error_message=np.array([error[1]], object),
                             raw_score=nan.copy(), candidates=np.zeros(1, np.int64))
    first_boundary = (start // HOUR_MS + 1) * HOUR_MS
    count = min(max(-((first_boundary - before) // HOUR_MS), 0), MAX_CANDIDATES - 1) + 1
    offset = ((first_boundary // HOUR_MS + EPOCH_HOW) % HOURS - 1) % HOURS
    week = curve.tolist()  # float32 -> float exactly: comparisons as in float32
    values = [week[(offset + j) % HOURS] for j in range(count)]
    best, best_value = 0, values[0]
    for j in range(1, count):
        if values[j] > best_value:  # strictly greater: the first maximum, the earliest moment
            best, best_value = j, values[j]
    far = [v for j, v in enumerate(values) if 1 < abs(j - best) < HOURS - 1]
    if far:
        runner_up = max(far)
        rel = (best_value - runner_up) / max(best_value, 1e-12) if best_value > 0 else 0.0
        raw = rel * math.sqrt(1.0 + evidence)
    else:
        raw = math.inf
    chosen = start if best == 0 else first_boundary + (best - 1) * HOUR_MS
    return DecisionBatch(
        delivery_at=np.array([chosen], "datetime64[ms]"), trigger_at=np.array([chosen - lat_ms], "datetime64[ms]"),
        confidence=calibration.apply(np.array([raw]), levels, np.array([count])),
        expected_engagement=calibration.engagement_of(np.array([best_value])), fallback_level=levels,
        error_field=np.array([None], object),
        error_message=np.array([None], object), raw_score=np.array([raw]), candidates=np.array([count], np.int64))


def slot_name(how: int) -> str:
    return f"{_DAYS[how // 24]} {how % 24:02d}:00 UTC"
