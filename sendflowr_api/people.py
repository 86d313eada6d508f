"""Person lookup: universal_id, identifiers by type, curve summary, fallback level, materialization time.

The id, merges and curve come from the in-memory snapshot; the identifier list is one parameterized point
query on identity_nodes (lookups are for people and support tools, not the hot path). Identifiers travel in a
POST body, never in a URL, so access logs and proxies do not record them. A lookup returns every identifier of
a person, so it needs the API key: without SENDFLOWR_API_KEY these routes answer 403.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request

from sendflowr.clickhouse import get_client
from sendflowr.decisions.resolve import resolve
from sendflowr.decisions.service import UnusableIdentifiers, curves_for
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr.identity import graph
from sendflowr.sql_files import load_sql
from sendflowr.timing.decide import slot_name
from sendflowr_api.auth import UNAUTHORIZED
from sendflowr_api.deps import NOT_READY, current_snapshot
from sendflowr_api.models import UID_PATTERN, Identifiers, Person
from sendflowr_api.render import iso_z

router = APIRouter(tags=["people"])  # the API-key dependency is added by create_app when a key is set
TOP_HOURS = 5
NO_KEY = {403: {"description": "The API has no SENDFLOWR_API_KEY: person lookups are off.",
                "content": {"application/json": {"example": {"detail": "person lookups need SENDFLOWR_API_KEY"}}}}}


def _require_configured_key(request: Request) -> None:
    # Knowing one email must not reveal a person's phone, ids and other addresses to whoever can reach the API.
    if request.app.state.api_key_digest is None:
        raise HTTPException(status_code=403, detail="person lookups return a person's identifiers and need "
                            "SENDFLOWR_API_KEY on the server (and the key in X-API-Key)")


def _identifiers(request: Request, snapshot: DecisionSnapshot, uid: int, universal_id: str) -> dict[str, list[dict]]:
    state = request.app.state
    keys = snapshot.identity.node_key[snapshot.identity.node_uid == np.uint64(uid)]
    if state.query_client is None:
        state.query_client = get_client(state.settings, connect_timeout=2, send_receive_timeout=10)
    sql = load_sql("decisions/person_identifiers.sql", state.settings.clickhouse_database)
    rows = state.query_client.query(sql, parameters={"universal_id": universal_id,
                                                     "node_keys": [int(k) for k in keys]}).result_rows
    out: dict[str, list[dict]] = {}
    for identifier_type, value, first_seen, last_seen, shared in rows:
        out.setdefault(identifier_type, []).append({
            "value": value, "first_seen": iso_z(first_seen), "last_seen": iso_z(last_seen), "shared": bool(shared)})
    return out


def _person(request: Request, snapshot: DecisionSnapshot, uid: int, known: bool, redirected_from: str | None,
            email: str | None = None, phone: str | None = None) -> dict:
    universal_id = str(graph.format_uid(np.array([uid], np.uint64))[0])
    t = snapshot.timing
    chosen = curves_for(snapshot, np.array([uid], np.uint64), [email], [phone])
    curve = chosen.curves[0]
    rows, found = snapshot.timing_rows(np.array([uid], np.uint64))
    top = np.argsort(-curve, kind="stable")[:TOP_HOURS]
    try:
        identifiers = _identifiers(request, snapshot, uid, universal_id) if known else {}
    except Exception as exc:  # ClickHouse down: the snapshot still answers everything else
        raise HTTPException(status_code=503, detail=f"identifier lookup failed: {type(exc).__name__}") from exc
    return {
        "universal_id": universal_id, "known_person": known, "redirected_from": redirected_from,
        "merged_ids": graph.format_uid(snapshot.identity.universal_ids_of(uid)).tolist(),
        "identifiers": identifiers,
        "timing": {
            "fallback_level": str(chosen.level[0]), "cohort": str(chosen.cohort[0]),
            "evidence": float(chosen.evidence[0]),
            "engagements": int(t.engagements[rows[0]]) if found[0] else None,
            "best_hour_of_week": int(top[0]), "best_slot": slot_name(int(top[0])),
            "top_hours": [{"hour_of_week": int(h), "slot": slot_name(int(h)), "value": float(curve[h])} for h in top],
            "curve": [round(float(v), 6) for v in curve],
        },
        "timing_version": snapshot.timing_version, "materialized_at": iso_z(snapshot.timing.materialized_at),
        "snapshot_version": snapshot.version,
    }


@router.post("/people/lookup", response_model=Person, responses={**UNAUTHORIZED, **NO_KEY, **NOT_READY},
             summary="Find a person by any identifier",
             description="Resolves like /timing-decision. An unknown person is answered too (known_person false) "
             "with the universal_id stitching will assign and the cohort/global curve that would decide.")
def lookup(body: Identifiers, request: Request) -> dict:
    _require_configured_key(request)
    snapshot = current_snapshot(request)
    res = resolve(snapshot.identity, request.app.state.normalize_cache,
                  {k: [v] for k, v in body.identifiers().items() if v is not None}, [body.universal_id], 1)
    if res.errors[0] is not None:
        exc = UnusableIdentifiers(res.errors[0])
        raise HTTPException(status_code=422, detail=[{"loc": ["body", f], "msg": m, "type": "unusable_identifier"}
                                                     for f, m in exc.fields.items()])
    return _person(request, snapshot, int(res.uid[0]), bool(res.known[0]),
                   body.universal_id if res.redirected[0] else None, body.email, body.phone)


@router.get("/people/{universal_id}", response_model=Person,
            responses={**UNAUTHORIZED, **NO_KEY, **NOT_READY,
                       404: {"description": "No such universal_id (never assigned)."}},
            summary="A person by universal_id", description="An id merged into another person answers with the "
            "survivor (`redirected_from` shows the requested id).")
def person(universal_id: Annotated[str, Path(pattern=UID_PATTERN, examples=["sf_b8783dbfc0024695"])],
           request: Request) -> dict:
    _require_configured_key(request)
    snapshot = current_snapshot(request)
    requested = graph.parse_uid(np.array([universal_id], "U19"))
    survivor, known = snapshot.identity.survivors(requested)
    _, has_curve = snapshot.timing_rows(survivor)
    if not (known[0] or has_curve[0]):
        raise HTTPException(status_code=404, detail="unknown universal_id")
    redirected = universal_id if survivor[0] != requested[0] else None
    return _person(request, snapshot, int(survivor[0]), bool(known[0]), redirected)
