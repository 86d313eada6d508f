"""How many decisions the API's compact curves change: the timing asset's real curves of a synthetic world, decided
from the float32 values (store.load_snapshot) and from the API's mapped UInt16 part (sendflowr.decisions), for
every person with a curve and several windows.

    .venv/bin/python bench/api_curve_precision.py [--preset baseline] [--people 50000] [--seed 11] [--state DIR]

1. builds the preset's world, loads its events straight into a private chDB endpoint (sendflowr.timing.worldload,
   no Kafka), stitches identity and materializes the timing curves (sendflowr.timing.run.materialize: the asset's
   own code); --state keeps the endpoint's data for the next invocation;
2. loads the committed curves both ways and decides every person with decide_many, the API's decision rule, for
   windows of a week, a day and three hours at random starts, 300 s latency;
3. prints per window: how many decisions moved (another delivery moment), how much expected engagement a moved
   decision gives up under the float32 curve (it can only be a near tie), how many confidences change at the two
   decimals the API shows, and the largest difference of the expected engagement the API returns.

Nothing asserted; docs/SCALING.md ("API memory") quotes the figures as the documented tolerance.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from sendflowr.clickhouse import get_client
from sendflowr.decisions.snapshot import SnapshotHolder
from sendflowr.local import chdb_server, processes
from sendflowr.migrations import apply_migrations
from sendflowr.synth.presets import preset
from sendflowr.synth.world import build_world
from sendflowr.timing import store
from sendflowr.timing.decide import HOUR_MS, HOURS, decide_many
from sendflowr.timing.run import materialize
from sendflowr.timing.worldload import load_world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_snapshot import endpoint_settings  # noqa: E402 (bench/api_snapshot.py: the same private endpoint)

WINDOWS = (168, 24, 3)


def compare(exact, compact, rounds: int, seed: int) -> None:
    """Both snapshots decide every person; rows line up (both sorted by universal id)."""
    assert len(compact) == len(exact.universal_id)
    curves, quantized = np.asarray(exact.curves), np.asarray(compact.curves)
    n = len(curves)
    peak = curves.max(axis=1)
    error = np.abs(quantized - curves)
    print(f"{n:,} people with curves; largest error of a value {error.max():.2e}, relative to its curve's peak "
          f"{np.nanmax(error / np.maximum(peak, 1e-30)[:, None]):.2e}")
    print("| window | decisions | moment changed | engagement given up at a changed moment (worst, relative) | "
          "confidence changed (2 decimals) | largest expected-engagement difference |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    for hours in WINDOWS:
        total = moved = confidence = 0
        worst_loss = engagement = 0.0
        for _ in range(rounds):
            start = now + timedelta(minutes=int(rng.integers(60, 7 * 24 * 60)))
            after = (np.datetime64(start.replace(tzinfo=None), "ms")
                     + rng.integers(0, 24 * 60, n).astype("timedelta64[m]"))
            before = after + np.timedelta64(hours * 3600 * 1000, "ms")
            a = decide_many(curves, exact.evidence, exact.fallback_level, after, before, 300.0, now,
                            exact.calibration)
            b = decide_many(quantized, np.asarray(compact.evidence), compact.fallback_level, after, before, 300.0,
                            now, compact.calibration)
            ok = np.array([f is None for f in a.error_field])
            total += int(ok.sum())
            changed = ok & (a.delivery_at != b.delivery_at)
            moved += int(changed.sum())
            if changed.any():
                slot = (b.delivery_at[changed].astype(np.int64) // HOUR_MS + 72) % HOURS
                chosen = curves[np.flatnonzero(changed), slot]
                worst_loss = max(worst_loss, float(((a.expected_engagement[changed] - chosen)
                                                    / a.expected_engagement[changed]).max()))
            confidence += int((np.round(a.confidence[ok], 2) != np.round(b.confidence[ok], 2)).sum())
            engagement = max(engagement, float(np.abs(a.expected_engagement[ok] - b.expected_engagement[ok]).max()))
        print(f"| {hours} h | {total:,} | {moved:,} ({moved / total:.4%}) | {worst_loss:.1e} | "
              f"{confidence:,} ({confidence / total:.3%}) | {engagement:.1e} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=4, help="window starts per window length")
    parser.add_argument("--state", type=Path, default=None, help="keep the endpoint's data here between runs")
    args = parser.parse_args()
    database = f"precision_{args.preset}_{args.people}_{args.seed}"
    settings = endpoint_settings(args.state, "sendflowr-bench-precision-", database)
    home = settings.home
    try:
        chdb_server.start_background(settings)
        apply_migrations(settings)
        client = get_client(settings, send_receive_timeout=900)
        if store.latest_run(client, database) is None:
            started = time.perf_counter()
            load_world(settings, client, build_world(preset(args.preset, people=args.people, seed=args.seed)),
                       home / "truth" / database)
            materialize(client, database, log=lambda _line: None)
            print(f"world {args.preset} ({args.people:,} people) loaded, stitched and its curves materialized in "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        holder = SnapshotHolder(lambda: get_client(settings, send_receive_timeout=900), database, 3600)
        assert holder.refresh()
        compare(store.load_snapshot(client, database), holder.current.timing, args.rounds, args.seed)
        holder.stop()
        return 0
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
        if args.state is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
