"""Timestamps as the contract writes them: UTC, whole seconds, `Z` suffix (2026-01-16T23:55:00Z)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np


def iso_z(moment: datetime) -> str:
    # Seconds are truncated: a trigger a fraction of a second early still delivers inside the chosen hour.
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def iso_z_many(moments: np.ndarray) -> list[str | None]:
    """datetime64 column -> contract strings (None for NaT), one numpy call for the whole column."""
    seconds = np.asarray(moments).astype("datetime64[s]")
    text = np.char.add(np.datetime_as_string(seconds, unit="s"), "Z").astype(object)
    text[np.isnat(seconds)] = None
    return text.tolist()
