"""Amazon SES event publishing through Amazon SNS
(https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-examples.html): SNS posts an
envelope whose `Message` is the SES event record as a JSON string. Bulk files hold one envelope or one
bare SES record per line.

Mapping (one event per recipient the record names): Send -> sent, Delivery -> delivered, Open -> opened,
Click -> clicked, Bounce -> bounced (Permanent hard, Transient/Undetermined soft), Reject -> bounced
dropped, Complaint -> complained, Subscription with unsubscribeAll -> unsubscribed. DeliveryDelay and
Rendering Failure are skipped and counted. SES has no event id, so event_id is a hash of
mail.messageId + eventType + recipient + the event's timestamp (an SNS retry repeats all four).

Opens, clicks and unsubscribes are one person's action, but SES names only the message's recipients
(mail.destination): with more than one, nobody can tell who acted, so the record is rejected rather than
credited to everyone on the message (send one message per recipient to track engagement).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from sendflowr.connectors.common import Normalized, compact, finish, iso_to_rfc3339, stable_id, text

ESP = "ses"
SKIPPED = frozenset({"DeliveryDelay", "Rendering Failure", "RenderingFailure"})
BOUNCE_TYPES = {"Permanent": "hard", "Transient": "soft", "Undetermined": "soft"}
ONE_PERSON = frozenset({"Open", "Click", "Subscription"})  # actions of one recipient, which SES does not name


def ses_record(record: Any) -> Any:
    """The SES record inside an SNS Notification envelope, or the record itself."""
    if isinstance(record, dict) and record.get("Type") == "Notification" and isinstance(record.get("Message"), str):
        try:
            return orjson.loads(record["Message"])
        except orjson.JSONDecodeError:
            return None
    return record


def _emails(items: Any, key: str | None = None) -> list[str]:
    if not isinstance(items, list):
        return []
    values = [item.get(key) if key and isinstance(item, dict) else item for item in items]
    return [v for v in values if isinstance(v, str) and v]


def _expand(kind: str, record: dict[str, Any], mail: dict[str, Any]) -> tuple[str, list[str], Any, dict] | None:
    """(our type, recipients, time, extra fields) for one SES record, None for skipped kinds."""
    destination = _emails(mail.get("destination"))
    if kind == "Send":
        return "sent", destination, mail.get("timestamp"), {}
    if kind == "Reject":
        return "bounced", destination, mail.get("timestamp"), {"bounce_type": "dropped"}
    detail = record.get(kind.lower())
    if not isinstance(detail, dict):
        raise ValueError(f"{kind.lower()}: missing the {kind} object")
    stamp = detail.get("timestamp")
    if kind == "Delivery":
        return "delivered", _emails(detail.get("recipients")) or destination, stamp, {}
    if kind == "Bounce":
        stated = detail.get("bounceType")
        kind_of = BOUNCE_TYPES.get(stated, "soft") if isinstance(stated, str) else "soft"
        return "bounced", _emails(detail.get("bouncedRecipients"), "emailAddress"), stamp, {"bounce_type": kind_of}
    if kind == "Complaint":
        return "complained", _emails(detail.get("complainedRecipients"), "emailAddress"), stamp, {}
    if kind == "Open":
        return "opened", destination, stamp, {"ip": text(detail.get("ipAddress")),
                                              "user_agent": text(detail.get("userAgent"))}
    if kind == "Click":
        return "clicked", destination, stamp, {"ip": text(detail.get("ipAddress")),
                                               "user_agent": text(detail.get("userAgent")),
                                               "url": text(detail.get("link"))}
    if kind == "Subscription":
        prefs = detail.get("newTopicPreferences")
        if isinstance(prefs, dict) and prefs.get("unsubscribeAll") is True:
            return "unsubscribed", destination, stamp, {}
        return None
    raise KeyError(kind)


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    result = Normalized()
    for index, raw in enumerate(records):
        record = ses_record(raw)
        if not isinstance(record, dict):
            result.reject(index, "Message: not a JSON object (expected an SES event record)")
            continue
        kind = record.get("eventType") or record.get("notificationType")
        if isinstance(kind, str) and kind in SKIPPED:
            result.skipped[f"{ESP}:{kind}"] += 1
            continue
        mail = record.get("mail") if isinstance(record.get("mail"), dict) else None
        message_id = text(mail.get("messageId")) if mail is not None else None
        if result.rejected_unless(index, (mail, "mail: missing"),
                                  (message_id, "mail.messageId: missing (needed to deduplicate retries)")):
            continue
        try:
            expanded = _expand(kind, record, mail) if isinstance(kind, str) else None
        except KeyError:
            result.reject(index, f"eventType: unknown SES event type {str(kind)[:40]!r}")
            continue
        except ValueError as exc:
            result.reject(index, str(exc))
            continue
        if expanded is None:
            if isinstance(kind, str):
                result.skipped[f"{ESP}:{kind}"] += 1
            else:
                result.reject(index, "eventType: missing")
            continue
        event_type, recipients, stamp, extra = expanded
        occurred = iso_to_rfc3339(stamp)
        if occurred is None:
            result.reject(index, f"{kind.lower()}.timestamp: missing or not ISO 8601 with an offset")
            continue
        if not recipients:
            result.reject(index, "recipients: the record names no recipient")
            continue
        if kind in ONE_PERSON and len(recipients) > 1:
            result.reject(index, f"mail.destination: {len(recipients)} recipients, and SES does not say which one "
                          f"{event_type} (one recipient per message is needed to track engagement)")
            continue
        for recipient in recipients:
            result.add(index, compact({
                "event_id": stable_id(ESP, message_id, kind, recipient, stamp),
                "event_type": event_type,
                "occurred_at": occurred,
                "identifiers": {"email": recipient},
                "esp": ESP,
                "message_id": message_id,
                **extra,
            }))
    return finish(result, now)
