"""Identity graph: stitch co-occurring identifiers into people, guard against over-merges, assign universal_ids.

Columns in, columns out (numpy), so a Dagster asset can feed integer-encoded edges read from ClickHouse and write
the result back column-wise. Pure numpy/scipy; no Dagster, no FastAPI.

Pipeline (`stitch`, then `assign_ids`; `restitch` recomputes a region, as sendflowr.identity.run does in ClickHouse;
tests/reference.py holds the in-memory `rebuild` / `update` the tests check it against):

1. Degree guard. A node with more than `max_degree_for_shared` distinct neighbours of any single type (own type
   included) is *shared* (a placeholder, a store's phone line): all its edges are blocked.
2. Clusters = connected components of the remaining edges (scipy). Everything below is computed per cluster
   (the unit an incremental run recomputes).
3. Conflict guard (`_conflicts`, `_peel`). A node X is *shared by conflict* when two of its neighbours are
   identifiers of one kind (`Guards.conflict_kinds`) that stand for two people: both were in use at the same
   time (their [active_from, active_to] overlap), each was also seen in an event without X, and nothing vouches
   that they are one person's (`Guards.vouchers`: no ESP profile id other than X seen with both; for two profile
   ids, no email seen with both -- an ESP keeps one profile per email, so two profile ids on one email are one
   profile merged on the ESP side). A household phone seen with two relatives' emails, a family account, a role
   address of a small business: all their edges are blocked, whatever their degree. Conflicts stand only while
   their evidence is personal, so `_peel` makes nodes shared one at a time per cluster, the most involved first.
   Profile ids are never shared by a conflict (a profile is one person).
4. Components of what is left. One that breaks no per-type limit, no size cap and holds no two *exclusive*
   identifiers (`Guards.exclusive_types`: Klaviyo ids, customer ids) or two soft-kind identifiers with a life of
   their own (emails, phones) is a person as is: almost all of the data.
5. Only components that break a guard go through the greedy pass: their edges in priority order (see
   `_edge_order`) through a union-find; an edge is accepted unless the merge it causes would exceed a per-type
   limit, the size cap, or put two such identifiers of one type with overlapping lifetimes together -- unless
   the edge's endpoint vouches for them (a profile id for its mailboxes, an email for its profile ids). An old
   and a new profile id whose lifetimes follow each other (an ESP-side merge) never clash.
   Edges already inside one component are accepted (no-op).
   A blocked edge always ends up between two different people (counts and lifetimes only grow), so the people are
   exactly the connected components of the accepted edges -- the property the networkx oracle tests check.

Universal ids are `sf_` + 16 hex of a 64-bit id. The id of a person is always `mix(node_key)` of one of its
identifiers, its *origin*; `mix` is a salted splitmix64 finalizer, a bijection on uint64, so different origins
never give the same id and an id's origin is known (it is the node whose `mix(node_key)` equals it). The *rank*
of an id is its origin's (first_seen, node_key). See `assign_ids` for the survivor rule and the merge log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from sendflowr.arrays import lookup, unique
from sendflowr.contract import IDENTIFIER_PRIORITY, IDENTIFIER_TYPES

TYPE_NAMES = IDENTIFIER_TYPES  # type code = position
EMAIL, KLAVIYO_ID, PHONE, EXTERNAL_ID = (TYPE_NAMES.index(t) for t in ("email", "klaviyo_id", "phone", "external_id"))
N_TYPES = len(TYPE_NAMES)
# The guards' edge order when a limit binds (sendflowr.contract.IDENTIFIER_PRIORITY, the one priority order).
TYPES_BY_PRIORITY = IDENTIFIER_PRIORITY
TYPE_PRIORITY = tuple(TYPE_NAMES.index(t) for t in TYPES_BY_PRIORITY)

# Verdict codes per edge. TYPE_LIMIT + t: the limit of type t would be exceeded (or two exclusive identifiers of
# type t in use at the same time would join); CONFLICT + t: an endpoint is shared by a conflict of kind t.
ACCEPTED, SHARED, SIZE_CAP, TYPE_LIMIT = 0, 1, 2, 3
CONFLICT = TYPE_LIMIT + N_TYPES
REASONS = {ACCEPTED: "accepted", SHARED: "shared identifier (degree guard)", SIZE_CAP: "person size cap"}
REASONS |= {TYPE_LIMIT + t: f"per-type limit: {name}" for t, name in enumerate(TYPE_NAMES)}
REASONS |= {CONFLICT + t: f"shared identifier (conflict: {name})" for t, name in enumerate(TYPE_NAMES)}
# Per node: why it is shared (the `shared` column of identity_nodes).
NOT_SHARED, SHARED_DEGREE, SHARED_CONFLICT = 0, 1, 2
_NEVER = np.iinfo(np.int64).max  # "unknown lifetime / events": active from -inf to +inf, always seen alone

_SALT = np.uint64(0x5EF10E5_1D_C0FFEE)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def identifier_key(types, values) -> np.ndarray:
    """uint64 key of each (type, value): the first 8 bytes (big-endian) of blake2b(b"<type name>:<value>",
    digest_size=8, person=b"sf-ident-v1"). Values must already be normalized (`sendflowr.identity.normalize`).
    Hashed once per DISTINCT pair (pyarrow dictionary-encodes each type's values); fixed forever, so keys computed
    in different runs and processes (the pipeline, the decision API) agree."""
    types = np.asarray(types, dtype=np.int8).reshape(-1)
    column = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(
        np.asarray(values, dtype=object).reshape(-1).tolist(), pa.string())
    if len(column) != len(types):
        raise ValueError("types and values differ in length")
    if column.null_count:
        raise ValueError("identifier values must not be null")
    out = np.empty(len(types), dtype=np.uint64)
    for t in np.unique(types).tolist():
        rows = np.flatnonzero(types == t)
        encoded = column.take(pa.array(rows)).dictionary_encode()
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        # copying a hasher primed with the prefix is ~2x cheaper than constructing one per value
        primed = hashlib.blake2b(f"{TYPE_NAMES[t]}:".encode(), digest_size=8, person=b"sf-ident-v1").copy

        def digest(value: bytes, primed=primed) -> bytes:
            h = primed()
            h.update(value)
            return h.digest()

        digests = b"".join(map(digest, encoded.dictionary.cast(pa.binary()).to_pylist()))
        keys = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
        out[rows] = keys[encoded.indices.to_numpy(zero_copy_only=False)]
    return out


def raw_hash(identifier_type: str, raw: str) -> int:
    """halfMD5(type || '\\0' || raw) as ClickHouse computes it (sql/decisions/identity_raw.sql,
    sql/identity/eval_cooccurrence.sql): a raw identifier's key before any normalization."""
    return int.from_bytes(hashlib.md5(f"{identifier_type}\0{raw}".encode()).digest()[:8], "big")


def raw_hashes(identifier_type: str, raws: list[str]) -> np.ndarray:
    """`raw_hash` of many raw values of one type: digests joined into one buffer and read as big-endian uint64
    by numpy (hashing itself has no column kernel)."""
    prefix = f"{identifier_type}\0".encode()
    digests = b"".join([hashlib.md5(prefix + raw.encode()).digest() for raw in raws])
    return np.frombuffer(digests, dtype=">u8")[0::2].astype(np.uint64)


def mix(keys) -> np.ndarray:
    """Salted splitmix64 finalizer: a fixed bijection uint64 -> uint64 (node_key -> the id it originates)."""
    z = np.asarray(keys, dtype=np.uint64) ^ _SALT
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def format_uid(uid) -> np.ndarray:
    """uint64 ids -> array of 'sf_' + 16 lowercase hex (vectorized)."""
    raw = np.asarray(uid, dtype=">u8").reshape(-1).view(np.uint8).reshape(-1, 8)
    buf = np.empty((len(raw), 19), dtype=np.uint8)
    buf[:, :3] = np.frombuffer(b"sf_", np.uint8)
    buf[:, 3::2], buf[:, 4::2] = _HEX[raw >> 4], _HEX[raw & 15]
    return buf.view("S19").reshape(-1).astype("U19")


def parse_uid(text) -> np.ndarray:
    """Inverse of `format_uid`; raises on anything that is not `sf_` + 16 lowercase hex."""
    raw = np.asarray(text, dtype="S19").reshape(-1)
    buf = raw.view(np.uint8).reshape(-1, 19)
    lut = np.full(256, 255, np.uint8)
    lut[_HEX] = np.arange(16, dtype=np.uint8)
    nib = lut[buf[:, 3:]]
    if (buf[:, :3] != np.frombuffer(b"sf_", np.uint8)).any() or (nib == 255).any():
        raise ValueError("universal ids must be 'sf_' + 16 lowercase hex characters")
    return ((nib[:, 0::2] << 4) | nib[:, 1::2]).copy().view(">u8").reshape(-1).astype(np.uint64)


@dataclass(frozen=True)
class Nodes:
    """Identifiers. `first_seen` ranks them for the id survivor rule (when first ingested; never moves back).
    `active_from` / `active_to`: first and last occurrence (event time), the lifetime the guards compare; unknown =
    always active. `events`: events that carried the identifier; unknown = more than any edge (seen alone)."""

    node_type: np.ndarray  # int8 type code (EMAIL..EXTERNAL_ID)
    node_key: np.ndarray  # uint64 `identifier_key`, unique per node
    first_seen: np.ndarray  # int64 ms
    active_from: np.ndarray | None = None  # int64 ms
    active_to: np.ndarray | None = None  # int64 ms
    events: np.ndarray | None = None  # int64

    def __post_init__(self) -> None:
        for name, dtype in (("node_type", np.int8), ("node_key", np.uint64), ("first_seen", np.int64)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype).reshape(-1))
        n = len(self.node_key)
        for name, default in (("active_from", -_NEVER), ("active_to", _NEVER), ("events", _NEVER)):
            col = getattr(self, name)
            col = np.full(n, default, np.int64) if col is None else np.asarray(col, np.int64).reshape(-1)
            object.__setattr__(self, name, col)
        if not (len(self.node_type) == n == len(self.first_seen) == len(self.active_from) == len(self.active_to)
                == len(self.events)):
            raise ValueError("node columns differ in length")
        if len(self.node_type) and (self.node_type.min() < 0 or self.node_type.max() >= N_TYPES):
            raise ValueError("node_type out of range")

    def __len__(self) -> int:
        return len(self.node_key)

    def take(self, idx) -> Nodes:
        return Nodes(*(getattr(self, c)[idx] for c in NODE_COLUMNS))


NODE_COLUMNS = ("node_type", "node_key", "first_seen", "active_from", "active_to", "events")


@dataclass(frozen=True)
class Edges:
    """Undirected co-occurrence edges between node indices; ideally one row per pair with aggregated counts."""

    src: np.ndarray
    dst: np.ndarray
    edge_count: np.ndarray | None = None  # int64, default 1
    edge_first_seen: np.ndarray | None = None  # int64 ms, default 0

    def __post_init__(self) -> None:
        src = np.asarray(self.src, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", np.asarray(self.dst, dtype=np.int64).reshape(-1))
        for name, default in (("edge_count", 1), ("edge_first_seen", 0)):
            col = getattr(self, name)
            col = np.full(len(src), default, np.int64) if col is None else np.asarray(col, np.int64).reshape(-1)
            object.__setattr__(self, name, col)
        if not len(src) == len(self.dst) == len(self.edge_count) == len(self.edge_first_seen):
            raise ValueError("edge columns differ in length")

    def __len__(self) -> int:
        return len(self.src)

    def take(self, idx, remap: np.ndarray | None = None) -> Edges:
        s, d = self.src[idx], self.dst[idx]
        if remap is not None:
            s, d = remap[s], remap[d]
        return Edges(s, d, self.edge_count[idx], self.edge_first_seen[idx])


def _default_limits() -> dict[int, int]:
    # klaviyo_id / external_id: a chain of profiles or accounts that followed each other (only one at a time,
    # see Guards.exclusive_types); a person with more is more likely a reused placeholder than a history.
    return {KLAVIYO_ID: 3, EMAIL: 5, PHONE: 3, EXTERNAL_ID: 3}


@dataclass(frozen=True)
class Guards:
    """Over-merge guards (module docstring, steps 1-5). When a limit binds, edges are tried (and so kept) in this
    order: 1. type class: position in `type_priority` of the better-ranked endpoint type (klaviyo_id edges first),
    2. higher edge_count, 3. earlier edge_first_seen, 4. lower (min key, max key) of the endpoints."""

    max_per_type: Mapping[int, int] = field(default_factory=_default_limits)  # missing type = unlimited
    max_person_size: int = 50
    max_degree_for_shared: int = 20
    type_priority: tuple[int, ...] = TYPE_PRIORITY
    # A person holds one of these at a time: two whose lifetimes overlap never join (an old and a new ESP profile
    # id, or customer id, that follow each other do).
    exclusive_types: tuple[int, ...] = (KLAVIYO_ID, EXTERNAL_ID)
    # Two concurrent identifiers of one of these kinds next to a node are two people: the node is shared.
    conflict_kinds: tuple[int, ...] = (KLAVIYO_ID, EMAIL, EXTERNAL_ID, PHONE)
    # ESP profile ids: one person by construction, so never shared by a conflict, and two identifiers that share
    # one are the same profile's (no conflict).
    profile_types: tuple[int, ...] = (KLAVIYO_ID,)
    # What an ESP keys its profiles by: one profile per email at a time, so two profile ids seen with one email are
    # one profile (merged on the ESP side, or duplicates it will merge), never two people.
    profile_key_types: tuple[int, ...] = (EMAIL,)

    def __post_init__(self) -> None:
        if min(self.max_per_type.values(), default=1) < 1 or self.max_person_size < 1:
            raise ValueError("per-type limits and the size cap must be >= 1")
        if sorted(self.type_priority) != list(range(N_TYPES)):
            raise ValueError("type_priority must be a permutation of the type codes")
        for name in ("exclusive_types", "conflict_kinds", "profile_types", "profile_key_types"):
            if not set(getattr(self, name)) <= set(range(N_TYPES)):
                raise ValueError(f"{name} must hold type codes")

    def vouchers(self) -> np.ndarray:
        """[a, b]: an identifier of type a vouches that identifiers of type b next to it are one person's -- a
        profile id for everything it was seen with, an email for the profile ids seen with it."""
        out = np.zeros((N_TYPES, N_TYPES), bool)
        out[list(self.profile_types), :] = True
        for key in self.profile_key_types:
            out[key, list(self.profile_types)] = True
        return out

    @classmethod
    def disabled(cls) -> Guards:
        big = 2**62
        return cls(max_per_type={}, max_person_size=big, max_degree_for_shared=big, exclusive_types=(),
                   conflict_kinds=())

    def limits(self) -> np.ndarray:
        out = np.full(N_TYPES, 2**62, np.int64)
        for t, limit in self.max_per_type.items():
            out[t] = limit
        return out


@dataclass(frozen=True)
class StitchResult:
    component: np.ndarray  # int64 person label per node, 0..n_components-1 (labels carry no meaning across runs)
    cluster: np.ndarray  # int64 component label after the degree guard only (the unit a run recomputes)
    shared: np.ndarray  # uint8 per node: NOT_SHARED, SHARED_DEGREE or SHARED_CONFLICT
    blocked_reason: np.ndarray  # int8 per edge, key of REASONS; 0 = accepted

    @property
    def accepted(self) -> np.ndarray:
        return self.blocked_reason == ACCEPTED

    def audit(self) -> dict[str, int]:
        """Number of edges per reason (accepted included)."""
        counts = np.bincount(self.blocked_reason, minlength=len(REASONS))
        return {REASONS[code]: int(c) for code, c in enumerate(counts) if c}


def _compact(labels: np.ndarray, n_labels: int) -> np.ndarray:
    present = np.zeros(n_labels, bool)
    present[labels] = True
    return (np.cumsum(present) - 1)[labels]


def _shared_nodes(n: int, src: np.ndarray, dst: np.ndarray, ntype: np.ndarray, limit: int) -> np.ndarray:
    """Nodes with more than `limit` distinct neighbours of one type. Total raw degree first (a necessary
    condition); per-type distinct counts only on the few edges touching a candidate."""
    cand = (np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)) > limit
    shared = np.zeros(n, bool)
    if cand.any():
        hit = np.flatnonzero((cand[src] | cand[dst]) & (src != dst))
        mine, other = np.r_[src[hit], dst[hit]], np.r_[dst[hit], src[hit]]
        keep = cand[mine]
        pairs = unique(mine[keep] * n + other[keep])
        node, nbr = pairs // n, pairs % n
        rows = np.bincount(node * N_TYPES + ntype[nbr], minlength=n * N_TYPES)
        shared[np.flatnonzero(rows > limit) // N_TYPES] = True
    return shared


def components(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[int, np.ndarray]:
    """scipy connected components (weak) on a CSR built directly by one argsort (no duplicate summing)."""
    itype = np.int32 if max(n, len(src)) < 2**31 else np.int64
    indptr = np.zeros(n + 1, itype)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    indices = dst[np.argsort(src, kind="stable")].astype(itype)  # timsort: fast on (nearly) sorted input
    graph = csr_matrix((np.ones(len(src)), indices, indptr), shape=(n, n))
    n_comp, labels = connected_components(graph, directed=True, connection="weak")
    return n_comp, labels.astype(np.int64)


def stitch(nodes: Nodes, edges: Edges, guards: Guards | None = None,
           shared_hint: np.ndarray | None = None, loop_below: int = 64) -> StitchResult:
    """Partition `nodes` into people. `shared_hint`: nodes already known to be shared by the degree guard (OR-ed
    with it; `restitch` uses it for boundary nodes whose full edge list it does not load). `loop_below`: see
    `_greedy` (a tuning knob; results do not depend on it)."""
    guards = guards or Guards()
    n = len(nodes)
    src, dst = edges.src, edges.dst
    if len(edges) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise ValueError("edge endpoint out of range")
    ntype = nodes.node_type.astype(np.int64)
    reason = np.zeros(len(edges), np.int8)

    degree = _shared_nodes(n, src, dst, ntype, guards.max_degree_for_shared)
    if shared_hint is not None:
        degree |= np.asarray(shared_hint, bool)
    loop = src == dst  # self loops are accepted no-ops
    blocked = (degree[src] | degree[dst]) & ~loop
    reason[blocked] = SHARED
    live = np.flatnonzero(~blocked & ~loop)
    n_clusters, cluster = components(n, src[live], dst[live])
    shared = np.where(degree, SHARED_DEGREE, NOT_SHARED).astype(np.uint8)

    kind = _conflicts(nodes, edges, live, cluster, guards)
    hit = kind >= 0
    if hit.any():
        shared[hit] = SHARED_CONFLICT
        ls, ld = src[live], dst[live]
        cut = hit[ls] | hit[ld]
        reason[live[cut]] = CONFLICT + np.where(hit[ls], kind[ls], kind[ld])[cut]  # the src's kind when both
        live = live[~cut]
        n_parts, part = components(n, src[live], dst[live])
    else:
        n_parts, part = n_clusters, cluster

    own = _own_life(nodes, edges, np.flatnonzero(~blocked & ~loop), guards)
    bad = _breaks_guards(nodes, part, n_parts, own, guards)
    component = part.copy()
    if bad.any():
        bad_nodes = np.flatnonzero(bad[part])
        sel = live[bad[part[src[live]]]]
        roots, reason[sel] = _greedy(nodes, edges, sel, bad_nodes, part, own, guards, loop_below)
        component[bad_nodes] = n_parts + roots
        component = _compact(component, n_parts + len(bad_nodes))
    return StitchResult(component, cluster, shared, reason)


def _soft_kinds(guards: Guards) -> list[int]:
    """Conflict kinds a person may hold several of, as long as an ESP profile vouches for them (emails, phones)."""
    return [t for t in guards.conflict_kinds if t not in guards.exclusive_types and t not in guards.profile_types]


def _own_life(nodes: Nodes, edges: Edges, live: np.ndarray, guards: Guards) -> np.ndarray:
    """Per node: an identifier of a soft kind that was seen in more events than it shared with its neighbours
    other than profile ids (its own mailbox or line, not only a field of someone's orders). Summing over the
    neighbours counts an event carrying two of them twice, so this errs towards 'no'."""
    n = len(nodes)
    own = np.zeros(n, bool)
    soft = _soft_kinds(guards)
    if not soft:
        return own
    ntype = nodes.node_type.astype(np.int64)
    is_profile = np.zeros(N_TYPES, bool)
    is_profile[list(guards.profile_types)] = True
    s, d, c = edges.src[live], edges.dst[live], edges.edge_count[live].astype(np.float64)
    to_s, to_d = ~is_profile[ntype[d]], ~is_profile[ntype[s]]
    shared_with = (np.bincount(s[to_s], weights=c[to_s], minlength=n)
                   + np.bincount(d[to_d], weights=c[to_d], minlength=n))
    own[np.isin(ntype, soft)] = True
    return own & (nodes.events > shared_with)


def _breaks_guards(nodes: Nodes, part: np.ndarray, n_parts: int, own: np.ndarray, guards: Guards) -> np.ndarray:
    """Per component: over the size cap, over a per-type limit, or two exclusive identifiers of one type, or two
    soft-kind identifiers with a life of their own (whether they may share a person is the greedy pass's question:
    it decides in edge order)."""
    ntype = nodes.node_type.astype(np.int64)
    bad = np.bincount(part, minlength=n_parts) > guards.max_person_size
    limits = guards.limits()
    limits[list(guards.exclusive_types)] = np.minimum(limits[list(guards.exclusive_types)], 1)
    if (limits < len(nodes)).any():
        per_type = np.bincount(part * N_TYPES + ntype, minlength=n_parts * N_TYPES).reshape(-1, N_TYPES)
        for t in np.flatnonzero(limits < len(nodes)).tolist():
            bad |= per_type[:, t] > limits[t]
    if own.any():
        mine = np.flatnonzero(own)
        per_type = np.bincount(part[mine] * N_TYPES + ntype[mine], minlength=n_parts * N_TYPES)
        bad |= (per_type.reshape(-1, N_TYPES) > 1).any(axis=1)
    return bad


def _conflicts(nodes: Nodes, edges: Edges, live: np.ndarray, cluster: np.ndarray, guards: Guards) -> np.ndarray:
    """Conflict guard (module docstring, step 3) over the `live` edges: per node, the kind (type code) of the
    conflict that makes it shared, or -1 (`_peel` decides which conflicted nodes are shared)."""
    n = len(nodes)
    kind = np.full(n, -1, np.int64)
    if not guards.conflict_kinds or not len(live):
        return kind
    ntype = nodes.node_type.astype(np.int64)
    is_kind, is_profile = np.zeros(N_TYPES, bool), np.zeros(N_TYPES, bool)
    is_kind[list(guards.conflict_kinds)] = True
    is_profile[list(guards.profile_types)] = True
    vouches = guards.vouchers()
    s, d, c = edges.src[live], edges.dst[live], edges.edge_count[live]
    ts, td = ntype[s], ntype[d]
    # rows (x, y) in both directions of an edge: y of a conflict kind, x not vouching for it. Only (x, kind)
    # groups with two rows can hold a pair: a cheap count over both directions before any copy or sort.
    fwd = is_kind[td] & ~is_profile[ts] & ~vouches[ts, td]
    bwd = is_kind[ts] & ~is_profile[td] & ~vouches[td, ts]
    g_fwd, g_bwd = s * N_TYPES + td, d * N_TYPES + ts
    rows = (np.bincount(g_fwd[fwd], minlength=n * N_TYPES) + np.bincount(g_bwd[bwd], minlength=n * N_TYPES)) >= 2
    fwd &= rows[g_fwd]
    bwd &= rows[g_bwd]
    x, y, cnt = np.r_[s[fwd], d[bwd]], np.r_[d[fwd], s[bwd]], np.r_[c[fwd], c[bwd]]
    if not len(x):
        return kind
    # one row per (x, y); `together` = events that carried both (duplicate edge rows summed)
    uniq, inv = np.unique(x * n + y, return_inverse=True)
    together = np.zeros(len(uniq), np.int64)
    np.add.at(together, inv, cnt)
    x, y = uniq // n, uniq % n
    alone = nodes.events[y] > together  # y was also seen without x
    x, y = x[alone], y[alone]
    g = x * N_TYPES + ntype[y]  # sorted already (uniq is sorted by x, then y)
    order = np.argsort(g, kind="stable")
    x, y, g = x[order], y[order], g[order]
    # every pair (i < j) of rows within one group
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    later = np.repeat(ends, ends - starts) - np.arange(len(g)) - 1
    first = np.repeat(np.arange(len(g)), later)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    yi, yj = y[first], y[second]
    concurrent = (np.maximum(nodes.active_from[yi], nodes.active_from[yj])
                  <= np.minimum(nodes.active_to[yi], nodes.active_to[yj]))
    first, yi, yj = first[concurrent], yi[concurrent], yj[concurrent]
    xs = x[first]
    apart = ~_vouched_together(n, s, d, ntype, vouches, yi, yj, xs)
    if not apart.any():
        return kind
    return _peel(nodes, cluster, xs[apart], yi[apart], yj[apart], guards)


def _peel(nodes: Nodes, cluster: np.ndarray, xs: np.ndarray, yi: np.ndarray, yj: np.ndarray,
          guards: Guards) -> np.ndarray:
    """Conflicts -> shared nodes. A conflict (xs, yi, yj) stands only while its evidence yi, yj is personal, so
    nodes are made shared one per cluster per round, the most involved first: the one that stands between, or is
    evidence of, the most conflicts still standing; then the one whose conflict is of the strongest kind (exclusive
    kinds first: two profiles > two customer ids > two emails > two phones), then of the least specific type (a
    phone before an account before an email), then the lowest key. A role address between colleagues goes before a
    colleague's account that saw it next to his own email (whose conflict then falls: its evidence is no longer
    personal); a family phone before the family account, which then stands on its own evidence. Returns the kind
    that made each node shared (or -1)."""
    n = len(nodes)
    kind = np.full(n, -1, np.int64)
    pos = np.empty(N_TYPES, np.int64)
    pos[list(guards.type_priority)] = np.arange(N_TYPES)
    exclusive = np.zeros(N_TYPES, bool)
    exclusive[list(guards.exclusive_types)] = True
    ranked = sorted(range(N_TYPES), key=lambda t: (not exclusive[t], pos[t]))  # exclusive kinds first
    rank = np.empty(N_TYPES, np.int64)
    rank[ranked] = np.arange(N_TYPES)
    strength = rank[nodes.node_type[yi].astype(np.int64)]  # kind of the conflict, strongest evidence first
    suspicion = (N_TYPES - 1) - pos[nodes.node_type.astype(np.int64)]  # least specific type first
    removed = np.zeros(n, bool)
    live = np.ones(len(xs), bool)
    while True:
        live &= ~(removed[xs] | removed[yi] | removed[yj])
        if not live.any():
            return kind
        x, st = xs[live], strength[live]
        best = np.full(n, N_TYPES, np.int64)
        np.minimum.at(best, x, st)
        # involvement: conflicts a node stands between, plus conflicts it is evidence of
        involved = np.bincount(np.r_[x, yi[live], yj[live]], minlength=n)
        cand = unique(x)
        order = np.lexsort((nodes.node_key[cand], suspicion[cand], best[cand], -involved[cand], cluster[cand]))
        cand = cand[order]
        first = cand[np.r_[True, cluster[cand][1:] != cluster[cand][:-1]]]  # the top candidate per cluster
        removed[first] = True
        kind[first] = np.asarray(ranked)[best[first]]


def _vouched_together(n: int, s: np.ndarray, d: np.ndarray, ntype: np.ndarray, vouches: np.ndarray,
                      yi: np.ndarray, yj: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Per pair (yi, yj of one type): is there a common neighbour (over the edges s-d), other than xs, that
    vouches for both (`Guards.vouchers`): one profile id seen with both, or one email seen with two profile ids?"""
    out = np.zeros(len(yi), bool)
    if not len(yi):
        return out
    a, b = np.r_[s, d], np.r_[d, s]
    m = vouches[ntype[b], ntype[a]]
    held = unique(a[m] * n + b[m])  # (node, neighbour vouching for it), sorted
    if not len(held):
        return out
    owner = held // n
    lo, hi = np.searchsorted(owner, yi, "left"), np.searchsorted(owner, yi, "right")
    deg = hi - lo
    pair = np.repeat(np.arange(len(yi)), deg)
    at = np.repeat(lo, deg) + np.arange(len(pair)) - np.repeat(np.cumsum(deg) - deg, deg)
    p = held[at] % n
    want = yj[pair] * n + p
    common = lookup(held, want)[1] & (p != xs[pair])
    out[pair[common]] = True
    return out


def _edge_order(nodes: Nodes, edges: Edges, sel: np.ndarray, guards: Guards) -> np.ndarray:
    pos = np.empty(N_TYPES, np.int64)
    pos[list(guards.type_priority)] = np.arange(N_TYPES)
    s, d = edges.src[sel], edges.dst[sel]
    cls = np.minimum(pos[nodes.node_type[s]], pos[nodes.node_type[d]])
    ks, kd = nodes.node_key[s], nodes.node_key[d]
    return sel[np.lexsort((np.maximum(ks, kd), np.minimum(ks, kd), edges.edge_first_seen[sel],
                           -edges.edge_count[sel], cls))]


def _find(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    root = parent[x]
    while True:
        up = parent[root]
        if (up == root).all():
            parent[x] = root  # path compression
            return root
        root = up


def _greedy(nodes: Nodes, edges: Edges, sel: np.ndarray, bad_nodes: np.ndarray, cluster: np.ndarray,
            own: np.ndarray, guards: Guards, loop_below: int = 64):
    """Kruskal-like union-find over the edges `sel` of guard-breaking components (`cluster` labels them), each in
    priority order. A merge is refused when it would exceed a per-type limit or the size cap, or when both sides
    hold an exclusive identifier of one type and the spans of those lifetimes overlap (a span covers a whole
    succession, so a refused merge may also be one of interleaved successions: the cautious side). Soft kinds
    (emails, phones) with a life of their own (`own`) are held to the same rule. An edge skips the rule for a type
    its endpoint vouches for (`Guards.vouchers`): a profile id for its two mailboxes, an email for its two
    profile ids (an ESP-side merge of duplicates that were in use side by side).
    Clusters are independent, so round j takes the j-th edge of every cluster at once (vectorized, no two edges
    of a round share a root). Once a round has fewer than `loop_below` edges, the tail (the few big clusters)
    goes through a plain Python loop. Returns (root per bad node, code per sel edge)."""
    k = len(bad_nodes)
    local = np.full(len(nodes), -1, np.int64)
    local[bad_nodes] = np.arange(k)
    order = _edge_order(nodes, edges, sel, guards)
    ecl = cluster[edges.src[order]]
    by_cl = np.argsort(ecl, kind="stable")
    order, ecl = order[by_cl], ecl[by_cl]
    starts = np.flatnonzero(np.r_[True, ecl[1:] != ecl[:-1]]) if len(order) else np.zeros(0, np.int64)
    pos = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rounds = np.argsort(pos, kind="stable")
    la, lb = local[edges.src[order]], local[edges.dst[order]]
    parent, size = np.arange(k), np.ones(k, np.int64)
    counts = np.zeros((k, N_TYPES), np.int64)
    counts[np.arange(k), nodes.node_type[bad_nodes]] = 1
    limits, cap = guards.limits(), guards.max_person_size
    # per root and tracked type: the span [lo, hi] of its (exclusive, or soft with a life of their own)
    # identifiers' lifetimes (empty: lo > hi)
    excl = list(guards.exclusive_types) + _soft_kinds(guards)
    lo = np.full((k, len(excl)), _NEVER, np.int64)
    hi = np.full((k, len(excl)), -_NEVER, np.int64)
    for j, t in enumerate(excl):
        mine = np.flatnonzero((nodes.node_type[bad_nodes] == t) & (own[bad_nodes] | (t in guards.exclusive_types)))
        lo[mine, j] = nodes.active_from[bad_nodes[mine]]
        hi[mine, j] = nodes.active_to[bad_nodes[mine]]
    # per edge: the tracked columns its endpoints vouch for (the other endpoint's type), else -1
    column = np.full(N_TYPES, -1, np.int64)
    column[excl] = np.arange(len(excl))
    ta, tb = nodes.node_type[edges.src[order]], nodes.node_type[edges.dst[order]]
    vouches = guards.vouchers()
    vouch_a = np.where(vouches[ta, tb], column[tb], -1)  # the src vouches for the dst's type
    vouch_b = np.where(vouches[tb, ta], column[ta], -1)
    codes = np.zeros(len(order), np.int8)

    offset = 0
    for width in np.bincount(pos).tolist():
        if width < loop_below:
            break
        idx = rounds[offset:offset + width]
        offset += width
        ra, rb = _find(parent, la[idx]), _find(parent, lb[idx])
        over = (counts[ra] + counts[rb]) > limits
        clash = np.maximum(lo[ra], lo[rb]) <= np.minimum(hi[ra], hi[rb])  # two at a time
        for v in (vouch_a[idx], vouch_b[idx]):
            clash[np.flatnonzero(v >= 0), v[v >= 0]] = False
        for j, t in enumerate(excl):
            over[:, t] |= clash[:, j]
        merge = ra != rb
        code = np.where(over.any(axis=1), TYPE_LIMIT + over.argmax(axis=1), ACCEPTED)
        code = np.where((code == ACCEPTED) & (size[ra] + size[rb] > cap), SIZE_CAP, code)
        code[~merge] = ACCEPTED
        codes[idx] = code
        ok = merge & (code == ACCEPTED)
        ra, rb = ra[ok], rb[ok]
        swap = size[ra] < size[rb]
        ra, rb = np.where(swap, rb, ra), np.where(swap, ra, rb)
        parent[rb] = ra
        size[ra] += size[rb]
        counts[ra] += counts[rb]
        lo[ra], hi[ra] = np.minimum(lo[ra], lo[rb]), np.maximum(hi[ra], hi[rb])

    rest = rounds[offset:]
    if len(rest):
        par, sz, cnt, lim = parent.tolist(), size.tolist(), counts.tolist(), limits.tolist()
        los, his = lo.tolist(), hi.tolist()
        excl_at = {t: j for j, t in enumerate(excl)}
        vouched = list(zip(vouch_a.tolist(), vouch_b.tolist(), strict=True))

        def find(x: int) -> int:
            while par[x] != x:
                par[x] = par[par[x]]
                x = par[x]
            return x

        def violation(ra: int, rb: int, skip: tuple[int, int]) -> int:
            ca, cb = cnt[ra], cnt[rb]
            for t in range(N_TYPES):
                j = excl_at.get(t)
                if ca[t] + cb[t] > lim[t] or (j is not None and j not in skip and max(los[ra][j], los[rb][j])
                                              <= min(his[ra][j], his[rb][j])):
                    return TYPE_LIMIT + t
            return SIZE_CAP if sz[ra] + sz[rb] > cap else ACCEPTED

        out = []
        for a, b, e in zip(la[rest].tolist(), lb[rest].tolist(), rest.tolist(), strict=True):
            ra, rb = find(a), find(b)
            code = ACCEPTED
            if ra != rb:
                code = violation(ra, rb, vouched[e])
                if code == ACCEPTED:
                    if sz[ra] < sz[rb]:
                        ra, rb = rb, ra
                    par[rb] = ra
                    sz[ra] += sz[rb]
                    cnt[ra] = [x + y for x, y in zip(cnt[ra], cnt[rb], strict=True)]
                    los[ra] = [min(x, y) for x, y in zip(los[ra], los[rb], strict=True)]
                    his[ra] = [max(x, y) for x, y in zip(his[ra], his[rb], strict=True)]
            out.append(code)
        codes[rest] = out
        parent = np.asarray(par, np.int64)
    roots = _find(parent, np.arange(k))
    result = np.empty(len(sel), np.int8)
    result[np.searchsorted(sel, order)] = codes  # sel is sorted (it comes from flatnonzero)
    return roots, result


@dataclass(frozen=True)
class IdAssignment:
    uid: np.ndarray  # uint64 per node; format with `format_uid` (or `.universal_id`)
    merged_old: np.ndarray  # uint64 merge log: old id ...
    merged_into: np.ndarray  # ... -> surviving id

    @property
    def universal_id(self) -> np.ndarray:
        return format_uid(self.uid)

    def merge_log(self) -> list[tuple[str, str]]:
        return list(zip(format_uid(self.merged_old).tolist(), format_uid(self.merged_into).tolist(), strict=True))


def previous_ids(node_key: np.ndarray, previous) -> np.ndarray:
    """Per-node previous uint64 id (0 = none) from a dict {node_key: 'sf_...' or int} or (keys, ids) arrays."""
    if previous is None:
        return np.zeros(len(node_key), np.uint64)
    if isinstance(previous, Mapping):
        previous = (np.fromiter(previous.keys(), np.uint64, len(previous)), list(previous.values()))
    keys, ids = np.asarray(previous[0], np.uint64), np.asarray(previous[1])
    if ids.dtype.kind in "USO":
        ids = parse_uid(ids.astype("U19")) if len(ids) else np.zeros(0, np.uint64)
    ids = ids.astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, ids = keys[order], ids[order]
    at, found = lookup(keys, node_key)
    return np.where(found, ids[at] if len(keys) else 0, np.uint64(0)).astype(np.uint64)


def _lowest(component: np.ndarray, mask: np.ndarray, n_comp: int, first_seen: np.ndarray,
            node_key: np.ndarray) -> np.ndarray:
    """Per component, the index of its lowest-ranked (first_seen, node_key) node among `mask`, else -1."""
    idx = np.flatnonzero(mask)
    comp = component[idx]
    best = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(best, comp, first_seen[idx])
    tie = first_seen[idx] == best[comp]
    idx, comp = idx[tie], comp[tie]
    best_key = np.full(n_comp, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(best_key, comp, node_key[idx])
    win = idx[node_key[idx] == best_key[comp]]
    out = np.full(n_comp, -1, np.int64)
    out[component[win]] = win
    return out


def assign_ids(component, node_key, first_seen, previous=None) -> IdAssignment:
    """Universal id per node. `previous`: per-node uint64 array (0 = none), a dict or (keys, ids) (`previous_ids`).

    Rank of a node: (first_seen, node_key). A previous id P is *eligible* in component C when its origin (the node
    with mix(node_key) == P) is in C and still carries P. Candidates for C's id:
      * every eligible previous id, ranked by its origin;
      * a fresh id mix(m), ranked by m, where m is the lowest-ranked *orphan* of C (a node whose previous id is
        not eligible in C -- it was split away from that id's origin), or, when no node of C had a previous id,
        C's anchor (its lowest-ranked node).
    The lowest-ranked candidate survives. Every other eligible id in C goes to the merge log (old -> survivor).
    Consequences: a person keeps its id when identifiers attach (new nodes are never candidates next to a
    previous id); on a merge the id with the earliest origin survives; on a split the part holding the origin
    keeps the id and each other part gets mix(its lowest-ranked node). Merge log rows always go from a higher- to
    a lower-ranked id and ranks never change, so the log is acyclic across any number of runs. With no previous
    ids every person gets mix(anchor), so a full rebuild reproduces the ids whenever no identifier arrived with a
    first_seen earlier than the anchor of the person it joined (true when first_seen is the time we first saw
    it). Caveat: a fresh id of a split-off part may equal an id that was once merged away (it is live again).
    """
    component = np.asarray(component, np.int64)
    node_key = np.asarray(node_key, np.uint64)
    first_seen = np.asarray(first_seen, np.int64)
    n = len(component)
    prev = np.asarray(previous, np.uint64) if isinstance(previous, np.ndarray) else previous_ids(node_key, previous)
    n_comp = int(component.max()) + 1 if n else 0
    derived = mix(node_key)
    has_prev = prev != 0
    is_origin = has_prev & (derived == prev)
    # Where is each carried id's origin? Look the id up among the origins.
    o_idx = np.flatnonzero(is_origin)
    eligible = np.zeros(n, bool)
    if len(o_idx):
        o_sort = o_idx[np.argsort(prev[o_idx])]
        origin = o_sort[np.minimum(np.searchsorted(prev[o_sort], prev), len(o_sort) - 1)]
        eligible = has_prev & (prev[origin] == prev) & (component[origin] == component)
    comp_has_prev = np.bincount(component[has_prev], minlength=n_comp) > 0
    # fresh candidate: the lowest orphan, or the anchor when nobody in the component had an id
    fresh = _lowest(component, (has_prev & ~eligible) | ~comp_has_prev[component], n_comp, first_seen, node_key)
    cand = is_origin.copy()
    cand[fresh[fresh >= 0]] = True
    winner = _lowest(component, cand, n_comp, first_seen, node_key)
    survivor = np.where(is_origin[winner], prev[winner], derived[winner])
    uid = survivor[component]
    lost = is_origin & (prev != uid)
    return IdAssignment(uid, prev[lost], uid[lost])


@dataclass(frozen=True)
class RegionResult:
    """`restitch` output for the region nodes (in the order of `region`)."""

    region: np.ndarray  # indices (into the nodes passed to `restitch`) of the region nodes
    component: np.ndarray  # int64 person label per region node, 0..k-1 (no meaning across runs)
    cluster: np.ndarray  # int64 pre-guard component label per region node, 0..j-1
    shared: np.ndarray  # bool per region node
    blocked_reason: np.ndarray  # int8 per edge passed in (edges touch the region by construction)
    ids: IdAssignment  # uid per region node; the merge log of this run


def restitch(nodes: Nodes, edges: Edges, in_region: np.ndarray, shared_hint: np.ndarray, previous: np.ndarray,
             guards: Guards | None = None) -> RegionResult:
    """Recompute a *region*: whole pre-guard clusters (the ones new data touched) plus *boundary* nodes, the
    other endpoints of their edges. `edges` must be every edge with an endpoint in the region (so region nodes
    get exact degrees); a boundary node is outside every region cluster, so each of its edges into the region
    was blocked by the degree guard at an endpoint that stays shared (degrees only grow): a boundary node passes
    its stored degree-guard flag as `shared_hint`, and its own result is discarded. Everything after the degree
    guard (conflicts, limits) is decided inside one cluster, from the cluster's nodes and edges alone.
    `previous`: uint64 id per node (0 = none).
    Equals the region's part of a full stitch + assign_ids of all nodes and edges against `previous` -- the property
    `sendflowr.identity.run` (region queries in ClickHouse) relies on (tests/reference.py: `rebuild`, `update`)."""
    in_region = np.asarray(in_region, bool)
    region = np.flatnonzero(in_region)
    res = stitch(nodes, edges, guards, shared_hint=np.asarray(shared_hint, bool) & ~in_region)
    n = len(nodes)
    component = _compact(res.component[region], n) if len(region) else res.component[:0]
    ids = assign_ids(component, nodes.node_key[region], nodes.first_seen[region],
                     np.asarray(previous, np.uint64)[region])
    cluster = _compact(res.cluster[region], n) if len(region) else res.cluster[:0]
    return RegionResult(region, component, cluster, res.shared[region], res.blocked_reason, ids)
