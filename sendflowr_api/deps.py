"""Shared request dependencies: the current snapshot (503 until one is loaded)."""

from __future__ import annotations

from fastapi import HTTPException, Request

from sendflowr.decisions.snapshot import DecisionSnapshot

NOT_READY = {503: {"description": "No decision snapshot loaded yet (see /readyz).",
                   "content": {"application/json": {"example": {"detail": "no decision snapshot loaded yet"}}}}}


def current_snapshot(request: Request) -> DecisionSnapshot:
    # Called in the handler, not as a Depends: dependency solving costs more than the lookup. The reference is
    # read once, so the whole request uses this one snapshot even if a refresh swaps it meanwhile.
    snapshot = request.app.state.holder.current
    if snapshot is None:
        reason = request.app.state.holder.last_error or "the first load has not finished"
        raise HTTPException(status_code=503, detail=f"no decision snapshot loaded yet: {reason}")
    return snapshot
