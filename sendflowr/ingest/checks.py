"""Data-quality checks on ingested events and on an ingestion run; the Dagster checks and the tests both call these.

Each returns a Finding (sendflowr.findings): the violations and a few examples, or `skipped` when there is nothing
to check yet (no event ingested, no committed range, a run that read nothing).
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from sendflowr.clickhouse import row_count
from sendflowr.events import FUTURE_TOLERANCE
from sendflowr.findings import Finding, skip, violations

NO_EVENTS = "no event ingested yet (events is empty)"


def duplicate_event_ids(client: Client, database: str) -> Finding:
    """Every event, its event_id in the UTC hour it occurred, appears once in events."""
    if not row_count(client, database, "events"):
        return skip(NO_EVENTS)
    rows = client.query(f"SELECT event_id, toString(toStartOfHour(occurred_at)) AS hour, count() AS n "
                        f"FROM {database}.events GROUP BY event_id, hour HAVING n > 1 "
                        "ORDER BY n DESC LIMIT 1000").result_rows
    return violations(rows)


def reused_event_ids(client: Client, database: str) -> Finding:
    """No event_id came again with an occurred_at in another hour: ingestion kept each as an event of its own (a
    redelivery carries its first copy's occurred_at), so a producer reusing ids shows here."""
    if not row_count(client, database, "events"):
        return skip(NO_EVENTS)
    rows = client.query(f"SELECT event_id, uniqExact(toStartOfHour(occurred_at)) AS hours FROM {database}.events "
                        "GROUP BY event_id HAVING hours > 1 ORDER BY hours DESC, event_id LIMIT 1000").result_rows
    return violations(rows)


def future_events(client: Client, database: str) -> Finding:
    """No event occurred after it was ingested (beyond the clock-skew tolerance the contract allows)."""
    if not row_count(client, database, "events"):
        return skip(NO_EVENTS)
    late = f"occurred_at > ingested_at + toIntervalSecond({int(FUTURE_TOLERANCE.total_seconds())})"
    rows = client.query(f"SELECT event_id, toString(occurred_at), toString(ingested_at) FROM {database}.events "
                        f"WHERE {late} LIMIT 10").result_rows
    return violations(rows, count=int(client.command(f"SELECT count() FROM {database}.events WHERE {late}")))


def offset_gaps(client: Client, database: str, topic: str) -> Finding:
    """Committed offset ranges of each partition are contiguous: no gaps, no overlaps."""
    committed = int(client.command(f"SELECT count() FROM {database}.ingest_ranges WHERE kafka_topic = {{topic:String}} "
                                   "AND state = 'committed'", parameters={"topic": topic}))
    if not committed:
        return skip(f"no committed offset range of {topic} yet")
    rows = client.query(
        f"""
        SELECT kafka_partition, prev_end, start_offset
        FROM (
            SELECT kafka_partition, start_offset,
                   lagInFrame(end_offset, 1, start_offset) OVER (
                       PARTITION BY kafka_partition ORDER BY start_offset
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev_end
            FROM {database}.ingest_ranges
            WHERE kafka_topic = {{topic:String}} AND state = 'committed'
        )
        WHERE start_offset != prev_end
        ORDER BY kafka_partition, start_offset
        """, parameters={"topic": topic}).result_rows
    return violations(rows)


def rejected_share(messages: int, rejected: int, threshold: float) -> Finding:
    """An ingestion run's share of rejected messages is at most `threshold`; a run that read nothing has no share."""
    facts = {"rejected": rejected, "messages": messages, "threshold": threshold}
    if not messages:
        return skip("this run read no message", **facts)
    share = rejected / messages
    return Finding(passed=share <= threshold, facts={"rejected_share": share, **facts})
