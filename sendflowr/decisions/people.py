"""Person lookup: who a request's identifiers (or a universal_id) name, and what is known of them: merged ids,
identifiers by type, the curve that would decide (summary and top hours), the materialization it comes from.

The id, merges and curve come from the in-memory snapshot; the identifier list is one parameterized point query on
identity_nodes (lookups are for people and support tools, not the hot path). Times are datetimes: rendering is
the adapter's (sendflowr_api/people.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.resolve import resolve
from sendflowr.decisions.service import UnusableIdentifiers, curves_for
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity import graph
from sendflowr.sql_files import load_sql
from sendflowr.timing.decide import slot_name

TOP_HOURS = 5


class UnknownPerson(LookupError):
    """A universal_id that was never assigned and has no curve."""


@dataclass(frozen=True)
class Found:
    uid: int
    known: bool
    redirected_from: str | None


def find(snapshot: DecisionSnapshot, cache: NormalizeCache, identifiers: Mapping[str, str | None],
         universal_id: str | None) -> Found:
    """The person the identifiers name, resolved as a decision resolves them; raises UnusableIdentifiers."""
    res = resolve(snapshot.identity, cache, {k: [v] for k, v in identifiers.items() if v is not None},
                  [universal_id], 1)
    if res.errors[0] is not None:
        raise UnusableIdentifiers(res.errors[0])
    return Found(int(res.uid[0]), bool(res.known[0]), universal_id if res.redirected[0] else None)


def by_universal_id(snapshot: DecisionSnapshot, universal_id: str) -> Found:
    """The person behind an id (its survivor when it was merged away); raises UnknownPerson."""
    requested = graph.parse_uid(np.array([universal_id], "U19"))
    survivor, known = snapshot.identity.survivors(requested)
    _, has_curve = snapshot.timing_rows(survivor)
    if not (known[0] or has_curve[0]):
        raise UnknownPerson(universal_id)
    return Found(int(survivor[0]), bool(known[0]), universal_id if survivor[0] != requested[0] else None)


def identifiers_of(client: Client, database: str, snapshot: DecisionSnapshot, uid: int) -> dict[str, list[dict]]:
    """A person's identifiers by type, as materialized (values, first/last seen, shared)."""
    keys = snapshot.identity.node_key[snapshot.identity.node_uid == np.uint64(uid)]
    rows = client.query(load_sql("decisions/person_identifiers.sql", database), parameters={
        "universal_id": graph.format_uid(np.array([uid], np.uint64))[0],
        "node_keys": [int(k) for k in keys]}).result_rows
    out: dict[str, list[dict]] = {}
    for identifier_type, value, first_seen, last_seen, shared in rows:
        out.setdefault(identifier_type, []).append(
            {"value": value, "first_seen": first_seen, "last_seen": last_seen, "shared": bool(shared)})
    return out


def describe(snapshot: DecisionSnapshot, found: Found, identifiers: dict[str, list[dict]],
             email: str | None = None, phone: str | None = None) -> dict[str, Any]:
    """The person as the lookup answers (identifiers from `identifiers_of`, or {} for an unknown person)."""
    uid = found.uid
    t = snapshot.timing
    chosen = curves_for(snapshot, np.array([uid], np.uint64), [email], [phone])
    curve = chosen.curves[0]
    rows, has_row = snapshot.timing_rows(np.array([uid], np.uint64))
    top = np.argsort(-curve, kind="stable")[:TOP_HOURS]
    return {
        "universal_id": str(graph.format_uid(np.array([uid], np.uint64))[0]), "known_person": found.known,
        "redirected_from": found.redirected_from,
        "merged_ids": graph.format_uid(snapshot.identity.universal_ids_of(uid)).tolist(),
        "identifiers": identifiers,
        "timing": {
            "fallback_level": str(chosen.level[0]), "cohort": str(chosen.cohort[0]),
            "evidence": float(chosen.evidence[0]),
            "engagements": int(t.engagements[rows[0]]) if has_row[0] else None,
            "best_hour_of_week": int(top[0]), "best_slot": slot_name(int(top[0])),
            "top_hours": [{"hour_of_week": int(h), "slot": slot_name(int(h)), "value": float(curve[h])} for h in top],
            "curve": [round(float(v), 6) for v in curve],
        },
        "timing_version": snapshot.timing_version, "materialized_at": snapshot.timing.materialized_at,
        "snapshot_version": snapshot.version,
    }
