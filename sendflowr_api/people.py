"""Person lookup routes: a thin adapter over sendflowr.decisions.people (who, and what is known of them).

Identifiers travel in a POST body, never in a URL, so access logs and proxies do not record them. A lookup returns
every identifier of a person, so it needs the API key: without SENDFLOWR_API_KEY these routes answer 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request

from sendflowr.clickhouse import get_client
from sendflowr.decisions import people
from sendflowr.decisions.service import UnusableIdentifiers
from sendflowr.decisions.snapshot import DecisionSnapshot
from sendflowr_api.auth import UNAUTHORIZED
from sendflowr_api.deps import NOT_READY, current_snapshot
from sendflowr_api.models import UID_PATTERN, Identifiers, Person
from sendflowr_api.render import iso_z

router = APIRouter(tags=["people"])  # the API-key dependency is added by create_app when a key is set
NO_KEY = {403: {"description": "The API has no SENDFLOWR_API_KEY: person lookups are off.",
                "content": {"application/json": {"example": {"detail": "person lookups need SENDFLOWR_API_KEY"}}}}}


def _require_configured_key(request: Request) -> None:
    # Knowing one email must not reveal a person's phone, ids and other addresses to whoever can reach the API.
    if request.app.state.api_key_digest is None:
        raise HTTPException(status_code=403, detail="person lookups return a person's identifiers and need "
                            "SENDFLOWR_API_KEY on the server (and the key in X-API-Key)")


def _person(request: Request, snapshot: DecisionSnapshot, found: people.Found, email: str | None = None,
            phone: str | None = None) -> dict:
    state = request.app.state
    identifiers = {}
    if found.known:
        try:
            if state.query_client is None:
                state.query_client = get_client(state.settings, connect_timeout=2, send_receive_timeout=10)
            identifiers = people.identifiers_of(state.query_client, state.settings.clickhouse_database, snapshot,
                                                found.uid)
        except Exception as exc:  # ClickHouse down: the snapshot still answers everything else
            raise HTTPException(status_code=503, detail=f"identifier lookup failed: {type(exc).__name__}") from exc
    for rows in identifiers.values():
        for row in rows:
            row["first_seen"], row["last_seen"] = iso_z(row["first_seen"]), iso_z(row["last_seen"])
    answer = people.describe(snapshot, found, identifiers, email, phone)
    answer["materialized_at"] = iso_z(answer["materialized_at"])
    return answer


@router.post("/people/lookup", response_model=Person, responses={**UNAUTHORIZED, **NO_KEY, **NOT_READY},
             summary="Find a person by any identifier",
             description="Resolves like /timing-decision. An unknown person is answered too (known_person false) "
             "with the universal_id stitching will assign and the cohort/global curve that would decide.")
def lookup(body: Identifiers, request: Request) -> dict:
    _require_configured_key(request)
    snapshot = current_snapshot(request)
    try:
        found = people.find(snapshot, request.app.state.normalize_cache, body.identifiers(), body.universal_id)
    except UnusableIdentifiers as exc:
        raise HTTPException(status_code=422, detail=[{"loc": ["body", f], "msg": m, "type": "unusable_identifier"}
                                                     for f, m in exc.fields.items()]) from None
    return _person(request, snapshot, found, body.email, body.phone)


@router.get("/people/{universal_id}", response_model=Person,
            responses={**UNAUTHORIZED, **NO_KEY, **NOT_READY,
                       404: {"description": "No such universal_id (never assigned)."}},
            summary="A person by universal_id", description="An id merged into another person answers with the "
            "survivor (`redirected_from` shows the requested id).")
def person(universal_id: Annotated[str, Path(pattern=UID_PATTERN, examples=["sf_b8783dbfc0024695"])],
           request: Request) -> dict:
    _require_configured_key(request)
    snapshot = current_snapshot(request)
    try:
        found = people.by_universal_id(snapshot, universal_id)
    except people.UnknownPerson:
        raise HTTPException(status_code=404, detail="unknown universal_id") from None
    return _person(request, snapshot, found)
