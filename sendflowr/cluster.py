"""Cluster mode (SENDFLOWR_CLICKHOUSE_CLUSTER, docs/SCALING.md "Cluster mode"): what changes on a ClickHouse cluster.

The migrations stay one set of files. Rendered for a cluster, each statement runs ON CLUSTER, every MergeTree-family
table becomes its Replicated twin (path /clickhouse/tables/{shard}/<database>/<table>, replica {replica}: the
server's macros) with a replicated deduplication window, the lease table becomes a KeeperMap, and the scratch tables
keep their local engines: each replica has its own, and a writer's statements reach one replica (the ingestion's
scratch guard, sql/ingest/staged_here.sql, fails loudly otherwise).

At run time, the ingestion's state (offset ranges, the event ids its duplicate check reads) is written with quorum
inserts and read with sequential consistency, so a writer on any replica sees what the previous holder of its
lease committed (sendflowr/ingest/run.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from clickhouse_connect.driver.exceptions import DatabaseError

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings

T = TypeVar("T")

# Per-writer scratch: rows of the running attempt or identity run, read back by the same writer on the same server.
LOCAL_TABLES = frozenset({
    "ingest_staging", "ingest_staging_in_memory", "ingest_known_ids", "ingest_inbox", "ingest_certified",
    "decision_log_staging", "identity_run_identifiers", "identity_run_nodes", "identity_run_edges", "identity_region",
})
# Linearizable in Keeper (sendflowr/lease.py): table -> its key column.
KEEPER_MAP_TABLES = {"ingest_leases": "holder"}
# A crashed attempt must be replayed while its blocks are remembered: the default 3600 s is too short for an outage.
# One week is the topic's default retention (SENDFLOWR_KAFKA_RETENTION_HOURS): a replay can come no later anyway.
DEDUPLICATION_WINDOW = "replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800"

_OBJECT = r"(?P<name>{db}\.(?P<table>\w+))"
_FORMS = (  # statement heads; ON CLUSTER goes right after the object they name
    r"^CREATE (?:TABLE|VIEW|MATERIALIZED VIEW)(?: IF NOT EXISTS)? " + _OBJECT,
    r"^ALTER TABLE " + _OBJECT,
    r"^(?P<drop>DROP) TABLE(?: IF EXISTS)? " + _OBJECT,
    r"^EXCHANGE TABLES {db}\.\w+ AND " + _OBJECT,
    r"^CREATE DATABASE(?: IF NOT EXISTS)? (?P<name>{db})$",
)
_ENGINE = re.compile(r"ENGINE = (?P<kind>(?:Replacing|Aggregating|Summing|Collapsing|VersionedCollapsing)?)MergeTree"
                     r"(?:\((?P<args>[^()]*)\))?")


class ClusterRenderError(SendflowrError):
    pass


def render(statement: str, database: str, cluster: str) -> str:
    """`statement` (a migration statement with the database filled in) as it runs on `cluster`."""
    if re.search(rf"^INSERT INTO {re.escape(database)}\.\w+ ", statement, re.MULTILINE):
        return statement  # no ON CLUSTER for data: it runs on the migrator's replica and replicates from there
    heads = (re.search(form.format(db=re.escape(database)), statement, re.MULTILINE) for form in _FORMS)
    head = next((h for h in heads if h), None)
    if head is None:
        raise ClusterRenderError(f"cluster mode cannot place ON CLUSTER in: {statement[:200]}")
    table = head.groupdict().get("table") or ""
    out = statement[:head.end("name")] + f" ON CLUSTER {cluster}" + statement[head.end("name"):]
    if head.groupdict().get("drop"):
        out += " SYNC"  # a re-created Replicated table must not meet its predecessor's Keeper path
    if table in KEEPER_MAP_TABLES:
        return _keeper_map(out, database, table)
    if table not in LOCAL_TABLES:
        out = _ENGINE.sub(lambda m: _replicated(m, database, table), out)
        out = out.replace("non_replicated_deduplication_window = 10000", DEDUPLICATION_WINDOW)
    return out


def _replicated(engine: re.Match, database: str, table: str) -> str:
    args = [f"'/clickhouse/tables/{{shard}}/{database}/{table}'", "'{replica}'"]
    if engine.group("args"):
        args.append(engine.group("args"))
    return f"ENGINE = Replicated{engine.group('kind')}MergeTree({', '.join(args)})"


def _keeper_map(statement: str, database: str, table: str) -> str:
    # Everything after the columns (MergeTree engine, ORDER BY, TTL) becomes the KeeperMap engine and its key;
    # KeeperMap keeps no TTL, so lease.py purges old leases itself.
    columns_end = statement.index("\nENGINE = ")
    return (statement[:columns_end] + f"\nENGINE = KeeperMap('/{database}/{table}') "
            f"PRIMARY KEY {KEEPER_MAP_TABLES[table]}")


@dataclass(frozen=True)
class Consistency:
    """Settings of the ingestion's statements: `write`/`read` for its state (offset ranges, event ids), `data` for
    the events and rejects. Empty on one server, where every insert is visible to the next statement anyway.

    In cluster mode state is written with a majority quorum, one quorum insert at a time per table, and read only
    from a replica that holds every insert made with quorum: the ranges a writer plans from and the event ids its
    duplicate check reads are whatever the previous holder of the lease (or of the event-id section) committed, on
    any replica. The events are durable on a majority before their range commits; writers of other slots insert
    them in parallel."""

    write: Mapping[str, object]
    read: Mapping[str, object]
    data: Mapping[str, object]


ONE_SERVER = Consistency({}, {}, {})
ON_CLUSTER = Consistency(write={"insert_quorum": "auto", "insert_quorum_parallel": 0},
                         read={"select_sequential_consistency": 1}, data={"insert_quorum": "auto"})
# UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE (another quorum insert into the table is still running) and
# REPLICA_IS_NOT_IN_QUORUM (this replica has not fetched the last quorum insert yet): both clear within moments.
TRANSIENT = (286, 289)


def consistency(settings: Settings) -> Consistency:
    return ON_CLUSTER if settings.clickhouse_cluster else ONE_SERVER


def retrying(call: Callable[[], T], seconds: float = 60.0) -> T:
    """`call()`, again after a pause while it fails with a TRANSIENT error (every statement retried here is
    idempotent: a read, an insert with a deduplication token, or a range row that may be recorded twice)."""
    deadline, pause = time.monotonic() + seconds, 0.05
    while True:
        try:
            return call()
        except DatabaseError as exc:
            code = re.search(r"\bCode: (\d+)\.", str(exc))
            if not code or int(code.group(1)) not in TRANSIENT or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
