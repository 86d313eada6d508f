"""Request identifiers -> universal_id, the way stitching resolves (or will resolve) them.

Rules, per recipient (docs in README "Decision semantics"):
1. A `universal_id` in the request wins; an id merged away is followed through the merge log to its survivor.
2. Otherwise the known *personal* identifier of highest priority (sendflowr.contract.IDENTIFIER_PRIORITY, the
   order timing credits messages by) gives the person. An identifier stitching marked shared (a household phone,
   a family account, a role address, a placeholder: identity_nodes.shared != 0) names no one and never decides.
3. Otherwise every valid identifier that is not known is new: stitching will put them in one new person whose id
   is mix(the lowest node key) (graph.assign_ids: a new component's anchor; all of them share first_seen).
4. Otherwise, when only shared identifiers are left, the answer is for no person: the shared identifier's own
   id (the one its node carries), `known` false and `shared` naming the fields, so the decision uses a cohort or
   the global curve and says why.
5. Identifiers normalization rejects (not an address, generic, blocked) are ignored; a recipient with nothing
   usable left is an error naming each field and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sendflowr.contract import IDENTIFIER_PRIORITY
from sendflowr.decisions.identity_map import IdentityMap, NormalizeCache, raw_hash, raw_hashes
from sendflowr.identity import graph

NO_KEY = np.iinfo(np.uint64).max


@dataclass(frozen=True)
class Resolution:
    uid: np.ndarray  # uint64 universal id per recipient, 0 where nothing usable was given
    known: np.ndarray  # bool: the person exists in the materialized identity graph
    redirected: np.ndarray  # bool: the request's universal_id was merged into another person
    errors: list[dict[str, str] | None]  # field -> why it is unusable, for recipients with uid 0
    shared: list[tuple[str, ...] | None] | None = None  # fields that were shared, for recipients answered by them

    def universal_id(self, i: int) -> str:
        return f"sf_{int(self.uid[i]):016x}"  # == graph.format_uid, without array set-up

    def shared_only(self, i: int) -> tuple[str, ...] | None:
        """The shared fields when only shared identifiers named recipient i (no person), else None."""
        return self.shared[i] if self.shared is not None else None


def resolve(identity: IdentityMap, cache: NormalizeCache, identifiers: Mapping[str, Sequence[str | None]],
            universal_ids: Sequence[str | None], n: int) -> Resolution:
    """Resolve n recipients given as columns (type -> values, None = absent). Universal ids must already be
    well-formed (`sf_` + 16 lowercase hex; the API's request model checks that)."""
    best = np.zeros(n, np.uint64)  # uid of the highest-priority known personal identifier
    fallback = np.zeros(n, np.uint64)  # uid of the highest-priority known shared identifier
    shared_fields: list[list[str]] = [[] for _ in range(n)]
    new_min = np.full(n, NO_KEY, np.uint64)  # lowest node key among valid identifiers unknown to the graph
    unusable: dict[str, np.ndarray] = {}  # type -> rows where that identifier was given but rejected
    for t in reversed(IDENTIFIER_PRIORITY):  # lowest priority first: higher ones overwrite `best`
        values = identifiers.get(t)
        if values is None:
            continue
        column = np.asarray(values, dtype=object)
        rows = np.flatnonzero(column != None)  # noqa: E711 (element-wise on an object array)
        if not len(rows):
            continue
        raws = column[rows].tolist()
        keys, seen = identity.raw_nodes(raw_hashes(t, raws))
        unseen = np.flatnonzero(~seen)
        if len(unseen):
            fresh = cache.get_many([t] * len(unseen), [raws[i] for i in unseen.tolist()])
            keys[unseen] = np.fromiter((f.node_key for f in fresh), np.uint64, len(fresh))
        valid = keys != 0
        uids, shared = identity.node_uids(keys)
        known = uids != 0
        personal = known & ~shared
        best[rows[personal]] = uids[personal]
        fallback[rows[known & shared]] = uids[known & shared]
        for i in rows[known & shared].tolist():
            shared_fields[i].insert(0, t)  # highest priority first
        new_rows, new_keys = rows[valid & ~known], keys[valid & ~known]
        new_min[new_rows] = np.minimum(new_min[new_rows], new_keys)
        unusable[t] = rows[~valid]

    uid_column = np.asarray(universal_ids, dtype=object).reshape(n)
    given = uid_column != None  # noqa: E711
    requested = np.zeros(n, np.uint64)
    if given.any():
        requested[given] = graph.parse_uid(uid_column[given].astype("U19"))
    survivor, requested_known = identity.survivors(requested)
    redirected = given & (survivor != requested)
    derived = np.where(new_min != NO_KEY, graph.mix(np.where(new_min != NO_KEY, new_min, 0)), 0).astype(np.uint64)
    by_shared = ~given & (best == 0) & (derived == 0) & (fallback != 0)
    uid = np.where(given, survivor, np.where(best != 0, best, np.where(derived != 0, derived, fallback)))
    uid = uid.astype(np.uint64)
    known = np.where(given, requested_known, best != 0)

    errors: list[dict[str, str] | None] = [None] * n
    for i in np.flatnonzero(uid == 0).tolist():
        errors[i] = {}
    if any(e is not None for e in errors):
        _explain(errors, identifiers, unusable, cache)
    shared = [tuple(shared_fields[i]) if by_shared[i] else None for i in range(n)]
    return Resolution(uid=uid, known=known, redirected=redirected, errors=errors, shared=shared)


def resolve_one(identity: IdentityMap, cache: NormalizeCache, identifiers: Mapping[str, str | None],
                universal_id: str | None) -> Resolution:
    """`resolve` for one recipient with scalar lookups (a single request must not pay for column set-up); the
    tests hold it to `resolve` on random inputs."""
    if universal_id is not None:
        requested = graph.parse_uid(np.array([universal_id], "U19"))
        survivor, known = identity.survivors(requested)
        return Resolution(uid=survivor, known=known, redirected=survivor != requested, errors=[None],
                          shared=[None])
    new_min = None
    fallback, shared = 0, []
    rejected: dict[str, np.ndarray] = {}
    for t in IDENTIFIER_PRIORITY:  # highest priority first: the first known personal identifier decides
        raw = identifiers.get(t)
        if raw is None:
            continue
        key = identity.node_of_raw(raw_hash(t, raw))
        if key is None:
            key = cache.get_many([t], [raw])[0].node_key
        if key == 0:
            rejected[t] = np.zeros(1, np.int64)
            continue
        uid, is_shared = identity.node_uid_of(key)
        if uid and not is_shared:
            return Resolution(uid=np.array([uid], np.uint64), known=np.ones(1, bool), redirected=np.zeros(1, bool),
                              errors=[None], shared=[None])
        if uid:
            fallback = fallback or uid
            shared.append(t)
            continue
        new_min = key if new_min is None else min(new_min, key)
    none = np.zeros(1, bool)
    if new_min is not None:
        return Resolution(uid=graph.mix(np.array([new_min], np.uint64)), known=none, redirected=none,
                          errors=[None], shared=[None])
    if fallback:
        return Resolution(uid=np.array([fallback], np.uint64), known=none, redirected=none, errors=[None],
                          shared=[tuple(shared)])
    errors: list[dict[str, str] | None] = [{}]
    _explain(errors, {t: [v] for t, v in identifiers.items()}, rejected, cache)
    return Resolution(uid=np.zeros(1, np.uint64), known=none, redirected=none, errors=errors, shared=[None])


def _explain(errors: list[dict[str, str] | None], identifiers: Mapping[str, Sequence[str | None]],
             unusable: dict[str, np.ndarray], cache: NormalizeCache) -> None:
    """Why each identifier of an unresolvable recipient was rejected (normalizes again: rare path)."""
    for t, rows in unusable.items():
        rows = [i for i in rows.tolist() if errors[i] is not None]
        if not rows:
            continue
        results = cache.get_many([t] * len(rows), [identifiers[t][i] for i in rows])
        for i, result in zip(rows, results, strict=True):
            errors[i][t] = result.reason or f"{t}: rejected by identifier normalization"
    for e in errors:
        if e is not None and not e:
            e["identifiers"] = "no identifier given"
