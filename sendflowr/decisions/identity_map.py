"""In-memory identity map: raw identifier -> node -> universal_id, with merged-away ids sent to their survivor.

Built from what the identity_graph asset materialized (sql/decisions/), held as sorted uint64 columns (16 bytes
per entry; no per-identifier Python objects), so a snapshot of millions of identifiers stays small and a lookup
is a binary search. Identifiers never seen are normalized and keyed with the SAME functions stitching uses
(`sendflowr.identity.normalize.normalize_many`, `sendflowr.identity.graph.identifier_key`), so the id derived
for a new person is the one stitching will assign: mix(lowest node key) of the request's identifiers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup, unique
from sendflowr.contract import IDENTIFIER_PRIORITY  # noqa: F401 (the order in which identifiers decide the person)
from sendflowr.identity import graph
from sendflowr.identity.graph import raw_hash, raw_hashes  # noqa: F401 (the API's lookup key of raw identifiers)
from sendflowr.identity.normalize import normalize_many
from sendflowr.sql_files import load_sql

TYPE_CODE = {name: code for code, name in enumerate(graph.TYPE_NAMES)}
_EMPTY = np.zeros(0, np.uint64)


@dataclass(frozen=True)
class Normalized:
    """One identifier after normalization: its node key, or the reason stitching would reject it."""

    node_key: int  # 0 when rejected
    reason: str | None


class NormalizeCache:
    """Bounded LRU of normalization results for identifiers the snapshot does not know. Normalizing one value
    costs milliseconds (pyarrow kernels built for columns), so repeated unknown identifiers are served from here."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, str], Normalized] = OrderedDict()
        self._lock = Lock()

    def get_many(self, types: list[str], raws: list[str]) -> list[Normalized]:
        out: list[Normalized | None] = []
        missing: list[int] = []
        with self._lock:
            for i, pair in enumerate(zip(types, raws, strict=True)):
                hit = self._data.get(pair)
                if hit is not None:
                    self._data.move_to_end(pair)
                else:
                    missing.append(i)
                out.append(hit)
        if missing:
            fresh = normalize_identifiers([types[i] for i in missing], [raws[i] for i in missing])
            with self._lock:
                for i, result in zip(missing, fresh, strict=True):
                    out[i] = result
                    self._data[(types[i], raws[i])] = result
                while len(self._data) > self.size:
                    self._data.popitem(last=False)
        return out  # type: ignore[return-value]


def normalize_identifiers(types: list[str], raws: list[str]) -> list[Normalized]:
    """Column-wise normalization + node keys of a batch of (type, raw) identifiers."""
    col = normalize_many(pa.array(types, pa.string()), pa.array(raws, pa.string()))
    ok = np.asarray(col.accepted.to_numpy(zero_copy_only=False), bool)
    keys = np.zeros(len(types), np.uint64)
    if ok.any():
        codes = np.array([TYPE_CODE[t] for t in types], np.int8)
        keys[ok] = graph.identifier_key(codes[ok], col.value.to_numpy(zero_copy_only=False)[ok])
    reasons = col.reason.to_pylist()
    return [Normalized(int(k), r) for k, r in zip(keys.tolist(), reasons, strict=True)]


@dataclass(frozen=True)
class IdentityMap:
    node_key: np.ndarray  # uint64, sorted
    node_uid: np.ndarray  # uint64 universal id of each node
    raw_hash: np.ndarray  # uint64, sorted: `raw_hash` of every raw identifier stitching has seen
    raw_node: np.ndarray  # uint64 node key of each raw identifier, 0 = rejected by normalization
    live_uid: np.ndarray  # uint64, sorted unique ids in use
    merged_old: np.ndarray  # uint64, sorted: ids merged away and not live again ...
    merged_final: np.ndarray  # ... -> the id that finally survived (merge chains followed to their end)
    node_shared: np.ndarray | None = None  # uint8 per node: 0 personal, else shared (graph.SHARED_*); None = none

    def __post_init__(self) -> None:
        if self.node_shared is None:
            object.__setattr__(self, "node_shared", np.zeros(len(self.node_key), np.uint8))

    @classmethod
    def empty(cls) -> IdentityMap:
        return cls(*(_EMPTY,) * 7)

    @property
    def people(self) -> int:
        return len(self.live_uid)

    @property
    def identifiers(self) -> int:
        return len(self.node_key)

    def raw_nodes(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(node key, known) per raw hash: known=False means stitching never saw that raw value."""
        at, found = lookup(self.raw_hash, hashes)
        return np.where(found, self.raw_node[at] if len(self.raw_node) else 0, 0).astype(np.uint64), found

    def node_of_raw(self, h: int) -> int | None:
        """Scalar `raw_nodes`: node key of one raw hash (0 = rejected), None when never seen."""
        at = int(np.searchsorted(self.raw_hash, np.uint64(h)))
        if at < len(self.raw_hash) and int(self.raw_hash[at]) == h:
            return int(self.raw_node[at])
        return None

    def node_uid_of(self, key: int) -> tuple[int, bool]:
        """Scalar `node_uids`: (uid of one node key, 0 when not in the graph; whether the node is shared)."""
        at = int(np.searchsorted(self.node_key, np.uint64(key)))
        if at < len(self.node_key) and int(self.node_key[at]) == key:
            return int(self.node_uid[at]), bool(self.node_shared[at])
        return 0, False

    def node_uids(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 universal id of each node key, 0 for a node not in the graph; whether the node is shared)."""
        at, found = lookup(self.node_key, keys)
        if not len(self.node_key):
            return np.zeros(len(keys), np.uint64), np.zeros(len(keys), bool)
        return (np.where(found, self.node_uid[at], 0).astype(np.uint64),
                found & (self.node_shared[at] != 0))

    def survivors(self, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id after following the merge log, and whether it is a known (live or merged) id."""
        at, merged = lookup(self.merged_old, uids)
        out = np.where(merged, self.merged_final[at] if len(self.merged_final) else 0, uids).astype(np.uint64)
        _, live = lookup(self.live_uid, uids)
        return out, merged | live

    def universal_ids_of(self, uid: int) -> np.ndarray:
        """Ids that were merged into `uid` (for the lookup endpoint)."""
        return self.merged_old[self.merged_final == np.uint64(uid)]


def follow_merges(old: np.ndarray, new: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge log rows (old -> new, oldest first) -> (sorted old ids, final survivor). Chains a -> b -> c resolve
    to c by repeated vectorized lookups (the log is acyclic, see graph.assign_ids; at most len(log) rounds).
    An id that is live again (a split gave it back) is not redirected."""
    if not len(old):
        return _EMPTY, _EMPTY
    # The latest row wins for an id merged more than once (it came back live and merged again).
    last = len(old) - 1 - np.unique(old[::-1], return_index=True)[1]
    old, new = old[last], new[last]  # np.unique sorts: old is sorted now
    _, is_live = lookup(live, old)
    old, new = old[~is_live], new[~is_live]  # a live id is a person again: chains stop there
    final = new.copy()
    for _ in range(len(old)):
        at, found = lookup(old, final)
        step = np.where(found, new[at], final)
        if (step == final).all():
            break
        final = step
    return old, final


def _uids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False) if isinstance(column, pa.Array) else column.to_numpy()
    return graph.parse_uid(values.astype("U19")) if len(values) else _EMPTY


def load_identity_map(client: Client, database: str) -> IdentityMap:
    nodes = client.query_arrow(load_sql("decisions/identity_nodes.sql", database), use_strings=True)
    raw = client.query_arrow(load_sql("decisions/identity_raw.sql", database))
    merges = client.query_arrow(load_sql("decisions/merge_log.sql", database), use_strings=True)
    node_key = nodes.column("node_key").to_numpy().astype(np.uint64)
    node_uid = _uids(nodes.column("universal_id"))
    live = unique(node_uid)
    merged_old, merged_final = follow_merges(_uids(merges.column("old_id")), _uids(merges.column("new_id")), live)
    return IdentityMap(
        node_key=node_key, node_uid=node_uid,
        raw_hash=raw.column("raw_hash").to_numpy().astype(np.uint64),
        raw_node=raw.column("node_key").to_numpy().astype(np.uint64),
        live_uid=live, merged_old=merged_old, merged_final=merged_final,
        node_shared=nodes.column("shared").to_numpy().astype(np.uint8))


def identity_stamp(client: Client, database: str) -> tuple:
    """Changes whenever an identity run changed anything the map holds (sql/decisions/identity_stamp.sql)."""
    return tuple(client.query(load_sql("decisions/identity_stamp.sql", database)).result_rows[0])
