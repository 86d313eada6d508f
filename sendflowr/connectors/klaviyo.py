"""Klaviyo events: system webhooks (https://developers.klaviyo.com/en/docs/working_with_system_webhooks)
post {"data": [{"topic", "external_id", "payload"}], "meta": {...}} where each payload has the shape of
a Get Event response (https://developers.klaviyo.com/en/reference/events); bulk files hold one webhook
item or one Get Events `data` object per line.

Identifiers: the profile id (relationships.profile.data.id) as klaviyo_id, plus the profile's email when
the payload includes the profile (`included`, or event_properties.$email). Mapping by topic or metric
name: Received Email / email_delivered -> delivered, Opened Email -> opened, Clicked Email -> clicked,
Bounced Email -> bounced, Dropped Email -> bounced/dropped, Marked Email as Spam -> complained,
Unsubscribed -> unsubscribed. Other metrics (SMS, custom) are skipped and counted. event_id is
"klaviyo:<event id>"; machine_open / bot_click come from event properties of those names when present.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sendflowr.connectors.common import (
    Normalized,
    compact,
    epoch_to_rfc3339,
    finish,
    iso_to_rfc3339,
    text,
    truthy,
)

ESP = "klaviyo"
METRICS = {
    "received_email": "delivered",
    "email_delivered": "delivered",
    "sent_email": "sent",
    "opened_email": "opened",
    "clicked_email": "clicked",
    "bounced_email": "bounced",
    "dropped_email": "bounced",
    "marked_email_as_spam": "complained",
    "unsubscribed": "unsubscribed",
    "unsubscribed_from_email_marketing": "unsubscribed",
}


def metric_key(name: str) -> str:
    """'event:klaviyo.opened_email' and 'Opened Email' both become 'opened_email'."""
    name = name.rsplit(".", 1)[-1] if name.startswith("event:") else name
    return name.strip().lower().replace(" ", "_")


def _unwrap(record: Any) -> tuple[dict | None, str | None, list]:
    """(event object, topic, included) from a webhook item, a Get Event response or a bare event."""
    if not isinstance(record, dict):
        return None, None, []
    topic = record.get("topic") if isinstance(record.get("topic"), str) else None
    body = record.get("payload", record) if "payload" in record else record
    if not isinstance(body, dict):
        return None, topic, []
    included = body.get("included") if isinstance(body.get("included"), list) else []
    event = body.get("data", body) if "data" in body else body
    return (event if isinstance(event, dict) else None), topic, included


def _object(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _related_id(event: dict, name: str) -> str | None:
    rel = _object(event.get("relationships")).get(name)
    data = rel.get("data") if isinstance(rel, dict) else None
    return text(data.get("id")) if isinstance(data, dict) else None


def _included(included: list, kind: str, ident: str | None) -> dict:
    for item in included:
        if isinstance(item, dict) and item.get("type") == kind and (ident is None or item.get("id") == ident):
            attributes = item.get("attributes")
            return attributes if isinstance(attributes, dict) else {}
    return {}


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    unwrapped = [_unwrap(r) for r in records]
    epochs = epoch_to_rfc3339([_object(e.get("attributes")).get("timestamp") if e else None for e, _, _ in unwrapped])
    for index, (event, topic, included) in enumerate(unwrapped):
        if event is None:
            result.reject(index, "payload: expected a Klaviyo event object")
            continue
        attributes = _object(event.get("attributes"))
        props = _object(attributes.get("event_properties"))
        metric_id = _related_id(event, "metric")
        name = topic or _included(included, "metric", metric_id).get("name") or attributes.get("metric_name")
        if not isinstance(name, str):
            result.reject(index, "topic: missing (neither a webhook topic nor an included metric name)")
            continue
        event_type = METRICS.get(metric_key(name))
        if event_type is None:
            result.skipped[f"{ESP}:{metric_key(name)}"] += 1
            continue
        event_id = text(event.get("id"))
        if event_id is None:
            result.reject(index, "id: missing (needed to deduplicate retries)")
            continue
        profile_id = _related_id(event, "profile")
        email = text(_included(included, "profile", profile_id).get("email")) or text(props.get("$email"))
        identifiers = {k: v for k, v in (("email", email), ("klaviyo_id", profile_id)) if v}
        occurred = iso_to_rfc3339(attributes.get("datetime")) or epochs[index]
        if occurred is None:
            result.reject(index, "attributes.datetime: missing or not a time")
            continue
        bounce = None
        if event_type == "bounced":
            stated = str(props.get("Bounce Type", "")).lower()
            bounce = stated if stated in ("hard", "soft") else "hard"
            bounce = "dropped" if metric_key(name) == "dropped_email" else bounce
        result.add(index, compact({
            "event_id": f"{ESP}:{event_id}",
            "event_type": event_type,
            "occurred_at": occurred,
            "identifiers": identifiers,
            "esp": ESP,
            "campaign_id": text(props.get("$message")),
            "url": text(props.get("URL")) if event_type == "clicked" else None,
            "bounce_type": bounce,
            "machine_open": truthy(props.get("machine_open")) if event_type == "opened" else None,
            "bot_click": truthy(props.get("bot_click")) if event_type == "clicked" else None,
        }))
    return finish(result, now)
