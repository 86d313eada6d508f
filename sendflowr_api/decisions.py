"""POST /timing-decision (the seed's contract) and POST /timing-decisions (a whole campaign)."""

from __future__ import annotations

import logging
from collections import Counter

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp

from sendflowr.decisions import records
from sendflowr.decisions.arms import CONTROL, TREATMENT
from sendflowr.decisions.redact import redact_identifiers
from sendflowr.decisions.service import DecisionError, DecisionRequest, UnusableIdentifiers, decide_batch
from sendflowr_api.auth import UNAUTHORIZED, key_matches, require_api_key
from sendflowr_api.body import read_body
from sendflowr_api.deps import NOT_READY, current_snapshot
from sendflowr_api.models import (
    IDENTIFIER_FIELDS,
    BatchDecisionRequest,
    BatchDecisionResponse,
    TimingDecision,
    TimingDecisionRequest,
)
from sendflowr_api.render import iso_z, iso_z_many

log = logging.getLogger("sendflowr.api")
router = APIRouter()  # the API-key dependency is added by create_app when a key is set
_JSON = "application/json"


def _unprocessable(errors: list[tuple[str, str, str]]) -> Response:
    """422 in FastAPI's validation-error shape: [{loc: [body, field], msg, type}]."""
    detail = [{"loc": ["body", field], "msg": msg, "type": kind} for field, msg, kind in errors]
    return Response(orjson.dumps({"detail": detail}), status_code=422, media_type=_JSON)


PATH = "/timing-decision"


def fast_decisions(app: ASGIApp, route: APIRoute) -> ASGIApp:
    """POST /timing-decision with a fast path for well-formed requests, same responses; `app` is the rest of the
    stack (FastAPI's routing and handler), `route` the endpoint's APIRoute.

    FastAPI's request handling (exception middleware, routing, Python JSON parsing, then validation, content-type
    parsing with the email package, dependency solving, two exit stacks per request) cost more than the decision
    itself. A request with `Content-Type: application/json`, a valid API key (when one is configured) and a body
    the request model accepts is validated straight from bytes by pydantic's JSON parser and decided here, as
    the innermost middleware (inside the guard and the metrics, before routing). Anything else (bad JSON, a 422,
    a 401, other content types, body limits, no snapshot yet, other paths) goes on to FastAPI's own handler with
    the body replayed, so every error is exactly the one FastAPI gives. pydantic's parser accepts no body that
    Python's json + the model would reject (tests/test_api_fast_path.py holds the two paths to the same
    responses).
    """
    # Only dependencies checked inline below, and no route body limit; otherwise FastAPI's path only.
    if route.max_body_size is not None or any(d.dependency is not require_api_key for d in route.dependencies):
        return app

    async def fast(scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != PATH:
            return await app(scope, receive, send)
        raw, replayed = await read_body(receive)
        if raw is None:  # a disconnect: FastAPI's handler deals with it
            return await app(scope, replayed, send)
        content_type = presented = None
        for name, value in scope["headers"]:  # first occurrence wins, as in Starlette's Headers.get
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"x-api-key" and presented is None:
                presented = value.decode("latin-1")
        state = scope["app"].state
        if (raw and content_type == b"application/json" and MAX_BODY_SIZE_SCOPE_KEY not in scope
                and state.holder.current is not None and key_matches(state.api_key_digest, presented)):
            try:
                body = TimingDecisionRequest.model_validate_json(raw)
            except ValidationError:
                body = None  # re-validated by FastAPI's handler for its exact 422
            if body is not None:
                response = await timing_decision(body, Request(scope, receive, send))
                return await response(scope, receive, send)
        return await app(scope, replayed, send)

    return fast


async def timing_decision(body: TimingDecisionRequest, request: Request) -> Response:
    # async, on the event loop: requests arriving together share one vectorized decision (coalesce.py)
    snapshot = current_snapshot(request)
    metrics = request.app.state.metrics
    identifiers = body.identifiers()
    try:
        result = await request.app.state.coalescer.decide(snapshot, DecisionRequest(
            identifiers, body.universal_id, body.send_after, body.send_before, body.latency_estimate_seconds,
            body.campaign_id, body.message_id))
    except UnusableIdentifiers as exc:
        metrics.decision_errors.labels("single", "identifiers").inc()
        return _unprocessable([(f if f in IDENTIFIER_FIELDS else "identifiers", msg, "unusable_identifier")
                               for f, msg in exc.fields.items()])
    except DecisionError as exc:
        metrics.decision_errors.labels("single", exc.field).inc()
        return _unprocessable([(exc.field, str(exc), "undecidable")])
    metrics.single_decision(result.fallback_level, result.arm)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("decision %s %s -> %s (%s)", redact_identifiers(identifiers), result.universal_id,
                  result.trigger_at.isoformat(), result.fallback_level)
    return Response(orjson.dumps({
        "universal_id": result.universal_id,
        "trigger_timestamp_utc": iso_z(result.trigger_at),
        "confidence_score": round(result.confidence, 2),
        "delivery_timestamp_utc": iso_z(result.delivery_at),
        "fallback_level": result.fallback_level,
        "expected_engagement": round(result.expected_engagement, 6),
        "known_person": result.known_person,
        "explanation": result.explanation,
        "snapshot_version": snapshot.version,
        "arm": result.arm,
    }), media_type=_JSON)


router.add_api_route(
    PATH, timing_decision, methods=["POST"],
    response_model=TimingDecision, responses={**UNAUTHORIZED, **NOT_READY},
    summary="When to trigger one send",
    description="Resolves the identifiers to a universal_id (unknown people get the id stitching will assign), "
    "takes their curve (person, else cohort, else global) and returns the trigger moment: the best delivery "
    "moment in [send_after, send_before) minus the latency; in the randomized control arm (`arm: control`, "
    "SENDFLOWR_API_CONTROL_SHARE of decisions) a uniformly random moment instead. Every decision is recorded in "
    "the decision log with the optional campaign_id and message_id. 422 names the field at fault: malformed or "
    "naive timestamps, send_before not after send_after, a window already past or too short for the latency, "
    "negative or absurd latency, no usable identifier, unknown fields.")


@router.post(
    "/timing-decisions", response_model=BatchDecisionResponse, responses={**UNAUTHORIZED, **NOT_READY},
    summary="When to trigger every send of a campaign",
    description="One window and latency for up to SENDFLOWR_API_BATCH_MAX_SIZE recipients (10,000 by default). "
    "Decisions come back in request order with their `index` and `arm` (the control arm gets a uniformly random "
    "moment; a recipient's arm is the one a single call with the same campaign_id gets). A recipient that cannot be "
    "decided (no usable identifier, window too short for the latency) gets an `error` and the others are "
    "unaffected; a malformed request (bad window, wrong types, unknown fields, too many recipients) is a 422 for "
    "the whole batch. Every decision is recorded in the decision log with the batch's campaign_id and each "
    "recipient's message_id.")
def timing_decisions(body: BatchDecisionRequest, request: Request) -> Response:
    # a plain def: a large batch runs in the thread pool instead of stalling the event loop
    snapshot = current_snapshot(request)
    limit = request.app.state.settings.api_batch_max_size
    recipients = body.recipients
    if len(recipients) > limit:
        raise RequestValidationError([{"loc": ("body", "recipients"), "type": "too_long",
                                       "msg": f"at most {limit} recipients per request, got {len(recipients)}"}])
    state = request.app.state
    share, exploration = state.settings.api_control_share, state.settings.api_exploration
    columns = {f: [getattr(r, f) for r in recipients] for f in IDENTIFIER_FIELDS}
    now = state.clock()
    result = decide_batch(snapshot, state.normalize_cache, columns, [r.universal_id for r in recipients],
                          body.send_after, body.send_before, body.latency_estimate_seconds, now, share,
                          body.campaign_id, exploration)
    trigger, delivery = iso_z_many(result.trigger_at), iso_z_many(result.delivery_at)
    confidence = result.confidence.round(2).tolist()
    levels, known, uids = result.fallback_level.tolist(), result.known_person.tolist(), result.universal_id.tolist()
    control = result.control.tolist()
    items = []
    for i, field in enumerate(result.error_field):
        if field is None:
            items.append({"index": i, "universal_id": uids[i], "trigger_timestamp_utc": trigger[i],
                          "confidence_score": confidence[i], "delivery_timestamp_utc": delivery[i],
                          "fallback_level": levels[i], "known_person": known[i],
                          "arm": CONTROL if control[i] else TREATMENT})
        else:
            items.append({"index": i, "universal_id": uids[i] or None, "known_person": known[i],
                          "error": {"field": field, "message": result.error_message[i]}})
    failed = sum(f is not None for f in result.error_field)
    state.decision_log.offer(len(items) - failed, records.batch, records.epoch_ms(now), snapshot.version, share,
                             body.campaign_id, [r.message_id for r in recipients], records.epoch_ms(body.send_after),
                             records.epoch_ms(body.send_before), body.latency_estimate_seconds, result, exploration)
    metrics = state.metrics
    for level, count in Counter(levels).items():
        if level is not None:  # failed rows carry no level
            metrics.decisions.labels("batch", level).inc(count)
    if in_control := sum(control):
        metrics.control_decisions.labels("batch").inc(in_control)
    if failed:
        metrics.decision_errors.labels("batch", "recipients").inc(failed)
    log.info("batch of %d recipients: %d decided, %d failed (snapshot %s)", len(items), len(items) - failed, failed,
             snapshot.version)
    return Response(orjson.dumps({"snapshot_version": snapshot.version, "decided": len(items) - failed,
                                  "failed": failed, "decisions": items}), media_type=_JSON)
