"""A small materialized world for the API tests, written into real ClickHouse tables with the migrations' schema:
identity rows derived with the identity package's own functions (normalize, identifier_key, mix), timing curves,
priors and the timing_runs commit marker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from sendflowr.decisions.identity_map import TYPE_CODE
from sendflowr.identity import graph
from sendflowr.identity.normalize import normalize_many
from sendflowr.timing.decide import HOURS, Calibration

_TS = pa.timestamp("ms", tz="UTC")


def node_keys(types: list[str], raws: list[str]) -> np.ndarray:
    """Node key of each raw identifier exactly as stitching computes it (0 when normalization rejects it)."""
    col = normalize_many(types, raws)
    ok = np.asarray(col.accepted.to_numpy(zero_copy_only=False), bool)
    keys = np.zeros(len(raws), np.uint64)
    codes = np.array([TYPE_CODE[t] for t in types], np.int8)
    keys[ok] = graph.identifier_key(codes[ok], col.value.to_numpy(zero_copy_only=False)[ok])
    return keys


def derived_uid(identifiers: dict[str, str]) -> str:
    """The id stitching gives a brand-new person with these identifiers: mix(lowest node key)."""
    keys = node_keys(list(identifiers), list(identifiers.values()))
    return str(graph.format_uid(graph.mix(np.array([keys[keys != 0].min()], np.uint64)))[0])


def peaked_curve(peak: int, base: float = 0.01, height: float = 0.5) -> np.ndarray:
    curve = np.full(HOURS, base, np.float32)
    curve[peak] = height
    return curve


@dataclass
class Person:
    identifiers: dict[str, str]  # type -> raw value as events carried it
    peak: int | None  # best hour of week of their curve; None = no timing row
    universal_id: str = ""
    extra_raw: list[tuple[str, str]] = field(default_factory=list)  # other raw spellings stitching saw


def write_identity(client, database: str, people: list[Person], merges: list[tuple[str, str]] = ()) -> None:
    """identity_identifiers / identity_nodes / identity_merge_log for `people` (their universal_id is set)."""
    types, raws, owners = [], [], []
    for i, p in enumerate(people):
        for t, raw in [*p.identifiers.items(), *p.extra_raw]:
            types.append(t)
            raws.append(raw)
            owners.append(i)
    col = normalize_many(types, raws)
    keys = node_keys(types, raws)
    for i, p in enumerate(people):
        own = keys[[j for j, o in enumerate(owners) if o == i]]
        p.universal_id = p.universal_id or str(graph.format_uid(graph.mix(np.array([own[own != 0].min()])))[0])
    normalized = col.value.fill_null("").to_pylist()
    client.insert_arrow(f"{database}.identity_identifiers", pa.table({
        "identifier_type": pa.array(types, pa.string()), "raw_value": pa.array(raws, pa.string()),
        "normalized": pa.array(normalized, pa.string()), "node_key": pa.array(keys, pa.uint64()),
        "reason": col.reason.fill_null("")}))
    seen: dict[int, int] = {}
    for j, k in enumerate(keys.tolist()):
        if k and k not in seen:
            seen[k] = j
    rows = list(seen.values())
    now = int(datetime.now(UTC).timestamp() * 1000)
    client.insert_arrow(f"{database}.identity_nodes", pa.table({
        "node_key": pa.array(keys[rows], pa.uint64()),
        "identifier_type": pa.array([types[j] for j in rows], pa.string()),
        "value": pa.array([normalized[j] for j in rows], pa.string()),
        "first_seen": pa.array(np.full(len(rows), now - 86_400_000), pa.int64()).cast(_TS),
        "last_seen": pa.array(np.full(len(rows), now), pa.int64()).cast(_TS),
        "cluster": pa.array(keys[rows], pa.uint64()), "shared": pa.array(np.zeros(len(rows)), pa.uint8()),
        "universal_id": pa.array([people[owners[j]].universal_id for j in rows], pa.string()),
        "updated_at": pa.array(np.full(len(rows), now * 1000), pa.int64()).cast(pa.timestamp("us", tz="UTC"))}))
    write_merges(client, database, merges)


def write_merges(client, database: str, merges) -> None:
    now = int(datetime.now(UTC).timestamp() * 1000)
    if merges:
        client.insert_arrow(f"{database}.identity_merge_log", pa.table({
            "old_id": pa.array([m[0] for m in merges], pa.string()),
            "new_id": pa.array([m[1] for m in merges], pa.string()),
            "run_id": pa.array(["test"] * len(merges), pa.string()),
            "merged_at": pa.array(np.full(len(merges), now), pa.int64()).cast(_TS)}))


def write_curves(client, database: str, version: int, ids: list[str], curves: np.ndarray,
                 evidence: float = 40.0, level: str = "person", cohort: str = "") -> None:
    n = len(ids)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * HOURS)
    client.insert_arrow(f"{database}.timing_curves", pa.table({
        "universal_id": pa.array(ids, pa.string()), "version": pa.array([version] * n, pa.uint64()),
        "curve": pa.ListArray.from_arrays(offsets, pa.array(np.asarray(curves, np.float32).ravel())),
        "evidence": pa.array(np.full(n, evidence, np.float32)), "engagements": pa.array(np.full(n, 12), pa.uint32()),
        "deliveries": pa.array(np.full(n, 30), pa.uint32()), "fallback_level": pa.array([level] * n, pa.string()),
        "cohort": pa.array([cohort] * n, pa.string()),
        "best_hour": pa.array(np.asarray(curves).argmax(axis=1), pa.uint8()),
        "stats_hash": pa.array(np.zeros(n), pa.uint64())}))


def write_prior(client, database: str, version: int, level: str, cohort: str, peak: int,
                evidence: float = 500.0) -> None:
    client.insert_arrow(f"{database}.timing_priors", pa.table({
        "level": [level], "cohort": [cohort], "version": pa.array([version], pa.uint64()),
        "curve": pa.array([peaked_curve(peak, height=0.2).tolist()], pa.list_(pa.float32())),
        "evidence": pa.array([evidence], pa.float32()), "people": pa.array([10], pa.uint64())}))


def commit(client, database: str, version: int, people: int) -> None:
    client.command(f"INSERT INTO {database}.timing_runs (version, run_id, materialized_at, people, calibration) "
                   "VALUES ({v:UInt64}, {r:String}, now64(3), {p:UInt64}, {c:String})",
                   parameters={"v": version, "r": f"run-{version}", "p": people, "c": Calibration.default().to_json()})


GLOBAL_PEAK, COHORT_PEAK, COHORT = 100, 50, "email:acme.com"


def standard_world(client, database: str) -> dict[str, Person]:
    """Known people with curves, one known person without a curve, a merged-away id, priors, version 1 committed
    and an uncommitted version 2 that must stay invisible."""
    people = {
        "jane": Person({"email": "Jane.Doe@gmail.com", "klaviyo_id": "k_jane"}, peak=14,
                       extra_raw=[("email", "janedoe@gmail.com")]),
        "omar": Person({"email": "omar@shop.io", "phone": "+14155552671"}, peak=40),
        "kim": Person({"klaviyo_id": "k_kim", "external_id": "cust-7"}, peak=130),
        "lee": Person({"email": "lee@acme.com"}, peak=None),  # stitched, but no curve yet
    }
    write_identity(client, database, list(people.values()))
    write_merges(client, database, [("sf_00000000000000aa", people["jane"].universal_id)])
    with_curve = [p for p in people.values() if p.peak is not None]
    write_curves(client, database, 1, [p.universal_id for p in with_curve],
                 np.stack([peaked_curve(p.peak) for p in with_curve]))
    write_prior(client, database, 1, "global", "", GLOBAL_PEAK)
    write_prior(client, database, 1, "cohort", COHORT, COHORT_PEAK)
    commit(client, database, 1, len(with_curve))
    # a run in progress: rows above the committed version must not be served
    write_curves(client, database, 2, [people["jane"].universal_id], peaked_curve(90)[None, :])
    return people


def window(days_ahead: int = 2, days: int = 7) -> tuple[datetime, datetime]:
    """A window starting on a whole day in the future, so `now` never cuts into it."""
    start = (datetime.now(UTC) + timedelta(days=days_ahead)).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=days)


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def how(moment: datetime) -> int:
    """Hour of week, 0 = Monday 00:00 UTC."""
    moment = moment.astimezone(UTC)
    return moment.weekday() * 24 + moment.hour
