"""The committed timing curves as a snapshot part, stored compactly: streamed from ClickHouse into column files
once per timing version (sql/decisions/timing_curves.sql), then mapped by every API worker (snapshot_store.py).

A curve is 168 UInt16 codes and a float32 scale (its peak / 65535): 340 bytes a person instead of 672, read back
as `codes * scale` in float32. The error is at most half a step, peak / 131070 (7.6e-6 of the peak): decisions
change only between hours whose values differ by less than that (docs/SCALING.md, "API memory", has the measured
tolerance). Everything else keeps its width; text columns (fallback level, cohort) are small codes into name lists.

Columns: uid (uint64, sorted), codes (uint16 [n, 168]), scale (float32; NaN = a curve the decision rule refuses),
evidence (float32), engagements (uint32), level (uint8) and cohort (uint32) as indexes into the metadata's names,
best_hour (uint8), prior_curves (float32 [k, 168]) and prior_evidence (float64 [k]) with their names in the
metadata, as store.load_priors reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup
from sendflowr.decisions.columns import Ascending, ColumnWriter, block, uid_column, values
from sendflowr.decisions.snapshot_store import Part
from sendflowr.identity import graph
from sendflowr.sql_files import load_sql
from sendflowr.timing import store
from sendflowr.timing.decide import HOURS
from sendflowr.timing.store import TimingSnapshot
from sendflowr.timing.versions import committed

LEVELS = 65535  # UInt16 codes: value = code * peak / LEVELS


class QuantizedCurves:
    """Reads like the float32 [n, 168] matrix of curves: indexing with a row or an array of rows gives float32
    values `codes * scale` (the same for a row read alone or in a batch)."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, codes: np.ndarray, scale: np.ndarray) -> None:
        self.codes, self.scale = codes, scale
        self.shape = (len(codes), HOURS)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> np.ndarray:
        scale = self.scale[rows]
        return self.codes[rows].astype(np.float32) * (scale[..., None] if np.ndim(scale) else scale)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # the whole matrix: for tests and tools, not requests
        whole = self[np.arange(len(self))]
        return whole if dtype is None else whole.astype(dtype)


class _Ids:
    """`universal_id` of a compact timing snapshot: formatted from the uint64 ids when read (not held as text)."""

    def __init__(self, uid: np.ndarray) -> None:
        self.uid = uid
        self.shape = uid.shape

    def __len__(self) -> int:
        return len(self.uid)

    def __getitem__(self, rows):
        text = graph.format_uid(np.atleast_1d(self.uid[rows])).astype(object)
        return text if np.ndim(rows) else str(text[0])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return graph.format_uid(self.uid).astype(dtype or object)


@dataclass(frozen=True)
class CompactTiming(TimingSnapshot):
    """A TimingSnapshot over a mapped part: `uid` holds the sorted uint64 ids, `curves` reads quantized rows."""

    uid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.uid)

    def positions(self, universal_ids) -> np.ndarray:
        ids = graph.parse_uid(np.asarray(universal_ids, dtype="U19")) if len(universal_ids) else self.uid[:0]
        at, found = lookup(self.uid, ids)
        return np.where(found, at, -1).astype(np.int64)


class _Names:
    """Text column -> codes into one list of names, across batches (and across parts: a delta continues its base's
    list, so the base's codes stay valid)."""

    def __init__(self, names: list[str] = ()) -> None:
        self.index: dict[str, int] = {name: code for code, name in enumerate(names)}

    def codes(self, column: pa.Array, dtype) -> np.ndarray:
        encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
        remap = np.array([self.index.setdefault(name, len(self.index)) for name in encoded.dictionary.to_pylist()],
                         dtype)
        return remap[encoded.indices.to_numpy(zero_copy_only=False)] if len(remap) else np.zeros(0, dtype)

    @property
    def names(self) -> list[str]:
        return list(self.index)


COLUMNS = (("uid", np.uint64, ()), ("codes", np.uint16, (HOURS,)), ("scale", np.float32, ()),
           ("evidence", np.float32, ()), ("engagements", np.uint32, ()), ("level", np.uint8, ()),
           ("cohort", np.uint32, ()), ("best_hour", np.uint8, ()))
BLOCK = 200_000  # rows of the base copied at a time (a delta merge)
MAX_DELTA_SHARE = 0.5  # a delta of more rows than this share of its base is loaded whole instead


def _batches(client: Client, database: str, since: int, version: int, levels: _Names, cohorts: _Names):
    """The rows of sql/decisions/timing_curves.sql with since < version <= `version`, batch by batch, as columns."""
    ids = Ascending("timing universal_id")
    sql = load_sql("decisions/timing_curves.sql", database)
    params = {"since": since, "v": version, "levels": float(LEVELS)}
    with client.query_arrow_stream(sql, parameters=params, use_strings=True) as rows:
        for batch in rows:
            n = batch.num_rows
            if not n:
                continue
            col = block(batch)
            if (values(col["hours"], np.int64) != HOURS).any():
                raise ValueError(f"timing curves must have {HOURS} values each")
            peak, finite = values(col["peak"], np.float32), values(col["finite"], bool)
            yield {"uid": ids.check(uid_column(col["universal_id"])),
                   "codes": values(col["codes"].flatten(), np.uint16).reshape(n, HOURS),
                   "scale": np.where(finite, peak / np.float32(LEVELS), np.float32(np.nan)).astype(np.float32),
                   "evidence": values(col["evidence"], np.float32),
                   "engagements": values(col["engagements"], np.uint32),
                   "level": levels.codes(col["fallback_level"], np.uint8),
                   "cohort": cohorts.codes(col["cohort"], np.uint32),
                   "best_hour": values(col["best_hour"], np.uint8)}


def _copy(base: Part, start: int, stop: int, out: ColumnWriter) -> None:
    for first in range(start, stop, BLOCK):
        for name, _, _ in COLUMNS:
            out.append(name, base[name][first:min(stop, first + BLOCK)])


def _merge(base: Part, batches, out: ColumnWriter) -> None:
    """Base rows and delta rows, both sorted by uid, into one sorted part: a person in the delta takes its row."""
    uid = base["uid"]
    done = 0
    for delta in batches:
        d = delta["uid"]
        start, stop = np.searchsorted(uid, d[0]), np.searchsorted(uid, d[-1], side="right")
        _copy(base, done, start, out)  # base rows before this batch's range: as they are
        window = uid[start:stop]
        at = np.minimum(np.searchsorted(d, window), len(d) - 1)
        kept = start + np.flatnonzero(d[at] != window)  # base rows in the range the delta does not replace
        order = np.argsort(np.concatenate([uid[kept], d]), kind="stable")
        for name, _, _ in COLUMNS:
            out.append(name, np.concatenate([base[name][kept], delta[name]])[order])
        done = stop
    _copy(base, done, len(uid), out)


def _usable_base(client: Client, database: str, base: Part, version: int) -> bool:
    """A base must be a committed run of this database (not of a database dropped and made again under the same
    name) and small next to what changed since."""
    since = int(base.meta["version"])
    if since >= version:
        return False
    rows = client.query(f"SELECT materialized_at FROM {database}.timing_runs WHERE version = {{s:UInt64}}",
                        parameters={"s": since}).result_rows
    moment = rows[0][0] if rows else None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # as store.latest_run reads it
    if moment is None or moment.isoformat() != base.meta["materialized_at"]:
        return False
    changed = client.command(f"SELECT count() FROM {database}.timing_curves WHERE version > {{s:UInt64}} "
                             f"AND version <= {{v:UInt64}} AND {committed(database)}",
                             parameters={"s": since, "v": version})
    return int(changed) <= MAX_DELTA_SHARE * len(base["uid"])


def write_timing(client: Client, database: str, run: tuple[int, datetime, str], out: ColumnWriter,
                 base: Part | None = None) -> dict:
    """Stream committed version `run[0]` (store.latest_run) into `out`; returns the part's metadata. With `base`, a
    part of an older committed version, only the rows written since that version are read and merged into a copy
    of the base (a person's newest row wins either way: rows only ever get newer versions, see timing.versions)."""
    version, materialized_at, calibration_json = run
    if base is not None and not _usable_base(client, database, base, version):
        base = None
    levels = _Names(base.meta["levels"] if base is not None else ())
    cohorts = _Names(base.meta["cohorts"] if base is not None else ())
    if base is None:
        for batch in _batches(client, database, 0, version, levels, cohorts):
            for name, _, _ in COLUMNS:
                out.append(name, batch[name])
    else:
        _merge(base, _batches(client, database, int(base.meta["version"]), version, levels, cohorts), out)
    for name, dtype, trailing in COLUMNS:
        out.declare(name, dtype, trailing)
    if len(levels.index) > 255:
        raise ValueError("more than 255 fallback levels")
    priors = store.load_priors(client, database, version)
    out.append("prior_curves", np.asarray(priors.curves, np.float32).reshape(-1, HOURS))
    out.append("prior_evidence", priors.evidence)
    return {"version": version, "materialized_at": materialized_at.isoformat(), "calibration": calibration_json,
            "levels": levels.names, "cohorts": cohorts.names, "prior_levels": priors.level.tolist(),
            "prior_cohorts": priors.cohort.tolist(), "base": base.name if base is not None else None}


def timing_from_part(part: Part) -> CompactTiming:
    meta = part.meta
    priors, prior_evidence, global_curve, global_evidence = store.Priors(
        level=np.array(meta["prior_levels"], object), cohort=np.array(meta["prior_cohorts"], object),
        curves=part["prior_curves"], evidence=part["prior_evidence"]).split()
    # The two text columns as object arrays of shared name objects (8 bytes a person in each worker): the decision
    # service indexes them as arrays of text.
    level_names = np.array(meta["levels"] or [""], object)
    cohort_names = np.array(meta["cohorts"] or [""], object)
    uid = part["uid"]
    return CompactTiming(
        version=int(meta["version"]), materialized_at=datetime.fromisoformat(meta["materialized_at"]),
        universal_id=_Ids(uid), curves=QuantizedCurves(part["codes"], part["scale"]), evidence=part["evidence"],
        engagements=part["engagements"], fallback_level=level_names[part["level"]], cohort=cohort_names[part["cohort"]],
        best_hour=part["best_hour"], priors=priors, prior_evidence=prior_evidence, global_curve=global_curve,
        global_evidence=global_evidence, calibration=store.calibration_of(meta["calibration"]), uid=uid)
