"""One holder per scope at a time, across processes and machines, kept in ClickHouse itself (the `ingest_leases`
table: ingestion's writers were its first users, and its name stays so no migration moves live leases).

Any run that must be alone takes one. A scope is a topic (one writer for all its partitions), a writer slot of
a topic (`<topic>#k/N`, the partitions p % N == k, sendflowr/ingest/slots.py) or any other name (the identity
run, the ingestion's event-id section). Two leases conflict when they are of the same name and their slots
share a partition.

Acquire = insert a lease row, then read back every unexpired, unreleased lease of the name: a run wins
only when it sees no conflicting lease but its own. On one node inserts become visible in commit order, so
of two racing runs the later committer always sees the earlier one: at most one wins. (Ordering by the
acquired_at timestamp instead lets both win: a timestamp is taken before its insert is visible.) When
racing runs see each other, all withdraw and retry after a random pause under a fresh holder name. In
cluster mode the table is a KeeperMap (docs/SCALING.md, "Cluster mode"): an insert is a Keeper write and the
read after it runs on the same Keeper session, which has applied every write ordered before ours, so the
same argument holds across replicas.

A run that dies without releasing (killed process, or ClickHouse down when it ended) would block every
run until its lease expires, so each holder name carries the process that took it. A lease of a process
on this machine (same boot, same pid namespace) that is gone, or of this very process but no longer
inside `hold`, is released by the next run at once; leases taken elsewhere expire after the TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clickhouse_connect.driver.client import Client

from sendflowr.errors import SendflowrError
from sendflowr.ingest.slots import WHOLE, Slot, parse_scope

ACQUIRE_ATTEMPTS = 4
KEEPER_MAP_KEEP = timedelta(days=1)  # what MergeTree's TTL keeps; a KeeperMap lease table is purged by hand
_ACTIVE: set[str] = set()  # holders inside `hold` in this process
_ACTIVE_LOCK = threading.Lock()


class LeaseHeld(SendflowrError):
    pass


def _process_scope() -> str | None:
    """Who can judge a pid: processes of the same boot and pid namespace. None where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha1(f"{boot}/{namespace}".encode()).hexdigest()[:12]


def _start_time(pid: int) -> str | None:
    """Start time of a live process (guards against pid reuse); None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of stat, counted after "pid (comm)"


_SCOPE = _process_scope()


def _holder_name(run_id: str, attempt: int) -> str:
    pid = os.getpid()
    start = _start_time(pid) if _SCOPE else None
    where = f"@{_SCOPE}:{pid}:{start}" if _SCOPE and start else ""
    return f"{run_id}#{attempt}{where}"


def _is_stale(holder: str) -> bool:
    """True only when the holder's process certainly no longer holds the lease."""
    _, sep, where = holder.rpartition("@")
    parts = where.split(":")
    if not sep or len(parts) != 3 or _SCOPE is None or parts[0] != _SCOPE or not parts[1].isdigit():
        return False
    pid, start = int(parts[1]), parts[2]
    if pid == os.getpid() and start == _start_time(pid):
        with _ACTIVE_LOCK:
            return holder not in _ACTIVE
    return _start_time(pid) != start


def _live_rivals(client: Client, database: str, name: str, slot: Slot, holder: str, ttl: timedelta
                 ) -> list[tuple[str, datetime]]:
    rows = client.query(
        f"SELECT holder, any(kafka_topic), max(expires_at) AS until FROM {database}.ingest_leases "
        "WHERE kafka_topic = {name:String} OR startsWith(kafka_topic, concat({name:String}, '#')) GROUP BY holder "
        "HAVING max(released) = 0 AND until > now64(6) ORDER BY min(acquired_at), holder",
        parameters={"name": name},
    ).result_rows
    rivals = []
    for other, scope, until in rows:
        if other == holder or not parse_scope(scope)[1].overlaps(slot):
            continue
        if _is_stale(other):
            _write(client, database, scope, other, ttl, released=1)  # its run died: release on its behalf
            continue
        rivals.append((other, until))
    return rivals


def _write(client: Client, database: str, scope: str, holder: str, ttl: timedelta, released: int) -> None:
    client.insert(f"{database}.ingest_leases",
                  [[scope, holder, datetime.now(UTC) + ttl, released]],
                  column_names=["kafka_topic", "holder", "expires_at", "released"])


def _purge_keeper_map(client: Client, database: str) -> None:
    """A KeeperMap lease table (cluster mode) has no TTL and lives in Keeper's memory: drop old leases by hand."""
    engine = client.command("SELECT engine FROM system.tables WHERE database = {db:String} AND name = 'ingest_leases'",
                            parameters={"db": database})
    if engine == "KeeperMap":
        client.command(f"DELETE FROM {database}.ingest_leases WHERE expires_at < now64(6) - toIntervalSecond("
                       f"{int(KEEPER_MAP_KEEP.total_seconds())})")


@contextmanager
def hold(client: Client, database: str, name: str, run_id: str, ttl: timedelta = timedelta(minutes=10),
                 slot: Slot = WHOLE, wait: float = 0.0) -> Iterator[str]:
    """Hold the lease of `slot` of `name` (by default the whole name) for the block; yields the holder name (pass
    it to `renew`). A lease held by someone else raises LeaseHeld, after retrying for `wait` seconds if given."""
    scope = slot.scope(name)
    deadline = time.monotonic() + wait
    rivals: list[tuple[str, datetime]] = []
    attempt = 0
    while True:
        holder = _holder_name(run_id, attempt)
        with _ACTIVE_LOCK:
            _ACTIVE.add(holder)
        won = False
        try:
            _write(client, database, scope, holder, ttl, released=0)
            rivals = _live_rivals(client, database, name, slot, holder, ttl)
            won = not rivals
        finally:
            if not won:
                with contextlib.suppress(Exception):  # withdraw; if ClickHouse is gone the TTL will do
                    _write(client, database, scope, holder, ttl, released=1)
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(holder)
        if won:
            break
        attempt += 1
        if attempt >= ACQUIRE_ATTEMPTS and time.monotonic() >= deadline:
            other, until = rivals[0]
            raise LeaseHeld(f"the lease {scope!r} is held by another run ({other}) until {until}; this run "
                            "did nothing")
        # Racers that saw each other all withdrew: the random pause lets one of them in first. A waiter (a section
        # held for a second or less) polls briefly instead of backing off.
        time.sleep(random.uniform(0.01, 0.05) if wait else random.uniform(0.05, 0.2) * attempt)
    try:
        _purge_keeper_map(client, database)
        yield holder
    finally:
        try:
            _write(client, database, scope, holder, ttl, released=1)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(holder)


def renew(client: Client, database: str, name: str, holder: str, ttl: timedelta = timedelta(minutes=10),
          slot: Slot = WHOLE) -> None:
    _write(client, database, slot.scope(name), holder, ttl, released=0)
