"""The randomized control arm (sendflowr/decisions/arms.py) on its own and inside the decision service: the share,
determinism across retries / batches / single calls, uniform random moments that respect the window and latency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from reference import decide_one
from scipy import stats
from test_api_service import synthetic_snapshot

from sendflowr.decisions import arms, explore
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.service import DecisionRequest, DecisionResult, decide_batch, decide_requests
from sendflowr.timing.decide import hour_of_week_ms
from sendflowr_api.coalesce import Coalescer

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def uids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 2**64 - 1, n, dtype=np.uint64)


def assign(ids: np.ndarray, campaign: int, share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = arms.arm_hashes(ids, campaign)
    return (arms.in_control_many(h, share), *arms.draws_many(h))


def test_assignment_follows_the_share_and_is_deterministic() -> None:
    ids = uids(200_000)
    spring = arms.campaign_key("spring")
    control, u1, u2 = assign(ids, spring, 0.1)
    assert abs(control.mean() - 0.1) < 0.004  # 6 standard deviations
    again, v1, v2 = assign(ids, spring, 0.1)
    assert (again == control).all() and (v1 == u1).all() and (v2 == u2).all()
    # raising the share only adds people to the control arm; 0 and 1 are none and all
    assert (assign(ids, spring, 0.2)[0] >= control).all()
    assert not assign(ids, spring, 0.0)[0].any() and assign(ids, spring, 1.0)[0].all()
    # another campaign draws again, independently of this one
    summer = assign(ids, arms.campaign_key("summer"), 0.1)[0]
    assert abs((control & summer).mean() - 0.01) < 0.0015
    assert arms.campaign_key(None) == arms.campaign_key("") != spring
    # the moment's two draws are uniform and independent of each other and of the arm
    for u in (u1, u2):
        assert stats.kstest(u, "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(u1, u2)[0, 1]) < 0.01
    assert abs(u1[control].mean() - 0.5) < 0.01


def test_the_scalar_and_column_versions_agree() -> None:
    """Single decisions use the Python-int functions, batches the numpy ones: the same arm and moment."""
    rng = np.random.default_rng(9)
    ids, key = uids(5_000, 8), arms.campaign_key("c")
    h = arms.arm_hashes(ids, key)
    after = rng.integers(1_700_000_000_000, 1_800_000_000_000, len(ids))
    before = after + rng.integers(1, 8 * 86_400_000, len(ids))
    start = np.minimum(after + rng.integers(0, 86_400_000, len(ids)), before - 1)
    moments = arms.control_moments(after, before, start, *arms.draws_many(h))
    control = arms.in_control_many(h, 0.3)
    for i in range(len(ids)):
        one = arms.arm_hash(int(ids[i]), key)
        assert one == int(h[i]) and arms.in_control(one, 0.3) == control[i]
        assert arms.control_moment(int(after[i]), int(before[i]), int(start[i]), *arms.draws(one)) == moments[i]


def test_control_moments_are_whole_seconds_uniform_over_what_the_latency_leaves() -> None:
    rng = np.random.default_rng(3)
    n = 50_000
    after = rng.integers(1_700_000_000_000, 1_800_000_000_000, n)
    before = after + rng.integers(1, 8 * 86_400_000, n)
    start = np.where(rng.random(n) < 0.5, after, after + (rng.random(n) * (before - after)).astype(np.int64))
    start = np.minimum(start, before - 1)
    _, u1, u2 = assign(uids(n, 4), 0, 1.0)
    moment = arms.control_moments(after, before, start, u1, u2)
    assert ((moment >= start) & (moment < before)).all()
    whole = moment % 1000 == 0
    assert (whole | (moment == start)).all()
    # `start` itself only when the reachable part holds no whole second
    assert (-(-start[~whole] // 1000) >= -(-before[~whole] // 1000)).all()
    # uniform over [start, before): the position in that interval is U(0, 1) on windows longer than a minute
    long = before - start > 60_000
    position = (moment[long] - start[long]) / (before[long] - start[long])
    assert stats.kstest(position, "uniform").pvalue > 1e-4


def test_a_retry_keeps_its_moment_while_it_is_still_reachable() -> None:
    after, before = np.array([1_800_000_000_000]), np.array([1_800_000_000_000 + 7 * 86_400_000])
    _, u1, u2 = assign(uids(2_000, 5), arms.campaign_key("c"), 1.0)
    first = arms.control_moments(np.repeat(after, 2000), np.repeat(before, 2000), np.repeat(after, 2000), u1, u2)
    later_start = after + 86_400_000  # a day into the window
    retry = arms.control_moments(np.repeat(after, 2000), np.repeat(before, 2000), np.repeat(later_start, 2000), u1, u2)
    reachable = first >= later_start
    assert reachable.mean() > 0.8
    assert (retry[reachable] == first[reachable]).all()
    assert (retry[~reachable] >= later_start).all()


@pytest.fixture(scope="module")
def snapshot():
    return synthetic_snapshot(60, seed=5, without_curve=10, version=1)


def _requests(n: int, now: datetime, campaign: str | None) -> list[DecisionRequest]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        after = now + timedelta(minutes=int(rng.integers(-300, 3000)))
        ids = dict.fromkeys(("email", "klaviyo_id", "phone", "external_id"))
        ids["klaviyo_id" if i % 3 else "email"] = f"K{i % 60}" if i % 3 else f"new{i}@corp.io"
        out.append(DecisionRequest(ids, None, after, after + timedelta(hours=float(rng.choice([0.3, 5, 170]))),
                                   float(rng.choice([0, 300, 3600])), campaign, f"m{i}"))
    return out


def test_the_service_serves_random_moments_to_the_control_arm_only(snapshot) -> None:
    now = datetime.now(UTC)
    floor_now = EPOCH + timedelta(milliseconds=ms(now))  # decisions work in whole milliseconds
    reqs = _requests(400, now, "cmp-1")
    results = decide_requests(snapshot, NormalizeCache(), reqs, now, control_share=0.4)
    decided = [(q, r) for q, r in zip(reqs, results, strict=True) if isinstance(r, DecisionResult)]
    control = [(q, r) for q, r in decided if r.arm == arms.CONTROL]
    assert 0.3 < len(control) / len(decided) < 0.5
    for q, r in decided:
        model = decide_one(snapshot, NormalizeCache(), q.identifiers, None, q.send_after, q.send_before,
                           q.latency_seconds, now)
        # the model's choice, its confidence and level are kept whatever the arm
        assert r.model_delivery_at == model.delivery_at and r.confidence == model.confidence
        assert r.fallback_level == model.fallback_level and r.model_expected_engagement == model.expected_engagement
        if r.arm == arms.TREATMENT:
            assert r.delivery_at == model.delivery_at and r.trigger_at == model.trigger_at
            continue
        # control: inside the window, trigger never before now, the curve's value at the moment served
        assert q.send_after <= r.delivery_at < q.send_before and r.trigger_at >= floor_now
        assert r.delivery_at - r.trigger_at == model.delivery_at - model.trigger_at
        row = snapshot.timing_row(int(r.universal_id[3:], 16))
        curve = snapshot.timing.curves[row] if row is not None else None
        if curve is not None:
            assert r.expected_engagement == float(curve[hour_of_week_ms(np.array([ms(r.delivery_at)]))[0]])
        assert "control arm" in r.explanation
    # no control arm without a share
    plain = decide_requests(snapshot, NormalizeCache(), reqs, now)
    assert all(r.arm == arms.TREATMENT for r in plain if isinstance(r, DecisionResult))


def decided_five_ways(snapshot, reqs: list[DecisionRequest], now: datetime, share: float, exploration: float = 0.0):
    """The same requests (one window, latency and campaign) decided together, one by one, 30 minutes later (a
    retry), as one batch and coalesced by the API's Coalescer."""
    q = reqs[0]
    together = decide_requests(snapshot, NormalizeCache(), reqs, now, share, exploration)
    alone = [decide_requests(snapshot, NormalizeCache(), [r], now, share, exploration)[0] for r in reqs]
    later = decide_requests(snapshot, NormalizeCache(), reqs, now + timedelta(minutes=30), share, exploration)
    batch = decide_batch(snapshot, NormalizeCache(), {f: [r.identifiers[f] for r in reqs] for f in q.identifiers},
                         [None] * len(reqs), q.send_after, q.send_before, q.latency_seconds, now, share,
                         q.campaign_id, exploration=exploration)
    coalescer = Coalescer(NormalizeCache(), clock=lambda: now, control_share=share, exploration=exploration)

    async def concurrently():
        return await asyncio.gather(*(coalescer.decide(snapshot, r) for r in reqs), return_exceptions=True)

    return together, alone, later, batch, asyncio.run(concurrently())


@pytest.mark.parametrize("exploration", [0.0, 1.0], ids=["greedy", "exploring"])
def test_single_batch_coalesced_and_retried_decisions_agree_on_arm_and_moment(snapshot, exploration: float) -> None:
    """With exploration on (explore.py), treatment decisions agree on their draw's moment too."""
    now = datetime.now(UTC)
    after, before, latency = now + timedelta(hours=2), now + timedelta(days=7), 300.0
    reqs = [DecisionRequest(q.identifiers, None, after, before, latency, "spring", q.message_id)
            for q in _requests(120, now, None)]
    share = 0.5
    together, alone, later, batch, coalesced = decided_five_ways(snapshot, reqs, now, share, exploration)
    arms_seen, policies = set(), set()
    for i, r in enumerate(together):
        if not isinstance(r, DecisionResult):
            assert batch.error_field[i] is not None
            continue
        arms_seen.add(r.arm)
        policies.add(r.policy)
        for other in (alone[i], later[i], coalesced[i]):
            assert (other.arm, other.policy, other.delivery_at, other.trigger_at) == (
                r.arm, r.policy, r.delivery_at, r.trigger_at)
            assert other.expected_engagement == r.expected_engagement
        assert bool(batch.control[i]) == (r.arm == arms.CONTROL) == (r.policy == explore.RANDOM)
        assert bool(batch.explored[i]) == (r.policy == explore.THOMPSON)
        assert int(batch.delivery_at[i].astype(np.int64)) == ms(r.delivery_at)
        assert int(batch.trigger_at[i].astype(np.int64)) == ms(r.trigger_at)
        assert int(batch.model_delivery_at[i].astype(np.int64)) == ms(r.model_delivery_at)
        assert float(batch.expected_engagement[i]) == r.expected_engagement
    assert arms_seen == {arms.TREATMENT, arms.CONTROL}
    assert policies == {explore.THOMPSON if exploration else explore.GREEDY, explore.RANDOM}
    # another campaign reassigns (and draws again)
    other = decide_requests(snapshot, NormalizeCache(), [DecisionRequest(
        q.identifiers, None, after, before, latency, "autumn") for q in reqs], now, share, exploration)
    assert [getattr(r, "arm", None) for r in other] != [getattr(r, "arm", None) for r in together]
    if exploration:
        treated = [i for i, (r, o) in enumerate(zip(together, other, strict=True))
                   if getattr(r, "arm", None) == getattr(o, "arm", None) == arms.TREATMENT]
        assert any(together[i].delivery_at != other[i].delivery_at for i in treated)
