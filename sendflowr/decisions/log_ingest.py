"""The decision log's topic into ClickHouse's `decision_log`, exactly once: a Sink of the shared ingestion run
(sendflowr/ingest/run.py: lease, planned offset ranges, deduplication tokens, committed ranges).

    ingest_once(settings, client, options, sink=DECISIONS)

ClickHouse parses and validates each message (sql/decision_log/parsed.sql); a malformed one lands in
`rejected_events` with its reason and never stops ingestion; a valid one becomes one row per decision.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.cluster import Consistency
from sendflowr.decisions.records import ADDED, FIELDS, NAMES
from sendflowr.ingest.sink import Hooks, Sink, insert_select
from sendflowr.settings import Settings
from sendflowr.sql_files import load_sql


def _length(name: str) -> str:
    """The column's length in the message; a field added later (records.ADDED) may also be absent."""
    length = f"JSONLength(raw, 'columns', '{name}')"
    return f"if(JSONHas(raw, 'columns', '{name}'), {length}, rows)" if name in ADDED else length


def _column(name: str) -> str:
    """The column's values; an absent added field as its default, one per decision."""
    values = f"tupleElement(columns, '{name}')"
    if name not in ADDED:
        return values
    return f"arrayResize({values}, length(tupleElement(columns, 'decision_id')), {ADDED[name]})"


@cache
def _parsed(database: str) -> str:
    record_type = "Tuple(v UInt8, rows UInt32, columns Tuple(" + ", ".join(
        f"{name} Array({kind})" for name, kind, _ in FIELDS) + "))"
    return (DECISIONS.sql("decision_log/parsed", database)
            .replace("${record_type}", record_type)
            .replace("${lengths}", ", ".join(_length(name) for name in NAMES))
            .replace("${names}", ", ".join(f"'{name}'" for name in NAMES))
            .replace("${times}", ", ".join(f"tupleElement(columns, '{name}')" for name, kind, expression in FIELDS
                                           if kind == "Int64" and "Timestamp" in expression)))


@cache
def _insert(database: str) -> str:
    return (load_sql("decision_log/insert.sql", database)
            .replace("${columns}", ", ".join(NAMES))
            .replace("${values}", ", ".join(expression.format(f"c_{name}") for name, _, expression in FIELDS))
            .replace("${arrays}", ", ".join(f"{_column(name)} AS c_{name}" for name in NAMES))
            .replace("${parsed}", _parsed(database)))


class DecisionLogSink(Sink):
    name = "decisions"
    scratch = (("decision_log_staging", "staged", "staged rows"),)

    def topic(self, settings: Settings) -> str:
        return settings.decision_log_topic

    def stage(self, client: Client, database: str, table: pa.Table) -> None:
        client.insert_arrow(f"{database}.decision_log_staging", table)

    def staged(self, database: str) -> str:
        return f"({_parsed(database)})"

    def insert(self, client: Client, database: str, params: dict, token: str, hooks: Hooks,
               consistency: Consistency) -> int:
        written = insert_select(client, _insert(database), params, f"{token}:decisions", consistency.data)
        hooks.after_insert("decision_log")
        return written.written_rows


DECISIONS = DecisionLogSink()
