"""Synthetic email-engagement world with ground truth (no Dagster, no FastAPI).

    world = build_world(WorldConfig(people=10_000))
    for batch in iter_event_batches(world):        # pyarrow.Table per batch, stream order
        lines = serialize_batch(batch)             # list[bytes], one v1-contract JSON event each
    write_ground_truth(world, out_dir)
    generate(config, out_dir, to_kafka=settings, jsonl=True, progress=True)
    config = preset("weekly_slots", people=5_000)   # named worlds with the phenomena knobs (presets.py)

Deterministic for a seed: the same config gives byte-identical events, whatever the batch size.
"""

from sendflowr.synth.config import WorldConfig
from sendflowr.synth.emit import serialize_batch
from sendflowr.synth.generate import estimate_events, generate
from sendflowr.synth.presets import PRESETS, preset
from sendflowr.synth.stream import iter_event_batches
from sendflowr.synth.truth import Manifest, write_ground_truth
from sendflowr.synth.world import World, build_world

__all__ = [
    "PRESETS",
    "Manifest",
    "World",
    "WorldConfig",
    "build_world",
    "estimate_events",
    "generate",
    "iter_event_batches",
    "preset",
    "serialize_batch",
    "write_ground_truth",
]
