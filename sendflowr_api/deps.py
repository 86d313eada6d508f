"""Shared request dependencies: the current snapshot (503 until one is loaded)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from sendflowr.decisions.snapshot import DecisionSnapshot

NOT_READY = {503: {"description": "No decision snapshot loaded yet (see /readyz).",
                   "content": {"application/json": {"example": {"detail": "no decision snapshot loaded yet"}}}}}


def current_snapshot(request: Request) -> DecisionSnapshot:
    # Read the reference once: the whole request uses this one snapshot even if a refresh swaps it meanwhile.
    snapshot = request.app.state.holder.current
    if snapshot is None:
        reason = request.app.state.holder.last_error or "the first load has not finished"
        raise HTTPException(status_code=503, detail=f"no decision snapshot loaded yet: {reason}")
    return snapshot


CurrentSnapshot = Annotated[DecisionSnapshot, Depends(current_snapshot)]
