"""generate(): build the world, write its ground truth, stream its events to JSONL and/or Kafka."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sendflowr.errors import SendflowrError
from sendflowr.events import FUTURE_TOLERANCE
from sendflowr.settings import Settings
from sendflowr.synth.config import WorldConfig
from sendflowr.synth.emit import serialize_batch
from sendflowr.synth.stream import iter_event_batches
from sendflowr.synth.truth import (
    EVENT_TRUTH_SCHEMA,
    Manifest,
    Tally,
    event_truth_table,
    new_manifest,
    write_ground_truth,
)
from sendflowr.synth.world import World, build_world


def estimate_events(world: World) -> int:
    """Expected number of emitted lines (for progress bars): a closed-form pass over campaigns."""
    cfg, p, camp = world.config, world.people, world.campaigns
    mpp, scan = p.apple_mpp.mean(), p.behind_scanner.mean()
    total = 0.0
    for c in range(len(camp)):
        how = int(((camp.send_ms[c] // 3_600_000) + 72) % 168)
        p_open = float(world.curves[:, how].mean())
        visible = (1 - mpp) + mpp * cfg.mpp_human_open_visible
        per = (2 + p_open * (visible * (1 + cfg.reopen_rate) + cfg.click_rate * 1.25)
               + mpp * cfg.mpp_open_rate + scan * cfg.scanner_click_rate * float(camp.n_links[c]))
        total += len(p) * camp.audience[c] * per
    return int(total * (1 + cfg.duplicate_rate))


def _progress(progress: bool, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, disable=not progress, desc="events", smoothing=0.1)


def generate(config: WorldConfig, out_dir: Path, to_kafka: Settings | None = None, jsonl: bool = False,
             progress: bool = False, event_truth: bool = True, batch_size: int = 100_000) -> Manifest:
    """Write ground truth to out_dir, then every event: to <out>/events.jsonl when jsonl, to Kafka when
    to_kafka is given (key: the person's partition key, see truth.KAFKA_KEY), and per-event truth to
    <out>/event_truth.parquet when event_truth. Returns (and writes) the manifest."""
    limit = datetime.now(UTC) + FUTURE_TOLERANCE
    if config.end > limit:
        raise SendflowrError(f"end {config.end.isoformat()} is in the future: ingestion rejects events "
                             f"more than {FUTURE_TOLERANCE} ahead of now")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SendflowrError(f"cannot create output directory {out_dir}: {exc}") from exc
    # Never leave a previous world's files next to this one's; manifest.json, written last, marks a
    # complete world.
    outputs = {"events.jsonl": jsonl, "event_truth.parquet": event_truth, "manifest.json": False}
    for name, wanted in outputs.items():
        if not wanted:
            (out_dir / name).unlink(missing_ok=True)
    if to_kafka is not None:
        _ensure_topic(to_kafka)  # fail fast, before any work
    world = build_world(config)
    write_ground_truth(world, out_dir)
    manifest = new_manifest(world)
    manifest.files = {name: str(out_dir / f"{name}.parquet")
                      for name in ("people", "true_curves", "identifiers", "campaigns")}
    tally = Tally()

    with ExitStack() as stack:
        sink = stack.enter_context(open(out_dir / "events.jsonl", "wb")) if jsonl else None
        truth = (stack.enter_context(pq.ParquetWriter(out_dir / "event_truth.parquet", EVENT_TRUTH_SCHEMA,
                                                      compression="zstd")) if event_truth else None)
        bar = stack.enter_context(_progress(progress, estimate_events(world)))

        def lines() -> Iterator[tuple[pa.Table, list[bytes]]]:
            for batch in iter_event_batches(world, batch_size):
                tally.add(batch)
                if truth is not None:
                    truth.write_table(event_truth_table(batch))
                values = serialize_batch(batch) if (sink is not None or to_kafka is not None) else []
                if sink is not None:
                    sink.write(b"\n".join(values) + b"\n")
                yield batch, values

        if to_kafka is None:
            for batch, _ in lines():
                bar.update(batch.num_rows)
        else:
            manifest.kafka = _produce(world, to_kafka, lines(), bar)
        if bar.total is not None and bar.n != bar.total:
            bar.total = bar.n
            bar.refresh()

    tally.fill(manifest)
    if jsonl:
        manifest.files["events"] = str(out_dir / "events.jsonl")
    if event_truth:
        manifest.files["event_truth"] = str(out_dir / "event_truth.parquet")
    manifest.seconds = round(time.perf_counter() - started, 3)
    manifest.events_per_second = round(manifest.events / manifest.seconds, 1) if manifest.seconds else 0.0
    manifest.files["manifest"] = str(out_dir / "manifest.json")
    manifest.write(out_dir / "manifest.json")
    return manifest


def _ensure_topic(settings: Settings) -> None:
    from sendflowr.kafka_io import KafkaUnavailable, ensure_topic

    try:
        ensure_topic(settings)
    except KafkaUnavailable as exc:
        raise SendflowrError(f"cannot produce the world's events: {exc}") from exc


def _produce(world: World, settings: Settings, batches, bar) -> dict:
    from sendflowr.kafka_io import KafkaUnavailable, produce_all

    def messages() -> Iterator[tuple[bytes, bytes]]:
        for batch, values in batches:
            persons = batch.column("_person").to_numpy()
            keys = world.partition_keys(persons).view(f"S{18}").ravel().tolist()
            yield from zip(keys, values, strict=True)

    try:
        report = produce_all(settings, messages(), on_progress=bar.update)
    except KafkaUnavailable as exc:
        raise SendflowrError(f"Kafka did not confirm every event: {exc}") from exc
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, "topic": settings.kafka_topic,
            "produced": report.sent}
