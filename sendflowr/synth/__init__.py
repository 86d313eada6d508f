"""Synthetic email-engagement world with ground truth (no Dagster, no FastAPI).

    world = build_world(WorldConfig(people=10_000))
    for batch in iter_event_batches(world):        # pyarrow.Table per batch, stream order
        lines = serialize_batch(batch)             # list[bytes], one v1-contract JSON event each
    write_ground_truth(world, out_dir)
    generate(config, out_dir, to_kafka=settings, jsonl=True, progress=True)

Deterministic for a seed: the same config gives byte-identical events, whatever the batch size.
"""

from sendflowr.synth.config import WorldConfig
from sendflowr.synth.emit import serialize_batch
from sendflowr.synth.generate import estimate_events, generate
from sendflowr.synth.stream import iter_event_batches
from sendflowr.synth.truth import Manifest, write_ground_truth
from sendflowr.synth.world import World, build_world

__all__ = [
    "Manifest",
    "World",
    "WorldConfig",
    "build_world",
    "estimate_events",
    "generate",
    "iter_event_batches",
    "serialize_batch",
    "write_ground_truth",
]
