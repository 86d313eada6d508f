"""Reading committed timing curves from ClickHouse, as columns (the API polls versions.latest_version and
reloads).

A run writes its timing_curves / timing_priors rows first and its timing_runs row last, so everything with a
version a timing_runs row names is complete; rows of other versions (a run in progress or one that died) are
ignored (timing.versions.committed). Each person's newest committed row wins (incremental runs rewrite only
changed people).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup
from sendflowr.timing.decide import HOURS, Calibration
from sendflowr.timing.versions import committed

PHONE_COHORT = "phone:+"
EMAIL_COHORT = "email:"


@dataclass(frozen=True)
class TimingSnapshot:
    version: int
    materialized_at: datetime
    universal_id: np.ndarray  # object (str), sorted ascending
    curves: np.ndarray  # float32 [n, 168]
    evidence: np.ndarray  # float32
    engagements: np.ndarray  # uint32
    fallback_level: np.ndarray  # object (str)
    cohort: np.ndarray  # object (str)
    best_hour: np.ndarray  # uint8
    priors: dict[str, np.ndarray]  # cohort -> float32 [168]
    prior_evidence: dict[str, float]
    global_curve: np.ndarray  # float32 [168]
    global_evidence: float
    calibration: Calibration

    def __len__(self) -> int:
        return int(self.universal_id.shape[0])

    def positions(self, universal_ids) -> np.ndarray:
        """Row of each id in this snapshot, -1 where unknown (vectorized binary search)."""
        ids = np.asarray(universal_ids, dtype=object)
        if len(self) == 0:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        at, found = lookup(self.universal_id, ids)
        return np.where(found, at, -1).astype(np.int64)


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    # one Arrow array first: a chunked column's to_numpy imports pandas (tens of MB in every API worker)
    return np.asarray(column.combine_chunks().to_numpy(zero_copy_only=False), dtype=object)


def _matrix(column: pa.ChunkedArray, n: int) -> np.ndarray:
    """list<float32> of HOURS values per row -> float32 [n, HOURS] (reads the flat child buffer)."""
    if n == 0:
        return np.zeros((0, HOURS), dtype=np.float32)
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]).to_numpy(zero_copy_only=False)
    if flat.size != n * HOURS:
        raise ValueError(f"timing curves must have {HOURS} values each ({flat.size} values for {n} rows)")
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(n, HOURS)


def latest_run(client: Client, database: str) -> tuple[int, datetime, str] | None:
    """(version, materialized_at (UTC), calibration JSON) of the newest committed run; None before the first."""
    head = client.query(
        f"SELECT version, materialized_at, calibration FROM {database}.timing_runs "
        "ORDER BY version DESC LIMIT 1").result_rows
    if not head:
        return None
    version, materialized_at, calibration_json = head[0]
    if isinstance(materialized_at, datetime) and materialized_at.tzinfo is None:
        materialized_at = materialized_at.replace(tzinfo=UTC)
    return int(version), materialized_at, calibration_json


def calibration_of(calibration_json: str | None) -> Calibration:
    return Calibration.from_json(calibration_json) if calibration_json else Calibration.default()


@dataclass(frozen=True)
class Priors:
    """The cohort and global priors of a version, as columns (a few thousand rows at most)."""

    level: np.ndarray  # object (str): 'cohort' | 'global'
    cohort: np.ndarray  # object (str)
    curves: np.ndarray  # float32 [k, HOURS]
    evidence: np.ndarray  # float64 [k]

    def split(self) -> tuple[dict[str, np.ndarray], dict[str, float], np.ndarray, float]:
        """(cohort -> curve, cohort -> evidence, global curve, global evidence) as TimingSnapshot holds them."""
        is_global = self.level == "global"
        if is_global.any():
            g = int(np.flatnonzero(is_global)[0])
            global_curve, global_evidence = self.curves[g], float(self.evidence[g])
        else:
            global_curve, global_evidence = np.zeros(HOURS, dtype=np.float32), 0.0
        rows = np.flatnonzero(~is_global)
        return ({str(self.cohort[i]): self.curves[i] for i in rows},
                {str(self.cohort[i]): float(self.evidence[i]) for i in rows}, global_curve, global_evidence)


def load_priors(client: Client, database: str, version: int) -> Priors:
    priors = client.query_arrow(
        "SELECT toString(level) AS level, cohort, argMax(curve, version) AS curve, "
        f"argMax(evidence, version) AS evidence FROM {database}.timing_priors WHERE version <= {{v:UInt64}} "
        f"AND {committed(database)} "
        "GROUP BY level, cohort ORDER BY level, cohort", parameters={"v": version}, use_strings=True)
    return Priors(level=_strings(priors.column("level")), cohort=_strings(priors.column("cohort")),
                  curves=_matrix(priors.column("curve"), priors.num_rows),
                  evidence=priors.column("evidence").combine_chunks().to_numpy().astype(np.float64))


def load_snapshot(client: Client, database: str) -> TimingSnapshot | None:
    """Everything committed, as columns; None before the first committed run. (The API maps a compact copy
    instead: sendflowr.decisions.timing_part.)"""
    run = latest_run(client, database)
    if run is None:
        return None
    version, materialized_at, calibration_json = run
    curves = client.query_arrow(
        "SELECT universal_id, argMax(curve, version) AS curve, argMax(evidence, version) AS evidence, "
        "argMax(engagements, version) AS engagements, toString(argMax(fallback_level, version)) AS fallback_level, "
        "argMax(cohort, version) AS cohort, argMax(best_hour, version) AS best_hour "
        f"FROM {database}.timing_curves WHERE version <= {{v:UInt64}} AND {committed(database)} "
        "GROUP BY universal_id ORDER BY universal_id",
        parameters={"v": version}, use_strings=True)
    n = curves.num_rows
    priors, prior_evidence, global_curve, global_evidence = load_priors(client, database, version).split()
    return TimingSnapshot(
        version=version, materialized_at=materialized_at,
        universal_id=_strings(curves.column("universal_id")),
        curves=_matrix(curves.column("curve"), n),
        evidence=curves.column("evidence").to_numpy().astype(np.float32),
        engagements=curves.column("engagements").to_numpy().astype(np.uint32),
        fallback_level=_strings(curves.column("fallback_level")),
        cohort=_strings(curves.column("cohort")),
        best_hour=curves.column("best_hour").to_numpy().astype(np.uint8),
        priors=priors, prior_evidence=prior_evidence, global_curve=global_curve, global_evidence=global_evidence,
        calibration=calibration_of(calibration_json),
    )


@cache
def calling_codes() -> tuple[str, ...]:
    """Every country calling code (from the phonenumbers metadata), longest first. Codes are prefix-free."""
    import phonenumbers

    return tuple(sorted((str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), key=len, reverse=True))


def phone_cohort(e164: str) -> str | None:
    """'phone:+44' for an E.164 number, None when no calling code matches."""
    if not e164.startswith("+"):
        return None
    digits = e164[1:]
    for code in calling_codes():
        if digits.startswith(code):
            return PHONE_COHORT + code
    return None


def email_cohort(email: str) -> str | None:
    domain = email.strip().lower().rpartition("@")[2]
    return EMAIL_COHORT + domain if domain and "@" in email else None


def cohort_for_identifiers(snapshot: TimingSnapshot, email: str | None, phone: str | None) -> str | None:
    """The learned cohort an unknown person falls into from what the request tells: phone country first (it
    carries the time zone), then email domain; None (use the global prior) when neither has a learned cohort."""
    if phone:
        from sendflowr.identity.normalize import normalize

        normalized = normalize("phone", [phone])
        e164 = normalized.value[0].as_py() if normalized.accepted[0].as_py() else None
        cohort = phone_cohort(e164) if e164 else None
        if cohort is not None and cohort in snapshot.priors:
            return cohort
    if email:
        cohort = email_cohort(email)
        if cohort is not None and cohort in snapshot.priors:
            return cohort
    return None
