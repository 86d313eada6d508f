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
from datetime import datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.decisions.columns import Ascending, ColumnWriter, uid_column
from sendflowr.decisions.snapshot_store import Part
from sendflowr.identity import graph
from sendflowr.sql_files import load_sql
from sendflowr.timing import store
from sendflowr.timing.decide import HOURS
from sendflowr.timing.store import TimingSnapshot

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
        at = np.minimum(np.searchsorted(self.uid, ids), max(len(self.uid) - 1, 0))
        found = (self.uid[at] == ids) if len(self.uid) else np.zeros(len(ids), bool)
        return np.where(found, at, -1).astype(np.int64)


class _Names:
    """Text column -> codes into one list of names, across batches."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def codes(self, column: pa.Array, dtype) -> np.ndarray:
        encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
        remap = np.array([self.index.setdefault(name, len(self.index)) for name in encoded.dictionary.to_pylist()],
                         dtype)
        return remap[encoded.indices.to_numpy(zero_copy_only=False)] if len(remap) else np.zeros(0, dtype)

    @property
    def names(self) -> list[str]:
        return list(self.index)


def write_timing(client: Client, database: str, run: tuple[int, datetime, str], out: ColumnWriter) -> dict:
    """Stream committed version `run[0]` (store.latest_run) into `out`; returns the part's metadata."""
    version, materialized_at, calibration_json = run
    ids, levels, cohorts = Ascending("timing universal_id"), _Names(), _Names()
    sql = load_sql("decisions/timing_curves.sql", database)
    with client.query_arrow_stream(sql, parameters={"v": version, "levels": float(LEVELS)}, use_strings=True) as rows:
        for batch in rows:
            n = batch.num_rows
            if (batch.column("hours").to_numpy() != HOURS).any():
                raise ValueError(f"timing curves must have {HOURS} values each")
            peak = batch.column("peak").to_numpy().astype(np.float32)
            finite = batch.column("finite").to_numpy().astype(bool)
            out.append("uid", ids.check(uid_column(batch.column("universal_id"))))
            out.append("codes", batch.column("codes").flatten().to_numpy().astype(np.uint16).reshape(n, HOURS))
            out.append("scale", np.where(finite, peak / np.float32(LEVELS), np.float32(np.nan)).astype(np.float32))
            out.append("evidence", batch.column("evidence").to_numpy().astype(np.float32))
            out.append("engagements", batch.column("engagements").to_numpy().astype(np.uint32))
            out.append("level", levels.codes(batch.column("fallback_level"), np.uint8))
            out.append("cohort", cohorts.codes(batch.column("cohort"), np.uint32))
            out.append("best_hour", batch.column("best_hour").to_numpy().astype(np.uint8))
    for name, dtype, trailing in (("uid", np.uint64, ()), ("codes", np.uint16, (HOURS,)), ("scale", np.float32, ()),
                                  ("evidence", np.float32, ()), ("engagements", np.uint32, ()),
                                  ("level", np.uint8, ()), ("cohort", np.uint32, ()), ("best_hour", np.uint8, ())):
        out.declare(name, dtype, trailing)
    if len(levels.index) > 255:
        raise ValueError("more than 255 fallback levels")
    priors = store.load_priors(client, database, version)
    out.append("prior_curves", np.asarray(priors.curves, np.float32).reshape(-1, HOURS))
    out.append("prior_evidence", priors.evidence)
    return {"version": version, "materialized_at": materialized_at.isoformat(), "calibration": calibration_json,
            "levels": levels.names, "cohorts": cohorts.names, "prior_levels": priors.level.tolist(),
            "prior_cohorts": priors.cohort.tolist()}


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
