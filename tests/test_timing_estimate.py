"""The curve estimator on arrays: exposure correction, smoothing, shrinkage toward the prior."""

from __future__ import annotations

import numpy as np

from sendflowr.timing.decide import HOURS
from sendflowr.timing.estimate import EstimatorParams, kernel, learn_priors, person_curves

P = EstimatorParams()


def test_kernel_is_symmetric_circular_and_pools_days() -> None:
    k = kernel(P.hour_bandwidth, P.day_pooling)
    assert k.shape == (HOURS, HOURS)
    np.testing.assert_allclose(k, k.T)
    assert k[0, 167] > 0 and k[0, 1] == k[0, 167]  # Monday 00:00 neighbours Sunday 23:00
    assert k[10, 10 + 24] == np.float32(P.day_pooling) * k[10, 10]  # same hour, next day
    assert k[10, 22] == 0  # half a day away


def test_exposure_corrected_rate_beats_the_open_time_histogram() -> None:
    # Mostly mailed at 10:00 (rate 0.2), rarely at 20:00 (rate 0.5): more opens land at 10:00, yet 20:00 is better.
    e = np.zeros((1, HOURS), dtype=np.float32)
    s = np.zeros((1, HOURS), dtype=np.float32)
    for day in range(5):
        e[0, day * 24 + 10], s[0, day * 24 + 10] = 40, 8
        e[0, day * 24 + 20], s[0, day * 24 + 20] = 4, 2
    assert int(s[0].argmax() % 24) == 10  # what histogramming engagement times would pick
    flat = np.full((1, HOURS), 0.1, dtype=np.float32)
    curve = person_curves(e, s, flat, P)[0]
    assert int(curve.argmax() % 24) == 20
    assert curve[20] > curve[10]


def test_shrinkage_follows_the_evidence() -> None:
    prior = np.full((1, HOURS), 0.1, dtype=np.float32)
    prior[0, 50] = 0.3  # the cohort's best hour
    e = np.zeros((2, HOURS), dtype=np.float32)
    s = np.zeros((2, HOURS), dtype=np.float32)
    e[0, 120], s[0, 120] = 1, 1  # one engagement at hour 120 ...
    e[1, 120], s[1, 120] = 30, 30  # ... or thirty, and nothing from twenty deliveries at the prior's best hour
    e[1, 50] = 20
    curves = person_curves(e, s, np.repeat(prior, 2, axis=0), P)
    assert int(curves[0].argmax()) == 50  # one data point does not overturn the prior
    assert abs(int(curves[1].argmax()) - 120) <= 1  # these do (smoothing may tip a neighbour)
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
    how[cohort[person] == 2] = 5
    deliveries = np.ones(person.size)
    weight = (rng.random(person.size) < np.where(cohort[person] == 2, 0.6, 0.1)).astype(np.float64)
    priors, index = learn_priors(cohort, names, person, how, deliveries, weight,
                                 EstimatorParams(min_cohort_people=150))
    assert priors.cohorts == ["", "phone:+44"]  # +81 has too few people: they fall back to global
    assert index[:10].tolist() == [0] * 10 and set(index[10:300].tolist()) == {1} and set(index[300:]) == {0}
    assert priors.curves.shape == (2, HOURS) and np.isfinite(priors.curves).all() and (priors.curves >= 0).all()
    assert priors.global_evidence == weight.sum()


def test_person_stats_chunks_agree_with_one_block() -> None:
    from sendflowr.timing.estimate import Priors
    from sendflowr.timing.run import Fit, PersonStats

    rng = np.random.default_rng(4)
    counts = rng.integers(1, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    how = np.concatenate([rng.choice(HOURS, c, replace=False) for c in counts.tolist()]).astype(np.intp)
    m = how.size
    deliveries = rng.integers(1, 4, m).astype(np.float64)
    engaged = np.minimum(deliveries, rng.integers(0, 3, m)).astype(np.float64)
    stats = PersonStats(universal_id=np.array([f"u{i:03d}" for i in range(50)], dtype=object), offsets=offsets,
                        how=how, deliveries=deliveries, weight=engaged * 1.5, engaged=engaged)
    flat = np.full((1, HOURS), 0.2, dtype=np.float32)
    f = Fit(stats=stats, priors=Priors(flat[0], 1.0, [""], flat, np.ones(1), np.ones(1, np.int64)),
            cohort_index=np.zeros(50, dtype=np.int64), params=P)
    whole = f.curves()
    parts = [f.curves(lo, min(lo + 7, 50)) for lo in range(0, 50, 7)]
    for a, b in zip(whole, (np.concatenate([p[i] for p in parts]) for i in range(3)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(whole[2], np.add.reduceat(engaged, offsets[:-1]))
