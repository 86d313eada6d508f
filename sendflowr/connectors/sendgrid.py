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

from sendflowr.connectors.common import Normalized, compact, epoch_to_rfc3339, finish, text, truthy

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


def _bounce_type(kind: str, record: dict[str, Any]) -> str | None:
    if kind == "dropped":
        return "dropped"
    if kind == "bounce":
        return "soft" if record.get("type") == "blocked" else "hard"
    return None


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    times = epoch_to_rfc3339([r.get("timestamp") if isinstance(r, dict) else None for r in records])
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            result.reject(index, f"record: expected a JSON object, got {type(record).__name__}")
            continue
        kind = record.get("event")
        if kind in SKIPPED:
            result.skipped[f"{ESP}:{kind}"] += 1
            continue
        event_type = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if event_type is None:
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
        result.add(index, compact({
            "event_id": f"{ESP}:{sg_event_id}",
            "event_type": event_type,
            "occurred_at": times[index],
            "identifiers": {"email": email},
            "esp": ESP,
            "message_id": text(record.get("sg_message_id")),
            "campaign_id": text(record.get("marketing_campaign_id")) or text(record.get("singlesend_id")),
            "user_agent": text(record.get("useragent")) if event_type in ("opened", "clicked") else None,
            "ip": text(record.get("ip")) if event_type in ("opened", "clicked") else None,
            "url": text(record.get("url")) if event_type == "clicked" else None,
            "bounce_type": _bounce_type(kind, record),
            "machine_open": truthy(record.get("sg_machine_open")) if event_type == "opened" else None,
        }))
    return finish(result, now)
