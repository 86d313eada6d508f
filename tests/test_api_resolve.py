"""Identifier resolution (no services): the scalar single-request path agrees with the column path, merge chains
resolve to their final survivor, and unknown people get the id the identity graph assigns them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from api_world import node_keys
from reference import decide_one

from sendflowr.decisions.identity_map import IDENTIFIER_PRIORITY, IdentityMap, NormalizeCache, follow_merges, raw_hash
from sendflowr.decisions.resolve import resolve, resolve_one
from sendflowr.decisions.service import DecisionRequest, decide_batch, decide_requests
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity import graph
from sendflowr.timing.decide import HOURS, Calibration
from sendflowr.timing.store import TimingSnapshot

TYPES = ("email", "klaviyo_id", "phone", "external_id")


def _uid(text: str) -> np.uint64:
    return graph.parse_uid(np.array([text], "U19"))[0]


def test_merge_chains_follow_to_the_final_survivor_unless_live_again() -> None:
    a, b, c, d = (np.uint64(x) for x in (10, 20, 30, 40))
    old = np.array([a, b, d], np.uint64)
    new = np.array([b, c, a], np.uint64)  # a -> b -> c ; d -> a (-> b -> c)
    merged_old, final = follow_merges(old, new, live=np.array([c], np.uint64))
    assert dict(zip(merged_old.tolist(), final.tolist(), strict=True)) == {10: 30, 20: 30, 40: 30}
    # b is live again (a split gave it back): it is not redirected, and a chain through it stops there
    merged_old, final = follow_merges(old, new, live=np.array([b, c], np.uint64))
    assert dict(zip(merged_old.tolist(), final.tolist(), strict=True)) == {10: 20, 40: 20}


SHARED = {"phone": "+1 (415) 820-0000", "external_id": "family-account-9", "email": "bakers-desk@bakery.com"}


@pytest.fixture(scope="module")
def world():
    """40 people with 1-3 identifiers each, as stitching would have materialized them, plus three identifiers
    stitching marked shared (a household phone, a family account, a role address): each its own node, shared."""
    rng = np.random.default_rng(5)
    types, raws, owner = [], [], []
    for p in range(40):
        for t in rng.choice(TYPES, int(rng.integers(1, 4)), replace=False).tolist():
            raw = {"email": f"p{p}.x@mail{p % 3}.com", "klaviyo_id": f"K{p}", "phone": f"+1415555{3000 + p}",
                   "external_id": f"e-{p}"}[t]
            types.append(t)
            raws.append(raw)
            owner.append(p)
    for i, (t, raw) in enumerate(SHARED.items()):  # people 40, 41, 42: a shared identifier each, alone
        types.append(t)
        raws.append(raw)
        owner.append(40 + i)
    keys = node_keys(types, raws)
    assert (keys != 0).all()
    owner = np.array(owner)
    anchor = np.full(43, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(anchor, owner, keys)
    uids = graph.mix(anchor)
    order = np.argsort(keys)
    hashes = np.array([raw_hash(t, r) for t, r in zip(types, raws, strict=True)], np.uint64)
    horder = np.argsort(hashes)
    merged_old, merged_final = follow_merges(np.array([7, 8], np.uint64), uids[[0, 1]], np.unique(uids))
    shared = np.where(owner >= 40, graph.SHARED_CONFLICT, graph.NOT_SHARED).astype(np.uint8)
    imap = IdentityMap(node_key=keys[order], node_uid=uids[owner][order], raw_hash=hashes[horder],
                       raw_node=keys[horder], live_uid=np.unique(uids), merged_old=merged_old,
                       merged_final=merged_final, node_shared=shared[order])
    return imap, types, raws, owner, uids


def test_single_path_agrees_with_column_path_on_random_requests(world) -> None:
    imap, types, raws, owner, uids = world
    rng = np.random.default_rng(11)
    variants = {"email": lambda r: "  " + r.upper(), "phone": lambda r: r[2:5] + "-" + r[5:8] + "-" + r[8:],
                "klaviyo_id": lambda r: r, "external_id": lambda r: r}
    requests = []
    for _ in range(300):
        req: dict[str, str | None] = dict.fromkeys(TYPES)
        for j in rng.choice(len(raws), int(rng.integers(0, 3)), replace=False).tolist():
            req[types[j]] = variants[types[j]](raws[j]) if rng.random() < 0.3 else raws[j]
        if rng.random() < 0.3:
            req[str(rng.choice(TYPES))] = str(rng.choice(["brand-new-1", "noreply@shop.com", "new.person@corp.io",
                                                          "+442079460000", "0000"]))
        if rng.random() < 0.3:
            t = str(rng.choice(list(SHARED)))
            req[t] = SHARED[t]
        uid = None
        if rng.random() < 0.1:
            uid = str(rng.choice(["sf_0000000000000007", "sf_0000000000000008", "sf_00000000000000ff",
                                  str(graph.format_uid(uids[[3]])[0])]))
        if uid is None and all(v is None for v in req.values()):
            req["external_id"] = "fallback-id"
        requests.append((req, uid))
    cache = NormalizeCache()
    columns = {t: [r[t] for r, _ in requests] for t in TYPES}
    batch = resolve(imap, cache, columns, [u for _, u in requests], len(requests))
    for i, (req, uid) in enumerate(requests):
        one = resolve_one(imap, NormalizeCache(), req, uid)
        assert int(one.uid[0]) == int(batch.uid[i]), (req, uid)
        assert bool(one.known[0]) == bool(batch.known[i]) and bool(one.redirected[0]) == bool(batch.redirected[i])
        assert (one.errors[0] is None) == (batch.errors[i] is None)
        assert one.shared_only(0) == batch.shared_only(i)
        if one.errors[0] is not None:
            assert one.errors[0] == batch.errors[i]
    assert batch.redirected.any() and (~batch.known).any() and any(e is not None for e in batch.errors)
    assert any(batch.shared_only(i) for i in range(len(requests)))  # some requests held only shared values


def test_resolution_matches_the_graph(world) -> None:
    imap, types, raws, owner, uids = world
    cache = NormalizeCache()
    for j in range(len(raws)):
        res = resolve_one(imap, cache, {types[j]: raws[j]}, None)
        assert int(res.uid[0]) == int(uids[owner[j]]) and res.known[0] == (owner[j] < 40)  # 40+: shared values
    merged = resolve_one(imap, cache, {}, "sf_0000000000000008")
    assert int(merged.uid[0]) == int(uids[1]) and merged.redirected[0]
    new = {"email": "Fresh.Person@corp.io", "external_id": "zz-1"}
    res = resolve_one(imap, cache, new, None)
    expected = graph.mix(np.array([node_keys(list(new), list(new.values())).min()], np.uint64))
    assert int(res.uid[0]) == int(expected[0]) and not res.known[0]
    bad = resolve_one(imap, cache, {"email": "not-an-address", "phone": "12"}, None)
    assert bad.uid[0] == 0 and set(bad.errors[0]) == {"email", "phone"}


def test_a_shared_identifier_never_decides(world) -> None:
    imap, types, raws, owner, uids = world
    cache = NormalizeCache()
    first = {t: r for t, r, o in zip(types, raws, owner.tolist(), strict=True) if o == 3}
    for t, value in SHARED.items():
        # next to any personal identifier of person 3 (also one ranked below the shared field), person 3 it is
        for mine, raw in first.items():
            request = {mine: raw} if mine == t else {mine: raw, t: value}
            res = resolve_one(imap, cache, request, None)
            assert int(res.uid[0]) == int(uids[3]) and res.known[0] and res.shared_only(0) is None, request
        # alone: no person -- the shared identifier's own id, not known, and which field was shared
        res = resolve_one(imap, cache, {t: value}, None)
        own = uids[40 + list(SHARED).index(t)]
        assert int(res.uid[0]) == int(own) and not res.known[0] and res.shared_only(0) == (t,)
    both = resolve_one(imap, cache, {"phone": SHARED["phone"], "email": SHARED["email"]}, None)
    assert both.shared_only(0) == ("email", "phone") and not both.known[0]  # priority order; email's id
    assert int(both.uid[0]) == int(uids[42])
    # a shared value next to a brand-new identifier: the new person stitching will make, not the shared node
    res = resolve_one(imap, cache, {"phone": SHARED["phone"], "email": "Brand.New@corp.io"}, None)
    expected = graph.mix(np.array([node_keys(["email"], ["Brand.New@corp.io"])[0]], np.uint64))
    assert int(res.uid[0]) == int(expected[0]) and not res.known[0] and res.shared_only(0) is None


def test_priority_is_identitys_one_order(world) -> None:
    """An email outranks a customer id (households share accounts more often than mailboxes)."""
    imap, types, raws, owner, uids = world
    assert IDENTIFIER_PRIORITY == graph.TYPES_BY_PRIORITY == ("klaviyo_id", "email", "external_id", "phone")
    email_of = {o: r for t, r, o in zip(types, raws, owner.tolist(), strict=True) if t == "email"}
    ext_of = {o: r for t, r, o in zip(types, raws, owner.tolist(), strict=True) if t == "external_id"}
    a, b = next((a, b) for a in email_of for b in ext_of if a != b)
    res = resolve_one(imap, NormalizeCache(), {"email": email_of[a], "external_id": ext_of[b]}, None)
    assert int(res.uid[0]) == int(uids[a])


def test_decisions_for_shared_values_use_a_cohort_or_the_global_curve(world) -> None:
    """A shared value alone gets no person's curve (even when its own id has one), known_person false and an
    explanation that says why; next to a personal identifier, the person's curve decides."""
    imap, types, raws, owner, uids = world
    with_curve = np.sort(graph.format_uid(np.unique(uids)))  # every id has a curve, the shared nodes' too
    n = len(with_curve)
    curves = np.full((n, HOURS), 0.01, np.float32)
    curves[np.arange(n), np.arange(n) % HOURS] = 0.5
    timing = TimingSnapshot(
        version=1, materialized_at=datetime.now(UTC), universal_id=with_curve.astype(object), curves=curves,
        evidence=np.full(n, 40, np.float32), engagements=np.ones(n, np.uint32),
        fallback_level=np.array(["person"] * n, object), cohort=np.array([""] * n, object),
        best_hour=np.zeros(n, np.uint8), priors={"phone:+1": np.full(HOURS, 0.1, np.float32)},
        prior_evidence={"phone:+1": 50.0}, global_curve=np.full(HOURS, 0.05, np.float32), global_evidence=900.0,
        calibration=Calibration.default())
    snap = DecisionSnapshot(identity=imap, timing=timing)
    start = datetime.now(UTC) + timedelta(days=1)
    requests = [DecisionRequest({"phone": SHARED["phone"]}, None, start, start + timedelta(days=7), 300.0),
                DecisionRequest({"external_id": SHARED["external_id"]}, None, start, start + timedelta(days=7), 0.0)]
    person = next(o for t, o in zip(types, owner.tolist(), strict=True) if t == "email")
    email = next(r for t, r, o in zip(types, raws, owner.tolist(), strict=True) if t == "email" and o == person)
    requests.append(DecisionRequest({"email": email, "external_id": SHARED["external_id"]}, None, start,
                                    start + timedelta(days=7), 0.0))
    alone = [decide_one(snap, NormalizeCache(), r.identifiers, None, r.send_after, r.send_before,
                        r.latency_seconds, datetime.now(UTC)) for r in requests]
    together = decide_requests(snap, NormalizeCache(), requests * 4, datetime.now(UTC))  # the column path too
    fields = ("universal_id", "trigger_at", "delivery_at", "confidence", "fallback_level", "known_person", "cohort")
    for i, one in enumerate(alone):
        for other in together[i::len(requests)]:
            assert all(getattr(other, f) == getattr(one, f) for f in fields), (other, one)
            assert other.explanation == one.explanation  # one wording (service.explain), the same inputs
    assert alone[0].fallback_level == "cohort" and alone[0].cohort == "phone:+1"
    assert alone[1].fallback_level == "global"
    for one, field in ((alone[0], "phone"), (alone[1], "external_id")):
        assert not one.known_person and f"the {field} given is shared by several people" in one.explanation
    assert alone[2].known_person and alone[2].fallback_level == "person"
    assert alone[2].universal_id == str(graph.format_uid(uids[[person]])[0])
    batch = decide_batch(snap, NormalizeCache(), {"phone": [SHARED["phone"], None], "email": [None, email]},
                         [None, None], np.datetime64(start.replace(tzinfo=None), "ms"),
                         np.datetime64((start + timedelta(days=7)).replace(tzinfo=None), "ms"), 0.0, datetime.now(UTC))
    assert batch.fallback_level.tolist() == ["cohort", "person"] and batch.known_person.tolist() == [False, True]
