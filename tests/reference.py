"""Reference implementations the tests hold the served code to; no production code runs them.

- `decide`: one decision, row by row, on top of `decide_many` (sendflowr.timing.decide).
- `decide_one`: one request alone, scalar resolution (`resolve_one`) and `decide`; the API decides requests
  together (sendflowr.decisions.service.decide_requests) and must give the same answers, explanation included.
- `Snapshot`, `rebuild`, `update`: the identity graph in memory, a full run and an incremental one on top of
  `stitch` / `restitch` / `assign_ids` (sendflowr.identity.graph); the ClickHouse run must equal them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.resolve import resolve_one
from sendflowr.decisions.service import DecisionResult, UnusableIdentifiers, curve_for_one, explain
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity.graph import (
    NODE_COLUMNS,
    SHARED_DEGREE,
    Edges,
    Guards,
    IdAssignment,
    Nodes,
    StitchResult,
    _compact,
    assign_ids,
    restitch,
    stitch,
)
from sendflowr.timing.decide import HOURS, Calibration, DecisionError, _to_ms, decide_many

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


@dataclass(frozen=True)
class Decision:
    delivery_at: datetime
    trigger_at: datetime
    confidence: float
    expected_engagement: float
    fallback_level: str
    explanation: str




def decide(curve: np.ndarray, *, evidence: float, fallback_level: str, send_after: datetime,
           send_before: datetime, latency_seconds: float, now: datetime, calibration: Calibration) -> Decision:
    """One decision (exactly decide_many on one row); raises DecisionError naming the field to blame."""
    curve = np.asarray(curve, dtype=np.float32)
    if curve.shape != (HOURS,):
        raise DecisionError("curve", f"curve must have {HOURS} values, got shape {curve.shape}")
    for name, moment in (("send_after", send_after), ("send_before", send_before), ("now", now)):
        _to_ms(moment, name)
    batch = decide_many(curve[None, :], np.array([evidence], dtype=np.float64),
                        np.array([fallback_level], dtype=object), send_after, send_before,
                        np.array([latency_seconds], dtype=np.float64), now, calibration)
    if batch.error_field[0] is not None:
        raise DecisionError(batch.error_field[0], batch.error_message[0])
    delivery_ms = int(batch.delivery_at[0].astype(np.int64))
    trigger_ms = int(batch.trigger_at[0].astype(np.int64))
    explanation = explain(True, None, delivery_ms, fallback_level, evidence, float(batch.expected_engagement[0]),
                          float(batch.confidence[0]), calibration.fitted)
    return Decision(delivery_at=_from_ms(delivery_ms), trigger_at=_from_ms(trigger_ms),
                    confidence=float(batch.confidence[0]), expected_engagement=float(batch.expected_engagement[0]),
                    fallback_level=fallback_level, explanation=explanation)


def decide_one(snapshot: DecisionSnapshot, cache: NormalizeCache, identifiers: Mapping[str, str | None],
               universal_id: str | None, send_after: datetime, send_before: datetime, latency_seconds: float,
               now: datetime) -> DecisionResult:
    """The model's decision for one request alone (the treatment arm; `decide_requests` adds the control arm).
    Raises UnusableIdentifiers or DecisionError (with `.field`) for requests that cannot get one."""
    res = resolve_one(snapshot.identity, cache, identifiers, universal_id)
    if res.errors[0] is not None:
        raise UnusableIdentifiers(res.errors[0])
    uid = int(res.uid[0])
    shared = res.shared_only(0)
    curve, evidence, level, cohort = curve_for_one(snapshot, uid, identifiers.get("email"), identifiers.get("phone"),
                                                   personal=shared is None)
    d = decide(curve, evidence=evidence, fallback_level=level, send_after=send_after, send_before=send_before,
               latency_seconds=latency_seconds, now=now, calibration=snapshot.timing.calibration)
    known = bool(res.known[0])
    explanation = explain(known, shared, _ms(d.delivery_at), level, evidence, d.expected_engagement, d.confidence,
                          snapshot.timing.calibration.fitted)
    return DecisionResult(universal_id=res.universal_id(0), trigger_at=d.trigger_at, delivery_at=d.delivery_at,
                          confidence=d.confidence, expected_engagement=d.expected_engagement,
                          fallback_level=d.fallback_level, explanation=explanation, known_person=known,
                          cohort=cohort, merged_into=bool(res.redirected[0]), evidence=evidence,
                          model_delivery_at=d.delivery_at, model_expected_engagement=d.expected_engagement)


@dataclass(frozen=True)
class Snapshot:
    """Everything a run leaves behind; `update` needs nodes' cluster, shared flag and uid plus the edges."""

    nodes: Nodes
    edges: Edges
    result: StitchResult
    ids: IdAssignment  # ids.uid is per node of the whole graph; the merge log is this run's
    region: np.ndarray  # node indices this run recomputed (all of them for `rebuild`)


def rebuild(nodes: Nodes, edges: Edges, guards: Guards | None = None, previous=None) -> Snapshot:
    """Full run: stitch everything, then assign ids against `previous` (None = from scratch)."""
    result = stitch(nodes, edges, guards)
    ids = assign_ids(result.component, nodes.node_key, nodes.first_seen, previous)
    return Snapshot(nodes, edges, result, ids, np.arange(len(nodes)))




def update(snap: Snapshot, new_nodes: Nodes, new_edges: Edges, guards: Guards | None = None) -> Snapshot:
    """Incremental run: `new_nodes` are appended after the snapshot's nodes; `new_edges` index the combined nodes.

    Only the *region* is recomputed (`restitch`): every node of every cluster (pre-guard component) touched by a
    new edge or new node, plus all edges with an endpoint in it. Other nodes cannot change: their clusters got no
    edge and their shared flags (which only grow with new edges) are unchanged. So the result equals
    `rebuild(all nodes, all edges, guards, previous=snap.ids.uid)`. Guards must be the ones of the snapshot
    (changing guards needs a rebuild). Against ClickHouse the region comes from SQL (sendflowr.identity.run);
    here it is a vectorized scan of the in-memory columns.
    """
    n0 = len(snap.nodes)
    nodes = Nodes(*(np.concatenate([getattr(snap.nodes, c), getattr(new_nodes, c)]) for c in NODE_COLUMNS))
    edges = Edges(*(np.concatenate([getattr(snap.edges, c), getattr(new_edges, c)])
                    for c in ("src", "dst", "edge_count", "edge_first_seen")))
    n, n_new = len(nodes), len(new_nodes)
    n_cl0 = int(snap.result.cluster.max()) + 1 if n0 else 0
    cluster0 = np.concatenate([snap.result.cluster, n_cl0 + np.arange(n_new)])
    touched = np.zeros(n_cl0 + n_new, bool)
    touched[cluster0[new_edges.src]] = touched[cluster0[new_edges.dst]] = True
    touched[n_cl0:] = True
    in_region = touched[cluster0]
    region = np.flatnonzero(in_region)
    e_sel = np.flatnonzero(in_region[edges.src] | in_region[edges.dst])
    sub = np.unique(np.concatenate([region, edges.src[e_sel], edges.dst[e_sel]]))
    remap = np.full(n, -1, np.int64)
    remap[sub] = np.arange(len(sub))
    shared = np.concatenate([snap.result.shared, np.zeros(n_new, np.uint8)])
    prev = np.concatenate([snap.ids.uid, np.zeros(n_new, np.uint64)])
    res = restitch(nodes.take(sub), edges.take(e_sel, remap), in_region[sub], shared[sub] == SHARED_DEGREE,
                   prev[sub], guards)

    def relabel(old: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.concatenate([old, np.zeros(n_new, np.int64)])
        base = int(old.max()) + 1 if n0 else 0
        out[region] = base + new
        return _compact(out, base + len(sub))

    component = relabel(snap.result.component, res.component)
    cluster = relabel(snap.result.cluster, res.cluster)
    shared[region] = res.shared
    reason = np.concatenate([snap.result.blocked_reason, np.zeros(len(new_edges), np.int8)])
    reason[e_sel] = res.blocked_reason
    uid = prev.copy()
    uid[region] = res.ids.uid
    result = StitchResult(component, cluster, shared, reason)
    return Snapshot(nodes, edges, result, IdAssignment(uid, res.ids.merged_old, res.ids.merged_into), region)
