"""Events in stream order, in bounded memory.

Campaigns are simulated in send order. Each event gets an arrival time (occurred_at + webhook jitter, or
minutes to days for the late share); ESP retries re-deliver a share of events later with the same event_id.
The stream is ordered by arrival. Every event of a later campaign occurs at or after that campaign's send
time, so everything buffered that arrives before the next send time can be released: memory holds a few
campaigns' tails, never the whole history. Events occurring after `config.end` are never observed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from sendflowr.synth import fmt
from sendflowr.synth.campaigns import ESPS
from sendflowr.synth.simulate import HOUR, MINUTE, SECOND, Columns, SimState, simulate_campaign
from sendflowr.synth.world import STREAM_EVENTS, World, rng_for

# event_id looks like "<esp prefix><16 hex>" (stable per event; an ESP retry repeats it)
_PREFIXES = {"klaviyo": "kl_", "sendgrid": "sg_", "synthetic": "sy_"}
ESP_PREFIX = np.array([list(_PREFIXES[e].encode()) for e in ESPS], dtype=np.uint8)
TOKEN_KEY = b"sendflowr.synth.world"


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(cols: Columns, index: np.ndarray) -> Columns:
    return {k: v[index] for k, v in cols.items()}


def _size(cols: Columns | None) -> int:
    return 0 if cols is None else int(cols["ts"].shape[0])


def stream_effects(world: World, c: int, events: Columns) -> Columns:
    """Drop what happens after the end, add arrival times, late arrivals and ESP-retry duplicates."""
    cfg = world.config
    rng = rng_for(cfg.seed, STREAM_EVENTS, c, 1)
    end_ms = int(cfg.end.timestamp() * 1000)
    events = _take(events, np.flatnonzero(events["ts"] <= end_ms))
    n = _size(events)
    late = rng.random(n) < cfg.late_rate
    delay = np.where(late, np.clip(rng.lognormal(np.log(45 * MINUTE), 1.2, n), MINUTE, 72 * HOUR),
                     rng.exponential(1.5 * SECOND, n)).astype(np.int64)
    events["arrival"] = events["ts"] + delay
    events["late"] = late
    events["dup"] = np.zeros(n, bool)
    dup = np.flatnonzero(rng.random(n) < cfg.duplicate_rate)
    copies = _take(events, dup)
    copies["arrival"] = copies["arrival"] + np.clip(rng.lognormal(np.log(2 * MINUTE), 1.5, dup.size),
                                                    SECOND, 6 * HOUR).astype(np.int64)
    copies["dup"] = np.ones(dup.size, bool)
    return _concat([events, copies])


def ordered_chunks(world: World) -> Iterator[Columns]:
    """Column chunks in global stream order (ascending arrival; ties by event key, original first)."""
    camp = world.campaigns
    state = SimState.fresh(len(world.people))
    pending: Columns | None = None
    for c in range(len(camp)):
        events = stream_effects(world, c, simulate_campaign(world, c, state))
        pending = events if pending is None else _concat([pending, events])
        horizon = int(camp.send_ms[c + 1]) if c + 1 < len(camp) else np.iinfo(np.int64).max
        ready = pending["arrival"] < horizon
        out = _take(pending, np.flatnonzero(ready))
        pending = _take(pending, np.flatnonzero(~ready))
        if _size(out):
            key = event_keys(out)
            yield _take(out, np.lexsort((out["dup"], key, out["arrival"])))


def event_keys(cols: Columns) -> np.ndarray:
    """Unique per real event: (campaign, person, slot) packed into 64 bits (before mixing)."""
    return ((cols["campaign"].astype(np.uint64) << np.uint64(40))
            | (cols["person"].astype(np.uint64) << np.uint64(8))
            | cols["slot"].astype(np.uint64))


def message_ids(seed: int, campaign: np.ndarray, person: np.ndarray) -> np.ndarray:
    """(n, 20) codes of the message_id 'msg_<16 hex>' of each (campaign, person) message: every event of the
    message carries it."""
    key = ((np.asarray(campaign).astype(np.uint64) << np.uint64(40)) | (np.asarray(person).astype(np.uint64)
                                                                        << np.uint64(8)) | np.uint64(0xFF))
    return fmt.with_prefix(b"msg_", fmt.hex_codes(fmt.mix64(key ^ fmt.salt(seed, 2))))


def _dictionary(world: World, index: np.ndarray, name: str) -> pa.DictionaryArray:
    dictionary = world.dictionaries.arrow[name]
    missing = index < 0
    index = index.astype(np.int32)
    indices = pa.array(index, mask=missing) if missing.any() else pa.array(index)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def to_table(world: World, cols: Columns) -> pa.Table:
    """Columns -> Arrow table: contract fields (strings dictionary-encoded against the world's tables) plus
    ground-truth columns prefixed with '_' that serialize_batch never emits."""
    seed = world.config.seed
    key = event_keys(cols)
    event_id = fmt.with_prefix(ESP_PREFIX[cols["esp"]], fmt.hex_codes(fmt.mix64(key ^ fmt.salt(seed, 1))))
    message_id = message_ids(seed, cols["campaign"], cols["person"])
    machine = cols["machine"]
    columns = {
        "event_id": fmt.arrow_fixed_strings(event_id),
        "event_type": _dictionary(world, cols["etype"], "event_type"),
        "occurred_at": fmt.arrow_fixed_strings(fmt.rfc3339_ms_codes(cols["ts"])),
        "email": _dictionary(world, cols["email"], "identifier"),
        "klaviyo_id": _dictionary(world, cols["klaviyo"], "identifier"),
        "phone": _dictionary(world, cols["phone"], "identifier"),
        "external_id": _dictionary(world, cols["external"], "identifier"),
        "esp": _dictionary(world, cols["esp"], "esp"),
        "message_id": fmt.arrow_fixed_strings(message_id),
        "campaign_id": _dictionary(world, cols["campaign"], "campaign_id"),
        "user_agent": _dictionary(world, cols["ua"], "user_agent"),
        "ip": _dictionary(world, cols["ip"], "ip"),
        "url": _dictionary(world, cols["url"], "url"),
        "bounce_type": _dictionary(world, cols["bounce"], "bounce_type"),
        "machine_open": pa.array(machine, mask=~machine),
        "_ts": pa.array(cols["ts"], type=pa.timestamp("ms", tz="UTC")),
        "_arrival": pa.array(cols["arrival"], type=pa.timestamp("ms", tz="UTC")),
        "_person": pa.array(cols["person"].astype(np.int32)),
        "_origin": _dictionary(world, cols["origin"], "origin"),
        "_duplicate": pa.array(cols["dup"]),
        "_late": pa.array(cols["late"]),
    }
    return pa.table(columns).replace_schema_metadata({TOKEN_KEY: world.token.encode()})


def iter_columns(world: World, batch_size: int = 100_000) -> Iterator[Columns]:
    """Stream-ordered column batches of exactly batch_size events (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    parts: list[Columns] = []
    held = 0
    for chunk in ordered_chunks(world):
        parts.append(chunk)
        held += _size(chunk)
        if held < batch_size:
            continue
        merged, start = _concat(parts), 0
        while held - start >= batch_size:
            yield _slice(merged, start, start + batch_size)
            start += batch_size
        held -= start
        parts = [_slice(merged, start, start + held)] if held else []
    if held:
        yield _concat(parts)


def _slice(cols: Columns, start: int, stop: int) -> Columns:
    return {k: v[start:stop] for k, v in cols.items()}


def iter_event_batches(world: World, batch_size: int = 100_000) -> Iterator[pa.Table]:
    """Events in stream order as Arrow tables of batch_size rows; see to_table for the columns."""
    for cols in iter_columns(world, batch_size):
        yield to_table(world, cols)
