"""Identity graph: partitions against a networkx oracle, over-merge guards, universal ids, incremental runs."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pytest

from sendflowr.events import IDENTIFIER_TYPES
from sendflowr.identity.graph import (
    ACCEPTED,
    EMAIL,
    EXTERNAL_ID,
    KLAVIYO_ID,
    N_TYPES,
    PHONE,
    REASONS,
    SHARED,
    SIZE_CAP,
    TYPE_LIMIT,
    TYPE_NAMES,
    Edges,
    Guards,
    Nodes,
    assign_ids,
    format_uid,
    identifier_key,
    mix,
    parse_uid,
    rebuild,
    stitch,
    update,
)

UID = re.compile(r"^sf_[0-9a-f]{16}$")


def make_nodes(types, rng=None, first_seen=None) -> Nodes:
    rng = rng or np.random.default_rng(0)
    n = len(types)
    keys = rng.choice(2**62, size=n, replace=False).astype(np.uint64) + np.uint64(1)
    fs = np.arange(n, dtype=np.int64) * 10 if first_seen is None else first_seen
    return Nodes(np.asarray(types, np.int8), keys, fs)


def nx_labels(n: int, src, dst) -> np.ndarray:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(np.asarray(src).tolist(), np.asarray(dst).tolist(), strict=True))
    labels = np.empty(n, np.int64)
    for i, comp in enumerate(nx.connected_components(g)):
        labels[list(comp)] = i
    return labels


def same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    pairs = len(set(zip(a.tolist(), b.tolist(), strict=True)))
    return pairs == len(set(a.tolist())) == len(set(b.tolist()))


def check_against_oracle(nodes: Nodes, edges: Edges, res) -> None:
    acc = res.accepted
    assert same_partition(res.component, nx_labels(len(nodes), edges.src[acc], edges.dst[acc]))
    blocked = ~acc
    assert set(np.unique(res.blocked_reason).tolist()) <= set(REASONS)
    # a blocked edge always ends between two people, an accepted one inside one
    assert (res.component[edges.src[blocked]] != res.component[edges.dst[blocked]]).all()
    assert (res.component[edges.src[acc]] == res.component[edges.dst[acc]]).all()


def random_graph(n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    nodes = make_nodes(rng.integers(0, N_TYPES, n), rng, rng.integers(0, 1000, n))
    src = np.r_[rng.integers(0, n, m - 60), np.repeat([0, 1], 30)]  # nodes 0 and 1 are hubs
    edges = Edges(src, rng.integers(0, n, m), rng.integers(1, 4, m), rng.integers(0, 50, m))
    return nodes, edges


def reference_stitch(nodes: Nodes, edges: Edges, guards: Guards):
    """Independent, naive implementation of the documented semantics: sets for degrees, global Kruskal."""
    n = len(nodes)
    nbrs = [[set() for _ in range(N_TYPES)] for _ in range(n)]
    for s, d in zip(edges.src.tolist(), edges.dst.tolist(), strict=True):
        if s != d:
            nbrs[s][nodes.node_type[d]].add(d)
            nbrs[d][nodes.node_type[s]].add(s)
    shared = [max(len(x) for x in nbrs[i]) > guards.max_degree_for_shared for i in range(n)]
    pos = {t: i for i, t in enumerate(guards.type_priority)}
    limits = guards.limits().tolist()

    def prio(e):
        s, d = int(edges.src[e]), int(edges.dst[e])
        ks, kd = int(nodes.node_key[s]), int(nodes.node_key[d])
        cls = min(pos[int(nodes.node_type[s])], pos[int(nodes.node_type[d])])
        return (cls, -int(edges.edge_count[e]), int(edges.edge_first_seen[e]), min(ks, kd), max(ks, kd), e)

    parent = list(range(n))
    members = {i: [i] for i in range(n)}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    codes = [ACCEPTED] * len(edges)
    for e in sorted(range(len(edges)), key=prio):
        s, d = int(edges.src[e]), int(edges.dst[e])
        if s == d:
            continue
        if shared[s] or shared[d]:
            codes[e] = SHARED
            continue
        rs, rd = find(s), find(d)
        if rs == rd:
            continue
        union = members[rs] + members[rd]
        counts = np.bincount(nodes.node_type[union], minlength=N_TYPES)
        over = [t for t in range(N_TYPES) if counts[t] > limits[t]]
        if over:
            codes[e] = TYPE_LIMIT + over[0]
        elif len(union) > guards.max_person_size:
            codes[e] = SIZE_CAP
        else:
            parent[rd] = rs
            members[rs] = union
            del members[rd]
    return np.array([find(i) for i in range(n)]), np.array(codes, np.int8)


def test_type_codes_match_event_contract():
    assert TYPE_NAMES == IDENTIFIER_TYPES
    assert (EMAIL, KLAVIYO_ID, PHONE, EXTERNAL_ID) == (0, 1, 2, 3)


def test_identifier_key_is_fixed_and_type_scoped():
    keys = identifier_key([EMAIL, EMAIL, PHONE, EMAIL], ["a@x.com", "b@x.com", "a@x.com", "a@x.com"])
    assert keys.dtype == np.uint64
    assert keys[0] == keys[3] and len({int(k) for k in keys[:3]}) == 3
    # pinned: the key must never change between releases (it is the join key of the stored graph)
    import hashlib

    expected = int.from_bytes(hashlib.blake2b(b"email:a@x.com", digest_size=8, person=b"sf-ident-v1").digest())
    assert int(keys[0]) == expected


def test_uid_format_roundtrip_and_mix_is_a_bijection_sample():
    x = np.array([0, 1, 2**64 - 1, 0x0123456789ABCDEF], np.uint64)
    text = format_uid(x)
    assert text[3] == "sf_0123456789abcdef" and all(UID.match(t) for t in text)
    assert (parse_uid(text) == x).all()
    with pytest.raises(ValueError):
        parse_uid(["sf_0123456789ABCDEF"])
    sample = np.random.default_rng(1).integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64)
    assert len(np.unique(mix(sample))) == len(np.unique(sample))


@pytest.mark.parametrize("shape", ["chain", "star", "cycle", "random", "multi"])
def test_unguarded_partition_equals_networkx(shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    n = 3000
    if shape == "chain":
        perm = rng.permutation(n)
        src, dst = perm[:-1], perm[1:]
    elif shape == "star":
        src, dst = np.zeros(n - 1, np.int64), np.arange(1, n)
    elif shape == "cycle":
        perm = rng.permutation(n)
        src, dst = perm, np.roll(perm, 1)
    elif shape == "random":
        src, dst = rng.integers(0, n, 2500), rng.integers(0, n, 2500)
    else:  # many chains, stars and cycles side by side, plus self loops and duplicate edges
        parts, base = [], 0
        for size in rng.integers(1, 40, 150).tolist():
            ids = base + np.arange(size)
            kind = rng.integers(0, 3)
            if kind == 0:
                parts.append((ids[:-1], ids[1:]))
            elif kind == 1:
                parts.append((np.full(size - 1, ids[0]), ids[1:]))
            else:
                parts.append((ids, np.roll(ids, 1)))
            base += size
        n = base
        src = np.concatenate([p[0] for p in parts] + [np.arange(0, n, 7)] + [parts[3][0]])
        dst = np.concatenate([p[1] for p in parts] + [np.arange(0, n, 7)] + [parts[3][1]])
    nodes = make_nodes(rng.integers(0, N_TYPES, n), rng)
    edges = Edges(src, dst)
    res = stitch(nodes, edges, Guards.disabled())
    assert res.accepted.all()
    assert same_partition(res.component, nx_labels(n, src, dst))
    assert res.component.max() + 1 == len(np.unique(res.component))  # labels are 0..k-1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("loop_below", [1, 10**9])
def test_guarded_partition_equals_oracle_and_reference(seed, loop_below):
    nodes, edges = random_graph(1500, 1700, seed)
    guards = Guards(max_per_type={KLAVIYO_ID: 1, EMAIL: 3, PHONE: 2, EXTERNAL_ID: 2}, max_person_size=6,
                    max_degree_for_shared=6)
    res = stitch(nodes, edges, guards, loop_below=loop_below)
    check_against_oracle(nodes, edges, res)
    ref_comp, ref_codes = reference_stitch(nodes, edges, guards)
    assert same_partition(res.component, ref_comp)
    assert (res.blocked_reason == ref_codes).all()
    counts = np.zeros((res.component.max() + 1, N_TYPES), np.int64)
    np.add.at(counts, (res.component, nodes.node_type), 1)
    assert (counts <= guards.limits()).all() and counts.sum(axis=1).max() <= guards.max_person_size
    assert {SHARED, SIZE_CAP}.issubset(set(res.blocked_reason.tolist()))


def test_shared_phone_on_a_thousand_profiles_does_not_glue_them():
    # 1,000 profiles = (email, klaviyo_id) pairs; one phone seen on all of them
    types = [EMAIL, KLAVIYO_ID] * 1000 + [PHONE]
    nodes = make_nodes(types)
    phone = 2000
    src = np.r_[np.arange(0, 2000, 2), np.full(1000, phone), phone]
    dst = np.r_[np.arange(1, 2000, 2), np.arange(0, 2000, 2), phone]  # plus a self loop: an accepted no-op
    edges = Edges(src, dst)
    res = stitch(nodes, edges, Guards())
    check_against_oracle(nodes, edges, res)
    assert res.component.max() + 1 == 1001  # 1,000 people + the phone alone
    assert res.shared[phone] and res.shared.sum() == 1
    assert (res.blocked_reason[1000:2000] == SHARED).all() and res.accepted[:1000].all() and res.accepted[-1]
    assert res.audit() == {"accepted": 1001, REASONS[SHARED]: 1000}


def test_degree_guard_counts_distinct_neighbours_per_type():
    # phone linked to 20 emails (= the limit) by 3 duplicate edges each: not shared; 21 emails: shared
    for n_emails, expect_shared in ((20, False), (21, True)):
        nodes = make_nodes([PHONE] + [EMAIL] * n_emails)
        dst = np.tile(np.arange(1, n_emails + 1), 3)
        res = stitch(nodes, Edges(np.zeros(len(dst), np.int64), dst), Guards(max_per_type={}))
        assert res.shared[0] == expect_shared


def test_two_klaviyo_ids_never_join_and_priority_decides_which_edge_yields():
    # email 0 seen with klaviyo 1 (count 5) and klaviyo 2 (count 2)
    nodes = make_nodes([EMAIL, KLAVIYO_ID, KLAVIYO_ID])
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[5, 2]), Guards())
    assert res.component[0] == res.component[1] != res.component[2]
    assert res.blocked_reason.tolist() == [ACCEPTED, TYPE_LIMIT + KLAVIYO_ID]
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[2, 5]), Guards())
    assert res.component[0] == res.component[2] != res.component[1]
    # equal counts: the edge seen first is kept
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[3, 3], edge_first_seen=[900, 100]), Guards())
    assert res.component[0] == res.component[2] and res.blocked_reason[0] == TYPE_LIMIT + KLAVIYO_ID
    # type priority outranks counts: a klaviyo edge is kept before a stronger phone edge
    nodes = make_nodes([EMAIL, KLAVIYO_ID, PHONE])
    guards = Guards(max_per_type={}, max_person_size=2)
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[1, 9]), guards)
    assert res.blocked_reason.tolist() == [ACCEPTED, SIZE_CAP]
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[1, 9]), Guards(max_per_type={}, max_person_size=2,
                                                                          type_priority=(2, 0, 1, 3)))
    assert res.blocked_reason.tolist() == [SIZE_CAP, ACCEPTED]


def test_size_cap_on_a_long_chain():
    n = 200
    nodes = make_nodes([EXTERNAL_ID] * n)
    edges = Edges(np.arange(n - 1), np.arange(1, n), edge_count=np.arange(n - 1) % 7 + 1)
    res = stitch(nodes, edges, Guards(max_per_type={}, max_person_size=10))
    check_against_oracle(nodes, edges, res)
    assert np.bincount(res.component).max() <= 10
    assert set(res.blocked_reason[~res.accepted].tolist()) == {SIZE_CAP}


# ---------------------------------------------------------------- universal ids


def two_people():
    # person A: email 0 (t=10), klaviyo 1 (t=20); person B: email 2 (t=30), phone 3 (t=40)
    nodes = make_nodes([EMAIL, KLAVIYO_ID, EMAIL, PHONE], first_seen=np.array([10, 20, 30, 40]))
    return nodes, Edges([0, 2], [1, 3])


def test_new_people_get_the_id_derived_from_their_anchor():
    nodes, edges = two_people()
    snap = rebuild(nodes, edges)
    uid = snap.ids.uid
    assert uid[0] == uid[1] == mix(nodes.node_key[[0]])[0]
    assert uid[2] == uid[3] == mix(nodes.node_key[[2]])[0]
    assert all(UID.match(u) for u in snap.ids.universal_id) and snap.ids.merge_log() == []


def test_id_is_stable_when_identifiers_attach():
    nodes, edges = two_people()
    snap = rebuild(nodes, edges)
    new = Nodes([PHONE, EXTERNAL_ID], [11, 12], [50, 5])  # the second one even claims an earlier first_seen
    snap2 = update(snap, new, Edges([4, 5], [0, 1]))
    assert (snap2.ids.uid[:4] == snap.ids.uid).all()
    assert snap2.ids.uid[4] == snap2.ids.uid[5] == snap.ids.uid[0]
    assert snap2.ids.merge_log() == []
    assert sorted(snap2.region.tolist()) == [0, 1, 4, 5]  # person B was not recomputed


def test_merge_keeps_the_earlier_id_and_logs_the_other():
    nodes, edges = two_people()
    snap = rebuild(nodes, edges)
    a, b = snap.ids.universal_id[0], snap.ids.universal_id[2]
    snap2 = update(snap, Nodes([], [], []), Edges([3], [0]))
    assert set(snap2.ids.universal_id.tolist()) == {a}
    assert snap2.ids.merge_log() == [(b, a)]
    # previous ids given as a dict of strings give the same answer
    previous = dict(zip(nodes.node_key.tolist(), snap.ids.universal_id.tolist(), strict=True))
    full = rebuild(snap2.nodes, snap2.edges, previous=previous)
    assert (full.ids.uid == snap2.ids.uid).all() and full.ids.merge_log() == [(b, a)]


def test_split_by_guard_keeps_id_on_the_part_with_its_origin():
    # one person of two klaviyo ids under disabled guards; default guards split it
    nodes = make_nodes([KLAVIYO_ID, EMAIL, KLAVIYO_ID, PHONE], first_seen=np.array([10, 20, 30, 40]))
    edges = Edges([0, 1, 2], [1, 2, 3], edge_count=[5, 1, 5])
    old = rebuild(nodes, edges, Guards.disabled())
    assert len(set(old.ids.uid.tolist())) == 1
    new = rebuild(nodes, edges, Guards(), previous=old.ids.uid)
    assert new.ids.uid[0] == new.ids.uid[1] == old.ids.uid[0]  # part with the origin (node 0)
    assert new.ids.uid[2] == new.ids.uid[3] == mix(nodes.node_key[[2]])[0]  # fresh id from its lowest node
    assert new.ids.merge_log() == []
    assert (rebuild(nodes, edges, Guards()).ids.uid == new.ids.uid).all()  # = rebuild from scratch


def test_assign_ids_survivor_is_the_lowest_ranked_origin():
    comp = np.zeros(4, np.int64)
    keys = np.array([5, 6, 7, 8], np.uint64)
    prev = np.r_[mix(keys[[1, 1]]), mix(keys[[3, 3]])]  # two people merge; node 1 and node 3 are the origins
    res = assign_ids(comp, keys, np.array([40, 30, 20, 10]), prev)
    assert (res.uid == mix(keys[[3]])[0]).all()  # node 3 has the earliest first_seen
    assert res.merge_log() == [(format_uid(mix(keys[[1]]))[0], format_uid(mix(keys[[3]]))[0])]


def incremental_world(seed: int, batches: int = 6):
    """Nodes appear batch by batch (first_seen increases); edges join new nodes to old ones, merge old people,
    and a few hubs slowly become shared."""
    rng = np.random.default_rng(seed)
    per_batch = 300
    n = per_batch * batches
    types = rng.integers(0, N_TYPES, n)
    first_seen = np.repeat(np.arange(batches) * 1000, per_batch) + rng.integers(0, 999, n)
    keys = rng.choice(2**62, size=n, replace=False).astype(np.uint64) + np.uint64(1)
    hubs = rng.choice(per_batch, 3, replace=False)
    out = []
    for b in range(batches):
        hi = (b + 1) * per_batch
        lo = b * per_batch
        new = np.arange(lo, hi)
        chain = rng.random(per_batch - 1) < 0.7  # new people of a few identifiers each
        s1, d1 = new[1:][chain], new[:-1][chain]
        s2, d2 = rng.integers(lo, hi, 25), rng.integers(0, max(lo, 1), 25)  # identifiers attach to old people
        s4, d4 = rng.integers(0, hi, 8), rng.integers(0, hi, 8)  # merges among people seen so far
        s1, d1 = np.r_[s1, s4], np.r_[d1, d4]
        s3, d3 = np.repeat(hubs, 6), rng.integers(0, hi, 18)  # hubs grow until the degree guard trips
        src, dst = np.concatenate([s1, s2, s3]), np.concatenate([d1, d2, d3])
        m = len(src)
        out.append((Nodes(types[new], keys[new], first_seen[new]),
                    Edges(src, dst, rng.integers(1, 4, m), b * 1000 + rng.integers(0, 999, m))))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_full_rebuild_and_merge_log_is_acyclic(seed):
    guards = Guards(max_per_type={KLAVIYO_ID: 1, EMAIL: 4, PHONE: 3, EXTERNAL_ID: 3}, max_person_size=25,
                    max_degree_for_shared=5)
    batches = incremental_world(seed)
    snap = rebuild(*batches[0], guards)
    log = nx.DiGraph()
    seen_shared_split = False
    for new_nodes, new_edges in batches[1:]:
        before = snap
        snap = update(snap, new_nodes, new_edges, guards)
        full = rebuild(snap.nodes, snap.edges, guards, previous=np.r_[before.ids.uid,
                                                                      np.zeros(len(new_nodes), np.uint64)])
        scratch = rebuild(snap.nodes, snap.edges, guards)
        for other in (full, scratch):
            assert same_partition(snap.result.component, other.result.component)
            assert (snap.result.blocked_reason == other.result.blocked_reason).all()
            assert (snap.result.shared == other.result.shared).all()
            assert (snap.ids.uid == other.ids.uid).all()
        assert sorted(snap.ids.merge_log()) == sorted(full.ids.merge_log())
        assert len(snap.region) < len(snap.nodes)  # untouched people were not recomputed
        check_against_oracle(snap.nodes, snap.edges, snap.result)
        # every person has one id, ids are distinct across people
        assert same_partition(snap.result.component, snap.ids.uid)
        live = set(snap.ids.uid.tolist())
        for old, new in zip(snap.ids.merged_old.tolist(), snap.ids.merged_into.tolist(), strict=True):
            assert new in live and old not in live
            log.add_edge(old, new)
        seen_shared_split |= bool((snap.result.shared & ~np.r_[before.result.shared,
                                                               np.zeros(len(new_nodes), bool)]).any())
    assert log.number_of_edges() > 0 and nx.is_directed_acyclic_graph(log)
    assert seen_shared_split  # the world exercised a person split by a newly shared identifier
