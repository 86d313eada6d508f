"""Our own contract (sendflowr/schemas/event.v1.json) for every source without a connector: each record
is checked with the one Python validator, `sendflowr.events.event_errors`, and passed through unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sendflowr.connectors.common import Normalized
from sendflowr.events import event_errors


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    moment = now or datetime.now(UTC)
    for index, record in enumerate(records):
        errors = event_errors(record, moment)
        if errors:
            result.reject(index, errors[0])
        else:
            result.add(index, record)
    return result
