"""`sendflowr generate`: build a synthetic world, write its ground truth and stream its events."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sendflowr.errors import SendflowrError
from sendflowr.settings import Settings
from sendflowr.synth.config import DEFAULT_END, WorldConfig, format_time, parse_end
from sendflowr.synth.presets import PRESETS, preset


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate a synthetic event world with ground truth",
        description="Build a deterministic synthetic list (people, true send-time curves, identifiers, "
        "campaigns), write the ground truth as parquet and stream its events to Kafka and/or events.jsonl.",
    )
    defaults = WorldConfig()
    parser.add_argument("--preset", choices=tuple(PRESETS), default="baseline",
                        help="named world (presets.py; docs/TIMING.md, Synthetic worlds); the options below "
                        "override it (default %(default)s)")
    parser.add_argument("--people", type=int, default=None,
                        help=f"number of people (default: the preset's; baseline {defaults.people})")
    parser.add_argument("--weeks", type=int, default=None,
                        help=f"weeks of campaigns, ending at --end (default: the preset's; baseline {defaults.weeks})")
    parser.add_argument("--campaigns-per-week", type=float, default=None,
                        help=f"campaigns sent per week (default: the preset's; baseline {defaults.campaigns_per_week})")
    parser.add_argument("--seed", type=int, default=None, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--end", default=None,
                        help=f"end of the world, ISO 8601 (UTC if no offset; default {format_time(DEFAULT_END)})")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <home>/world)")
    parser.add_argument("--kafka", action=argparse.BooleanOptionalAction, default=True,
                        help="produce events to the configured Kafka topic (default: yes)")
    parser.add_argument("--jsonl", action="store_true", help="also write <out>/events.jsonl")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: yes)")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace, settings: Settings) -> int:
    from sendflowr.synth.generate import generate

    config = preset(args.preset, people=args.people, weeks=args.weeks, campaigns_per_week=args.campaigns_per_week,
                    seed=args.seed, end=None if args.end is None else parse_end(args.end))
    out = (args.out or settings.home / "world").expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SendflowrError(f"--out {out} exists and is not a directory")
    started = time.perf_counter()
    manifest = generate(config, out, to_kafka=settings if args.kafka else None, jsonl=args.jsonl,
                        progress=args.progress)
    seconds = time.perf_counter() - started
    by_type = " ".join(f"{k}={v}" for k, v in manifest.events_by_type.items() if v)
    where = f"kafka {settings.kafka_bootstrap_servers}/{settings.kafka_topic}, " if args.kafka else ""
    print(f"generated {args.preset} world: {manifest.people} people, {manifest.events} events ({by_type}; "
          f"{manifest.duplicates} duplicates) -> {where}{out} in {seconds:.1f}s "
          f"({manifest.events / seconds if seconds else 0:,.0f} events/s)")
    return 0
