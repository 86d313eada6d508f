"""The decision snapshot: identity map + timing curves of one materialization, held in memory and swapped
atomically when a newer one lands, so no request waits on ClickHouse.

The columns are memory-mapped files written once per version and shared by every API worker of the host
(snapshot_store.py): the identity map of one identity state and the timing curves of one committed version are
two parts, so an identity change does not reload the curves. A worker's own memory holds little more than two
object columns of its timing snapshot (timing_part.py); the curves are stored compactly (UInt16 per person).

`SnapshotHolder.current` is replaced by one reference assignment (atomic under the GIL); a request reads it once
and uses that object throughout, so it never mixes two versions.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup
from sendflowr.decisions.identity_map import IdentityMap, identity_stamp
from sendflowr.decisions.identity_part import identity_from_part, write_identity
from sendflowr.decisions.snapshot_store import Part, PartStore
from sendflowr.decisions.timing_part import timing_from_part, write_timing
from sendflowr.identity import graph
from sendflowr.timing import store, versions
from sendflowr.timing.store import TimingSnapshot

log = logging.getLogger("sendflowr.decisions")


@dataclass(frozen=True)
class DecisionSnapshot:
    identity: IdentityMap
    timing: TimingSnapshot
    identity_stamp: tuple = ()
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parts: tuple[Part, ...] = ()  # the mapped parts behind identity and timing: in use while this snapshot lives
    timing_uid: np.ndarray = field(init=False)  # uint64 ids of timing.universal_id (same order: sorted)
    version: str = field(init=False)  # "t<timing version>.i<identity updated_at ms>.r<raw identifiers>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", self._version())
        uid = getattr(self.timing, "uid", None)
        if uid is not None:  # a mapped part: sorted and unique when written (timing_part.py)
            object.__setattr__(self, "timing_uid", uid)
            object.__setattr__(self, "_timing_rows", None)
            return
        ids = np.asarray(self.timing.universal_id)
        uid = graph.parse_uid(ids.astype("U19")) if len(ids) else np.zeros(0, np.uint64)
        order = np.argsort(uid, kind="stable")  # already sorted per the store contract; cheap to make sure
        uid = uid[order]
        if (uid[1:] == uid[:-1]).any():
            raise ValueError("timing snapshot has duplicate universal ids")
        object.__setattr__(self, "timing_uid", uid)
        object.__setattr__(self, "_timing_rows", order)

    @property
    def timing_version(self) -> int:
        return int(self.timing.version)

    def _version(self) -> str:
        """Timing run version + identity stamp: equal on every API replica that loaded the same data."""
        updated = self.identity_stamp[0] if self.identity_stamp else None
        ms = int(updated.timestamp() * 1000) if isinstance(updated, datetime) else 0
        raw = self.identity_stamp[2] if len(self.identity_stamp) > 2 else 0
        return f"t{self.timing_version}.i{ms}.r{raw}"

    def timing_rows(self, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row in the timing columns of each universal id, and whether it has one."""
        if not len(self.timing_uid):
            return np.zeros(len(uids), np.int64), np.zeros(len(uids), bool)
        at, found = lookup(self.timing_uid, uids)
        rows = self._timing_rows  # type: ignore[attr-defined]
        return (at if rows is None else rows[at]), found

    def timing_row(self, uid: int) -> int | None:
        """Scalar `timing_rows` for the single-decision path."""
        at = int(np.searchsorted(self.timing_uid, np.uint64(uid)))
        if at < len(self.timing_uid) and int(self.timing_uid[at]) == uid:
            rows = self._timing_rows  # type: ignore[attr-defined]
            return at if rows is None else int(rows[at])
        return None

    def age_seconds(self, now: datetime | None = None) -> float:
        """Seconds since the timing run this snapshot serves was materialized."""
        now = now or datetime.now(UTC)
        return max(0.0, (now - _aware(self.timing.materialized_at)).total_seconds())


def _aware(moment) -> datetime:
    if isinstance(moment, np.datetime64):
        moment = datetime.fromtimestamp(moment.astype("datetime64[ms]").astype(np.int64) / 1000, UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


FORMAT = 1  # layout of the parts; a new layout gets new part names instead of reading old files wrongly


TIMING = f"timing-v{FORMAT}-"  # + version + digest of the run


def _timing_base(parts: PartStore, version: int) -> Part | None:
    """The newest timing part on disk older than `version` (a new version then only reads what changed)."""
    older = [(int(name[len(TIMING):].split("-")[0]), name) for name in parts.parts(TIMING)]
    older = [item for item in older if item[0] < version]
    return parts.open_existing(max(older)[1]) if older else None


def _digest(*values) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def load_decision_snapshot(client: Client, database: str, parts: PartStore) -> DecisionSnapshot | None:
    """Everything the API serves, or None before the first timing materialization: each part mapped from `parts`,
    built there first if no worker did yet. Parts are named after what they hold: the identity stamp, read before
    the identity tables (a run landing mid-load shows up as a change at the next poll), and the timing run."""
    stamp = identity_stamp(client, database)
    run = store.latest_run(client, database)
    if run is None:
        return None
    timing = parts.get(f"{TIMING}{run[0]}-{_digest(run[1].isoformat())}",
                       lambda out: write_timing(client, database, run, out, _timing_base(parts, run[0])))
    identity = parts.get(f"identity-v{FORMAT}-{_digest(*map(str, stamp))}",
                         lambda out: write_identity(client, database, out))
    return DecisionSnapshot(identity=identity_from_part(identity), timing=timing_from_part(timing),
                            identity_stamp=stamp, parts=(timing, identity))


@contextmanager
def _build_memory() -> Iterator[None]:
    """A build streams hundreds of MB through Arrow and numpy; afterwards the worker should not keep them. Arrow's
    default pool (mimalloc) keeps what a thread freed (~40 MB measured after a 1M-people build on the refresher
    thread); the system allocator gives it back on malloc_trim. Buffers remember their pool, so requests running
    meanwhile are unaffected by the switch."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class SnapshotHolder:
    """Owns the current snapshot and a background thread that polls for newer materializations."""

    def __init__(self, client_factory: Callable[[], Client], database: str, refresh_seconds: float = 5.0,
                 directory: Path | None = None) -> None:
        """`directory`: where the workers of this host share their snapshot parts (a subdirectory per database);
        None: a private temporary directory, removed by `stop`."""
        self._client_factory = client_factory
        self._client: Client | None = None
        self.database = database
        self.directory = directory
        self._parts: PartStore | None = None
        self.refresh_seconds = refresh_seconds
        self.current: DecisionSnapshot | None = None
        self.last_error: str | None = None
        self.last_check_at: datetime | None = None
        self.loads = 0
        self.failures = 0
        self.last_load_seconds: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one refresh at a time (the thread and an explicit refresh())

    @property
    def parts(self) -> PartStore:
        if self._parts is None:
            root = self.directory
            if root is None:
                root = Path(tempfile.mkdtemp(prefix="sendflowr-api-snapshot-"))
                weakref.finalize(self, shutil.rmtree, root, True)
            self._parts = PartStore(root / self.database)
        return self._parts

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def needs_load(self) -> bool:
        version = versions.latest_version(self.client, self.database)
        if version is None:
            self.last_error = "no timing materialization yet (materialize the timing_curves asset)"
            return False
        current = self.current
        return (current is None or version != current.timing_version
                or identity_stamp(self.client, self.database) != current.identity_stamp)

    def refresh(self) -> bool:
        """Load and swap in a newer snapshot if one landed; True when it swapped."""
        with self._lock:
            self.last_check_at = datetime.now(UTC)
            if not self.needs_load():
                return False
            started = time.perf_counter()
            with _build_memory():
                snapshot = load_decision_snapshot(self.client, self.database, self.parts)
            if snapshot is None:
                return False
            self.current = snapshot  # the atomic swap
            self.loads += 1
            self.last_load_seconds = time.perf_counter() - started
            self.last_error = None
            log.info("decision snapshot %s loaded in %.2fs: %d people with curves, %d identifiers (parts %s)",
                     snapshot.version, self.last_load_seconds, len(snapshot.timing_uid), snapshot.identity.identifiers,
                     ", ".join(f"{p.name} {'built' if p.built else 'mapped'}" for p in snapshot.parts))
            return True

    def refresh_safely(self) -> bool:
        try:
            self.parts.prune()  # parts no worker serves any more (the previous version, once its requests ended)
            return self.refresh()
        except Exception as exc:  # keep serving the previous snapshot; readiness shows the error
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            self._client = None  # reconnect next time (the server may have restarted)
            log.warning("decision snapshot refresh failed: %s", self.last_error)
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_safely()
            self._stop.wait(self.refresh_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="snapshot-refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.directory is None and self._parts is not None:  # a private directory: its mapped files stay
            shutil.rmtree(self._parts.root.parent, ignore_errors=True)  # readable until unmapped
