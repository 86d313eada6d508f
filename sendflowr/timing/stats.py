"""Per-message rows and per-person statistics of the timing model (docs/TIMING.md, "Pipeline", "The model").

The messages come from ClickHouse in one pass (sql/timing/message_state.sql grouped per message, then
message_outputs.sql: signal cleaning, owner, delivery hour, wait for the first genuine engagement); numpy turns
them into each person's cell statistics (sendflowr.timing.hazard: a cell is a delivery hour of week and a wait).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client
from scipy import sparse

from sendflowr import progress
from sendflowr.sql_files import load_sql
from sendflowr.timing.decide import EPOCH_HOW, HOURS
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.hazard import Decay, event_hour
from sendflowr.timing.signals import SignalRules

# Events a slice of the message pass groups at most: the pass's hash table grows with the messages it holds
# (the endpoint's peak 4.5 GB at 20M events, 8.1 GB at 40M) and each row's cost with it (CPU exponent 1.17
# from 20M to 40M events); slices of the messages, one pass each, keep both flat, for one more read of the
# events a slice (bench/scale.py, docs/SCALING.md).
SLICE_EVENTS = 25_000_000


def range_parameters(bounds: dict[tuple[str, int], tuple[int, int]], part: tuple[int, int] = (0, 1)) -> dict:
    """Offset ranges as the (topic index << 32 | partition) -> [start, end) arrays message_state.sql looks up, and
    which slice of the messages it groups: part = (i, n), the messages whose id hashes to i modulo n."""
    topics = sorted({t for t, _ in bounds})
    index = {t: i + 1 for i, t in enumerate(topics)}
    return {"topics": topics, "topic_index": [index[t] for t in topics],
            "range_keys": [(index[t] << 32) | p for t, p in bounds],
            "range_starts": [b[0] for b in bounds.values()], "range_ends": [b[1] for b in bounds.values()],
            "slice": part[0], "slices": part[1]}


def slices_for(client: Client, database: str) -> int:
    """How many slices a pass over every committed event takes: by the rows `events` holds (its parts' counts, no
    scan; the ranges' offsets would overcount a topic whose offsets are not all events')."""
    rows = client.command("SELECT sum(rows) FROM system.parts WHERE database = {d:String} AND table = 'events' "
                          "AND active", parameters={"d": database})
    return max(1, -(-int(rows or 0) // SLICE_EVENTS))

def messages_sql(database: str, states: str | None = None, extra: str = "") -> str:
    """message_outputs.sql over `states` (default: message_state.sql over the events), with extra output columns."""
    states = load_sql("timing/message_state.sql", database) if states is None else states
    return load_sql("timing/message_outputs.sql", database).replace("${states}", states).replace("${extra}", extra)

@dataclass
class Messages:
    """One row per owned, delivered message (messages_sql), as columns: the owner's index in the run's owner map,
    the delivery hour (hours since the epoch) and second into it, the wait and whether it ended engaged."""

    p: np.ndarray
    delivered_hour: np.ndarray
    delivered_second: np.ndarray
    wait: np.ndarray
    engaged: np.ndarray
    observed_hour: int  # hours since the epoch of observed_before: later engagement was not seen
    totals: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.p.shape[0])

    def before(self, hour: int) -> Messages:
        """What was known at `hour`: later deliveries dropped, engagement after it unseen (waits censored there)."""
        keep = self.delivered_hour < hour
        seen = hour - 1 - self.delivered_hour[keep].astype(np.int64)
        wait = np.minimum(self.wait[keep].astype(np.int64), seen)
        engaged = self.engaged[keep] & (self.wait[keep].astype(np.int64) <= seen)
        return Messages(self.p[keep], self.delivered_hour[keep], self.delivered_second[keep], wait, engaged, hour)

def message_rows(client: Client, database: str, rules: SignalRules, owners: str, params: EstimatorParams,
                 observed_before: datetime | None = None,
                 ends: dict[tuple[str, int], int] | None = None, part: tuple[int, int] | None = None) -> Messages:
    """The committed events' owned messages (messages_sql). observed_before: what is known is what happened
    before it (default now). part = (i, n): only the i-th of n slices of the messages (default: all of them,
    in slices_for's count)."""
    ends = progress.committed_ends(client, database) if ends is None else ends
    observed = observed_before or datetime.now(UTC)
    bounds = {k: (0, e) for k, e in ends.items()}
    if part is None:
        n = slices_for(client, database)
        parts = [(i, n) for i in range(n)]
    else:
        parts = [part]
    table = pa.concat_tables([client.query_arrow(messages_sql(database), parameters={
        **rules.parameters(), **range_parameters(bounds, one), "owners": owners,
        "horizon_hours": params.horizon_hours, "observed_before_ms": int(observed.timestamp() * 1000), "since_ms": 0})
        for one in parts])
    col = {name: table.column(name).to_numpy() for name in ("p", "delivered_hour", "delivered_second", "wait",
                                                            "engaged")}
    totals = {name: int(pc.sum(table.column(name)).as_py() or 0)
              for name in ("opens", "machine_opens", "clicks", "scanner_clicks", "clicked")}
    totals.update(genuine_opens=totals["opens"] - totals["machine_opens"],
                  genuine_clicks=totals["clicks"] - totals["scanner_clicks"],
                  deliveries=table.num_rows, engaged=int(col["engaged"].sum()))
    return Messages(col["p"], col["delivered_hour"], col["delivered_second"], col["wait"], col["engaged"] > 0,
                    int(observed.timestamp()) // 3600, totals)

@dataclass
class PersonStats:
    """Sparse (person, message cell) statistics: people sorted by universal_id, rows grouped by person. A cell is
    (delivery hour of week, wait) as sendflowr.timing.hazard defines it."""

    universal_id: np.ndarray  # object [n]
    offsets: np.ndarray  # int64 [n + 1] into the flat columns
    cell: np.ndarray  # int64 [m]
    messages: np.ndarray  # float64 [m] messages in the cell
    events: np.ndarray  # float64 [m] of which engaged (at the cell's wait)
    fresh: np.ndarray  # float64 [m] summed share of the delivery hour left after each delivery
    engaged: np.ndarray  # float64 [n] engaged messages per person (unweighted: levels, evidence, buckets)
    delivered: np.ndarray  # float64 [n] messages per person (unweighted)
    horizon: int
    totals: dict[str, int] = field(default_factory=dict)  # opens, machine opens, clicks, scanner clicks, ...
    recent_hour: np.ndarray | None = None  # per person: the evaluation's genuine-open-hour rule (-1: none)

    def __len__(self) -> int:
        return int(self.universal_id.shape[0])

    @property
    def person(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def _rows(self, lo: int, hi: int, columns_of: Callable[[np.ndarray], np.ndarray], values: np.ndarray,
              width: int, merge: bool) -> sparse.csr_matrix:
        """[hi - lo, width] of people lo..hi: their cells' values at columns_of(their cells), summed per column when
        several cells share one (merge). Only these people's cells are read: a build asks for each block of people."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        m = sparse.csr_matrix((values[a:b].astype(np.float32), columns_of(self.cell[a:b]),
                               self.offsets[lo:hi + 1] - a), shape=(hi - lo, width))
        if merge:
            m.sum_duplicates()
        return m

    def cells(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168 * H] message counts by cell of people lo..hi."""
        return self._rows(lo, hi, lambda cell: cell, self.messages, HOURS * self.horizon, merge=False)

    def delivery_hour_left(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168] the summed share of the delivery hour left after each delivery, by delivery hour."""
        return self._rows(lo, hi, lambda cell: (cell // self.horizon).astype(np.intp), self.fresh, HOURS, merge=True)

    def engagements(self, lo: int, hi: int) -> sparse.csr_matrix:
        """[hi - lo, 168] engagements by hour of week of people lo..hi (duplicates summed)."""
        return self._rows(lo, hi, lambda cell: event_hour(cell, self.horizon), self.events, HOURS, merge=True)

    def deliveries(self, lo: int, hi: int, decay: Decay) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """([hi - lo, 168] engaged, [hi - lo, 168] settled deliveries, Decay.settled) by delivery hour of week."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        cell, events = self.cell[a:b], self.events[a:b]
        settled = decay.settled(cell, self.messages[a:b], events)
        how, pointers = (cell // self.horizon).astype(np.intp), self.offsets[lo:hi + 1] - a
        s, e = (sparse.csr_matrix((v.astype(np.float32), how, pointers), shape=(hi - lo, HOURS))
                for v in (events, settled))
        s.sum_duplicates()
        e.sum_duplicates()
        return s, e

def summed_cells(row: np.ndarray, cell: np.ndarray, values: tuple[np.ndarray, ...],
                 shape: tuple[int, int]) -> list[sparse.csr_matrix]:
    """Each of `values` summed per (row, cell), as CSR matrices of one structure: scipy's COO -> CSR conversion (a
    counting sort by row, in C), rows in order and cells sorted within them."""
    coords = sparse.coo_matrix((values[0], (row, cell)), shape=shape).coords  # index arrays, converted once

    def summed(v: np.ndarray) -> sparse.csr_matrix:
        return sparse.coo_matrix((v, coords), shape=shape).tocsr()

    # scipy's conversion releases the GIL: the sums run side by side (in a build, the engine waits then)
    with ThreadPoolExecutor(max_workers=len(values), thread_name_prefix="timing-stats") as pool:
        return list(pool.map(summed, values))


def cell_positions(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For some rows (ascending) of flat per-row columns with these offsets: their new offsets and the positions of
    their values in the flat columns."""
    lengths = offsets[rows + 1] - offsets[rows]
    new = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return new, np.repeat(offsets[rows] - new[:-1], lengths) + np.arange(new[-1])


def person_stats(m: Messages, persons: np.ndarray, params: EstimatorParams,
                 recent: int = 0) -> tuple[PersonStats, np.ndarray]:
    """Per-person sparse cell statistics, rows sorted by person (owner-map order, which is universal_id order) and
    cell; also each person's owner-map index. persons: the owner map's universal_ids (index - 1)."""
    n = len(m)
    horizon = params.horizon_hours
    cells = HOURS * horizon
    cell = ((m.delivered_hour.astype(np.int64) + EPOCH_HOW) % HOURS) * horizon + m.wait
    p = m.p.astype(np.int64)
    engaged_flag = m.engaged.astype(np.float64)
    left = 1.0 - (m.delivered_second.astype(np.float64) + 0.5) / 3600.0
    if params.half_life_hours > 0:  # recent messages may weigh more (habits shift): 2^(-age / half-life)
        w = np.exp2(-np.maximum(m.observed_hour - m.delivered_hour.astype(np.float64), 0.0) / params.half_life_hours)
        values = (w, engaged_flag * w, left * w)
    else:  # unweighted: no weighted copies (each is 8 bytes a message)
        values = (np.ones(n), engaged_flag, left)
    # the owner-map index is the row, so rows come out in universal_id order
    rows = int(p.max()) + 1 if n else 1
    by_cell, by_events, by_fresh = summed_cells(p, cell, values, (rows, cells))
    lengths = np.diff(by_cell.indptr)
    present = np.flatnonzero(lengths)
    stats = PersonStats(universal_id=persons[present - 1],
                        offsets=np.concatenate([[0], np.cumsum(lengths[present])]).astype(np.int64),
                        cell=by_cell.indices.astype(np.int64), messages=by_cell.data,
                        events=by_events.data, fresh=by_fresh.data,
                        engaged=np.bincount(p, weights=engaged_flag, minlength=rows)[present],
                        delivered=np.bincount(p, minlength=rows)[present].astype(np.float64),
                        horizon=horizon, totals=m.totals)
    if recent:
        stats.recent_hour = genuine_open_hour(m.p, m.delivered_hour.astype(np.int64) + m.wait, m.engaged,
                                              present, recent)
    return stats, present

def stats_from_cells(cells: pa.Table, horizon: int) -> PersonStats:
    """PersonStats from summed cells (incremental.read_cells: universal_id order, then cell)."""
    ids = np.asarray(cells.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    n = ids.shape[0]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]])) if n else np.zeros(0, np.int64)
    messages = np.maximum(cells.column("messages").to_numpy().astype(np.float64), 0.0)
    events = np.maximum(cells.column("events").to_numpy().astype(np.float64), 0.0)
    fresh = np.maximum(cells.column("fresh").to_numpy().astype(np.float64), 0.0)
    per = (lambda v: np.add.reduceat(v, starts)) if n else (lambda v: np.zeros(0))
    return PersonStats(universal_id=ids[starts], offsets=np.append(starts, n).astype(np.int64),
                       cell=cells.column("cell").to_numpy().astype(np.int64), messages=messages, events=events,
                       fresh=fresh, engaged=np.round(per(events)), delivered=np.round(per(messages)), horizon=horizon)

def genuine_open_hour(p: np.ndarray, hour: np.ndarray, engaged: np.ndarray, people: np.ndarray,
                      recent: int) -> np.ndarray:
    """The Braze-style rule the evaluation compares with: per person (owner indexes `people`), the most frequent
    UTC hour of day among their last `recent` genuinely engaged messages (each at its first genuine open or
    click), -1 without any. Ties go to the earliest hour."""
    p, hour = p[engaged].astype(np.int64), hour[engaged].astype(np.int64)
    order = np.lexsort((-hour, p))  # by person, newest first
    p, hour = p[order], hour[order]
    start = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]])) if p.size else np.zeros(0, np.int64)
    rank = np.arange(p.size) - np.repeat(start, np.diff(np.append(start, p.size)))
    keep = rank < recent
    slot = np.searchsorted(people, p[keep])
    counts = np.bincount(slot * 24 + hour[keep] % 24, minlength=people.size * 24).reshape(people.size, 24)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
