"""Incremental timing runs: the cost follows the new events, not the history (docs/TIMING.md, "Incremental runs").

A full build (run.materialize) also leaves a **base**: every person's cell statistics (`timing_cells`), the fitted
model (`timing_models`: decay, priors, the ML prior) and the state of every message that may still change
(`timing_open_messages`: delivered within the horizon plus SETTLE_LAG_HOURS of now). An incremental run then:

1. groups only the events committed since the last run into message states (sql/timing/message_state.sql);
2. merges them with the kept states of the same messages, and takes in the open messages that settle now
   (sql/timing/message_merge.sql);
3. reads the merged messages' rows (sql/timing/message_outputs.sql, owners looked up for their identifiers
   only) and writes, per person and cell, the difference between what each message contributes now and what it
   counted before (`counted_*`);
4. keeps the states of messages still open (settled ones get a deleted row);
5. moves the cells of people identity merged since the last run to their survivor;
6. re-estimates only the people whose cells changed, with the base's model, writes their curves and commits.

What it leaves to the next full build (at least every FULL_EVERY_HOURS, or when the new events reach
MAX_NEW_SHARE of the base's messages): refitting the decay and priors, an event arriving for a message that
settled more than SETTLE_LAG_HOURS before (engagement within the horizon that was ingested that late), identity
changes other than merges (an identifier turning shared moves its messages only then), and a waiting message's
exposure, which grows in its cells only when it gets an event or settles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.sql_files import load_sql
from sendflowr.timing import versions
from sendflowr.timing.decide import EPOCH_HOW, HOUR_MS, HOURS
from sendflowr.timing.estimate import ActivityClusters, EstimatorParams, Priors
from sendflowr.timing.hazard import Decay
from sendflowr.timing.owners import owner_map, owner_persons
from sendflowr.timing.scratch import people_table, scratch
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import messages_sql, range_parameters

SETTLE_LAG_HOURS = 48  # how late an event may still be ingested and count for its message
FULL_EVERY_HOURS = 168  # a full build refits the model at least this often
MAX_NEW_SHARE = 0.25  # new messages beyond this share of the base's call for a full build
STATE_COLUMNS = ("message", "email", "klaviyo_id", "phone", "external_id", "delivered_ms", "first_ms", "opens",
                 "flagged_opens", "first_unflagged_ms", "first_plain_ms", "apple_ms", "click_ms", "click_url",
                 "click_kind")
MESSAGE_KEY = ", hex(message) AS message_key"


@dataclass(frozen=True)
class Base:
    """What the newest committed curves run says about the incremental state."""

    version: int  # the full build whose cells and model the runs since add to
    built_ms: int  # when that build ran
    messages: int  # the messages it counted
    ends: dict[tuple[str, int], int]  # offsets read so far, per (topic, partition)
    merged_at: str  # the newest identity merge already applied (ISO text, '' for none)


def base_of(client: Client, database: str) -> Base | None:
    head = versions.latest_run(client, database, kind="curves")
    meta = (head or {}).get("metadata") or {}
    if "base" not in meta:
        return None
    return Base(version=int(meta["base"]), built_ms=int(meta["base_built_ms"]), messages=int(meta["base_messages"]),
                ends={(t, int(p)): int(e) for t, p, e in meta["ends"]}, merged_at=str(meta.get("merged_at", "")))


def base_metadata(base: Base) -> dict:
    return {"base": base.version, "base_built_ms": base.built_ms, "base_messages": base.messages,
            "ends": [[t, p, e] for (t, p), e in sorted(base.ends.items())], "merged_at": base.merged_at}


def needs_full(base: Base | None, new_messages_estimate: int, params: EstimatorParams, now_ms: int) -> str:
    """Why a full build is due ('' when an incremental run will do)."""
    if base is None:
        return "no base to add to"
    if params.half_life_hours > 0:
        return "recency weighting changes every message's weight"
    if now_ms - base.built_ms > FULL_EVERY_HOURS * HOUR_MS:
        return f"the base is older than {FULL_EVERY_HOURS} h"
    if new_messages_estimate > MAX_NEW_SHARE * max(base.messages, 1):
        return f"the new events exceed {MAX_NEW_SHARE:.0%} of the base's messages"
    return ""


def newest_merge(client: Client, database: str) -> str:
    return str(client.command(f"SELECT toString(max(merged_at)) FROM {database}.identity_merge_log") or "")


# --- what a full build leaves -------------------------------------------------------------------------------

def model_json(decay: Decay, priors: Priors, clusters: ActivityClusters | None) -> str:
    return json.dumps({
        "g": decay.g.tolist(), "cohorts": priors.cohorts, "rates": priors.rates.tolist(),
        "curves": priors.curves.tolist(), "evidence": priors.evidence.tolist(), "people": priors.people.tolist(),
        "clusters": None if clusters is None else {"shapes": clusters.shapes.tolist(),
                                                   "cohort_mix": clusters.cohort_mix.tolist()}})


def load_model(client: Client, database: str, version: int) -> tuple[Decay, Priors, ActivityClusters | None]:
    text = client.command(f"SELECT model FROM {database}.timing_models WHERE version = {{v:UInt64}} LIMIT 1",
                          parameters={"v": version})
    data = json.loads(text)
    priors = Priors(rates=np.asarray(data["rates"], np.float32), curves=np.asarray(data["curves"], np.float32),
                    cohorts=list(data["cohorts"]), evidence=np.asarray(data["evidence"], np.float64),
                    people=np.asarray(data["people"], np.int64))
    c = data["clusters"]
    clusters = None if c is None else ActivityClusters(shapes=np.asarray(c["shapes"], np.float32),
                                                       cohort_mix=np.asarray(c["cohort_mix"], np.float64))
    return Decay(g=np.asarray(data["g"], np.float64)), priors, clusters


def cells_table(base: int, version: int, universal_id: np.ndarray, cell: np.ndarray, messages: np.ndarray,
                events: np.ndarray, fresh: np.ndarray) -> pa.Table:
    n = cell.shape[0]
    return pa.table({"base": pa.array(np.full(n, base, np.uint64)), "version": pa.array(np.full(n, version, np.uint64)),
                     "universal_id": pa.array(universal_id, pa.string()), "cell": pa.array(cell.astype(np.uint32)),
                     "messages": pa.array(messages.astype(np.float32)), "events": pa.array(events.astype(np.float32)),
                     "fresh": pa.array(fresh.astype(np.float32))})


def write_base_cells(client: Client, database: str, version: int, stats, chunk: int = 2_000_000) -> None:
    """A full build's cells: every person's statistics under base = version (stats.PersonStats)."""
    ids = np.repeat(stats.universal_id, np.diff(stats.offsets))
    for lo in range(0, stats.cell.shape[0], chunk):
        hi = lo + chunk
        client.insert_arrow(f"{database}.timing_cells", cells_table(
            version, version, ids[lo:hi], stats.cell[lo:hi], stats.messages[lo:hi], stats.events[lo:hi],
            stats.fresh[lo:hi]))


def drop_old_bases(client: Client, database: str, keep: int) -> None:
    """Cells and open states of bases before the committed one (readers never look at them again)."""
    for (base,) in client.query(f"SELECT DISTINCT base FROM {database}.timing_cells WHERE base < {{k:UInt64}}",
                                parameters={"k": keep}).result_rows:
        client.command(f"ALTER TABLE {database}.timing_cells DROP PARTITION {int(base)}")
    if client.command(f"SELECT count() FROM {database}.timing_open_messages WHERE version < {{k:UInt64}}",
                      parameters={"k": keep}):
        client.command(f"ALTER TABLE {database}.timing_open_messages DELETE WHERE version < {{k:UInt64}}",
                       parameters={"k": keep})


STATE_DDL = ("message FixedString(16), email String, klaviyo_id String, phone String, external_id String, "
             "delivered_ms Int64, first_ms Int64, opens UInt64, flagged_opens UInt64, first_unflagged_ms Int64, "
             "first_plain_ms Int64, apple_ms Array(Int64), click_ms Array(Int64), click_url Array(UInt64), "
             "click_kind Array(UInt8)")
COUNTED_DDL = ("message_key String, counted_person String, counted_cell UInt32, counted_engaged Float32, "
               "counted_fresh Float32")


@dataclass
class Contributions:
    """What a set of messages contributes: per message key (hex), the owner, cell, engaged and fresh share."""

    key: np.ndarray  # object (hex of the message hash)
    person: np.ndarray  # object (universal_id; '' when not owned)
    cell: np.ndarray
    engaged: np.ndarray
    fresh: np.ndarray
    delivered_ms: np.ndarray


def contributions(client: Client, database: str, states: str, rules: SignalRules, params: EstimatorParams,
                  observed_ms: int) -> Contributions:
    """message_outputs.sql over a table of states, owners looked up for their identifiers only."""
    with owner_map(client, database, identifiers_of=states) as owners:
        table = client.query_arrow(
            messages_sql(database, f"SELECT * FROM {states}", extra=MESSAGE_KEY + ", delivered_ms"),
            parameters={**rules.parameters(), "owners": owners, "horizon_hours": params.horizon_hours,
                        "observed_before_ms": observed_ms})
        persons = owner_persons(client, owners)
    col = {name: table.column(name).to_numpy() for name in
           ("p", "delivered_hour", "delivered_second", "wait", "engaged", "delivered_ms")}
    how = (col["delivered_hour"].astype(np.int64) + EPOCH_HOW) % HOURS
    return Contributions(
        key=np.asarray(table.column("message_key").to_numpy(zero_copy_only=False), dtype=object),
        person=persons[col["p"].astype(np.int64) - 1] if len(persons) else np.zeros(0, object),
        cell=how * params.horizon_hours + col["wait"].astype(np.int64),
        engaged=col["engaged"].astype(np.float64),
        fresh=1.0 - (col["delivered_second"].astype(np.float64) + 0.5) / 3600.0,
        delivered_ms=col["delivered_ms"].astype(np.int64))


def write_open(client: Client, database: str, states: str, counted: Contributions, version: int, cut_ms: int,
               settled: np.ndarray) -> int:
    """Keep the states of messages still open (delivered, or first seen, at or after cut_ms) with what they now
    count; a deleted row for each settled message that was open. Returns the messages kept open."""
    with scratch(client, database, COUNTED_DDL) as table:
        if counted.key.size:
            client.insert_arrow(table, pa.table({
                "message_key": pa.array(counted.key, pa.string()),
                "counted_person": pa.array(counted.person, pa.string()),
                "counted_cell": pa.array(counted.cell.astype(np.uint32)),
                "counted_engaged": pa.array(counted.engaged.astype(np.float32)),
                "counted_fresh": pa.array(counted.fresh.astype(np.float32))}))
        client.command(
            f"INSERT INTO {database}.timing_open_messages SELECT s.message, {{v:UInt64}}, 0, "
            + ", ".join(f"s.{c}" for c in STATE_COLUMNS[1:])
            + ", c.counted_person, c.counted_cell, c.counted_engaged, c.counted_fresh "
            f"FROM {states} AS s LEFT JOIN {table} AS c "
            "ON hex(s.message) = c.message_key "
            "WHERE if(s.delivered_ms < toInt64(9e18), s.delivered_ms, s.first_ms) >= {cut:Int64}",
            parameters={"v": version, "cut": cut_ms}, settings={"join_use_nulls": 0})
        kept = int(client.command(f"SELECT count() FROM {states} WHERE if(delivered_ms < toInt64(9e18), "
                                  "delivered_ms, first_ms) >= {cut:Int64}", parameters={"cut": cut_ms}))
    if settled.size:
        _delete_open(client, database, settled, version)
    return kept


def _delete_open(client: Client, database: str, keys: np.ndarray, version: int) -> None:
    with scratch(client, database, "message_key String") as table:
        client.insert_arrow(table, pa.table({"message_key": pa.array(keys, pa.string())}))
        client.command(
            f"INSERT INTO {database}.timing_open_messages (message, version, deleted) "
            f"SELECT toFixedString(unhex(message_key), 16), {{v:UInt64}}, 1 FROM {table}", parameters={"v": version})


def seed_open(client: Client, database: str, rules: SignalRules, params: EstimatorParams, version: int,
              ends: dict[tuple[str, int], int], observed_ms: int) -> int:
    """A full build's open messages: the states of messages delivered (or first seen) within the horizon plus
    the lag, grouped from the recent events only, with what they count in the base cells."""
    cut_ms = observed_ms - (params.horizon_hours + SETTLE_LAG_HOURS) * HOUR_MS
    with scratch(client, database, STATE_DDL) as states:
        client.command(f"INSERT INTO {states} " + load_sql("timing/message_state.sql", database), parameters={
            **rules.parameters(), **range_parameters({k: (0, e) for k, e in ends.items()}),
            "observed_before_ms": observed_ms, "since_ms": cut_ms})
        counted = contributions(client, database, states, rules, params, observed_ms)
        return write_open(client, database, states, counted, version, cut_ms, np.zeros(0, object))


# --- an incremental run -------------------------------------------------------------------------------------

@dataclass
class Delta:
    """Per (person, cell) changes of the cells, and the people whose statistics changed."""

    person: np.ndarray
    cell: np.ndarray
    messages: np.ndarray
    events: np.ndarray
    fresh: np.ndarray

    @property
    def people(self) -> np.ndarray:
        return np.unique(self.person[self.person != ""])


def differences(new: Contributions, old: Contributions) -> Delta:
    """New contributions minus old ones, summed per (person, cell), zero rows dropped."""
    owned_new = new.person != ""
    owned_old = old.person != ""
    person = np.concatenate([new.person[owned_new], old.person[owned_old]]).astype(object)
    cell = np.concatenate([new.cell[owned_new], old.cell[owned_old]]).astype(np.int64)
    sign = np.concatenate([np.ones(int(owned_new.sum())), -np.ones(int(owned_old.sum()))])
    engaged = np.concatenate([new.engaged[owned_new], old.engaged[owned_old]]) * sign
    fresh = np.concatenate([new.fresh[owned_new], old.fresh[owned_old]]) * sign
    if person.size == 0:
        empty = np.zeros(0)
        return Delta(np.zeros(0, object), np.zeros(0, np.int64), empty, empty, empty)
    names, code = np.unique(person.astype(str), return_inverse=True)
    key = code.astype(np.int64) * (HOURS * 10_000) + cell
    uniq, inverse = np.unique(key, return_inverse=True)
    m = np.bincount(inverse, weights=sign)
    e = np.bincount(inverse, weights=engaged)
    f = np.bincount(inverse, weights=fresh)
    keep = (np.abs(m) > 1e-9) | (np.abs(e) > 1e-9) | (np.abs(f) > 1e-6)
    return Delta(person=names[uniq // (HOURS * 10_000)][keep].astype(object), cell=(uniq % (HOURS * 10_000))[keep],
                 messages=m[keep], events=e[keep], fresh=f[keep])


def run_increment(client: Client, database: str, rules: SignalRules, params: EstimatorParams, base: Base,
                  version: int, ends: dict[tuple[str, int], int], observed_ms: int,
                  log: Callable[[str], None] = print) -> tuple[Delta, int, int]:
    """Steps 1-5 of the module docstring: the cells' differences are written under `version` (invisible until the
    run commits). Returns the differences, the messages merged and the messages kept open."""
    cut_ms = observed_ms - (params.horizon_hours + SETTLE_LAG_HOURS) * HOUR_MS
    bounds = {k: (base.ends.get(k, 0), e) for k, e in ends.items() if e > base.ends.get(k, 0)}
    with scratch(client, database, STATE_DDL) as new_states, scratch(client, database, STATE_DDL) as open_now, \
            scratch(client, database, STATE_DDL) as merged, scratch(client, database, COUNTED_DDL) as counted:
        if bounds:
            client.command(f"INSERT INTO {new_states} " + load_sql("timing/message_state.sql", database), parameters={
                **rules.parameters(), **range_parameters(bounds), "observed_before_ms": observed_ms, "since_ms": 0})
        # the kept state of every open message (newest committed row each), and what each counts now
        latest = (f"FROM {database}.timing_open_messages WHERE version >= {base.version} "
                  f"AND {versions.committed(database)} GROUP BY message HAVING argMax(deleted, version) = 0")
        client.command(f"INSERT INTO {open_now} SELECT message, "
                       + ", ".join(f"argMax({c}, version)" for c in STATE_COLUMNS[1:]) + " " + latest)
        client.command(f"INSERT INTO {counted} SELECT hex(message), "
                       + ", ".join(f"argMax({c}, version)" for c in ("counted_person", "counted_cell",
                                                                    "counted_engaged", "counted_fresh")) + " "
                       + latest)
        # merged: the new events' messages with their kept state, and every open message that settles now
        client.command(f"INSERT INTO {merged} " + load_sql("timing/message_merge.sql", database).replace(
            "${states}", f"SELECT * FROM {new_states} UNION ALL SELECT * FROM {open_now} "
                         f"WHERE message IN (SELECT message FROM {new_states}) "
                         "OR if(delivered_ms < toInt64(9e18), delivered_ms, first_ms) < {cut:Int64}"),
            parameters={"cut": cut_ms})
        n_merged = int(client.command(f"SELECT count() FROM {merged}"))
        new = contributions(client, database, merged, rules, params, observed_ms)
        old_table = client.query_arrow(
            f"SELECT message_key, counted_person, counted_cell, counted_engaged, counted_fresh FROM {counted} "
            f"WHERE message_key IN (SELECT hex(message) FROM {merged})", use_strings=True)
        old = Contributions(
            key=np.asarray(old_table.column("message_key").to_numpy(zero_copy_only=False), dtype=object),
            person=np.asarray(old_table.column("counted_person").to_numpy(zero_copy_only=False), dtype=object),
            cell=old_table.column("counted_cell").to_numpy().astype(np.int64),
            engaged=old_table.column("counted_engaged").to_numpy().astype(np.float64),
            fresh=old_table.column("counted_fresh").to_numpy().astype(np.float64),
            delivered_ms=np.zeros(old_table.num_rows, np.int64))
        delta = differences(new, old)
        # open messages that settle now (or stopped being open): deleted rows
        settle = client.query_arrow(
            f"SELECT hex(message) AS key FROM {open_now} "
            f"WHERE message IN (SELECT message FROM {merged} WHERE if(delivered_ms < toInt64(9e18), delivered_ms, "
            "first_ms) < {cut:Int64})", parameters={"cut": cut_ms}, use_strings=True)
        kept = write_open(client, database, merged, new, version, cut_ms,
                          np.asarray(settle.column("key").to_numpy(zero_copy_only=False), dtype=object))
    delta = _with_merges(client, database, base, version, delta, log)
    if delta.person.size:
        client.insert_arrow(f"{database}.timing_cells", cells_table(
            base.version, version, delta.person, delta.cell, delta.messages, delta.events, delta.fresh))
    log(f"timing (incremental on base v{base.version}): {sum(e - s for s, e in bounds.values())} new events, "
        f"{n_merged} messages merged, {kept} kept open, {delta.people.size} people changed")
    return delta, n_merged, kept


def _with_merges(client: Client, database: str, base: Base, version: int, delta: Delta,
                 log: Callable[[str], None]) -> Delta:
    """Identity merged some people since the last run: their cells move to the survivor (negated under the old
    id, added under the new one)."""
    rows = client.query(f"SELECT old_id, new_id FROM {database}.identity_merge_log "
                        "WHERE merged_at > parseDateTime64BestEffortOrZero({m:String}, 3, 'UTC') "
                        "ORDER BY merged_at", parameters={"m": base.merged_at or "1970-01-01"}).result_rows
    if not rows:
        return delta
    survivor = dict(rows)
    for old in list(survivor):  # a chain a -> b -> c ends at c
        seen = set()
        while survivor[old] in survivor and survivor[old] not in seen:
            seen.add(survivor[old])
            survivor[old] = survivor[survivor[old]]
    moved = read_cells(client, database, base.version, version, np.array(sorted(survivor), dtype=object))
    if moved.num_rows == 0:
        return delta
    ids = np.asarray(moved.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    cols = {c: moved.column(c).to_numpy().astype(np.float64) for c in ("messages", "events", "fresh")}
    cell = moved.column("cell").to_numpy().astype(np.int64)
    log(f"timing: {len(survivor)} identity merges since the last run move {moved.num_rows} cells")
    return Delta(person=np.concatenate([delta.person, ids, np.array([survivor[i] for i in ids], object)]),
                 cell=np.concatenate([delta.cell, cell, cell]),
                 messages=np.concatenate([delta.messages, -cols["messages"], cols["messages"]]),
                 events=np.concatenate([delta.events, -cols["events"], cols["events"]]),
                 fresh=np.concatenate([delta.fresh, -cols["fresh"], cols["fresh"]]))


def read_cells(client: Client, database: str, base: int, version: int, people: np.ndarray) -> pa.Table:
    """The summed cells of some people (universal_id order, then cell): the committed rows of the base, and the
    rows of the running `version`."""
    if people.size == 0:
        return pa.table({"universal_id": pa.array([], pa.string()), "cell": pa.array([], pa.uint32()),
                         "messages": pa.array([], pa.float64()), "events": pa.array([], pa.float64()),
                         "fresh": pa.array([], pa.float64())})
    with people_table(client, database, people) as table:
        return client.query_arrow(
            f"SELECT universal_id, cell, sum(messages) AS messages, sum(events) AS events, sum(fresh) AS fresh "
            f"FROM {database}.timing_cells WHERE base = {{b:UInt64}} "
            f"AND (version = {{v:UInt64}} OR {versions.committed(database)}) "
            f"AND universal_id IN (SELECT universal_id FROM {table}) GROUP BY universal_id, cell "
            "HAVING abs(messages) > 1e-6 ORDER BY universal_id, cell",
            parameters={"b": base, "v": version}, use_strings=True)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def estimate_messages(bounds: dict[tuple[str, int], tuple[int, int]]) -> int:
    """New events (an upper bound of the new messages) in some ranges."""
    return sum(e - s for s, e in bounds.values())


def pending(base: Base, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], tuple[int, int]]:
    return {k: (base.ends.get(k, 0), e) for k, e in ends.items() if e > base.ends.get(k, 0)}

