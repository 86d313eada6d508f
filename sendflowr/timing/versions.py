"""Timing versions, in one place: every write (curves, priors, an evaluation's calibration) carries the run's
version, and a version exists for readers only once its `timing_runs` row is written, last (the commit marker).

Readers (store.load_snapshot, the API) read rows whose version a commit marker names (`committed`); a dead
run's rows stay invisible for good, and the next run's version is above them (next_version counts uncommitted
rows too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from sendflowr import lease

WRITER_LEASE = "timing:versions"  # ':' is not allowed in Kafka topic names, so it never meets a real topic
WRITER_TTL = timedelta(hours=1)


@contextmanager
def writer(client: Client, database: str, run_id: str, wait: float = 0.0) -> Iterator[None]:
    """One timing writer at a time: two runs that both took next_version before either wrote would share a version
    (and an incremental run must not add to a base a full build is replacing). Raises lease.LeaseHeld when another
    run holds it (after waiting `wait` seconds)."""
    with lease.hold(client, database, WRITER_LEASE, run_id, ttl=WRITER_TTL, wait=wait):
        yield


def committed(database: str, column: str = "version") -> str:
    """SQL condition: the row's version was committed. (Not `version <= latest`: a run that died leaves rows
    under a version below the next run's, and runs rewrite only what changed.)"""
    return f"{column} IN (SELECT version FROM {database}.timing_runs)"


def latest_version(client: Client, database: str) -> int | None:
    """The newest committed version, None before the first run (one tiny aggregate: cheap to poll)."""
    rows = client.query(f"SELECT max(version), count() FROM {database}.timing_runs").result_rows
    version, count = rows[0]
    return int(version) if count else None


def next_version(client: Client, database: str) -> int:
    """Strictly above anything written, committed or not (a dead run's rows must never look committed)."""
    row = client.query("SELECT greatest(" + ", ".join(
        f"(SELECT max(version) FROM {database}.{table})" for table in
        ("timing_runs", "timing_curves", "timing_priors", "timing_cells", "timing_open_messages", "timing_models"))
        + ")").result_rows[0]
    return int(row[0]) + 1


def latest_run(client: Client, database: str, kind: str | None = None) -> dict | None:
    """The newest committed run (of a kind: 'curves' or 'evaluation'): version, people, calibration, metadata."""
    where = "WHERE kind = {k:String}" if kind else ""
    rows = client.query(f"SELECT version, people, calibration, metadata FROM {database}.timing_runs {where} "
                        "ORDER BY version DESC LIMIT 1", parameters={"k": kind or ""}).result_rows
    if not rows:
        return None
    version, people, calibration, metadata = rows[0]
    return {"version": int(version), "people": int(people), "calibration": calibration,
            "metadata": json.loads(metadata) if metadata else {}}


def commit(client: Client, database: str, version: int, run_id: str, kind: str, people: int, calibration: str,
           people_written: int = 0, metadata: dict | None = None) -> None:
    """The commit marker: after this row, everything written with `version` is visible to readers."""
    # In the body, not as query parameters: a calibration or metadata can outgrow a URL (414).
    client.insert(f"{database}.timing_runs", [[version, run_id, datetime.now(UTC), people, calibration, kind,
                                               people_written, json.dumps(metadata or {}, default=float)]],
                  column_names=["version", "run_id", "materialized_at", "people", "calibration", "kind",
                                "people_written", "metadata"])
