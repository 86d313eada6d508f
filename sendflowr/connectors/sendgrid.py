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

from sendflowr.connectors.common import Normalized, epoch_to_rfc3339, finish, put, text, truthy

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


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    times = epoch_to_rfc3339([r.get("timestamp") if type(r) is dict else None for r in records])
    for index, record in enumerate(records):
        if type(record) is not dict:
            result.reject(index, f"record: expected a JSON object, got {type(record).__name__}")
            continue
        kind = record.get("event")
        event_type = EVENT_TYPES.get(kind) if type(kind) is str else None
        if event_type is None:
            if kind in SKIPPED:
                result.skipped[f"{ESP}:{kind}"] += 1
            else:
                result.reject(index, f"event: unknown SendGrid event type {str(kind)[:40]!r}")
            continue
        sg_event_id = text(record.get("sg_event_id"))
        if sg_event_id is None:
            result.reject(index, "sg_event_id: missing (needed to deduplicate retries)")
            continue
        email = text(record.get("email"))
        if email is None:
            result.reject(index, "email: missing")
            continue
        if times[index] is None:
            result.reject(index, "timestamp: missing or not Unix seconds")
            continue
        event = {"event_id": f"{ESP}:{sg_event_id}", "event_type": event_type, "occurred_at": times[index],
                 "identifiers": {"email": email}, "esp": ESP}
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
        result.add(index, event)
    return finish(result, now)
