"""Our own contract (sendflowr/schemas/event.v1.json) for every source without a connector: each record
is checked with the one Python validator, `sendflowr.events.event_errors`, and passed through unchanged
(except an over-long optional field, fitted as every connector fits it and counted).

`reserved`: event-id namespaces a caller may not use. On the public route these are the connectors' own
(`sendgrid:`, `ses:`, ...): an id chosen there first would make ingestion drop the provider's real event as a
duplicate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sendflowr.connectors.common import Normalized, trim_optional
from sendflowr.events import event_errors


def normalize(records: list[Any], now: datetime | None = None, reserved: Iterable[str] = ()) -> Normalized:
    result = Normalized()
    moment = now or datetime.now(UTC)
    prefixes = tuple(f"{name}:" for name in reserved)
    for index, record in enumerate(records):
        trimmed: Counter = Counter()
        if isinstance(record, dict):
            record = dict(record)
            trim_optional(record, trimmed)
        errors = event_errors(record, moment)
        if errors:
            result.reject(index, errors[0])
        elif prefixes and record["event_id"].startswith(prefixes):
            namespace = record["event_id"].split(":", 1)[0]
            result.reject(index, f"event_id: the `{namespace}:` namespace belongs to the {namespace} connector")
        else:
            result.add(index, record)
            result.trimmed.update(trimmed)
    return result
