"""What each preset world looks like (docs/TIMING.md, "Synthetic worlds"): one Markdown row per preset.

    .venv/bin/python bench/worlds.py [PRESET ...]

Full size, the preset's seed. Generation time (build + every event serialized, nothing written), events, the
share of sends in the 4 busiest UTC hours of the week, Apple MPP prefetches later than 10 minutes, the median
delay of a message's first genuine open, the truth's contrast (median over engaging people of the best hour's
p_open over the mean), people whose phone country is not their zone's, people whose habits move; then, with
the ground truth only (no pipeline), the value of three naive choices in 24 h windows from the sends of the
last quarter of campaigns, as a share of the true best hour's: a random moment, the best single hour for
everyone under the truth, and the most frequent UTC hour of day of the person's last 20 genuine opens and
clicks before the hold-out (Braze-style), also for the people with 20 or more of them.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

from sendflowr.synth import build_world, iter_event_batches, serialize_batch
from sendflowr.synth.fmt import hour_of_week
from sendflowr.synth.people import ZONES
from sendflowr.synth.presets import PRESETS

HOUR = 3_600_000
COLUMNS = ["event_type", "_ts", "_person", "_origin", "_duplicate", "message_id"]


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


def _delays(at: np.ndarray, message: np.ndarray, delivered: dict) -> np.ndarray:
    return at - np.array([delivered[m] for m in message])


def naive_values(world, ts, person, origin, etype, dup) -> dict[str, float]:
    curves = world.curves.astype(np.float64)
    engaging = world.people.propensity > 0
    sends = np.sort(world.campaigns.send_ms)
    held = sends[int(np.floor(sends.size * 0.75)):]
    genuine = np.flatnonzero((origin == "human") & np.isin(etype, ["opened", "clicked"]) & ~dup & (ts < held[0]))
    genuine = genuine[np.lexsort((-ts[genuine], person[genuine]))]
    who = person[genuine]
    recent = (np.arange(who.size) - np.searchsorted(who, who)) < 20
    counts = np.zeros((len(world.people), 24))
    np.add.at(counts, (who[recent], (ts[genuine[recent]] // HOUR) % 24), 1)
    seen, mode = counts.sum(axis=1), counts.argmax(axis=1)
    overall = curves.mean(axis=0)
    people = np.random.default_rng(0).choice(np.flatnonzero(engaging), min(5_000, int(engaging.sum())),
                                             replace=False)
    value: dict[str, list[np.ndarray]] = {k: [] for k in ("oracle", "random", "single", "braze", "seen")}
    for send in held:
        hours = send // HOUR + np.arange(24)
        truth = curves[people][:, (hours + 72) % 168]
        value["oracle"].append(truth.max(axis=1))
        value["random"].append(truth.mean(axis=1))
        value["single"].append(truth[:, np.argmax(overall[(hours + 72) % 168])])
        pick = np.where(seen[people] > 0, (mode[people] - hours[0] % 24) % 24, 0)
        value["braze"].append(truth[np.arange(people.size), pick])
        value["seen"].append(seen[people])
    v = {k: np.concatenate(x) for k, x in value.items()}
    rich = v["seen"] >= 20
    out = {k: float(v[k].mean() / v["oracle"].mean()) for k in ("random", "single", "braze")}
    out["braze_20+"] = float(v["braze"][rich].mean() / v["oracle"][rich].mean()) if rich.any() else float("nan")
    out["share_20+"] = float(rich.mean())
    return out


def row(name: str) -> str:
    config = PRESETS[name].config
    started = time.perf_counter()
    world = build_world(config)
    tables, events = [], 0
    for batch in iter_event_batches(world, 100_000):
        serialize_batch(batch)
        events += batch.num_rows
        tables.append(batch.select(COLUMNS))
    seconds = time.perf_counter() - started
    table = pa.concat_tables(tables)
    etype, origin, dup = _column(table, "event_type"), _column(table, "_origin"), _column(table, "_duplicate")
    ts = _column(table, "_ts").astype("datetime64[ms]").astype(np.int64)
    person, message = _column(table, "_person"), _column(table, "message_id")
    sent, delivered = (etype == "sent") & ~dup, (etype == "delivered") & ~dup
    busiest = np.sort(np.bincount(hour_of_week(ts[sent]), minlength=168))[::-1]
    delivered_at = dict(zip(message[delivered], ts[delivered], strict=True))
    machine = np.flatnonzero((origin == "apple_mpp") & ~dup)
    late_mpp = (_delays(ts[machine], message[machine], delivered_at) > 10 * 60_000).mean()
    opens = np.flatnonzero((origin == "human") & (etype == "opened") & ~dup)
    opens = opens[np.argsort(ts[opens], kind="stable")]
    _, first = np.unique(message[opens], return_index=True)
    first_open = opens[first]
    delay = np.median(_delays(ts[first_open], message[first_open], delivered_at)) / HOUR
    engaging = world.people.propensity > 0
    contrast = np.median(world.curves[engaging].max(axis=1) / world.curves[engaging].mean(axis=1))
    mixed = (world.people.countries != np.array([z[3] for z in ZONES], dtype=object)[world.people.zone]).mean()
    moving = 0.0 if world.habits is None else world.habits.moving.mean()
    v = naive_values(world, ts, person, origin, etype, dup)
    return (f"| {name} | {config.people:,} x {config.weeks} wk x {config.campaigns_per_week:g}/wk | {seconds:.1f} s "
            f"| {events / 1e6:.2f} M | {busiest[:4].sum() / busiest.sum():.0%} | {late_mpp:.0%} | {delay:.1f} h "
            f"| {contrast:.2f} | {mixed:.0%} | {moving:.0%} | {v['random']:.2f} / {v['single']:.2f} / "
            f"{v['braze']:.2f} ({v['braze_20+']:.2f} for the {v['share_20+']:.0%} with 20+) |")


def main(names: list[str]) -> None:
    print("| preset | size | generate | events | sends in top-4 weekly hours | MPP prefetch > 10 min | median open "
          "delay | truth best/mean | phone country != zone | habits moving | value / oracle: random / best single "
          "hour / Braze rule |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names or list(PRESETS):
        print(row(name), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
