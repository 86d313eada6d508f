"""HTTP entry point. Decisions arrive with the timing work; this is the service frame they plug into."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sendflowr import __version__
from sendflowr.clickhouse import ClickHouseUnavailable, get_client
from sendflowr.settings import get_settings


class Health(BaseModel):
    status: str = Field(description="`ok` while the process serves requests.")
    version: str = Field(description="SendFlowr version.")


class Readiness(BaseModel):
    ready: bool = Field(description="True once ClickHouse answers and the schema is migrated.")
    clickhouse_url: str = Field(description="The ClickHouse endpoint this service reads.")
    events: int | None = Field(default=None, description="Rows in the events table, when reachable.")
    detail: str = Field(default="", description="Why the service is not ready.")


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.settings = get_settings()
    yield


app = FastAPI(title="SendFlowr decision API", version=__version__, lifespan=lifespan,
              description="Send-time decisions from materialized SendFlowr results.")


@app.get("/healthz", response_model=Health, summary="Liveness: the process is up.")
def healthz() -> Health:
    return Health(status="ok", version=__version__)


@app.get("/readyz", response_model=Readiness, summary="Readiness: ClickHouse reachable and migrated.",
         responses={503: {"model": Readiness, "description": "Not ready; `detail` says why."}})
def readyz() -> JSONResponse:
    settings = app.state.settings
    try:
        client = get_client(settings, connect_timeout=2)
        events = int(client.command(f"SELECT count() FROM {settings.clickhouse_database}.events"))
    except ClickHouseUnavailable as exc:
        body = Readiness(ready=False, clickhouse_url=settings.clickhouse_url, detail=str(exc))
        return JSONResponse(body.model_dump(), status_code=503)
    except Exception as exc:  # schema missing or query failed: not ready, say why
        body = Readiness(ready=False, clickhouse_url=settings.clickhouse_url, detail=str(exc).splitlines()[0][:300])
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(Readiness(ready=True, clickhouse_url=settings.clickhouse_url, events=events).model_dump())
