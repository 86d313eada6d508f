"""Identifier resolution (no services): the scalar single-request path agrees with the column path, merge chains
resolve to their final survivor, and unknown people get the id the identity graph assigns them."""

from __future__ import annotations

import numpy as np
import pytest
from api_world import node_keys

from sendflowr.decisions.identity_map import IdentityMap, NormalizeCache, follow_merges, raw_hash
from sendflowr.decisions.resolve import resolve, resolve_one
from sendflowr.identity import graph

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


@pytest.fixture(scope="module")
def world():
    """40 people with 1-3 identifiers each, as stitching would have materialized them."""
    rng = np.random.default_rng(5)
    types, raws, owner = [], [], []
    for p in range(40):
        for t in rng.choice(TYPES, int(rng.integers(1, 4)), replace=False).tolist():
            raw = {"email": f"p{p}.x@mail{p % 3}.com", "klaviyo_id": f"K{p}", "phone": f"+1415555{3000 + p}",
                   "external_id": f"e-{p}"}[t]
            types.append(t)
            raws.append(raw)
            owner.append(p)
    keys = node_keys(types, raws)
    assert (keys != 0).all()
    owner = np.array(owner)
    anchor = np.full(40, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(anchor, owner, keys)
    uids = graph.mix(anchor)
    order = np.argsort(keys)
    hashes = np.array([raw_hash(t, r) for t, r in zip(types, raws, strict=True)], np.uint64)
    horder = np.argsort(hashes)
    merged_old, merged_final = follow_merges(np.array([7, 8], np.uint64), uids[[0, 1]], np.unique(uids))
    imap = IdentityMap(node_key=keys[order], node_uid=uids[owner][order], raw_hash=hashes[horder],
                       raw_node=keys[horder], live_uid=np.unique(uids), merged_old=merged_old,
                       merged_final=merged_final)
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
        if one.errors[0] is not None:
            assert one.errors[0] == batch.errors[i]
    assert batch.redirected.any() and (~batch.known).any() and any(e is not None for e in batch.errors)


def test_resolution_matches_the_graph(world) -> None:
    imap, types, raws, owner, uids = world
    cache = NormalizeCache()
    for j in range(len(raws)):
        res = resolve_one(imap, cache, {types[j]: raws[j]}, None)
        assert int(res.uid[0]) == int(uids[owner[j]]) and res.known[0]
    merged = resolve_one(imap, cache, {}, "sf_0000000000000008")
    assert int(merged.uid[0]) == int(uids[1]) and merged.redirected[0]
    new = {"email": "Fresh.Person@corp.io", "external_id": "zz-1"}
    res = resolve_one(imap, cache, new, None)
    expected = graph.mix(np.array([node_keys(list(new), list(new.values())).min()], np.uint64))
    assert int(res.uid[0]) == int(expected[0]) and not res.known[0]
    bad = resolve_one(imap, cache, {"email": "not-an-address", "phone": "12"}, None)
    assert bad.uid[0] == 0 and set(bad.errors[0]) == {"email", "phone"}
