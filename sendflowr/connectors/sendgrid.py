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
    EARLIEST_STAMP,
    Normalized,
    epoch_to_rfc3339,
    latest_allowed,
    put,
    text,
    time_problem,
    truthy,
    whole_seconds_to_rfc3339,
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


_NONE = type(None)
_KINDS = frozenset(EVENT_TYPES) | SKIPPED


def _clean_text(column: list[Any], limit: int, optional: bool) -> bool:
    """Every value a string within `limit` (None or "" too when optional: those fields are left out), checked
    at C speed over the whole column."""
    kinds = set(map(type, column))
    if optional:
        kinds.discard(_NONE)
        return kinds <= {str} and max(map(len, filter(None, column)), default=0) <= limit
    return kinds == {str} and min(map(len, column)) > 0 and max(map(len, column)) <= limit


def _normalize_clean(records: list[Any], latest: str) -> Normalized | None:
    """The usual batch, mapped without per-field checks: every field is checked a column at a time first,
    and any batch with something unusual (a junk value, a missing id, a time out of range, an unknown kind)
    returns None for the record-by-record path, which gives every reject its reason. So the events are
    exactly the ones that path would build, only cheaper."""
    if not records or set(map(type, records)) != {dict}:
        return None
    kinds = [r.get("event") for r in records]
    try:
        if not set(kinds) <= _KINDS:
            return None
    except TypeError:  # an unhashable kind
        return None
    ids = [r.get("sg_event_id") for r in records]
    emails = [r.get("email") for r in records]
    times = whole_seconds_to_rfc3339([r.get("timestamp") for r in records])
    message_ids = [r.get("sg_message_id") for r in records]
    campaigns = [r.get("marketing_campaign_id") or r.get("singlesend_id") for r in records]
    engaged = [i for i, kind in enumerate(kinds) if kind == "open" or kind == "click"]
    agents = [records[i].get("useragent") for i in engaged]
    ips = [records[i].get("ip") for i in engaged]
    urls = [records[i].get("url") for i in engaged if kinds[i] == "click"]
    if not (_clean_text(ids, _MAX_ID, False) and _clean_text(emails, 320, False) and times is not None
            and min(times) >= EARLIEST_STAMP and max(times) <= latest and _clean_text(message_ids, 256, True)
            and _clean_text(campaigns, 256, True) and _clean_text(agents, 1024, True)
            and _clean_text(ips, 64, True) and _clean_text(urls, 2048, True)):
        return None
    result = Normalized()
    events, sources = result.events, result.sources
    types = EVENT_TYPES
    for index, (kind, sg_event_id, email, occurred, message_id, campaign) in enumerate(
            zip(kinds, ids, emails, times, message_ids, campaigns, strict=True)):
        event_type = types.get(kind)
        if event_type is None:
            result.skipped[f"{ESP}:{kind}"] += 1
            continue
        event = {"event_id": f"{ESP}:{sg_event_id}", "event_type": event_type, "occurred_at": occurred,
                 "identifiers": {"email": email}, "esp": ESP}
        if message_id:
            event["message_id"] = message_id
        if campaign:
            event["campaign_id"] = campaign
        if event_type == "opened" or event_type == "clicked":
            get = records[index].get
            agent, ip = get("useragent"), get("ip")
            if agent:
                event["user_agent"] = agent
            if ip:
                event["ip"] = ip
            if event_type == "opened":
                value = get("sg_machine_open")
                event["machine_open"] = value if type(value) is bool else truthy(value)
            else:
                url = get("url")
                if url:
                    event["url"] = url
        elif kind == "bounce":
            event["bounce_type"] = "soft" if records[index].get("type") == "blocked" else "hard"
        elif kind == "dropped":
            event["bounce_type"] = "dropped"
        events.append(event)
        sources.append(index)
    return result


def normalize(records: list[Any], now: datetime | None = None) -> Normalized:
    """Checks the contract while mapping instead of a second pass: this is the hot path of the busiest
    webhook. A usual batch is checked a column at a time and mapped without further checks; any other batch
    goes record by record (lengths as fields are set, time range as text, plain strings within their limits
    set inline, anything else through `put`, which turns numbers into text, skips junk and fits over-long
    optional fields). Both give the same events; reasons match common.contract_problem's."""
    latest = latest_allowed(now)
    clean = _normalize_clean(records, latest)
    return clean if clean is not None else _normalize_records(records, latest)


def _normalize_records(records: list[Any], latest: str) -> Normalized:
    """Record by record, every field checked as it is set: any batch, with a reason for each reject."""
    result = Normalized()
    events, sources, reject, trimmed = result.events, result.sources, result.reject, result.trimmed
    times = epoch_to_rfc3339([r.get("timestamp") if type(r) is dict else None for r in records])
    types = EVENT_TYPES
    for index, record in enumerate(records):
        if type(record) is not dict:
            reject(index, f"record: expected a JSON object, got {type(record).__name__}")
            continue
        get = record.get
        kind = get("event")
        event_type = types.get(kind) if type(kind) is str else None
        if event_type is None:
            if type(kind) is str and kind in SKIPPED:
                result.skipped[f"{ESP}:{kind}"] += 1
            else:
                reject(index, f"event: unknown SendGrid event type {str(kind)[:40]!r}")
            continue
        sg_event_id = text(get("sg_event_id"))
        email = text(get("email"))
        occurred = times[index]
        problem = ("sg_event_id: missing (needed to deduplicate retries)" if sg_event_id is None
                   else "email: missing" if email is None
                   else "timestamp: missing or not Unix seconds" if occurred is None
                   else "event_id: longer than 256 characters" if len(sg_event_id) > _MAX_ID
                   else "identifiers.email: longer than 320 characters" if len(email) > 320
                   else time_problem(occurred, latest))
        if problem is not None:
            reject(index, problem)
            continue
        event = {"event_id": f"{ESP}:{sg_event_id}", "event_type": event_type, "occurred_at": occurred,
                 "identifiers": {"email": email}, "esp": ESP}
        # the fallback path: plain `put` per field (the usual batch never comes here)
        put(event, "message_id", get("sg_message_id"), trimmed)
        put(event, "campaign_id", get("marketing_campaign_id") or get("singlesend_id"), trimmed)
        if event_type == "opened" or event_type == "clicked":
            put(event, "user_agent", get("useragent"), trimmed)
            put(event, "ip", get("ip"), trimmed)
            if event_type == "opened":
                event["machine_open"] = truthy(get("sg_machine_open"))
            else:
                put(event, "url", get("url"), trimmed)
        elif kind == "bounce":
            event["bounce_type"] = "soft" if get("type") == "blocked" else "hard"
        elif kind == "dropped":
            event["bounce_type"] = "dropped"
        events.append(event)
        sources.append(index)
    return result
