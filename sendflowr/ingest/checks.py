"""Data-quality queries on ingested events; the Dagster checks and the tests both call these."""

from __future__ import annotations

from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from sendflowr.events import FUTURE_TOLERANCE


@dataclass
class CheckFinding:
    violations: int
    examples: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.violations == 0


def duplicate_event_ids(client: Client, database: str) -> CheckFinding:
    rows = client.query(f"SELECT event_id, count() AS n FROM {database}.events GROUP BY event_id HAVING n > 1 "
                        "ORDER BY n DESC LIMIT 1000").result_rows
    return CheckFinding(len(rows), [{"event_id": e, "copies": n} for e, n in rows[:10]])


def future_events(client: Client, database: str) -> CheckFinding:
    seconds = int(FUTURE_TOLERANCE.total_seconds())
    rows = client.query(
        f"SELECT event_id, toString(occurred_at), toString(ingested_at) FROM {database}.events "
        f"WHERE occurred_at > ingested_at + toIntervalSecond({seconds}) LIMIT 10").result_rows
    count = int(client.command(f"SELECT count() FROM {database}.events "
                               f"WHERE occurred_at > ingested_at + toIntervalSecond({seconds})"))
    return CheckFinding(count, [{"event_id": e, "occurred_at": o, "ingested_at": i} for e, o, i in rows])


def offset_gaps(client: Client, database: str, topic: str) -> CheckFinding:
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
    return CheckFinding(len(rows), [{"partition": p, "expected_start": e, "actual_start": s}
                                    for p, e, s in rows[:10]])
