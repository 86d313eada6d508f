"""SendGrid Event Webhook (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event):
a JSON array of event objects per POST; bulk files are the same objects one per line, or CSV with those
field names as columns.

Mapping: processed -> sent, delivered, open -> opened (sg_machine_open -> machine_open), click -> clicked,
bounce -> bounced (type "bounce" hard, "blocked" soft), dropped -> bounced/dropped, unsubscribe and
group_unsubscribe -> unsubscribed, spamreport -> complained. deferred (a retry, not an outcome),
group_resubscribe and account events are skipped and counted. event_id is "sendgrid:<sg_event_id>".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sendflowr.connectors.common import (
    FieldTooLong,
    Normalized,
    epoch_to_rfc3339,
    latest_allowed,
    put,
    text,
    time_problem,
    truthy,
)

ESP = "sendgrid"
EVENT_TYPES = {
    "processed": "sent",
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "dropped": "bounced",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "spamreport": "complained",
}
SKIPPED = frozenset({"deferred", "group_resubscribe", "account_status_change"})
_MAX_ID = 256 - len(ESP) - 1


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    """Checks the contract while mapping (lengths in `put`, time range as text) instead of a second pass:
    this is the hot path of the busiest webhook. Reasons match common.contract_problem's."""
    result = Normalized()
    latest = latest_allowed(now)
    times = epoch_to_rfc3339([r.get("timestamp") if type(r) is dict else None for r in records])
    for index, record in enumerate(records):
        if type(record) is not dict:
            result.reject(index, f"record: expected a JSON object, got {type(record).__name__}")
            continue
        kind = record.get("event")
        event_type = EVENT_TYPES.get(kind) if type(kind) is str else None
        if event_type is None:
            if type(kind) is str and kind in SKIPPED:
                result.skipped[f"{ESP}:{kind}"] += 1
            else:
                result.reject(index, f"event: unknown SendGrid event type {str(kind)[:40]!r}")
            continue
        sg_event_id = text(record.get("sg_event_id"))
        email = text(record.get("email"))
        occurred = times[index]
        problem = ("sg_event_id: missing (needed to deduplicate retries)" if sg_event_id is None
                   else "email: missing" if email is None
                   else "timestamp: missing or not Unix seconds" if occurred is None
                   else "event_id: longer than 256 characters" if len(sg_event_id) > _MAX_ID
                   else "identifiers.email: longer than 320 characters" if len(email) > 320
                   else time_problem(occurred, latest))
        if problem is not None:
            result.reject(index, problem)
            continue
        event = {"event_id": f"{ESP}:{sg_event_id}", "event_type": event_type, "occurred_at": occurred,
                 "identifiers": {"email": email}, "esp": ESP}
        try:
            put(event, "message_id", record.get("sg_message_id"))
            put(event, "campaign_id", record.get("marketing_campaign_id") or record.get("singlesend_id"))
            if event_type == "opened" or event_type == "clicked":
                put(event, "user_agent", record.get("useragent"))
                put(event, "ip", record.get("ip"))
                if event_type == "opened":
                    event["machine_open"] = truthy(record.get("sg_machine_open"))
                else:
                    put(event, "url", record.get("url"))
            elif kind == "bounce":
                event["bounce_type"] = "soft" if record.get("type") == "blocked" else "hard"
            elif kind == "dropped":
                event["bounce_type"] = "dropped"
        except FieldTooLong as exc:
            result.reject(index, exc.reason)
            continue
        result.add(index, event)
    return result
