"""Ground truth next to the data, and the manifest of what was emitted.

Layout of <out>/:
  people.parquet       person_id, tz, utc_offset_hours, archetype, propensity, segment, apple_mpp,
                       behind_scanner, hard_bouncer, mail_client, partition_key, home_country (country of the
                       phone numbers; not tz's for zone-mixed people), open_delay (lognormal | hazard |
                       sessions), archetype_end, drift_hours (how far the rhythm moved by the end, + later),
                       switch_week (world week of an archetype switch, -1 none)
  true_curves.parquet  person_id, p_open (list<float32> of 168), best_hour (argmax of p_open).
                       p_open[h] = P(genuine open | the message is delivered at a uniformly random moment of
                       UTC hour-of-week h), h = weekday*24 + hour, Monday 00:00 UTC = 0: "genuine" = by the
                       person (whether or not the ESP sees it: an MPP cache may hide it), at any time after the
                       delivery (the end of the world does not cut it). It is computed from the same process
                       that draws the events (opens.py), in the habits in force at the world's end: exact for
                       every delivery from manifest.truth_from (habits.py: drift and archetype switches settle
                       for the world's last third). propensity = max_h p_open.
  identifiers.parquet  identifier_type, raw_value (exactly as emitted), normalized, person_id (null for junk),
                       is_generic (junk or shared by several people: never use to join), generic_kind
                       ('' | 'shared' | 'junk'), detail (what it is: phenomena.DETAILS, e.g. 'household',
                       'business', 'merged_profile', 'second_mailbox', 'placeholder'; '' = plain)
  campaigns.parquet    campaign_id, esp, send_time, audience_share, n_links
  event_truth.parquet  event_id, person_id, origin (system | human | apple_mpp | scanner), duplicate, late
                       (one row per emitted line, written by generate)
  manifest.json        seed, parameters, counts, files, timings
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sendflowr.events import EVENT_TYPES
from sendflowr.synth import fmt
from sendflowr.synth.campaigns import ESPS
from sendflowr.synth.config import format_time
from sendflowr.synth.curves import HOURS
from sendflowr.synth.habits import KINDS, NEVER
from sendflowr.synth.identifiers import TYPES
from sendflowr.synth.people import ARCHETYPES, CLIENTS
from sendflowr.synth.world import World

GENERIC_KINDS = ("", "shared", "junk")
KAFKA_KEY = ("person partition key 'r_<16 hex>' = mix64(person_id XOR seed salt): opaque, stable per person "
             "and seed, so one person's events share a partition; it is not an identifier to stitch on")


@dataclass
class Manifest:
    seed: int
    parameters: dict[str, Any]
    people: int
    campaigns: int
    events: int = 0  # emitted lines, duplicates included
    unique_events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)  # emitted lines per event_type
    duplicates: int = 0  # extra copies (same event_id, identical bytes)
    late_events: int = 0  # lines arriving minutes to days after they occurred (copies included)
    machine_opens: int = 0  # Apple MPP prefetch opens (unique events)
    machine_opens_flagged: int = 0  # of those, carrying machine_open: true
    scanner_clicks: int = 0  # unique events
    human_opens: int = 0  # genuine opens that reached the ESP (unique events)
    human_clicks: int = 0  # unique events
    first_occurred_at: str | None = None
    last_occurred_at: str | None = None
    truth_from: str | None = None  # true_curves hold exactly for deliveries from here (habits settled)
    kafka_key: str = KAFKA_KEY
    files: dict[str, str] = field(default_factory=dict)
    kafka: dict[str, Any] | None = None
    generated_at: str = ""
    seconds: float = 0.0
    events_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


class Tally:
    """Counts over emitted batches, for the manifest."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.first_ms: int | None = None
        self.last_ms: int | None = None

    def add(self, table: pa.Table) -> None:
        etype = table.column("event_type").combine_chunks()
        codes = etype.indices.to_numpy()
        names = etype.dictionary.to_pylist()
        for code, count in enumerate(np.bincount(codes, minlength=len(names)).tolist()):
            if count:
                self.by_type[names[code]] += count
        dup = table.column("_duplicate").to_numpy()
        origin = table.column("_origin").combine_chunks()
        origin_names = origin.dictionary.to_pylist()
        o = origin.indices.to_numpy()
        unique = ~dup
        is_open = codes == names.index("opened")
        is_click = codes == names.index("clicked")
        machine = table.column("machine_open").is_valid().to_numpy(zero_copy_only=False)
        c = self.counts
        c["events"] += len(codes)
        c["duplicates"] += int(dup.sum())
        c["late"] += int(table.column("_late").to_numpy().sum())
        c["machine_opens"] += int((unique & is_open & (o == origin_names.index("apple_mpp"))).sum())
        c["machine_opens_flagged"] += int((unique & machine).sum())
        c["scanner_clicks"] += int((unique & is_click & (o == origin_names.index("scanner"))).sum())
        c["human_opens"] += int((unique & is_open & (o == origin_names.index("human"))).sum())
        c["human_clicks"] += int((unique & is_click & (o == origin_names.index("human"))).sum())
        ts = table.column("_ts").to_numpy().astype("datetime64[ms]").astype(np.int64)
        if ts.size:
            lo, hi = int(ts.min()), int(ts.max())
            self.first_ms = lo if self.first_ms is None else min(self.first_ms, lo)
            self.last_ms = hi if self.last_ms is None else max(self.last_ms, hi)

    def fill(self, manifest: Manifest) -> Manifest:
        c = self.counts
        manifest.events = c["events"]
        manifest.duplicates = c["duplicates"]
        manifest.unique_events = c["events"] - c["duplicates"]
        manifest.events_by_type = {t: self.by_type.get(t, 0) for t in EVENT_TYPES}
        manifest.late_events = c["late"]
        manifest.machine_opens = c["machine_opens"]
        manifest.machine_opens_flagged = c["machine_opens_flagged"]
        manifest.scanner_clicks = c["scanner_clicks"]
        manifest.human_opens = c["human_opens"]
        manifest.human_clicks = c["human_clicks"]
        for attr, ms in (("first_occurred_at", self.first_ms), ("last_occurred_at", self.last_ms)):
            if ms is not None:
                setattr(manifest, attr, bytes(fmt.rfc3339_ms_codes(np.array([ms]))[0]).decode())
        return manifest


def new_manifest(world: World) -> Manifest:
    settled = world.config.start + timedelta(weeks=world.habits.settle if world.habits is not None and
                                             world.habits.moving.any() else 0)
    return Manifest(seed=world.config.seed, parameters=world.config.to_dict(), people=len(world.people),
                    campaigns=len(world.campaigns), truth_from=format_time(settled),
                    generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def people_table(world: World) -> pa.Table:
    p = world.people
    person_id = np.arange(len(p), dtype=np.int64)
    return pa.table({
        "person_id": person_id,
        "tz": pa.array(p.tz_names.tolist(), pa.string()),
        "utc_offset_hours": p.utc_offset_hours,
        "archetype": pa.array(np.array(ARCHETYPES, dtype=object)[p.archetype].tolist(), pa.string()),
        "propensity": p.propensity,
        "segment": pa.array(np.array(["never", "sparse", "heavy"], dtype=object)[p.segment].tolist()),
        "apple_mpp": p.apple_mpp,
        "behind_scanner": p.behind_scanner,
        "hard_bouncer": p.hard_bouncer,
        "mail_client": pa.array(np.array(CLIENTS, dtype=object)[p.client].tolist(), pa.string()),
        "partition_key": fmt.arrow_fixed_strings(world.partition_keys(person_id)),
        **habits_columns(world),
    })


def habits_columns(world: World) -> dict[str, pa.Array]:
    p, h = world.people, world.habits
    n = len(p)
    kind = np.zeros(n, np.int8) if h is None else h.kind
    end_archetype = p.archetype if h is None else h.end_archetype
    switch = np.full(n, -1, np.int16) if h is None else np.where(h.switch_week == NEVER, -1, h.switch_week)
    return {
        "home_country": pa.array(p.countries.tolist(), pa.string()),
        "open_delay": pa.array(np.array(KINDS, dtype=object)[kind].tolist(), pa.string()),
        "archetype_end": pa.array(np.array(ARCHETYPES, dtype=object)[end_archetype].tolist(), pa.string()),
        "drift_hours": (np.zeros(n) if h is None else h.drift).astype(np.float32),
        "switch_week": switch.astype(np.int16),
    }


def curves_table(world: World) -> pa.Table:
    curves = np.ascontiguousarray(world.curves, dtype=np.float32)
    n = curves.shape[0]
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * HOURS)
    return pa.table({
        "person_id": np.arange(n, dtype=np.int64),
        "p_open": pa.ListArray.from_arrays(offsets, pa.array(curves.ravel())),
        "best_hour": curves.argmax(axis=1).astype(np.int16),
    })


def identifiers_table(world: World) -> pa.Table:
    ids = world.identifiers
    person = ids.truth_person
    return pa.table({
        "identifier_type": pa.array(np.array(TYPES, dtype=object)[ids.truth_type].tolist(), pa.string()),
        "raw_value": pa.array(np.array(ids.values, dtype=object)[ids.truth_value].tolist(), pa.string()),
        "normalized": pa.array(ids.truth_normalized, pa.string()),
        "person_id": pa.array(person, mask=person < 0),
        "is_generic": ids.truth_kind > 0,
        "generic_kind": pa.array(np.array(GENERIC_KINDS, dtype=object)[ids.truth_kind].tolist(), pa.string()),
        "detail": pa.array(ids.truth_detail, pa.string()),
    })


def campaigns_table(world: World) -> pa.Table:
    c = world.campaigns
    return pa.table({
        "campaign_id": pa.array(c.ids, pa.string()),
        "esp": pa.array(np.array(ESPS, dtype=object)[c.esp].tolist(), pa.string()),
        "send_time": pa.array(c.send_ms, pa.timestamp("ms", tz="UTC")),
        "audience_share": c.audience,
        "n_links": c.n_links.astype(np.int16),
    })


def write_ground_truth(world: World, out_dir: Path) -> None:
    """people, true curves, identifiers and campaigns as parquet (manifest.json is written by generate)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (("people", people_table(world)), ("true_curves", curves_table(world)),
                        ("identifiers", identifiers_table(world)), ("campaigns", campaigns_table(world))):
        pq.write_table(table, out_dir / f"{name}.parquet", compression="zstd")


EVENT_TRUTH_SCHEMA = pa.schema([("event_id", pa.string()), ("person_id", pa.int32()),
                                ("origin", pa.dictionary(pa.int32(), pa.string())), ("duplicate", pa.bool_()),
                                ("late", pa.bool_())])


def event_truth_table(batch: pa.Table) -> pa.Table:
    origin = batch.column("_origin").combine_chunks()
    origin = pa.DictionaryArray.from_arrays(origin.indices.cast(pa.int32()), origin.dictionary)
    columns = [batch.column("event_id"), batch.column("_person"), origin, batch.column("_duplicate"),
               batch.column("_late")]
    return pa.Table.from_arrays(columns, schema=EVENT_TRUTH_SCHEMA)
