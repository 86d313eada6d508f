"""Mailgun webhooks (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads):
one JSON object per POST, {"signature": {...}, "event-data": {...}}; bulk files hold one such body or
one bare event-data object per line (the Events API shape).

Mapping: accepted -> sent, delivered, opened, clicked, failed -> bounced (severity permanent hard,
temporary soft), rejected -> bounced/dropped, unsubscribed, complained. A non-empty client-info.bot
(Mailgun's bot/privacy-proxy detection, e.g. "apple") marks machine opens and bot clicks. Other
events (stored, list events) are skipped and counted. event_id is "mailgun:<event-data.id>".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sendflowr.connectors.common import Normalized, compact, epoch_to_rfc3339, finish, text

ESP = "mailgun"
EVENT_TYPES = {
    "accepted": "sent",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "failed": "bounced",
    "rejected": "bounced",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}
SKIPPED = frozenset({"stored", "list_member_uploaded", "list_member_upload_error", "list_uploaded"})


def event_data(record: Any) -> Any:
    """The event itself, whether the record is a webhook body or a bare event-data object."""
    if isinstance(record, dict) and "event-data" in record:
        return record["event-data"]
    return record


def _bounce_type(kind: str, data: dict[str, Any]) -> str | None:
    if kind == "rejected":
        return "dropped"
    if kind == "failed":
        return "soft" if data.get("severity") == "temporary" else "hard"
    return None


def _campaign(data: dict[str, Any]) -> str | None:
    campaigns = data.get("campaigns")
    if isinstance(campaigns, list) and campaigns and isinstance(campaigns[0], dict):
        return text(campaigns[0].get("id"))
    return None


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    datas = [event_data(r) for r in records]
    times = epoch_to_rfc3339([d.get("timestamp") if isinstance(d, dict) else None for d in datas])
    for index, data in enumerate(datas):
        if not isinstance(data, dict):
            result.reject(index, "event-data: expected a JSON object")
            continue
        kind = data.get("event")
        if isinstance(kind, str) and kind in SKIPPED:
            result.skipped[f"{ESP}:{kind}"] += 1
            continue
        event_type = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if event_type is None:
            result.reject(index, f"event: unknown Mailgun event type {str(kind)[:40]!r}")
            continue
        event_id, recipient = text(data.get("id")), text(data.get("recipient"))
        if result.rejected_unless(index, (event_id, "id: missing (needed to deduplicate retries)"),
                                  (recipient, "recipient: missing"),
                                  (times[index], "timestamp: missing or not Unix seconds")):
            continue
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
        client = data.get("client-info") if isinstance(data.get("client-info"), dict) else {}
        engaged = event_type in ("opened", "clicked")
        bot = bool(text(client.get("bot"))) if engaged else None
        result.add(index, compact({
            "event_id": f"{ESP}:{event_id}",
            "event_type": event_type,
            "occurred_at": times[index],
            "identifiers": {"email": recipient},
            "esp": ESP,
            "message_id": text(headers.get("message-id")),
            "campaign_id": _campaign(data),
            "user_agent": text(client.get("user-agent")) if engaged else None,
            "ip": text(data.get("ip")) if engaged else None,
            "url": text(data.get("url")) if event_type == "clicked" else None,
            "bounce_type": _bounce_type(kind, data),
            "machine_open": bot if event_type == "opened" else None,
            "bot_click": bot if event_type == "clicked" else None,
        }))
    return finish(result, now)
