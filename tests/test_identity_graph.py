"""Identity graph: partitions against a networkx oracle, over-merge guards, universal ids, incremental runs."""

from __future__ import annotations

import re
from collections import defaultdict

import networkx as nx
import numpy as np
import pytest
from reference import rebuild, update

from sendflowr.events import IDENTIFIER_TYPES
from sendflowr.identity.graph import (
    ACCEPTED,
    CONFLICT,
    EMAIL,
    EXTERNAL_ID,
    KLAVIYO_ID,
    N_TYPES,
    NOT_SHARED,
    PHONE,
    REASONS,
    SHARED,
    SHARED_CONFLICT,
    SHARED_DEGREE,
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
    stitch,
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


def random_graph(n: int, m: int, seed: int, lifetimes: bool = False):
    rng = np.random.default_rng(seed)
    extra = {}
    if lifetimes:  # identifiers live for a while; some are seen only with one neighbour (events == edge count)
        start = rng.integers(0, 1000, n)
        extra = {"active_from": start, "active_to": start + rng.integers(0, 400, n),
                 "events": rng.integers(1, 8, n)}
    nodes = Nodes(rng.integers(0, N_TYPES, n).astype(np.int8),
                  rng.choice(2**62, size=n, replace=False).astype(np.uint64) + np.uint64(1),
                  rng.integers(0, 1000, n), **extra)
    src = np.r_[rng.integers(0, n, m - 60), np.repeat([0, 1], 30)]  # nodes 0 and 1 are hubs
    edges = Edges(src, rng.integers(0, n, m), rng.integers(1, 4, m), rng.integers(0, 50, m))
    return nodes, edges


def reference_stitch(nodes: Nodes, edges: Edges, guards: Guards):
    """Independent, naive implementation of the documented semantics: sets for degrees and conflicts, global
    Kruskal with explicit member lists."""
    n = len(nodes)
    ntype = nodes.node_type.tolist()
    nbrs = [[set() for _ in range(N_TYPES)] for _ in range(n)]
    for s, d in zip(edges.src.tolist(), edges.dst.tolist(), strict=True):
        if s != d:
            nbrs[s][ntype[d]].add(d)
            nbrs[d][ntype[s]].add(s)
    degree_shared = [max(len(x) for x in nbrs[i]) > guards.max_degree_for_shared for i in range(n)]

    # conflict guard over the edges the degree guard left
    live = defaultdict(int)  # (x, y) -> events carrying both
    for s, d, c in zip(edges.src.tolist(), edges.dst.tolist(), edges.edge_count.tolist(), strict=True):
        if s != d and not degree_shared[s] and not degree_shared[d]:
            live[(s, d)] += c
            live[(d, s)] += c
    around = defaultdict(set)
    for x, y in live:
        around[x].add(y)
    frm, to, events = nodes.active_from.tolist(), nodes.active_to.tolist(), nodes.events.tolist()
    pos = {t: i for i, t in enumerate(guards.type_priority)}

    def vouches(a: int, b: int) -> bool:  # type a vouches that type b next to it is one person's
        return a in guards.profile_types or (a in guards.profile_key_types and b in guards.profile_types)

    pairs = []  # (x, y1, y2): x stands between two identifiers of one kind that are two people
    for x in range(n):
        if ntype[x] in guards.profile_types:
            continue
        for y1 in around[x]:
            for y2 in around[x]:
                if y1 >= y2 or ntype[y1] != ntype[y2] or ntype[y1] not in guards.conflict_kinds:
                    continue
                if vouches(ntype[x], ntype[y1]):
                    continue  # x itself says they are one person's
                if events[y1] <= live[(x, y1)] or events[y2] <= live[(x, y2)]:
                    continue  # one of them is never seen without x
                if max(frm[y1], frm[y2]) > min(to[y1], to[y2]):
                    continue  # one followed the other
                if not {p for p in around[y1] & around[y2] if vouches(ntype[p], ntype[y1])} - {x}:
                    pairs.append((x, y1, y2))
    # clusters: components of the edges the degree guard left
    label = list(range(n))

    def root(x):
        while label[x] != x:
            x = label[x]
        return x

    for a, b in live:
        label[root(a)] = root(b)
    # peel: per cluster and round, the node with the most specific conflict kind, most such pairs, least
    # specific type, lowest key becomes shared; pairs whose evidence became shared no longer count
    strength = {t: i for i, t in enumerate(sorted(range(N_TYPES), key=lambda t: (t not in guards.exclusive_types,
                                                                                   pos[t])))}
    kinds = {i: t for t, i in strength.items()}
    conflict = [None] * n
    while True:
        pairs = [(x, a, b) for x, a, b in pairs if conflict[x] is None and conflict[a] is None and conflict[b] is None]
        if not pairs:
            break
        best: dict[int, list[int]] = {}
        involved = defaultdict(int)
        for x, a, b in pairs:
            best.setdefault(x, []).append(strength[ntype[a]])
            for node in (x, a, b):
                involved[node] += 1
        score = {x: (-involved[x], min(k), -pos[ntype[x]], int(nodes.node_key[x])) for x, k in best.items()}
        top: dict[int, int] = {}
        for x in score:
            c = root(x)
            if c not in top or score[x] < score[top[c]]:
                top[c] = x
        for x in top.values():
            conflict[x] = kinds[score[x][1]]

    limits = guards.limits().tolist()

    def prio(e):
        s, d = int(edges.src[e]), int(edges.dst[e])
        ks, kd = int(nodes.node_key[s]), int(nodes.node_key[d])
        cls = min(pos[ntype[s]], pos[ntype[d]])
        return (cls, -int(edges.edge_count[e]), int(edges.edge_first_seen[e]), min(ks, kd), max(ks, kd), e)

    parent = list(range(n))
    members = {i: [i] for i in range(n)}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    soft = [t for t in guards.conflict_kinds if t not in guards.exclusive_types and t not in guards.profile_types]
    own = [False] * n  # a soft-kind identifier seen in more events than it shared with non-profile neighbours
    for x in range(n):
        if ntype[x] in soft:
            own[x] = events[x] > sum(c for (a, b), c in live.items() if a == x and ntype[b] not in guards.profile_types)

    def clash(a: list[int], b: list[int], t: int) -> bool:
        a = [i for i in a if ntype[i] == t and (t in guards.exclusive_types or own[i])]
        b = [i for i in b if ntype[i] == t and (t in guards.exclusive_types or own[i])]
        if not a or not b:
            return False
        lo = max(min(frm[i] for i in a), min(frm[i] for i in b))
        return lo <= min(max(to[i] for i in a), max(to[i] for i in b))

    codes = [ACCEPTED] * len(edges)
    for e in sorted(range(len(edges)), key=prio):
        s, d = int(edges.src[e]), int(edges.dst[e])
        if s == d:
            continue
        if degree_shared[s] or degree_shared[d]:
            codes[e] = SHARED
            continue
        if conflict[s] is not None or conflict[d] is not None:
            codes[e] = CONFLICT + (conflict[s] if conflict[s] is not None else conflict[d])
            continue
        rs, rd = find(s), find(d)
        if rs == rd:
            continue
        union = members[rs] + members[rd]
        counts = np.bincount(nodes.node_type[union], minlength=N_TYPES)
        vouched = ({ntype[d]} if vouches(ntype[s], ntype[d]) else set()) | (
            {ntype[s]} if vouches(ntype[d], ntype[s]) else set())  # kinds the edge's endpoints vouch for
        over = [t for t in range(N_TYPES) if counts[t] > limits[t]
                or ((t in guards.exclusive_types or t in soft) and t not in vouched
                    and clash(members[rs], members[rd], t))]
        if over:
            codes[e] = TYPE_LIMIT + over[0]
        elif len(union) > guards.max_person_size:
            codes[e] = SIZE_CAP
        else:
            parent[rd] = rs
            members[rs] = union
            del members[rd]
    shared = [SHARED_DEGREE if degree_shared[i] else SHARED_CONFLICT if conflict[i] is not None else NOT_SHARED
              for i in range(n)]
    return np.array([find(i) for i in range(n)]), np.array(codes, np.int8), np.array(shared, np.uint8)


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
@pytest.mark.parametrize("lifetimes", [False, True])
@pytest.mark.parametrize("conflicts", [True, False])
def test_guarded_partition_equals_oracle_and_reference(seed, loop_below, lifetimes, conflicts):
    nodes, edges = random_graph(1500, 1700, seed, lifetimes)
    guards = Guards(max_per_type={KLAVIYO_ID: 2, EMAIL: 3, PHONE: 2, EXTERNAL_ID: 2}, max_person_size=6,
                    max_degree_for_shared=6, **({} if conflicts else {"conflict_kinds": ()}))
    res = stitch(nodes, edges, guards, loop_below=loop_below)
    check_against_oracle(nodes, edges, res)
    ref_comp, ref_codes, ref_shared = reference_stitch(nodes, edges, guards)
    assert same_partition(res.component, ref_comp)
    assert (res.blocked_reason == ref_codes).all()
    assert (res.shared == ref_shared).all()
    counts = np.zeros((res.component.max() + 1, N_TYPES), np.int64)
    np.add.at(counts, (res.component, nodes.node_type), 1)
    assert (counts <= guards.limits()).all() and counts.sum(axis=1).max() <= guards.max_person_size
    seen = set(res.blocked_reason.tolist())
    assert SHARED in seen and bool(seen & {CONFLICT + t for t in range(N_TYPES)}) == conflicts
    if not conflicts:  # with the conflict guard on, the random graph's conflicts leave nothing this big
        assert SIZE_CAP in seen and seen & {TYPE_LIMIT + t for t in guards.exclusive_types}


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
        guards = Guards(max_per_type={}, conflict_kinds=())  # the degree guard alone
        res = stitch(nodes, Edges(np.zeros(len(dst), np.int64), dst), guards)
        assert res.shared[0] == (SHARED_DEGREE if expect_shared else NOT_SHARED)


def test_two_klaviyo_ids_never_join_and_priority_decides_which_edge_yields():
    # phone 0 seen with klaviyo 1 (count 5) and klaviyo 2 (count 2); the conflict guard off, so the per-type
    # limit (the safety net behind it) decides which edge yields
    nodes = make_nodes([PHONE, KLAVIYO_ID, KLAVIYO_ID])
    limit_only = Guards(conflict_kinds=())
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[5, 2]), limit_only)
    assert res.component[0] == res.component[1] != res.component[2]
    assert res.blocked_reason.tolist() == [ACCEPTED, TYPE_LIMIT + KLAVIYO_ID]
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[2, 5]), limit_only)
    assert res.component[0] == res.component[2] != res.component[1]
    # equal counts: the edge seen first is kept
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[3, 3], edge_first_seen=[900, 100]), limit_only)
    assert res.component[0] == res.component[2] and res.blocked_reason[0] == TYPE_LIMIT + KLAVIYO_ID
    # with the conflict guard, the phone between two profiles in use at the same time is itself shared
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[5, 2]), Guards())
    assert len(set(res.component.tolist())) == 3 and res.shared.tolist() == [SHARED_CONFLICT, 0, 0]
    assert res.blocked_reason.tolist() == [CONFLICT + KLAVIYO_ID] * 2
    # an email seen with two profile ids makes them one profile (an ESP keeps one profile per email): duplicates
    # in use side by side that the ESP merged, under either rule set
    nodes = make_nodes([EMAIL, KLAVIYO_ID, KLAVIYO_ID])
    for guards in (limit_only, Guards()):
        res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[5, 2]), guards)
        assert len(set(res.component.tolist())) == 1 and res.accepted.all() and not res.shared.any()
    # type priority outranks counts: a klaviyo edge is kept before a stronger phone edge
    nodes = make_nodes([EMAIL, KLAVIYO_ID, PHONE])
    guards = Guards(max_per_type={}, max_person_size=2)
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[1, 9]), guards)
    assert res.blocked_reason.tolist() == [ACCEPTED, SIZE_CAP]
    res = stitch(nodes, Edges([0, 0], [1, 2], edge_count=[1, 9]), Guards(max_per_type={}, max_person_size=2,
                                                                          type_priority=(2, 0, 1, 3)))
    assert res.blocked_reason.tolist() == [SIZE_CAP, ACCEPTED]


# ---------------------------------------------------------------- conflict guard and successions

WEEK = 7 * 86_400_000


def world_of(spec: dict[str, tuple], links: list[tuple[str, str, int]]):
    """Named nodes: name -> (type, active_from, active_to, events); links: (a, b, events carrying both)."""
    names = list(spec)
    nodes = make_nodes([spec[k][0] for k in names])
    nodes = Nodes(nodes.node_type, nodes.node_key, nodes.first_seen,
                  active_from=[spec[k][1] for k in names], active_to=[spec[k][2] for k in names],
                  events=[spec[k][3] for k in names])
    at = {k: i for i, k in enumerate(names)}
    edges = Edges([at[a] for a, _, _ in links], [at[b] for _, b, _ in links], [c for _, _, c in links])
    res = stitch(nodes, edges, Guards())
    check_against_oracle(nodes, edges, res)
    people = {frozenset(k for k in names if res.component[at[k]] == c) for c in set(res.component.tolist())}
    shared = {k: int(res.shared[at[k]]) for k in names if res.shared[at[k]]}
    return people, shared, {(a, b): REASONS[int(r)] for (a, b, _), r in zip(links, res.blocked_reason,
                                                                              strict=True) if r}


def test_household_phone_between_two_relatives_is_shared_not_a_join():
    # P1 = k1 + e1, P2 = e2 only (no ESP profile); both also seen without the phone (their own mail)
    spec = {"k1": (KLAVIYO_ID, 0, 12 * WEEK, 40), "e1": (EMAIL, 0, 12 * WEEK, 45), "e2": (EMAIL, WEEK, 11 * WEEK, 30),
            "ph": (PHONE, 0, 12 * WEEK, 9)}
    people, shared, reasons = world_of(spec, [("k1", "e1", 36), ("ph", "e1", 4), ("ph", "e2", 5)])
    assert people == {frozenset({"k1", "e1"}), frozenset({"e2"}), frozenset({"ph"})}
    assert shared == {"ph": SHARED_CONFLICT}
    assert reasons == {("ph", "e1"): "shared identifier (conflict: email)", ("ph", "e2"): "shared identifier "
                       "(conflict: email)"}
    # an order email never seen without the phone is no evidence of a second person: it joins
    spec["e2"] = (EMAIL, WEEK, 11 * WEEK, 5)
    people, shared, _ = world_of(spec, [("k1", "e1", 36), ("ph", "e1", 4), ("ph", "e2", 5)])
    assert people == {frozenset(spec)} and not shared


def test_household_phone_and_family_account_in_parallel_are_both_shared():
    live = (0, 12 * WEEK, 50)
    spec = {"k1": (KLAVIYO_ID, *live), "e1": (EMAIL, *live), "k2": (KLAVIYO_ID, *live), "e2": (EMAIL, *live),
            "ph": (PHONE, *live), "acct": (EXTERNAL_ID, *live)}
    links = [("k1", "e1", 40), ("k2", "e2", 40), ("ph", "k1", 2), ("ph", "e1", 2), ("ph", "e2", 3),
             ("acct", "e1", 4), ("acct", "e2", 4), ("acct", "ph", 6)]
    people, shared, reasons = world_of(spec, links)
    assert people == {frozenset({"k1", "e1"}), frozenset({"k2", "e2"}), frozenset({"ph"}), frozenset({"acct"})}
    assert shared == {"ph": SHARED_CONFLICT, "acct": SHARED_CONFLICT}
    assert reasons[("acct", "ph")] == "shared identifier (conflict: email)"  # acct's kind (it is the src)
    # a phone seen with one relative's profile and the other's email only: no two of one kind meet at it, so
    # it is not shared; the limit on concurrent profiles still keeps the relatives apart (the phone stays with
    # the profile whose edge ranks first)
    links = [("k1", "e1", 40), ("k2", "e2", 40), ("ph", "k1", 2), ("ph", "e2", 3)]
    people, shared, reasons = world_of(spec, links)
    assert not shared and people == {frozenset({"k1", "e1", "ph"}), frozenset({"k2", "e2"}), frozenset({"acct"})}
    assert reasons == {("ph", "e2"): "per-type limit: email"}  # two mailboxes of their own (and two profiles)


def test_second_mailbox_of_one_profile_is_not_a_conflict():
    live = (0, 12 * WEEK, 50)
    spec = {"k1": (KLAVIYO_ID, *live), "e1": (EMAIL, *live), "e2": (EMAIL, *live), "ph": (PHONE, *live),
            "acct": (EXTERNAL_ID, *live)}
    # both mailboxes seen with the same Klaviyo profile: the phone and the account seeing both join them
    links = [("k1", "e1", 30), ("k1", "e2", 10), ("ph", "e1", 3), ("ph", "e2", 3), ("acct", "e1", 2),
             ("acct", "e2", 2)]
    people, shared, _ = world_of(spec, links)
    assert people == {frozenset(spec)} and not shared
    # a Klaviyo id is never shared by a conflict (a profile is one person); two phones are the profile's when
    # it saw both, two people's when only the email joins them
    spec = {"k1": (KLAVIYO_ID, *live), "e1": (EMAIL, *live), "e2": (EMAIL, *live), "p1": (PHONE, *live),
            "p2": (PHONE, *live)}
    links = [("k1", "e1", 5), ("k1", "e2", 5), ("e1", "p1", 5), ("e1", "p2", 5)]
    people, shared, _ = world_of(spec, [*links, ("k1", "p1", 2), ("k1", "p2", 2)])
    assert people == {frozenset(spec)} and not shared
    people, shared, _ = world_of(spec, links)
    assert shared == {"e1": SHARED_CONFLICT} and frozenset({"k1", "e2"}) in people


def test_esp_profile_merge_keeps_one_person_and_concurrent_profiles_do_not():
    # the old profile id until week 5, the new one from week 5 on, both with the same email and phone
    spec = {"old": (KLAVIYO_ID, 0, 5 * WEEK - 1, 20), "new": (KLAVIYO_ID, 5 * WEEK, 12 * WEEK, 30),
            "e": (EMAIL, 0, 12 * WEEK, 60), "ph": (PHONE, WEEK, 9 * WEEK, 8)}
    links = [("old", "e", 18), ("new", "e", 27), ("old", "ph", 2), ("new", "ph", 3), ("e", "ph", 4)]
    people, shared, _ = world_of(spec, links)
    assert people == {frozenset(spec)} and not shared
    # a third profile in use at the same time as the new one, seen with the same email: a duplicate the ESP keys by
    # that email, so one profile still; seen only with the phone: the phone stands between two people
    spec["third"] = (KLAVIYO_ID, 6 * WEEK, 8 * WEEK, 4)
    people, shared, _ = world_of(spec, [*links, ("third", "e", 3)])
    assert people == {frozenset(spec)} and not shared
    people, shared, _ = world_of(spec, [*links, ("third", "ph", 3)])
    assert shared == {"ph": SHARED_CONFLICT}
    assert people == {frozenset({"old", "new", "e"}), frozenset({"third"}), frozenset({"ph"})}
    # profiles that overlap never end in one person, even without a conflict at any single node (the safety net)
    spec = {"k1": (KLAVIYO_ID, 0, 9 * WEEK, 20), "k2": (KLAVIYO_ID, 2 * WEEK, 12 * WEEK, 20),
            "e": (EMAIL, 0, 12 * WEEK, 60), "ph": (PHONE, 0, 12 * WEEK, 8)}
    people, shared, reasons = world_of(spec, [("k1", "e", 18), ("e", "ph", 4), ("ph", "k2", 3)])
    assert not shared and len(people) == 2 and list(reasons.values()) == ["per-type limit: klaviyo_id"]


def test_role_address_goes_first_and_its_colleagues_phone_stays_personal():
    """A role address seen with three colleagues' accounts, and one colleague's phone that saw it next to his own
    email: the address is shared (the most involved), after which the phone's only conflict (own email vs the
    address) stands on non-personal evidence and falls."""
    live = (0, 12 * WEEK, 30)
    spec = {"role": (EMAIL, *live), "a1": (EXTERNAL_ID, *live), "a2": (EXTERNAL_ID, *live),
            "a3": (EXTERNAL_ID, *live), "e1": (EMAIL, *live), "ph1": (PHONE, *live)}
    links = [("role", "a1", 4), ("role", "a2", 4), ("role", "a3", 4), ("ph1", "e1", 5), ("ph1", "role", 2),
             ("ph1", "a1", 6)]
    people, shared, _ = world_of(spec, links)
    assert shared == {"role": SHARED_CONFLICT}
    assert people == {frozenset({"ph1", "e1", "a1"}), frozenset({"a2"}), frozenset({"a3"}), frozenset({"role"})}


def test_a_changed_mailbox_is_a_succession_not_two_people():
    spec = {"before": (EMAIL, 0, 4 * WEEK, 20), "after": (EMAIL, 4 * WEEK + 1, 12 * WEEK, 30),
            "ph": (PHONE, 0, 12 * WEEK, 10)}
    people, shared, _ = world_of(spec, [("ph", "before", 4), ("ph", "after", 6)])
    assert people == {frozenset(spec)} and not shared


def test_size_cap_on_a_long_chain():
    n = 200
    nodes = make_nodes([EXTERNAL_ID] * n)
    edges = Edges(np.arange(n - 1), np.arange(1, n), edge_count=np.arange(n - 1) % 7 + 1)
    res = stitch(nodes, edges, Guards(max_per_type={}, max_person_size=10, exclusive_types=(), conflict_kinds=()))
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
    snap2 = update(snap, Nodes([], [], []), Edges([2], [1]))  # B's email seen with A's klaviyo id
    assert set(snap2.ids.universal_id.tolist()) == {a}
    assert snap2.ids.merge_log() == [(b, a)]
    # previous ids given as a dict of strings give the same answer
    previous = dict(zip(nodes.node_key.tolist(), snap.ids.universal_id.tolist(), strict=True))
    full = rebuild(snap2.nodes, snap2.edges, previous=previous)
    assert (full.ids.uid == snap2.ids.uid).all() and full.ids.merge_log() == [(b, a)]


def test_split_by_guard_keeps_id_on_the_part_with_its_origin():
    # one person of two klaviyo ids (joined by a phone, which vouches for nothing) under disabled guards; default
    # guards split it
    nodes = make_nodes([KLAVIYO_ID, PHONE, KLAVIYO_ID, EMAIL], first_seen=np.array([10, 20, 30, 40]))
    edges = Edges([0, 1, 2], [1, 2, 3], edge_count=[5, 1, 5])
    old = rebuild(nodes, edges, Guards.disabled())
    assert len(set(old.ids.uid.tolist())) == 1
    limit_only = Guards(conflict_kinds=())
    new = rebuild(nodes, edges, limit_only, previous=old.ids.uid)
    assert new.ids.uid[0] == new.ids.uid[1] == old.ids.uid[0]  # part with the origin (node 0)
    assert new.ids.uid[2] == new.ids.uid[3] == mix(nodes.node_key[[2]])[0]  # fresh id from its lowest node
    assert new.ids.merge_log() == []
    assert (rebuild(nodes, edges, limit_only).ids.uid == new.ids.uid).all()  # = rebuild from scratch
    # the conflict guard splits it three ways: the phone between the profiles stands alone with a fresh id
    new = rebuild(nodes, edges, Guards(), previous=old.ids.uid)
    assert new.ids.uid[0] == old.ids.uid[0] and new.ids.uid[2] == new.ids.uid[3] != new.ids.uid[0]
    assert new.ids.uid[1] == mix(nodes.node_key[[1]])[0] and new.result.shared[1] == SHARED_CONFLICT


def test_assign_ids_survivor_is_the_lowest_ranked_origin():
    comp = np.zeros(4, np.int64)
    keys = np.array([5, 6, 7, 8], np.uint64)
    prev = np.r_[mix(keys[[1, 1]]), mix(keys[[3, 3]])]  # two people merge; node 1 and node 3 are the origins
    res = assign_ids(comp, keys, np.array([40, 30, 20, 10]), prev)
    assert (res.uid == mix(keys[[3]])[0]).all()  # node 3 has the earliest first_seen
    assert res.merge_log() == [(format_uid(mix(keys[[1]]))[0], format_uid(mix(keys[[3]]))[0])]


def incremental_world(seed: int, batches: int = 6, lifetimes: bool = False):
    """Nodes appear batch by batch (first_seen increases); edges join new nodes to old ones, merge old people,
    and a few hubs slowly become shared. `lifetimes`: identifiers with activity spans and event counts (so
    profiles follow each other or overlap, and conflicts appear and go as edges accumulate)."""
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
        extra = {}
        if lifetimes:
            extra = {"active_from": first_seen[new], "active_to": first_seen[new] + rng.integers(0, 3000, per_batch),
                     "events": rng.integers(1, 12, per_batch)}
        out.append((Nodes(types[new], keys[new], first_seen[new], **extra),
                    Edges(src, dst, rng.integers(1, 4, m), b * 1000 + rng.integers(0, 999, m))))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lifetimes", [False, True])
def test_incremental_equals_full_rebuild_and_merge_log_is_acyclic(seed, lifetimes):
    guards = Guards(max_per_type={KLAVIYO_ID: 2, EMAIL: 4, PHONE: 3, EXTERNAL_ID: 3}, max_person_size=25,
                    max_degree_for_shared=5)
    batches = incremental_world(seed, lifetimes=lifetimes)
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
        was = np.r_[before.result.shared, np.zeros(len(new_nodes), np.uint8)]
        seen_shared_split |= bool(((snap.result.shared != NOT_SHARED) & (was == NOT_SHARED)).any())
    assert log.number_of_edges() > 0 and nx.is_directed_acyclic_graph(log)
    assert seen_shared_split  # the world exercised a person split by a newly shared identifier
