"""HTTP entry point: the app factory, lifespan (background snapshot refresher), health, readiness, metrics.

`uvicorn sendflowr_api.app:app` serves the module-level app built from SENDFLOWR_* settings. Tests build their
own with `create_app(settings, holder=...)`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp

from sendflowr import __version__
from sendflowr.asgi_guard import RequestGuard
from sendflowr.clickhouse import get_client, is_loopback
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.log import DecisionLog
from sendflowr.decisions.service import decision_clock
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.settings import Settings, get_settings
from sendflowr_api import decisions, people
from sendflowr_api.auth import (
    API_KEY_HEADER,
    UNAUTHORIZED_DETAIL,
    check_exposure,
    key_digest,
    key_guard,
    require_api_key,
)
from sendflowr_api.body import read_body
from sendflowr_api.coalesce import Coalescer
from sendflowr_api.metrics import Metrics, MetricsMiddleware
from sendflowr_api.models import Health, Readiness
from sendflowr_api.render import iso_z

DESCRIPTION = """Send-time decisions from SendFlowr's materialized results (identity graph + timing curves), served
from an in-memory snapshot that is refreshed in the background when a newer materialization lands.

* **Decision**: trigger = best delivery moment in `[send_after, send_before)` minus `latency_estimate_seconds`.
* **fallback_level**: `person` (their own curve), `cohort` (email domain / phone country prior), `global`.
* **confidence_score**: probability that the chosen hour is within one hour of the person's true best hour.
* **Authentication**: when the server has `SENDFLOWR_API_KEY`, send it in the `X-API-Key` header. Without a key the
  API serves decisions on a loopback address only, and person lookups (`/people`) not at all.
* **Errors**: 422 lists each offending field (`loc`, `msg`); unknown fields are rejected.
"""

log = logging.getLogger("sendflowr.api")


def _add_routes(app: FastAPI, router: APIRouter, tags: list[str], dependencies: list) -> None:
    """The router's routes as the app's own. `include_router` would keep an included-router wrapper that
    recomputes a routes version on every request (FastAPI 0.16x), measurable at thousands of requests/s."""
    for route in router.routes:
        app.router.add_api_route(route.path, route.endpoint, methods=sorted(route.methods), tags=tags,
                                 dependencies=dependencies, response_model=route.response_model,
                                 responses=route.responses, summary=route.summary, description=route.description,
                                 name=route.name)


def _text(value):
    return value.encode("utf-8", "replace").decode() if isinstance(value, str) else value


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """422 with loc/msg/type per error. The offending input is not echoed: it may be an identifier (privacy), a
    10,000-recipient list (size) or text JSON cannot encode (a lone surrogate would turn the 422 into a 500)."""
    detail = [{"loc": [_text(part) for part in err.get("loc", ())], "msg": _text(str(err.get("msg", ""))),
               "type": _text(str(err.get("type", "")))} for err in exc.errors()]
    return Response(orjson.dumps({"detail": detail}), status_code=422, media_type="application/json")


def batch_limit(app: ASGIApp, limit: int) -> ASGIApp:
    """POST /timing-decisions: the recipient count is checked on a fast parse of the (already bounded) body, before
    FastAPI builds a model per recipient; an oversized list costs one orjson pass, not a million validations."""

    async def guarded(scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/timing-decisions" or scope["method"] != "POST":
            return await app(scope, receive, send)
        raw, replayed = await read_body(receive)
        if raw is None:
            return await app(scope, replayed, send)
        try:
            recipients = orjson.loads(raw).get("recipients")
        except (orjson.JSONDecodeError, AttributeError):
            recipients = None  # FastAPI's own 422 says what is wrong with it
        if isinstance(recipients, list) and len(recipients) > limit:
            detail = [{"loc": ["body", "recipients"], "type": "too_long",
                       "msg": f"at most {limit} recipients per request, got {len(recipients)}"}]
            response = Response(orjson.dumps({"detail": detail}), status_code=422, media_type="application/json")
            return await response(scope, receive, send)
        await app(scope, replayed, send)

    return guarded


def create_app(settings: Settings | None = None, holder: SnapshotHolder | None = None,
               refresher: bool = True) -> FastAPI:
    """`holder`: a prepared snapshot holder (tests); `refresher`: poll ClickHouse in the background."""
    settings = settings or get_settings()
    check_exposure(settings)
    if holder is None:
        holder = SnapshotHolder(lambda: get_client(settings, connect_timeout=2, send_receive_timeout=300),
                                settings.clickhouse_database, settings.api_snapshot_refresh_seconds,
                                settings.api_snapshot_path)

    decision_log = DecisionLog(settings)  # every served decision to Kafka, off the request path

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if refresher:
            holder.start()
        decision_log.start()
        yield
        holder.stop()
        decision_log.stop()

    # FastAPI's native OpenTelemetry is off: metrics are Prometheus (/metrics), and its per-request check for a
    # configured provider cost tens of microseconds on every request.
    app = FastAPI(title="SendFlowr decision API", version=__version__, lifespan=lifespan, description=DESCRIPTION,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.holder = holder
    app.state.api_key_digest = key_digest(settings.api_key)
    app.state.normalize_cache = NormalizeCache(settings.api_normalize_cache_size)
    app.state.clock = decision_clock(settings.api_clock_offset_seconds)
    app.state.decision_log = decision_log
    app.state.coalescer = Coalescer(app.state.normalize_cache, app.state.clock, settings.api_control_share,
                                    decision_log, settings.api_exploration)
    app.state.metrics = Metrics(holder, app.state.coalescer, decision_log)
    app.state.query_client = None
    digest = app.state.api_key_digest
    # Only with a key configured: an unused dependency still costs its solving on every request.
    protected = [Depends(require_api_key)] if digest else []
    for router, tags in ((decisions.router, ["decisions"]), (people.router, ["people"])):
        _add_routes(app, router, tags, protected)

    # Starlette tries routes in order and FastAPI puts its docs routes first: the hot route goes to the front
    # (no other route matches its path, so only the order of the regex checks changes).
    routes = app.router.routes
    hot = routes.pop(next(i for i, r in enumerate(routes) if getattr(r, "path", "") == decisions.PATH))
    routes.insert(0, hot)
    # Middleware, innermost first (each add_middleware wraps the ones before it).
    app.add_middleware(decisions.fast_decisions, route=hot)
    app.add_middleware(MetricsMiddleware, metrics_of=lambda scope: scope["app"].state.metrics)
    app.add_middleware(batch_limit, limit=settings.api_batch_max_size)
    # Outermost: refused requests (cross-origin pages, a missing key, oversized bodies) cost no parsing at all.
    app.add_middleware(RequestGuard, browsers="same-origin", loopback=is_loopback(settings.api_host),
                       max_body_bytes=settings.api_max_body_bytes,
                       authorized=key_guard(digest, app.state.metrics.auth_failures.inc) if digest else None,
                       unauthorized=(UNAUTHORIZED_DETAIL, ((b"www-authenticate", API_KEY_HEADER.encode()),)),
                       loopback_only=digest is None and not settings.api_allow_unauthenticated)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/healthz", response_model=Health, summary="Liveness: the process is up.", tags=["operations"])
    async def healthz() -> Health:
        return Health(status="ok", version=__version__)

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             summary="Readiness: a decision snapshot is loaded; its version and age.",
             responses={503: {"model": Readiness, "description": "No snapshot loaded yet; `detail` says why."}})
    async def readyz() -> JSONResponse:
        snap = holder.current
        checked = iso_z(holder.last_check_at) if holder.last_check_at else None
        if snap is None:
            body = Readiness(ready=False, last_check_at=checked, refresh_failures=holder.failures,
                             detail=holder.last_error or "the first snapshot load has not finished")
            return JSONResponse(body.model_dump(), status_code=503)
        body = Readiness(
            ready=True, snapshot_version=snap.version, timing_version=snap.timing_version,
            materialized_at=iso_z(snap.timing.materialized_at), age_seconds=round(snap.age_seconds(), 3),
            loaded_at=iso_z(snap.loaded_at), people_with_curves=len(snap.timing_uid),
            identifiers=snap.identity.identifiers, last_check_at=checked, refresh_failures=holder.failures,
            detail=holder.last_error or "")
        return JSONResponse(body.model_dump())

    @app.get("/metrics", summary="Prometheus metrics.", tags=["operations"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}})
    def metrics() -> Response:
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app()
