"""One timing materialization (docs/TIMING.md, "Pipeline"): read the owned messages of the committed events in one
pass (sql/timing/message_state.sql and message_outputs.sql: signal cleaning, owner, delivery hour, wait for the
first genuine engagement),
turn them into per-person cell statistics with numpy, fit the time-to-engagement model (decay, priors, the ML
prior), estimate curves on [n, 168] blocks, write priors and the curves that changed, commit (timing_runs last,
sendflowr.timing.versions). A build whose message pass takes several slices goes in slices of people
(sendflowr.timing.slices).

A run with nothing new (no newly committed events, no identity write) does nothing. Otherwise a person's curve
row is rewritten only when their statistics or cohort changed, or when the global prior moved (then everyone's
is, since every curve leans on it). The calibration is carried forward; the evaluation asset fits the next one
(sendflowr.timing.evaluation_run).
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from threadpoolctl import threadpool_limits

from sendflowr import progress
from sendflowr.timing import incremental, slices, versions
from sendflowr.timing.decide import HOURS, Calibration
from sendflowr.timing.estimate import EstimatorParams, Priors, levels
from sendflowr.timing.fit import CHUNK, Fit, read_inputs
from sendflowr.timing.owners import person_cohorts
from sendflowr.timing.scratch import people_table
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import slices_for, stats_from_cells

PRIOR_DRIFT = 0.05  # relative change of the global prior that rewrites every curve
# Curve rows per INSERT (several estimated blocks): each insert is a part the engine merges later; 200k-row
# inserts took ~40% less server CPU than 50k-row ones for 1M curves (bench/timing.py's write, 2026-12-07).
WRITE_ROWS = 200_000
ESTIMATE_THREADS = 2  # blocks estimated at once


@dataclass
class TimingReport:
    run_id: str
    version: int = 0
    new_events: int = 0
    people: int = 0
    people_written: int = 0
    full_rewrite: bool = False
    skipped: bool = False  # nothing new since the last committed run: no new version
    by_level: dict[str, int] = field(default_factory=dict)
    cohorts: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def shares(self) -> dict[str, float]:
        t = self.totals
        return {"machine_open_share": t.get("machine_opens", 0) / max(t.get("opens", 0), 1),
                "scanner_click_share": t.get("scanner_clicks", 0) / max(t.get("clicks", 0), 1),
                "engaged_delivery_share": t.get("engaged", 0) / max(t.get("deliveries", 0), 1)}

def record_progress(client: Client, database: str, run_id: str) -> tuple[int, dict[tuple[str, int], int]]:
    """Advance the watermark to the committed ends; returns (events newly committed, committed end per range).

    Nothing is folded: every run reads the committed events straight from `events` (messages_sql), so the
    watermark only tells whether anything is new since the last run."""
    ends = progress.committed_ends(client, database)
    bounds = progress.pending(client, database, "timing_progress", ends)
    progress.advance(client, database, "timing_progress", bounds, run_id)
    return sum(e - s for s, e in bounds.values()), ends

def _stats_hash(f: Fit) -> np.ndarray:
    """A per-person fingerprint of the statistics and cohort (wrapping uint64 arithmetic, vectorized)."""
    st = f.stats
    with np.errstate(over="ignore"):
        mix = ((st.cell.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
               ^ (st.messages.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
               ^ (st.events.astype(np.uint64) * np.uint64(0x165667B19E3779F9)))
        mix = mix * np.uint64(0xFF51AFD7ED558CCD)
        total = np.add.reduceat(np.append(mix, np.uint64(0)), st.offsets[:-1]) if len(st) else np.zeros(0, np.uint64)
        total = np.where(np.diff(st.offsets) > 0, total, np.uint64(0))
        crc = np.array([zlib.crc32(c.encode()) for c in f.priors.cohorts], dtype=np.uint64)  # a few dozen
        return total ^ (crc[f.cohort_index] * np.uint64(0x27D4EB2F165667C5))

def _changed(previous: pa.Table | None, ids: np.ndarray, new_hash: np.ndarray) -> np.ndarray:
    """People without a committed row or whose statistics hash differs (sorted-array join)."""
    if previous is None or previous.num_rows == 0:
        return np.ones(ids.shape[0], dtype=bool)
    old_ids = np.asarray(previous.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    old_hash = previous.column("h").to_numpy().astype(np.uint64)
    at = np.minimum(np.searchsorted(old_ids, ids), old_ids.shape[0] - 1)
    return (old_ids[at] != ids) | (old_hash[at] != new_hash)

def identity_mark(client: Client, database: str) -> list:
    """Changes whenever identity writes (node rows are only ever added, with a newer updated_at)."""
    count, newest = client.query(f"SELECT count(), toString(max(updated_at)) FROM {database}.identity_nodes"
                                 ).result_rows[0]
    return [int(count), str(newest)]

def _last_mark(client: Client, database: str) -> list | None:
    rows = client.query(f"SELECT metadata FROM {database}.timing_runs WHERE kind = 'curves' "
                        "ORDER BY version DESC LIMIT 1").result_rows
    return json.loads(rows[0][0]).get("identity_mark") if rows else None

def _previous(client: Client, database: str) -> tuple[np.ndarray | None, str | None]:
    """The committed global prior and the calibration (carried forward until the evaluation asset fits the next
    one, sendflowr.timing.confidence.calibrate)."""
    head = client.query(f"SELECT version, calibration FROM {database}.timing_runs ORDER BY version DESC LIMIT 1")
    if not head.result_rows:
        return None, None
    g = client.query(f"SELECT argMax(curve, version) FROM {database}.timing_priors "
                     f"WHERE level = 'global' AND {versions.committed(database)}").result_rows
    prior = np.asarray(g[0][0], dtype=np.float32) if g and g[0][0] else None
    return prior, head.result_rows[0][1]

def _previous_hashes(client: Client, database: str, first: str, last: str) -> pa.Table:
    """Committed per-person stats hashes of the people first <= universal_id <= last (a range of the curves' sort
    key: a build in slices reads its slice's)."""
    return client.query_arrow(
        f"SELECT universal_id, argMax(stats_hash, version) AS h FROM {database}.timing_curves "
        f"WHERE {versions.committed(database)} "
        "AND universal_id >= {first:String} AND universal_id <= {last:String} "
        "GROUP BY universal_id ORDER BY universal_id", parameters={"first": first, "last": last}, use_strings=True)

def _calibration(client: Client, database: str) -> str | None:
    """The committed calibration alone (an incremental run carries it forward and needs nothing else)."""
    rows = client.query(f"SELECT calibration FROM {database}.timing_runs ORDER BY version DESC LIMIT 1").result_rows
    return rows[0][0] if rows else None

def materialize(client: Client, database: str, rules: SignalRules | None = None,
                params: EstimatorParams | None = None, run_id: str | None = None, full: bool = False,
                log: Callable[[str], None] = print) -> TimingReport:
    """Check for anything new; then a full build (fit everything, leave a base) or an incremental run on the
    base (sendflowr.timing.incremental); write what changed, commit (timing_runs last). The client is used from
    a side and a writer thread too: it must not hold an HTTP session (sendflowr.clickhouse.get_client's never
    do)."""
    rules = rules or SignalRules()
    params = params or EstimatorParams()
    report = TimingReport(run_id=run_id or f"timing-{uuid.uuid4().hex[:12]}")
    with versions.writer(client, database, report.run_id):
        return _materialize(client, database, rules, params, report, full, log)

def _materialize(client: Client, database: str, rules: SignalRules, params: EstimatorParams, report: TimingReport,
                 full: bool, log: Callable[[str], None]) -> TimingReport:
    t0 = time.perf_counter()
    report.new_events, ends = record_progress(client, database, report.run_id)
    mark = identity_mark(client, database)
    if not full and report.new_events == 0 and _last_mark(client, database) == mark:
        report.skipped = True
        report.version = int(client.command(f"SELECT max(version) FROM {database}.timing_runs"))
        report.seconds["total"] = time.perf_counter() - t0
        log(f"timing: no new events and no identity change since v{report.version}: nothing to do")
        return report
    base = incremental.base_of(client, database)
    now = incremental.now_ms()
    why = "asked for" if full else incremental.needs_full(
        base, incremental.estimate_messages(incremental.pending(base, ends)) if base else 0, params, now)
    report.seconds["progress"] = time.perf_counter() - t0
    if why:
        log(f"timing: a full build ({why})")
        return _full_build(client, database, rules, params, report, ends, mark, now, full, log)
    return _incremental(client, database, rules, params, report, ends, mark, base, now, log)

def _full_build(client: Client, database: str, rules: SignalRules, params: EstimatorParams, report: TimingReport,
                ends: dict[tuple[str, int], int], mark: list, now: int, full: bool,
                log: Callable[[str], None]) -> TimingReport:
    t1 = time.perf_counter()
    observed = datetime.fromtimestamp(now / 1000, tz=UTC)
    version = report.version = versions.next_version(client, database)
    parts = slices_for(client, database)
    # A message pass in several slices means more people than one piece should hold: the build goes in slices
    # (sendflowr.timing.slices). A half-life weighs messages by their age at the build, which the base's cells
    # cannot hold: such a build stays in one piece.
    if parts > 1 and params.half_life_hours <= 0:
        log(f"timing: a build in {parts} slices")
        build = slices.fit_in_slices(client, database, rules, params, observed, ends, version, parts, log)
        return _write_build(client, database, rules, params, report, ends, mark, now, full, log, t1, build.model,
                            build.fits(), None)
    inputs = read_inputs(client, database, rules, params, observed_before=observed, ends=ends)
    stats, index = inputs.stats(params)
    inputs.messages = None  # from here on a build needs only the statistics: every message's row can go
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="timing-base") as side:
        # The base incremental runs add to (sendflowr.timing.incremental) is ClickHouse work, done beside numpy's:
        # its cells as soon as the statistics exist (while the model is fitted), then the model and open messages
        # (while the curves are estimated).
        cells = side.submit(incremental.write_base_cells, client, database, version, stats) \
            if params.half_life_hours <= 0 else None
        f = inputs.fit_from(stats, index, params)
        model = slices.Model(f.decay, f.priors, f.clusters, len(f.stats), float(f.stats.delivered.sum()),
                             f.stats.totals)
        return _write_build(client, database, rules, params, report, ends, mark, now, full, log, t1, model, [f],
                            (side, cells))


def _write_build(client: Client, database: str, rules: SignalRules, params: EstimatorParams, report: TimingReport,
                 ends: dict[tuple[str, int], int], mark: list, now: int, full: bool, log: Callable[[str], None],
                 t1: float, model: slices.Model, fits: Iterable[Fit],
                 side: tuple[ThreadPoolExecutor, Future | None] | None) -> TimingReport:
    """A full build's writes once its model is fitted: priors, the curves of `fits` (its people, in universal_id
    order), the rest of the base, the commit. `side`: the thread that writes the base's cells (and the future of
    that write) when they are not written yet."""
    version = report.version
    t2 = time.perf_counter()
    report.seconds["aggregate"] = t2 - t1
    report.people, report.totals = model.people, model.totals
    report.cohorts = len(model.priors.cohorts) - 1
    old_prior, calibration = _previous(client, database)
    drift = (np.inf if old_prior is None or old_prior.shape != (HOURS,)
             else float(np.max(np.abs(model.priors.global_curve - old_prior) / np.maximum(old_prior, 1e-6))))
    report.full_rewrite = full or drift > PRIOR_DRIFT
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="timing-base") as own:
        thread, cells = side if side is not None else (own, None)
        base = thread.submit(_write_base, client, database, rules, params, model, version, ends, now, cells) \
            if params.half_life_hours <= 0 else None
        _write_priors(client, database, model.priors, version)
        for f in fits:
            new_hash = _stats_hash(f)
            ids = f.stats.universal_id
            changed = np.ones(len(f.stats), dtype=bool) if report.full_rewrite or not len(f.stats) else _changed(
                _previous_hashes(client, database, str(ids[0]), str(ids[-1])), ids, new_hash)
            write_curves(client, database, f, version, changed, new_hash, report)
        base_meta = base.result() if base is not None else {}
    t3 = time.perf_counter()
    report.seconds["estimate_and_write"] = t3 - t2
    metadata = {"identity_mark": mark, "shares": report.shares(), "totals": report.totals,
                "by_level": report.by_level, "rules": rules.describe(), "params": params.to_dict(),
                "prior_drift": drift, "seconds": report.seconds, "new_events": report.new_events,
                "slices": model.slices, **base_meta}
    versions.commit(client, database, version, report.run_id, "curves", report.people,
                    calibration or Calibration.default().to_json(), report.people_written, metadata)
    if base_meta:
        incremental.drop_old_bases(client, database, keep=version)
    report.seconds["total"] = time.perf_counter() - report.started
    log(f"timing v{version}: {report.people} people ({report.by_level}), {report.people_written} curve rows "
        f"written, {report.cohorts} cohorts, machine opens {report.shares()['machine_open_share']:.1%}, scanner "
        f"clicks {report.shares()['scanner_click_share']:.1%}, {report.seconds['total']:.2f}s")
    return report

def _write_base(client: Client, database: str, rules: SignalRules, params: EstimatorParams,
                model: slices.Model, version: int, ends: dict[tuple[str, int], int], now: int,
                cells: Future | None) -> dict:
    """The rest of the base once its cells are written (`cells`, on the same thread: already done)."""
    if cells is not None:
        cells.result()
    # In the body, not as a query parameter: the model outgrows a URL (the embedded endpoint answers 414).
    client.insert(f"{database}.timing_models",
                  [[version, incremental.model_json(model.decay, model.priors, model.clusters)]],
                  column_names=["version", "model"])
    incremental.seed_open(client, database, rules, params, version, ends, now)
    base = incremental.Base(version=version, built_ms=now, messages=int(model.delivered), ends=ends,
                            merged_at=incremental.newest_merge(client, database))
    return incremental.base_metadata(base)

def _incremental(client: Client, database: str, rules: SignalRules, params: EstimatorParams, report: TimingReport,
                 ends: dict[tuple[str, int], int], mark: list, base: incremental.Base, now: int,
                 log: Callable[[str], None]) -> TimingReport:
    t1 = time.perf_counter()
    version = report.version = versions.next_version(client, database)
    committed = versions.latest_version(client, database) or 0
    merged_at = incremental.newest_merge(client, database)
    delta, merged, kept = incremental.run_increment(client, database, rules, params, base, version, ends, now, log)
    cells = incremental.read_cells(client, database, base.version, version, delta.people)
    stats = stats_from_cells(cells, params.horizon_hours)
    decay, priors, clusters = incremental.load_model(client, database, base.version)
    code, names = person_cohorts(client, database, stats.universal_id)
    lookup = {name: i for i, name in enumerate(priors.cohorts)}
    cohort_index = np.array([lookup.get(name, 0) for name in names], dtype=np.int64)[code] if len(stats) else \
        np.zeros(0, np.int64)
    f = Fit(stats=stats, decay=decay, priors=priors, cohort_index=cohort_index, params=params, clusters=clusters)
    t2 = time.perf_counter()
    report.seconds["aggregate"] = t2 - t1
    head = versions.latest_run(client, database, kind="curves")
    report.people = int(head["people"]) + _new_people(client, database, stats.universal_id, committed)
    report.totals = {"merged_messages": merged, "open_messages": kept}
    report.cohorts = len(priors.cohorts) - 1
    write_curves(client, database, f, version, np.ones(len(stats), dtype=bool), _stats_hash(f), report)
    report.seconds["estimate_and_write"] = time.perf_counter() - t2
    calibration = _calibration(client, database)
    after = incremental.Base(version=base.version, built_ms=base.built_ms, messages=base.messages, ends=ends,
                             merged_at=merged_at)
    metadata = {"identity_mark": mark, "incremental": True, "by_level_written": report.by_level,
                "params": params.to_dict(), "seconds": report.seconds, "new_events": report.new_events,
                "changed_people": len(stats), **incremental.base_metadata(after)}
    versions.commit(client, database, version, report.run_id, "curves", report.people,
                    calibration or Calibration.default().to_json(), report.people_written, metadata)
    report.seconds["total"] = time.perf_counter() - report.started
    log(f"timing v{version} (incremental): {len(stats)} people re-estimated, {report.people_written} curve rows "
        f"written, {report.seconds['total']:.2f}s")
    return report

def _new_people(client: Client, database: str, ids: np.ndarray, committed: int) -> int:
    """How many of these people had no committed curve yet."""
    if ids.size == 0:
        return 0
    with people_table(client, database, ids) as table:
        known = int(client.command(
            f"SELECT uniqExact(universal_id) FROM {database}.timing_curves WHERE {versions.committed(database)} "
            f"AND universal_id IN (SELECT universal_id FROM {table})"))
    return int(ids.size) - known

def write_curves(client: Client, database: str, f: Fit, version: int, changed: np.ndarray, stats_hash: np.ndarray,
                 report: TimingReport) -> None:
    """Estimate every person's curve in blocks and write the changed ones, WRITE_ROWS at a time. One writer
    thread: a write goes over the wire (and ClickHouse parses and sorts it) while numpy estimates the next
    blocks; at most one write in flight, all of them done when this returns (before the commit marker)."""
    by_level: dict[str, int] = {"person": 0, "cohort": 0, "global": 0}
    cohorts = np.asarray(f.priors.cohorts, dtype=object)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="timing-write") as writer:
        pending: Future | None = None
        blocks: list[pa.Table] = []

        def send() -> None:
            nonlocal pending
            if pending is not None:
                pending.result()
            pending = writer.submit(_insert_curves, client, database, pa.concat_tables(blocks))
            blocks.clear()

        # closing: a failed write stops the estimate threads (and restores BLAS's threads) at once
        with closing(_estimated_blocks(f)) as estimated:
            for lo, hi, (curves, evidence, engaged) in estimated:
                lv = levels(engaged, f.cohort_index[lo:hi], f.params)
                for name in by_level:
                    by_level[name] += int((lv == name).sum())
                mask = changed[lo:hi]
                if mask.any():
                    # everyone in the block changed (a full build): views, not a fancy-indexed copy of the curves
                    rows = slice(None) if mask.all() else np.flatnonzero(mask)
                    table = _curves_table(version, f.stats.universal_id[lo:hi][rows], curves[rows], evidence[rows],
                                          engaged[rows], f.stats.delivered[lo:hi][rows], lv[rows],
                                          cohorts[f.cohort_index[lo:hi][rows]], stats_hash[lo:hi][rows])
                    blocks.append(table)
                    report.people_written += table.num_rows
                    if sum(b.num_rows for b in blocks) >= WRITE_ROWS:
                        send()
        if blocks:
            send()
        if pending is not None:
            pending.result()
    for name, count in by_level.items():
        report.by_level[name] = report.by_level.get(name, 0) + count

def _estimated_blocks(f: Fit, threads: int = ESTIMATE_THREADS, chunk: int = CHUNK) -> Iterator[tuple[int, int, tuple]]:
    """(lo, hi, f.curves(lo, hi)) for blocks of at most `chunk` people, in order, estimated `threads` blocks at a
    time (numpy and scipy release the GIL in their loops; BLAS kept at one thread each), at most threads + 1 in
    memory. Fewer people than threads blocks (an incremental run's) are split evenly, so every thread has one."""
    n = len(f.stats)
    size = max(min(chunk, -(-n // threads)), 1)
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    with threadpool_limits(1), ThreadPoolExecutor(threads, thread_name_prefix="timing-estimate") as pool:
        ahead: deque[tuple[int, int, Future]] = deque()
        for lo, hi in bounds:
            ahead.append((lo, hi, pool.submit(f.curves, lo, hi)))
            if len(ahead) > threads:
                a, b, block = ahead.popleft()
                yield a, b, block.result()
        while ahead:
            a, b, block = ahead.popleft()
            yield a, b, block.result()

def _list(matrix: np.ndarray) -> pa.Array:
    n = matrix.shape[0]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * HOURS)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel()))

def _write_priors(client: Client, database: str, priors: Priors, version: int) -> None:
    k = len(priors.cohorts)
    client.insert_arrow(f"{database}.timing_priors", pa.table({
        "level": pa.array(["global"] + ["cohort"] * (k - 1), pa.string()),
        "cohort": pa.array(priors.cohorts, pa.string()), "version": pa.array(np.full(k, version), pa.uint64()),
        "curve": _list(priors.curves), "evidence": pa.array(priors.evidence.astype(np.float32)),
        "people": pa.array(priors.people.astype(np.uint64))}))

def _insert_curves(client: Client, database: str, table: pa.Table, into: str = "timing_curves") -> None:
    """Without in-insert replacing: a run writes each person once; versions are resolved on read. (`into`: the
    benchmark's write floor sends the same rows the same way into an empty copy of the table.)"""
    client.insert_arrow(f"{database}.{into}", table, settings={"optimize_on_insert": 0})

def _curves_table(version: int, ids: np.ndarray, curves: np.ndarray, evidence: np.ndarray, engaged: np.ndarray,
                  deliveries: np.ndarray, lv: np.ndarray, cohort: np.ndarray, stats_hash: np.ndarray) -> pa.Table:
    n = ids.shape[0]
    return pa.table({
        "universal_id": pa.array(ids, pa.string()), "version": pa.array(np.full(n, version), pa.uint64()),
        "curve": _list(curves), "evidence": pa.array(evidence.astype(np.float32)),
        "engagements": pa.array(engaged.astype(np.uint32)), "deliveries": pa.array(deliveries.astype(np.uint32)),
        "fallback_level": pa.array(lv, pa.string()), "cohort": pa.array(cohort, pa.string()),
        "best_hour": pa.array(curves.argmax(axis=1).astype(np.uint8)),
        "stats_hash": pa.array(stats_hash.astype(np.uint64))})
