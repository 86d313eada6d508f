"""Decision service on an in-memory snapshot (no services): many single requests decided together agree with
each decided alone, the coalescer batches concurrent requests, and the column batch agrees with both."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from reference import decide_one

from sendflowr.decisions.identity_map import IdentityMap, NormalizeCache, raw_hash
from sendflowr.decisions.service import (
    DecisionError,
    DecisionRequest,
    UnusableIdentifiers,
    decide_batch,
    decide_requests,
)
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity import graph
from sendflowr.timing.decide import HOURS, Calibration
from sendflowr.timing.store import TimingSnapshot
from sendflowr_api.coalesce import Coalescer

N = 50


def synthetic_snapshot(n_people: int, seed: int, without_curve: int, version: int) -> DecisionSnapshot:
    """People known by one klaviyo_id each (K0, K1, ...); the last `without_curve` have no curve yet."""
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.integers(1, 2**63, n_people).astype(np.uint64))
    uids = graph.mix(keys)
    hashes = np.array([raw_hash("klaviyo_id", f"K{i}") for i in range(n_people)], np.uint64)
    order = np.argsort(hashes)
    identity = IdentityMap(node_key=keys, node_uid=uids, raw_hash=hashes[order], raw_node=keys[order],
                           live_uid=np.unique(uids), merged_old=np.zeros(0, np.uint64),
                           merged_final=np.zeros(0, np.uint64))
    with_curve = np.sort(graph.format_uid(uids)[: n_people - without_curve])
    n = len(with_curve)
    timing = TimingSnapshot(
        version=version, materialized_at=datetime.now(UTC), universal_id=with_curve.astype(object),
        curves=rng.gamma(2.0, 0.05, (n, HOURS)).astype(np.float32), evidence=rng.gamma(2, 5, n).astype(np.float32),
        engagements=np.ones(n, np.uint32), fallback_level=np.array(["person"] * n, object),
        cohort=np.array([""] * n, object), best_hour=np.zeros(n, np.uint8),
        priors={"email:corp.io": rng.random(HOURS).astype(np.float32)}, prior_evidence={"email:corp.io": 50.0},
        global_curve=rng.random(HOURS).astype(np.float32), global_evidence=900.0,
        calibration=Calibration.default())
    return DecisionSnapshot(identity=identity, timing=timing)


@pytest.fixture(scope="module")
def snapshot() -> DecisionSnapshot:
    return synthetic_snapshot(N, seed=2, without_curve=10, version=3)


def _requests(seed: int, n: int) -> list[DecisionRequest]:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        start = now + timedelta(minutes=int(rng.integers(-600, 6000)))
        ids: dict[str, str | None] = dict.fromkeys(("email", "klaviyo_id", "phone", "external_id"))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            ids["klaviyo_id"] = f"K{int(rng.integers(0, N))}"
        elif kind == 1:
            ids["email"] = f"someone{int(rng.integers(0, 5))}@corp.io"
        elif kind == 2:
            ids["email"] = "noreply@corp.io"
        else:
            ids["external_id"] = f"x{int(rng.integers(0, 5))}"
        out.append(DecisionRequest(ids, None, start, start + timedelta(hours=float(rng.choice([0.5, 3, 40, 200]))),
                                   float(rng.choice([0, 300, 7200]))))
    return out


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, Exception):
        assert str(a) == str(b) and getattr(a, "field", None) == getattr(b, "field", None)
        return
    for field in ("universal_id", "trigger_at", "delivery_at", "confidence", "expected_engagement", "explanation",
                  "fallback_level", "known_person", "cohort"):
        assert getattr(a, field) == getattr(b, field), field


def _one(snapshot, req: DecisionRequest, now: datetime):
    try:
        return decide_one(snapshot, NormalizeCache(), req.identifiers, req.universal_id, req.send_after,
                          req.send_before, req.latency_seconds, now)
    except (UnusableIdentifiers, DecisionError) as exc:
        return exc


def test_requests_decided_together_agree_with_each_alone(snapshot) -> None:
    reqs = _requests(1, 300)
    now = datetime.now(UTC)
    together = decide_requests(snapshot, NormalizeCache(), reqs, now)
    kinds = {type(r).__name__ for r in together}
    assert kinds == {"DecisionResult", "UnusableIdentifiers", "DecisionError"}
    for req, result in zip(reqs, together, strict=True):
        _same(result, _one(snapshot, req, now))
    levels = {r.fallback_level for r in together if not isinstance(r, Exception)}
    assert levels == {"person", "cohort", "global"}


def test_column_batch_agrees_for_one_shared_window(snapshot) -> None:
    reqs = _requests(2, 200)
    now = datetime.now(UTC)
    after, before, latency = now + timedelta(hours=5), now + timedelta(days=6), 300.0
    reqs = [DecisionRequest(r.identifiers, None, after, before, latency) for r in reqs]
    batch = decide_batch(snapshot, NormalizeCache(), {f: [r.identifiers[f] for r in reqs] for f in reqs[0].identifiers},
                         [None] * len(reqs), after, before, latency, now)
    for i, result in enumerate(decide_requests(snapshot, NormalizeCache(), reqs, now)):
        if isinstance(result, Exception):
            assert batch.error_field[i] is not None
            continue
        assert batch.universal_id[i] == result.universal_id
        assert int(batch.trigger_at[i].astype(np.int64)) == int(result.trigger_at.timestamp() * 1000)
        assert batch.confidence[i] == result.confidence and batch.fallback_level[i] == result.fallback_level


def test_coalescer_batches_concurrent_requests(snapshot) -> None:
    reqs = _requests(3, 64)
    coalescer = Coalescer(NormalizeCache())

    async def run():
        return await asyncio.gather(*(coalescer.decide(snapshot, r) for r in reqs), return_exceptions=True)

    _one_flush_as_alone(snapshot, coalescer, reqs, asyncio.run(run()))


def _one_flush_as_alone(snapshot, coalescer: Coalescer, reqs, results) -> None:
    """All of `reqs` went through one flush, and each got what it gets decided alone."""
    assert coalescer.flushes == 1 and coalescer.decided == len(reqs)
    now = datetime.now(UTC)
    for req, result in zip(reqs, results, strict=True):
        alone = _one(snapshot, req, now)
        assert type(result) is type(alone)
        if not isinstance(result, Exception):
            assert (result.universal_id, result.fallback_level, result.trigger_at) == (
                alone.universal_id, alone.fallback_level, alone.trigger_at)


def test_coalescer_waits_a_second_loop_turn_for_requests_read_in_it(snapshot) -> None:
    """Requests parked one event-loop turn after the first ones (the next socket poll's) share their flush."""
    reqs = _requests(4, 64)
    coalescer = Coalescer(NormalizeCache())

    async def run():
        first = [asyncio.ensure_future(coalescer.decide(snapshot, r)) for r in reqs[:32]]
        await asyncio.sleep(0)  # one turn: the first group parks and schedules the flush
        second = [asyncio.ensure_future(coalescer.decide(snapshot, r)) for r in reqs[32:]]
        return await asyncio.gather(*first, *second, return_exceptions=True)

    _one_flush_as_alone(snapshot, coalescer, reqs, asyncio.run(run()))


def test_column_cohorts_agree_with_the_store_rule(snapshot) -> None:
    from sendflowr.decisions.service import cohorts_for
    from sendflowr.timing.store import cohort_for_identifiers

    t = snapshot.timing
    t.priors.setdefault("phone:+44", np.ones(HOURS, np.float32))  # module snapshot: add a phone cohort once
    emails = [None, "a@corp.io", "B@Corp.IO", "x@other.org", "not-an-email", "", "c@corp.io", None, "d@corp.io"]
    phones = [None, None, "+44 20 7946 0000", "+442079460001", "+1 415 555 2671", "garbage", "", "+44207946",
              "+4420794600"]
    expected = [cohort_for_identifiers(t, e, p) for e, p in zip(emails, phones, strict=True)]
    assert cohorts_for(t, emails, phones) == expected
    assert {"email:corp.io", "phone:+44", None} <= set(expected)
