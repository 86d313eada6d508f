"""The time-to-engagement model on arrays: the decay, exposure from waiting messages, smoothing, shrinkage."""

from __future__ import annotations

import numpy as np

from sendflowr.timing.decide import HOURS
from sendflowr.timing.estimate import EstimatorParams, Priors, kernel, learn_priors, person_curves
from sendflowr.timing.hazard import Decay, cell_of, event_hour, learn_decay

P = EstimatorParams(horizon_hours=48)
H = P.horizon_hours


def test_kernel_is_symmetric_circular_and_pools_days() -> None:
    k = kernel(P.hour_bandwidth, P.day_pooling)
    assert k.shape == (HOURS, HOURS)
    np.testing.assert_allclose(k, k.T)
    assert k[0, 167] > 0 and k[0, 1] == k[0, 167]  # Monday 00:00 neighbours Sunday 23:00
    assert k[10, 10 + 24] == np.float32(P.day_pooling) * k[10, 10]  # same hour, next day
    assert k[10, 22] == 0  # half a day away


def test_exposure_and_value_matrices_agree_with_a_direct_sum() -> None:
    rng = np.random.default_rng(0)
    d = Decay(g=np.exp(-np.arange(H) / 5.0))
    h, J = 160, 20  # delivered Sunday 16:00, waited 20 hours (across the week's end)
    direct = np.zeros(HOURS)
    for j in range(1, J + 1):  # the delivery hour's part depends on the minute: added apart
        direct[(h + j) % HOURS] += d.g[j]
    np.testing.assert_allclose(d.exposure[h * H + J], direct, rtol=1e-5)
    r = rng.random(HOURS).astype(np.float32)
    # a delivery at a random moment of hour h has half of that hour left on average
    cumulative = np.array([r[h] * d.g[0] / 2 + sum(r[(h + j) % HOURS] * d.g[j] for j in range(1, H))
                           for h in range(HOURS)])
    np.testing.assert_allclose(d.curves(r), 1 - np.exp(-cumulative), rtol=1e-4)
    np.testing.assert_array_equal(event_hour(cell_of(np.array([h]), np.array([J]), H), H), [(h + J) % HOURS])


def _exposure(cell: np.ndarray, d: Decay) -> np.ndarray:
    """[1, 168] exposure of messages delivered on the hour (the whole delivery hour left)."""
    x = np.bincount(cell, minlength=HOURS * d.horizon) @ d.exposure
    return (x + d.g[0] * np.bincount(cell // d.horizon, minlength=HOURS))[None, :]


def _simulate(rate: np.ndarray, g: np.ndarray, delivery_hours: np.ndarray, rng: np.random.Generator):
    """Messages delivered on the hour at the given hours of week under hazard rate[u] * g[j]: (cell, engaged)."""
    H_ = g.shape[0]
    n = delivery_hours.size
    j = np.arange(H_)
    hazard = rate[(delivery_hours[:, None] + j[None, :]) % HOURS] * g[None, :]
    survive = np.exp(-np.cumsum(hazard, axis=1))
    p_event = np.concatenate([1 - survive[:, :1], survive[:, :-1] - survive[:, 1:]], axis=1)
    u = rng.random(n)
    cdf = np.cumsum(p_event, axis=1)
    wait = (cdf < u[:, None]).sum(axis=1)
    engaged = wait < H_
    return cell_of(delivery_hours, np.minimum(wait, H_ - 1), H_), engaged


def test_decay_and_pooled_rate_are_recovered_from_simulated_waits() -> None:
    rng = np.random.default_rng(1)
    true_g = np.exp(-np.arange(H) / 6.0)
    hod = np.arange(HOURS) % 24
    rate = np.where((hod >= 7) & (hod <= 9), 0.20, 0.02) + np.where((hod >= 19) & (hod <= 21), 0.15, 0.0)
    # a sender mailing in three weekly slots only, at different hours of the day (with one hour of the day,
    # fading and reading hours could not be told apart: any decay fits, with rates to match)
    hours = rng.choice(np.array([10, 24 + 15, 96 + 20]), 60_000)
    cell, engaged = _simulate(rate, true_g, hours, rng)
    decay, pooled = learn_decay(cell, np.ones(cell.size), engaged.astype(np.float64), np.ones(cell.size), H,
                                kernel(P.hour_bandwidth, P.day_pooling))
    assert abs(decay.g[6] - true_g[6]) < 0.12 and abs(decay.g[12] - true_g[12]) < 0.1
    assert decay.g[0] == 1.0 and (np.diff(decay.g[:30]) < 0.05).all()  # fading, up to noise
    # hours the sender never mails at are learned from the messages that waited through them
    assert pooled[8 + 48] > 3 * pooled[14 + 48] and pooled[20 + 48] > 3 * pooled[2 + 72]


def test_time_to_engagement_finds_the_reading_hour_the_sender_never_mails_at() -> None:
    # Mailed every weekday at 10:00; reads at 20:00. Delivery hours alone say nothing about 20:00.
    rng = np.random.default_rng(2)
    g = np.exp(-np.arange(H) / 8.0)
    hod = np.arange(HOURS) % 24
    rate = np.where(hod == 20, 0.5, 0.005)
    hours = np.repeat(np.arange(5) * 24 + 10, 8)
    cell, engaged = _simulate(rate, g, hours, rng)
    d = Decay(g=g)
    x = _exposure(cell, d)
    n = np.bincount(event_hour(cell[engaged], H), minlength=HOURS)[None, :].astype(np.float64)
    flat = np.full((1, HOURS), float(n.sum() / x.sum()), dtype=np.float32)
    curve = d.curves(person_curves(x, n, flat, P))[0]
    assert 17 <= int(curve[:24].argmax()) <= 20  # deliver just before the person reads, not at 10:00
    assert curve[19] > 1.3 * curve[11]  # a morning delivery waits (fading) until the evening


def test_fresh_messages_are_not_mistaken_for_a_reading_hour() -> None:
    # Reads all day long; mailed at 10:00, so most opens land at 10-11 because that is when mail is fresh.
    rng = np.random.default_rng(3)
    g = np.exp(-np.arange(H) / 3.0)
    rate = np.full(HOURS, 0.15)
    hours = np.repeat(np.arange(5) * 24 + 10, 40)
    cell, engaged = _simulate(rate, g, hours, rng)
    n = np.bincount(event_hour(cell[engaged], H), minlength=HOURS).astype(np.float64)
    assert n[10:12].sum() > 0.5 * n[:24].sum()  # what an open-time histogram would pick
    d = Decay(g=g)
    x = _exposure(cell, d)
    r = person_curves(x, n[None, :], np.full((1, HOURS), 0.15, np.float32), P)[0]
    busy = r[np.flatnonzero(x[0] > 5)]
    assert busy.max() / busy.min() < 1.6  # the rate stays level where there is exposure


def test_shrinkage_follows_the_evidence() -> None:
    d = Decay(g=np.exp(-np.arange(H) / 2.0))
    prior = np.full((1, HOURS), 0.05, dtype=np.float32)
    prior[0, 50] = 0.3  # the cohort's best hour
    x = np.zeros((2, HOURS), dtype=np.float32)
    n = np.zeros((2, HOURS), dtype=np.float32)
    x[0, 120], n[0, 120] = 1, 1  # one engagement at hour 120 ...
    x[1, 120], n[1, 120] = 30, 30  # ... or thirty, and nothing from twenty messages waiting at the prior's best
    x[1, 50] = 20
    curves = d.curves(person_curves(x, n, np.repeat(prior, 2, axis=0), P))
    assert int(curves[0].argmax()) in (49, 50)  # one data point does not overturn the prior
    assert abs(int(curves[1].argmax()) - 120) <= 2  # these do
    none = person_curves(np.zeros((1, HOURS), np.float32), np.zeros((1, HOURS), np.float32), prior, P)[0]
    np.testing.assert_allclose(none, prior[0], rtol=1e-5)  # no data: exactly the prior


def test_priors_learn_cohorts_with_support_and_drop_small_ones() -> None:
    rng = np.random.default_rng(3)
    n = 400
    cohort = np.where(np.arange(n) < 300, 1, 2)  # cohort 2 has 100 people
    cohort[:10] = 0
    names = ["", "phone:+44", "phone:+81"]
    person = np.repeat(np.arange(n), 3)
    how = rng.integers(0, HOURS, person.size)
    wait = rng.integers(0, H, person.size)
    events = (rng.random(person.size) < 0.3).astype(np.float64)
    d = Decay(g=np.exp(-np.arange(H) / 4.0))
    priors, index = learn_priors(cohort, names, person, cell_of(how, wait, H), np.ones(person.size), events,
                                 rng.random(person.size), d,
                                 EstimatorParams(min_cohort_people=150, horizon_hours=H))
    assert priors.cohorts == ["", "phone:+44"]  # +81 has too few people: they fall back to global
    assert index[:10].tolist() == [0] * 10 and set(index[10:300].tolist()) == {1} and set(index[300:]) == {0}
    assert priors.curves.shape == (2, HOURS) and np.isfinite(priors.curves).all() and (priors.curves >= 0).all()
    assert (priors.curves <= 1).all() and priors.global_evidence == events.sum()


def test_person_stats_chunks_agree_with_one_block() -> None:
    from sendflowr.timing.fit import Fit
    from sendflowr.timing.stats import PersonStats

    rng = np.random.default_rng(4)
    counts = rng.integers(1, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cell = np.concatenate([np.sort(rng.choice(HOURS * H, c, replace=False)) for c in counts.tolist()])
    m = cell.size
    messages = rng.integers(1, 4, m).astype(np.float64)
    events = np.minimum(messages, rng.integers(0, 3, m)).astype(np.float64)
    stats = PersonStats(universal_id=np.array([f"u{i:03d}" for i in range(50)], dtype=object), offsets=offsets,
                        cell=cell, messages=messages, events=events, fresh=messages * 0.5,
                        engaged=np.add.reduceat(events, offsets[:-1]),
                        delivered=np.add.reduceat(messages, offsets[:-1]), horizon=H)
    flat = np.full((1, HOURS), 0.02, dtype=np.float32)
    d = Decay(g=np.exp(-np.arange(H) / 4.0))
    f = Fit(stats=stats, decay=d, priors=Priors(flat, d.curves(flat), [""], np.ones(1), np.ones(1, np.int64)),
            cohort_index=np.zeros(50, dtype=np.int64), params=P)
    whole = f.curves()
    parts = [f.curves(lo, min(lo + 7, 50)) for lo in range(0, 50, 7)]
    for a, b in zip(whole, (np.concatenate([p[i] for p in parts]) for i in range(3)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_array_equal(whole[2], np.add.reduceat(events, offsets[:-1]))
    sub = f.subset(np.array([3, 17, 40]))
    np.testing.assert_allclose(sub.curves()[0], whole[0][[3, 17, 40]], rtol=1e-5)
    # as a build estimates: blocks side by side in threads, handed back in order
    from sendflowr.timing.run import _estimated_blocks
    blocks = list(_estimated_blocks(f, threads=3, chunk=7))
    assert [(lo, hi) for lo, hi, _ in blocks] == [(lo, min(lo + 7, 50)) for lo in range(0, 50, 7)]
    np.testing.assert_array_equal(np.concatenate([b[2][0] for b in blocks]), np.concatenate([p[0] for p in parts]))
    # fewer people than three full blocks: split evenly, one block a thread
    assert [(lo, hi) for lo, hi, _ in _estimated_blocks(f, threads=3, chunk=40)] == [(0, 17), (17, 34), (34, 50)]


def test_a_recent_campaign_does_not_look_better_than_it_was() -> None:
    """Two campaigns at different hours return the same 10% engagement within the first two hours; the second
    was delivered 3 hours ago, so its 900 unengaged messages are still waiting. Counting only engaged or
    horizon-reached messages as settled made its hour look nine times better."""
    d = Decay(g=np.exp(-np.arange(H) / 1.0))
    old_how, new_how, n = 10, 100, 1000
    how = np.repeat([old_how, new_how], n)
    engaged = np.tile(np.arange(n) < 100, 2)
    wait = np.where(engaged, np.tile(np.arange(n) % 2, 2), np.repeat([H - 1, 3], n))
    people = np.arange(2 * n)
    priors, _ = learn_priors(np.zeros(2 * n, np.int64), [""], people, cell_of(how, wait, H), np.ones(2 * n),
                             engaged.astype(np.float64), np.full(2 * n, 0.5), d, P)
    old, new = priors.global_curve[old_how], priors.global_curve[new_how]
    assert 0.08 < old < 0.13 and abs(new / old - 1) < 0.15
    share = d.observed_share
    assert share[-1] == 1 and np.all(np.diff(share) >= 0) and 0.9 < share[3] < 1
