"""Decisions: an in-memory snapshot of the materialized identity map and timing curves, identifier resolution
consistent with stitching, and the calls into the timing decision rule. No FastAPI (sendflowr_api adapts it)."""
