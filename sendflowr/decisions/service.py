"""Send-time decisions from a snapshot: resolve identifiers, pick the curve (person, else cohort, else global),
then the timing engineer's decision rule (sendflowr.timing.decide), then the randomized control arm (arms.py):
a share of decisions is served a uniformly random moment instead; with exploration on, the other (treatment)
decisions are made on a draw from the model's uncertainty (explore.py). No FastAPI here; the API is a thin adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from sendflowr.contract import IDENTIFIER_TYPES
from sendflowr.decisions import arms, explore
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.resolve import Resolution, resolve, resolve_one
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity import graph
from sendflowr.identity.normalize import normalize
from sendflowr.timing.decide import (
    EPOCH_HOW,
    HOUR_MS,
    HOURS,
    DecisionError,
    decide_many,
    hour_of_week_ms,
    slot_name,
)
from sendflowr.timing.store import TimingSnapshot, email_cohort, phone_cohort

IDENTIFIER_FIELDS = IDENTIFIER_TYPES


class UnusableIdentifiers(ValueError):
    """No identifier of the request can name a person; `.fields` maps each given field to why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def cohorts_for(t: TimingSnapshot, emails: Sequence[str | None], phones: Sequence[str | None]) -> list[str | None]:
    """`store.cohort_for_identifiers` over columns (phone country first, then email domain, only learned cohorts):
    the same helpers, but phones are normalized as one column instead of one pyarrow call per person."""
    out: list[str | None] = [None] * len(emails)
    rows = [i for i, p in enumerate(phones) if p]
    if rows:
        e164 = normalize("phone", [phones[i] for i in rows]).value.to_pylist()
        for i, number in zip(rows, e164, strict=True):
            cohort = phone_cohort(number) if number else None
            out[i] = cohort if cohort in t.priors else None
    for i, email in enumerate(emails):
        if out[i] is None and email:
            cohort = email_cohort(email)
            out[i] = cohort if cohort in t.priors else None
    return out


@dataclass(frozen=True)
class Curves:
    """The curve each recipient is decided on, with how much data backs it."""

    curves: np.ndarray  # float32 [n, 168]
    evidence: np.ndarray  # float64 [n]
    level: np.ndarray  # object [n]: person | cohort | global
    cohort: np.ndarray  # object [n]: cohort name or ''


def curves_for(snapshot: DecisionSnapshot, uid: np.ndarray, emails: Sequence[str | None],
               phones: Sequence[str | None], personal: np.ndarray | None = None) -> Curves:
    """Person rows from the timing snapshot; everyone else (no curve yet, or `personal` false: the request named
    no one person) gets their cohort's prior, or the global curve, from what the request tells about them
    (cohort_for_identifiers)."""
    t = snapshot.timing
    n = len(uid)
    rows, found = snapshot.timing_rows(uid)
    if personal is not None:
        found = found & personal
    curves = np.empty((n, t.curves.shape[1] if t.curves.ndim == 2 else 168), np.float32)
    evidence = np.empty(n, np.float64)
    level = np.empty(n, object)
    cohort = np.full(n, "", object)
    hit = rows[found]
    curves[found] = t.curves[hit]
    evidence[found] = np.asarray(t.evidence)[hit]
    level[found] = np.asarray(t.fallback_level, object)[hit]
    cohort[found] = np.asarray(t.cohort, object)[hit]
    missing = np.flatnonzero(~found)
    if len(missing):
        names = cohorts_for(t, [emails[i] for i in missing.tolist()], [phones[i] for i in missing.tolist()])
        distinct = sorted({c for c in names if c is not None})
        table = np.stack([np.asarray(t.global_curve, np.float32)]
                         + [np.asarray(t.priors[c], np.float32) for c in distinct])
        pick = np.array([0 if c is None else 1 + distinct.index(c) for c in names], np.int64)
        curves[missing] = table[pick]
        # Evidence is about the PERSON: none of their own engagements back a prior, so the margin score (and the
        # confidence) of a prior-based decision stays low however many people the prior was learned from.
        evidence[missing] = 0.0
        level[missing] = ["cohort" if c else "global" for c in names]
        cohort[missing] = [c or "" for c in names]
    return Curves(curves, evidence, level, cohort)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1.3 us more to build, once per decision served
class DecisionResult:
    universal_id: str
    trigger_at: datetime
    delivery_at: datetime
    confidence: float
    expected_engagement: float
    fallback_level: str
    explanation: str
    known_person: bool
    cohort: str
    merged_into: bool
    evidence: float = 0.0
    arm: str = arms.TREATMENT
    model_delivery_at: datetime | None = None  # the model's choice (differs from delivery_at in the control arm)
    model_expected_engagement: float | None = None
    policy: str = explore.GREEDY  # the rule that chose the moment served: greedy | thompson | random (control)


def curve_for_one(snapshot: DecisionSnapshot, uid: int, email: str | None, phone: str | None,
                  personal: bool = True) -> tuple[np.ndarray, float, str, str]:
    """`curves_for` for one person without building columns: (curve, evidence, level, cohort)."""
    t = snapshot.timing
    row = snapshot.timing_row(uid) if personal else None
    if row is not None:
        return t.curves[row], float(t.evidence[row]), str(t.fallback_level[row]), str(t.cohort[row])
    chosen = curves_for(snapshot, np.array([uid], np.uint64), [email], [phone], np.array([personal]))
    return chosen.curves[0], 0.0, str(chosen.level[0]), str(chosen.cohort[0])


@dataclass(frozen=True)
class DecisionRequest:
    """One single-decision request, as the core sees it."""

    identifiers: Mapping[str, str | None]
    universal_id: str | None
    send_after: datetime
    send_before: datetime
    latency_seconds: float
    campaign_id: str | None = None  # with universal_id, decides the arm
    message_id: str | None = None  # only recorded (the decision log), never decides anything


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SOURCE = {"person": "this person's curve", "cohort": "their cohort's curve", "global": "the global curve"}


def _who_note(known: bool, shared: tuple[str, ...] | None) -> str:
    """What the explanation says first when the request named no known person."""
    if shared:
        fields = " and ".join(shared)
        return (f"no one person: the {fields} given {'is' if len(shared) == 1 else 'are'} shared by several people "
                "in the identity graph (a household, a business, a placeholder), so no person's curve is used; ")
    return "" if known else "unknown person (no events stitched yet); "


def explain(known: bool, shared: tuple[str, ...] | None, delivery_ms: int, level: str, evidence: float,
            expected: float, confidence: float, calibrated: bool) -> str:
    """The explanation served with the model's own choice: who (when not a known person), the hour, whose curve,
    its evidence, expected engagement and confidence. The one place it is worded."""
    return (f"{_who_note(known, shared)}{slot_name((delivery_ms // HOUR_MS + EPOCH_HOW) % HOURS)} is the best "
            f"delivery hour in the window by {_SOURCE.get(level, level)} (evidence {evidence:.1f} engagements, "
            f"expected engagement {expected:.3f}); confidence {confidence:.2f}"
            + ("" if calibrated else " (uncalibrated)"))


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def decision_clock(offset_seconds: float = 0.0) -> Callable[[], datetime]:
    """The clock decisions are made by: the time now, or (simulations only, SENDFLOWR_API_CLOCK_OFFSET_SECONDS)
    that many seconds earlier."""
    if not offset_seconds:
        return lambda: datetime.now(UTC)
    shift = timedelta(seconds=offset_seconds)
    return lambda: datetime.now(UTC) - shift


def _control_arm(curves: np.ndarray, uid: np.ndarray, campaign: int, after_ms: np.ndarray, before_ms: np.ndarray,
                 latency_ms: np.ndarray, now: datetime, decided: np.ndarray, share: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns of (in control, served delivery ms, served expected engagement) for rows that got a decision
    (`decided`); control rows get their random moment and the curve's value there (arms.py). `latency_ms` as the
    decision rule rounded it: the earliest moment whose trigger is not before now is max(send_after, now + it)."""
    h = arms.arm_hashes(uid, campaign)
    control = arms.in_control_many(h, share) & decided
    n = len(control)
    delivery, expected = np.zeros(n, np.int64), np.zeros(n, np.float64)
    rows = np.flatnonzero(control)
    if len(rows):
        start = np.maximum(after_ms[rows], _ms(now) + latency_ms[rows])
        moment = arms.control_moments(after_ms[rows], before_ms[rows], start, *arms.draws_many(h[rows]))
        delivery[rows] = moment
        expected[rows] = curves[rows, hour_of_week_ms(moment)]
    return control, delivery, expected


COLUMN_MIN = 8  # from this many requests, resolving them as columns costs less than one scalar lookup each


def _who(snapshot: DecisionSnapshot, cache: NormalizeCache, requests: Sequence[DecisionRequest], out: list):
    """Resolution and curve of each request that names a person (the others get UnusableIdentifiers in `out`):
    (rows, uid, known, redirected, curves, evidence, levels, cohorts, shared fields of requests that named no one
    person). Scalar lookups for a few requests, column
    calls (resolve, curves_for: the batch endpoint's) for many; both give the same values (tests hold them so)."""
    n = len(requests)
    if n < COLUMN_MIN:
        rows, uid, known, redirected, curves, evidence, levels, cohorts, shared = [], [], [], [], [], [], [], [], []
        for i, req in enumerate(requests):
            res = resolve_one(snapshot.identity, cache, req.identifiers, req.universal_id)
            if res.errors[0] is not None:
                out[i] = UnusableIdentifiers(res.errors[0])
                continue
            curve, ev, level, cohort = curve_for_one(snapshot, int(res.uid[0]), req.identifiers.get("email"),
                                                     req.identifiers.get("phone"), personal=res.shared_only(0) is None)
            rows.append(i)
            uid.append(int(res.uid[0]))
            known.append(bool(res.known[0]))
            redirected.append(bool(res.redirected[0]))
            curves.append(curve)
            evidence.append(ev)
            levels.append(level)
            cohorts.append(cohort)
            shared.append(res.shared_only(0))
        return rows, uid, known, redirected, np.stack(curves) if rows else None, evidence, levels, cohorts, shared
    columns = {t: [req.identifiers.get(t) for req in requests] for t in IDENTIFIER_FIELDS}
    res = resolve(snapshot.identity, cache, columns, [req.universal_id for req in requests], n)
    rows = []
    for i, fields in enumerate(res.errors):
        if fields is None:
            rows.append(i)
        else:
            out[i] = UnusableIdentifiers(fields)
    if not rows:
        return rows, [], [], [], None, [], [], [], []
    shared = [res.shared_only(i) for i in rows]
    chosen = curves_for(snapshot, res.uid[rows], [columns["email"][i] for i in rows],
                        [columns["phone"][i] for i in rows], np.array([s is None for s in shared]))
    return (rows, res.uid[rows].tolist(), res.known[rows].tolist(), res.redirected[rows].tolist(), chosen.curves,
            chosen.evidence.tolist(), chosen.level.tolist(), chosen.cohort.tolist(), shared)


def _moment(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def decide_requests(snapshot: DecisionSnapshot, cache: NormalizeCache, requests: Sequence[DecisionRequest],
                    now: datetime, control_share: float = 0.0, exploration: float = 0.0
                    ) -> list[DecisionResult | UnusableIdentifiers | DecisionError]:
    """Independent single decisions (each its own window) through ONE decide_many call: the numpy set-up of the
    decision rule is paid once for all the requests that arrived together. Same results as deciding each alone
    (tests/reference.py: `decide_one`), except
    that a `control_share` of them (by universal_id and campaign_id) are served a random moment (arms.py), and with
    `exploration` above 0 the others are decided on a draw from the model's uncertainty (explore.py)."""
    out: list = [None] * len(requests)
    rows, uids, known_people, redirected, curves, evidence, levels, cohorts, shared = _who(snapshot, cache, requests,
                                                                                           out)
    if not rows:
        return out
    picked = [requests[i] for i in rows]
    after = np.array([_ms(r.send_after) for r in picked], np.int64)
    before = np.array([_ms(r.send_before) for r in picked], np.int64)
    latency = np.array([r.latency_seconds for r in picked], np.float64)
    batch = decide_many(curves, np.array(evidence, np.float64), np.array(levels, object),
                        after.astype("datetime64[ms]"), before.astype("datetime64[ms]"), latency, now,
                        snapshot.timing.calibration)
    delivery = batch.delivery_at.astype(np.int64).tolist()
    trigger = batch.trigger_at.astype(np.int64).tolist()
    values, confidences = batch.expected_engagement.tolist(), batch.confidence.tolist()
    now_ms = _ms(now)
    explored = None
    if exploration > 0:  # the draws of every row at once (control rows are simply not served theirs)
        keys = np.array([arms.campaign_key(r.campaign_id) for r in picked], np.uint64)
        drawn = explore.drawn_curves(curves, np.array(evidence, np.float64), np.array(uids, np.uint64), keys,
                                     exploration)
        explored = decide_many(drawn, np.array(evidence, np.float64), np.array(levels, object),
                               after.astype("datetime64[ms]"), before.astype("datetime64[ms]"), latency, now,
                               snapshot.timing.calibration).delivery_at.astype(np.int64).tolist()
    uncalibrated = "" if snapshot.timing.calibration.fitted else " (uncalibrated)"
    for j, i in enumerate(rows):
        if batch.error_field[j] is not None:
            out[i] = DecisionError(batch.error_field[j], batch.error_message[j])
            continue
        known = known_people[j]
        value, conf = values[j], confidences[j]
        source = _SOURCE.get(levels[j], levels[j])
        lead = _who_note(known, shared[j])
        shift = delivery[j] - trigger[j]  # the latency in whole ms, as the decision rule rounded it
        # the arm on Python ints: a flush holds a few requests, where array set-up would cost more than the hash
        h = arms.arm_hash(uids[j], arms.campaign_key(picked[j].campaign_id)) if control_share > 0 else 0
        if control_share > 0 and arms.in_control(h, control_share):
            after_ms, before_ms = int(after[j]), int(before[j])
            moment = arms.control_moment(after_ms, before_ms, max(after_ms, now_ms + shift), *arms.draws(h))
            arm, served_at = arms.CONTROL, float(curves[j][(moment // HOUR_MS + EPOCH_HOW) % HOURS])
            policy = explore.RANDOM
            explanation = (lead + f"control arm: a uniformly random moment in the window "
                           f"({slot_name((moment // HOUR_MS + EPOCH_HOW) % HOURS)}), held out to measure the uplift "
                           f"(docs/EVALUATION.md); expected engagement there {served_at:.3f} by {source}")
        elif explored is not None:
            moment, arm, policy = explored[j], arms.TREATMENT, explore.THOMPSON
            served_at = float(snapshot.timing.calibration.engagement_of(
                curves[j][(moment // HOUR_MS + EPOCH_HOW) % HOURS]))
            explanation = lead + _explored_note(moment, delivery[j], source, evidence[j], served_at, value, conf,
                                                exploration, uncalibrated)
        else:
            moment, arm, served_at, policy = delivery[j], arms.TREATMENT, value, explore.GREEDY
            explanation = explain(known, shared[j], moment, levels[j], evidence[j], value, conf,
                                  snapshot.timing.calibration.fitted)
        out[i] = DecisionResult(
            universal_id=f"sf_{uids[j]:016x}", trigger_at=_moment(moment - shift), delivery_at=_moment(moment),
            confidence=conf, expected_engagement=served_at, fallback_level=levels[j], explanation=explanation,
            known_person=known, cohort=cohorts[j], merged_into=redirected[j], evidence=evidence[j], arm=arm,
            model_delivery_at=_moment(delivery[j]), model_expected_engagement=value, policy=policy)
    return out


def _explored_note(moment: int, best: int, source: str, evidence: float, served_at: float, value: float,
                   confidence: float, scale: float, uncalibrated: str) -> str:
    def slot(ms: int) -> str:
        return slot_name((ms // HOUR_MS + EPOCH_HOW) % HOURS)

    return (f"explored: {slot(moment)} is the best hour in the window of a draw from the uncertainty of {source} "
            f"(Thompson sampling at scale {scale:g}, evidence {evidence:.1f} engagements; expected engagement "
            f"{served_at:.3f}); the curve's own best is {slot(best)} (expected engagement {value:.3f}, confidence "
            f"{confidence:.2f}{uncalibrated})")


@dataclass(frozen=True)
class BatchResult:
    """Columns, one row per recipient; rows with an error have no decision (NaT / NaN)."""

    universal_id: np.ndarray  # str ('' where unresolvable)
    trigger_at: np.ndarray  # datetime64[ms]
    delivery_at: np.ndarray  # datetime64[ms], the moment served
    confidence: np.ndarray
    expected_engagement: np.ndarray  # at the moment served
    fallback_level: np.ndarray
    known_person: np.ndarray
    error_field: list[str | None]
    error_message: list[str | None]
    control: np.ndarray  # bool: in the control arm
    explored: np.ndarray  # bool: served a draw's best moment (treatment decisions with exploration on)
    model_delivery_at: np.ndarray  # datetime64[ms], the model's choice
    model_expected_engagement: np.ndarray
    evidence: np.ndarray
    cohort: np.ndarray

    def __len__(self) -> int:
        return len(self.universal_id)


def decide_batch(snapshot: DecisionSnapshot, cache: NormalizeCache, identifiers: Mapping[str, Sequence[str | None]],
                 universal_ids: Sequence[str | None], send_after, send_before, latency_seconds,
                 now: datetime, control_share: float = 0.0, campaign_id: str | None = None,
                 exploration: float = 0.0) -> BatchResult:
    """A whole campaign at once: column-wise resolution and decide_many. Window and latency are scalars or
    per-recipient arrays (datetime64[ms] / float). A bad recipient gets an error row; the others are decided.
    A `control_share` of the recipients (by universal_id and campaign_id) are served a random moment (arms.py);
    with `exploration` above 0 the others are served the best moment of a draw from the curve's uncertainty
    (explore.py)."""
    n = len(universal_ids)
    res: Resolution = resolve(snapshot.identity, cache, identifiers, universal_ids, n)
    none = [None] * n
    personal = np.array([res.shared_only(i) is None for i in range(n)], bool)
    chosen = curves_for(snapshot, res.uid, identifiers.get("email", none), identifiers.get("phone", none), personal)
    batch = decide_many(chosen.curves, chosen.evidence, chosen.level, send_after, send_before, latency_seconds,
                        now, snapshot.timing.calibration)
    error_field = batch.error_field.tolist()
    error_message = batch.error_message.tolist()
    for i, fields in enumerate(res.errors):
        if fields is not None:  # identifier problems come first: without a person there is nothing to decide
            error_field[i] = next(iter(fields))
            error_message[i] = "; ".join(fields.values())
    bad = np.array([f is not None for f in error_field], bool) if n else np.zeros(0, bool)
    uid = np.where(res.uid != 0, graph.format_uid(res.uid), "") if n else np.zeros(0, "U19")
    nat = np.datetime64("NaT", "ms")
    model_delivery = np.where(bad, nat, batch.delivery_at)
    model_value = np.where(bad, np.nan, batch.expected_engagement)
    delivery, trigger, value = model_delivery, np.where(bad, nat, batch.trigger_at), model_value
    control = np.zeros(n, bool)
    if control_share > 0 and n:
        after, before = _ms_column(send_after, n), _ms_column(send_before, n)
        shift = np.where(bad, 0, (batch.delivery_at - batch.trigger_at).astype(np.int64))  # the latency in ms
        control, served, served_value = _control_arm(chosen.curves, res.uid, arms.campaign_key(campaign_id), after,
                                                     before, shift, now, ~bad, control_share)
        delivery = np.where(control, served.astype("datetime64[ms]"), delivery)
        trigger = np.where(control, (served - shift).astype("datetime64[ms]"), trigger)
        value = np.where(control, served_value, value)
    explored = np.zeros(n, bool)
    if exploration > 0 and n:
        explored = ~bad & ~control
        drawn = explore.drawn_curves(chosen.curves, chosen.evidence, res.uid, arms.campaign_key(campaign_id),
                                     exploration)
        x = decide_many(drawn, chosen.evidence, chosen.level, send_after, send_before, latency_seconds, now,
                        snapshot.timing.calibration)
        at = hour_of_week_ms(np.where(explored, x.delivery_at.astype(np.int64), 0))
        delivery = np.where(explored, x.delivery_at, delivery)
        trigger = np.where(explored, x.trigger_at, trigger)
        value = np.where(explored, snapshot.timing.calibration.engagement_of(chosen.curves[np.arange(n), at]),
                         value)
    return BatchResult(
        universal_id=uid, trigger_at=trigger, delivery_at=delivery,
        confidence=np.where(bad, np.nan, batch.confidence), expected_engagement=value,
        fallback_level=np.where(bad, None, chosen.level), known_person=res.known,
        error_field=error_field, error_message=error_message, control=control, explored=explored,
        model_delivery_at=model_delivery,
        model_expected_engagement=model_value, evidence=chosen.evidence, cohort=chosen.cohort)


def _ms_column(value, n: int) -> np.ndarray:
    """Epoch ms per row from a datetime or a datetime64 scalar/array."""
    if isinstance(value, datetime):
        return np.full(n, _ms(value), np.int64)
    return np.broadcast_to(np.asarray(value).astype("datetime64[ms]").astype(np.int64), (n,))


__all__ = ["BatchResult", "DecisionError", "DecisionRequest", "DecisionResult", "UnusableIdentifiers", "decide_batch",
           "decide_requests", "decision_clock", "explain"]
