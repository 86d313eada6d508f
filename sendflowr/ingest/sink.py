"""What differs between the topics ingestion reads: how an attempt's raw messages are staged, loaded and counted.

Everything else (the topic's lease, planned offset ranges, attempts, deduplication tokens derived from the
ranges, committed ranges, the consumer-group mirror) is one mechanism in run.py, shared by every sink. A sink's
inserts must be deterministic for the same staged messages, so that the engine drops a replay's blocks by their
tokens (DETERMINISTIC_INSERT and a total ORDER BY).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr import lease
from sendflowr.cluster import ONE_SERVER, Consistency, retrying
from sendflowr.settings import Settings
from sendflowr.sql_files import load_sql

# A total ORDER BY, one insert thread and row-count squashing make an INSERT ... SELECT build the same
# blocks on a replay; the SELECT itself may read and sort with every core. force_enable: should the engine
# ever judge the SELECT unstable, the insert fails instead of silently running without deduplication.
DETERMINISTIC_INSERT = {"deduplicate_insert_select": "force_enable", "max_insert_threads": 1,
                        "max_block_size": 65536, "min_insert_block_size_rows": 1_048_576,
                        "min_insert_block_size_bytes": 0}


def insert_select(client: Client, sql: str, params: dict, token: str, settings: Mapping[str, object]):
    """One deterministic INSERT ... SELECT of the attempt with its deduplication token, so that a retry after a
    transient cluster error (cluster.retrying) is harmless. `settings`: the cluster's quorum, if any."""
    return retrying(lambda: client.command(sql, parameters=params, settings={
        **DETERMINISTIC_INSERT, **settings, "insert_deduplication_token": token}))


class Hooks:
    """Test seams at the dangerous points; production runs use the no-op defaults."""

    def after_insert(self, table: str) -> None: ...

    def after_stage(self) -> None: ...


class Sink:
    """One topic's staging and loading. `params` of load/counts: attempt, topic, and the attempt's ranges as
    parallel partitions/starts/ends arrays; `token` is the attempt's deduplication token."""

    name = ""  # recorded with each range in ingest_ranges.sink
    # Per-attempt scratch in memory, keyed by attempt_id, deleted when the attempt ends: (table, the query parameter
    # holding how many rows the writer put there, what they are). Every statement reading it is guarded.
    scratch: tuple[tuple[str, str, str], ...] = ()

    @property
    def scratch_tables(self) -> tuple[str, ...]:
        return tuple(table for table, _, _ in self.scratch)

    def sql(self, name: str, database: str) -> str:
        """sql/<name>.sql with the scratch guard spliced in for `${staged_here}` (sql/ingest/staged_here.sql once
        per scratch table): a statement that reads the attempt's scratch refuses to run on a server that does not
        hold it."""
        template = "\n".join(line for line in load_sql("ingest/staged_here.sql", database).splitlines()
                             if not line.lstrip().startswith("--"))
        guard = " AND ".join(template.replace("${table}", table).replace("${count}", count).replace("${what}", what)
                             for table, count, what in self.scratch) or "1"
        return load_sql(f"{name}.sql", database).replace("${staged_here}", guard)

    def topic(self, settings: Settings) -> str:
        raise NotImplementedError

    def stage(self, client: Client, database: str, table: pa.Table) -> None:
        """Stage raw messages: columns kafka_partition, kafka_offset, raw, attempt_id, kafka_topic."""
        raise NotImplementedError

    def staged(self, database: str) -> str:
        """A table expression of the staged messages with attempt_id, kafka_topic, kafka_partition, kafka_offset,
        reason ('' when valid), payload and raw_size (what rejects and counts read)."""
        raise NotImplementedError

    def load(self, client: Client, database: str, params: dict, token: str, hooks: Hooks,
             consistency: Consistency = ONE_SERVER) -> int:
        """Insert the attempt's rows, then its rejects; returns the rows written to the sink's table."""
        inserted = self.insert(client, database, params, token, hooks, consistency)
        insert_select(client, self.sql("ingest/insert_rejected", database).replace("${staging}", self.staged(database)),
                      params, f"{token}:rejected", consistency.data)
        hooks.after_insert("rejected_events")
        return inserted

    def insert(self, client: Client, database: str, params: dict, token: str, hooks: Hooks,
               consistency: Consistency) -> int:
        """Insert the attempt's valid messages (tokens derived from `token`, settings of `consistency`); returns
        the rows written."""
        raise NotImplementedError

    def duplicates(self, valid: int, inserted: int) -> int:
        """Valid messages not written because an equal one was (0 when messages and rows do not pair up)."""
        return 0

    def counts(self, client: Client, database: str, params: dict) -> dict[int, tuple[int, int, int]]:
        """Per partition of the attempt: (messages, rejected, valid)."""
        sql = self.sql("ingest/range_counts", database).replace("${staging}", self.staged(database))
        return {row[0]: tuple(row[1:]) for row in client.query(sql, parameters=params).result_rows}


# Writers of every slot (and topic) share `event_ids`: finding an attempt's known ids and adding its new ones is
# one section under this lease, so two writers never both take the same event_id as new (docs/INGESTION.md).
EVENT_IDS_LEASE = "ingest:event_ids"  # ':' is not allowed in Kafka topic names, so it never meets a real topic
# The section lasts seconds; a holder that dies on another machine blocks the others until its lease expires,
# so they wait out one lifetime of it before failing their attempt (replayed by the next run).
EVENT_IDS_TTL = timedelta(minutes=5)

EVENT_COLUMNS = ("event_id, event_type, occurred_at, person_key, email, klaviyo_id, phone, external_id, esp, "
                 "message_id, campaign_id, user_agent, ip, url, bounce_type, machine_open, bot_click, "
                 "schema_version, kafka_topic, kafka_partition, kafka_offset")


class EventsSink(Sink):
    """Engagement events (the contract in sendflowr/schemas/event.v1.json) into `events`, one row per event: its
    event_id in the UTC hour it occurred (docs/INGESTION.md, "Duplicates")."""

    name = "events"
    scratch = (("ingest_staging", "staged", "staged rows"), ("ingest_known_ids", "known", "known ids"))  # 0011, 0012

    def topic(self, settings: Settings) -> str:
        return settings.kafka_topic

    def stage(self, client: Client, database: str, table: pa.Table) -> None:
        # Into the Null-engine inbox: its materialized views certify and stage each row (migration 0008).
        client.insert_arrow(f"{database}.ingest_inbox", table)

    def staged(self, database: str) -> str:
        return f"{database}.ingest_staging"

    def insert(self, client: Client, database: str, params: dict, token: str, hooks: Hooks,
               consistency: Consistency) -> int:
        new_events = self.sql("ingest/new_events", database)
        # One writer at a time from reading event_ids to adding to it: two writers holding copies of one event_id
        # (an ESP resend into another partition) would otherwise both take it as new. A replay then also finds
        # the same known ids as its first try: later writers saw the first try's ids and left them alone.
        with lease.hold(client, database, EVENT_IDS_LEASE, params["attempt"], ttl=EVENT_IDS_TTL,
                        wait=2 * EVENT_IDS_TTL.total_seconds()):
            # Ids already ingested from other ranges, found once: both inserts below exclude them with a cheap probe.
            params["known"] = retrying(lambda: client.command(self.sql("ingest/known_ids", database), parameters=params,
                                                              settings=dict(consistency.read))).written_rows
            # event_ids first: a crash before `events` is written then replays both with the same tokens.
            ids = insert_select(client, f"INSERT INTO {database}.event_ids (occurred_hour, event_id, kafka_topic, "
                                        f"kafka_partition, kafka_offset) SELECT occurred_hour, event_id, "
                                        f"kafka_topic, kafka_partition, kafka_offset "
                                        f"FROM ({new_events})", params, f"{token}:ids", consistency.write)
            hooks.after_insert("event_ids")
        insert_select(client, f"INSERT INTO {database}.events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} "
                              f"FROM ({new_events})", params, f"{token}:events", consistency.data)
        hooks.after_insert("events")
        return ids.written_rows

    def duplicates(self, valid: int, inserted: int) -> int:
        return valid - inserted


EVENTS = EventsSink()
