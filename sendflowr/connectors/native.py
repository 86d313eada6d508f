"""Our own contract (sendflowr/schemas/event.v1.json) for every source without a connector: records are passed
through unchanged (except an over-long optional field, fitted as every connector fits it and counted).

Validation is column-wise: `sendflowr.event_columns.certify` finds the records that are certainly valid as they are
(nearly all of a real file), and only the others go through the one per-record validator,
`sendflowr.events.event_errors`, which gives every reject its reason. So verdicts and reasons are exactly the
per-record validator's (`normalize_each` below is that path alone; tests/test_connectors_native.py holds the two
equal on the ingestion corpus and on random hostile events).

`reserved`: event-id namespaces a caller may not use. On the public route these are the connectors' own
(`sendgrid:`, `ses:`, ...): an id chosen there first would make ingestion drop the provider's real event as a
duplicate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import compress, repeat
from typing import Any

import numpy as np

from sendflowr.connectors.common import Normalized, trim_optional
from sendflowr.event_columns import certify
from sendflowr.events import event_errors


def normalize(records: list[Any], now: datetime | None = None, reserved: Iterable[str] = ()) -> Normalized:
    moment = now or datetime.now(UTC)
    prefixes = tuple(f"{name}:" for name in reserved)
    good = certify(records, moment)
    if prefixes and good.any():  # certified records carry a string event_id
        rows = np.flatnonzero(good)
        ids = [records[i]["event_id"] for i in rows.tolist()]
        good[rows] = ~np.fromiter(map(str.startswith, ids, repeat(prefixes)), bool, len(ids))
    result = Normalized()
    if good.all():
        result.events = list(records)
        result.sources = list(range(len(records)))
        return result
    rest = np.flatnonzero(~good).tolist()
    checked = normalize_each([records[i] for i in rest], moment, prefixes)
    if not checked.events:  # every record outside the fast path is a reject: keep the certified ones in order
        result.events = list(compress(records, good))
        result.sources = np.flatnonzero(good).tolist()
    else:  # merge both paths' events back into record order
        sources = np.concatenate([np.flatnonzero(good), np.asarray(rest)[checked.sources]])
        order = np.argsort(sources, kind="stable")
        events = list(compress(records, good)) + checked.events
        result.events = [events[i] for i in order.tolist()]
        result.sources = sources[order].tolist()
    result.rejects = [(rest[i], reason) for i, reason in checked.rejects]
    result.trimmed = checked.trimmed
    return result


def normalize_each(records: list[Any], now: datetime | None = None, prefixes: tuple[str, ...] = ()) -> Normalized:
    """The per-record path: fit over-long optional fields, validate with `event_errors`, check the namespace."""
    result = Normalized()
    moment = now or datetime.now(UTC)
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
