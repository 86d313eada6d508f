"""Decision quality on several differently configured synthetic worlds: the figures of docs/TIMING.md.

    .venv/bin/python bench/timing_quality.py [--worlds a,b,c] [--people N] [--seed S | --seeds 7,11,23]
                                             [--window-hours 24] [--state DIR] [--decisions 200000]

For each world (a preset of sendflowr.synth.presets): build it, load its events straight into a fresh database of
a private chDB endpoint (sendflowr.timing.worldload, no Kafka), stitch identity, and run the evaluation
(sendflowr.timing.evaluate, what the `timing_evaluation` asset runs): the model is fitted on what was observed
before the held-out campaigns, and its decisions are scored under the world's true curves against every
baseline. Prints per world and bucket the share of the oracle and the lift over each baseline with its 95%
interval, the calibration error of the confidence the model derives from its own posterior, what the signal
cleaning found against what really happened, and which of the issue's goals hold. With --seeds, every world at
every seed, then a summary across all of them (what a change must hold on, not one world).

--state keeps the endpoint's data between invocations: a world already loaded there (same name, size and
seed) is evaluated again without reloading. Nothing here is asserted: a missed goal is printed, not raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sendflowr.clickhouse import get_client
from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.synth.presets import PRESETS, preset
from sendflowr.synth.world import build_world
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.evaluate import BASELINES, BUCKETS, EvalConfig, EvalReport, evaluate
from sendflowr.timing.fit import fit
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.worldload import SignalTruth, load_world

SHORT = {"random": "random", "window_start": "start", "global_best_hour": "our global",
         "best_single_hour": "best single", "recent_open_hour": "recent open", "genuine_open_hour": "genuine open"}
MIN_BUCKET_DECISIONS = 2_000  # smaller buckets are shown but not judged (their intervals say little)


def world_report(base: Settings, name: str, people: int | None, seed: int | None, config: EvalConfig,
                 log) -> tuple[EvalReport, SignalTruth | None, dict]:
    world_config = preset(name, people=people, seed=seed)
    database = f"quality_{name}_{world_config.people}_{world_config.seed}"
    settings = base.model_copy(update={"clickhouse_database": database})
    truth_dir = base.home / "truth" / database
    admin = get_client(settings, with_database=False)
    loaded = bool(admin.command("SELECT count() FROM system.tables WHERE database = {d:String} AND name = 'events'",
                                parameters={"d": database})) and (truth_dir / "signal_truth.json").exists()
    if loaded:
        apply_migrations(settings)  # a kept state may predate a migration
        truth = SignalTruth(**json.loads((truth_dir / "signal_truth.json").read_text()))
    else:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
        apply_migrations(settings)
        started = time.perf_counter()
        truth = load_world(settings, get_client(settings), build_world(world_config), truth_dir, log=log)
        (truth_dir / "signal_truth.json").write_text(json.dumps(dataclasses.asdict(truth)))
        log(f"  {name}: loaded in {time.perf_counter() - started:.0f}s")
    started = time.perf_counter()
    client = get_client(settings)
    report = evaluate(client, database, truth_dir, config=config)
    log(f"  {name}: evaluated in {time.perf_counter() - started:.0f}s")
    # what the cleaning finds over the whole world, to set against what really happened
    report.signals = fit(client, database, SignalRules(), EstimatorParams()).stats.totals
    return report, truth, world_config.to_dict()


def _ci(lift: dict | None) -> str:
    if not lift:
        return "-"
    return f"{lift['lift']:+.1%} [{lift['ci95'][0]:+.1%}, {lift['ci95'][1]:+.1%}]"


def print_world(name: str, report: EvalReport, truth: SignalTruth | None, cfg: dict) -> list[str]:
    """The world's tables; returns the goals it misses."""
    print(f"\n## {name}: {report.people:,} people, {report.decisions:,} decisions, cutoff {report.cutoff:%Y-%m-%d}")
    knobs = {k: v for k, v in cfg.items() if k not in ("end",)}
    print(f"config: {knobs}")
    header = "| bucket | decisions | share: ours | " + " | ".join(f"vs {SHORT[b]}" for b in BASELINES) + " |"
    print(header)
    print("|" + "---|" * (3 + len(BASELINES)))
    missed = []
    for _, _, bucket in BUCKETS + ((0, 0, "all"),):
        b = report.overall if bucket == "all" else report.buckets.get(bucket, {})
        if not b.get("decisions"):
            print(f"| {bucket} | 0 |" + " |" * (1 + len(BASELINES)))
            continue
        print(f"| {bucket} | {b['decisions']:,} | {b['share_of_oracle']['ours']:.3f} | "
              + " | ".join(_ci(b["lift"].get(m)) for m in BASELINES) + " |")
        if bucket == "all" or b["decisions"] < MIN_BUCKET_DECISIONS:
            continue
        for m in BASELINES:
            lift = b["lift"].get(m)
            if lift is not None and lift["ci95"][0] <= 0:
                missed.append(f"bucket {bucket} vs {SHORT[m]}: {_ci(lift)}")
        if bucket == "20+" and b["lift"]["genuine_open_hour"]["lift"] < 0.05:
            missed.append(f"bucket 20+ vs genuine open below +5%: {_ci(b['lift']['genuine_open_hour'])}")
    levels = ", ".join(f"{k} {v['ece']:.3f} ({v['mean_confidence']:.2f} vs {v['hit_rate']:.2f} hit, "
                       f"{v['decisions']:,})" for k, v in report.ece_by_level.items())
    print(f"\nconfidence (the model's own posterior, nothing fitted on the truth): ECE {report.ece:.3f}; by level: "
          f"{levels}; diagnostic truth-fitted ECE {report.ece_truth_fitted:.3f}")
    if report.ece > 0.05:
        missed.append(f"ECE {report.ece:.3f} > 0.05")
    if report.ml.get("buckets"):
        print("ML prior (scikit-learn activity clusters) vs without, lift: "
              + ", ".join(f"{k} {_ci(v)}" for k, v in report.ml["buckets"].items()))
    pred = report.predictive
    if pred.get("metrics"):
        m = pred["metrics"]
        print(f"predictive, no truth used ({pred['deliveries']:,} held-out deliveries before the cutoff, sharpness "
              f"{pred['sharpness']:.2f}): " + "; ".join(
                  f"{name} " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items()) for name, vals in m.items()))
        by_auc = sorted(("ours", "global_curve", "genuine_open_hour"), key=lambda k: -m[k]["auc"])
        share = report.overall["share_of_oracle"]
        by_truth = sorted(("ours", "global_best_hour", "genuine_open_hour"),
                          key=lambda k: -share[k if k != "global_curve" else "global_best_hour"])
        print(f"ranking by held-out AUC: {' > '.join(by_auc)}; by the truth's share of the oracle: "
              f"{' > '.join(by_truth)}")
    signals = report.signals
    if truth is not None and signals:
        inflation = signals["engaged"] / max(truth.engaged_messages, 1) - 1
        opens = signals["genuine_opens"] / max(truth.human_opens, 1) - 1
        print(f"signal cleaning (all events, whole world): genuine opens found {signals['genuine_opens']:,} vs "
              f"true {truth.human_opens:,} ({opens:+.1%}); engaged messages found {signals['engaged']:,} vs true "
              f"{truth.engaged_messages:,} ({inflation:+.1%}); machine opens {signals['machine_opens']:,} vs true "
              f"{truth.machine_opens:,}; scanner clicks {signals['scanner_clicks']:,} vs true "
              f"{truth.scanner_clicks:,}")
        if opens > 0.05:
            missed.append(f"genuine opens inflated by {opens:+.1%}")
    return missed


def print_across(reports: dict[tuple[str, int], EvalReport]) -> None:
    """Every world at every seed at once: per bucket and baseline, in how many worlds ours beats it with an
    interval above zero (of those with the bucket judged), and the smallest and mean lift; the ECE's spread."""
    print(f"\n# Across {len(reports)} worlds (presets x seeds); buckets of at least {MIN_BUCKET_DECISIONS:,} decisions")
    print("| bucket | baseline | interval above zero | smallest lift | mean lift |")
    print("|---|---|---|---|---|")
    for _, _, bucket in BUCKETS + ((0, 0, "all"),):
        for m in BASELINES:
            lifts = []
            for report in reports.values():
                b = report.overall if bucket == "all" else report.buckets.get(bucket, {})
                lift = b.get("lift", {}).get(m) if b.get("decisions", 0) >= MIN_BUCKET_DECISIONS else None
                if lift is not None:
                    lifts.append(lift)
            if lifts:
                above = sum(lift["ci95"][0] > 0 for lift in lifts)
                print(f"| {bucket} | {SHORT[m]} | {above} of {len(lifts)} | {min(x['lift'] for x in lifts):+.1%} | "
                      f"{sum(x['lift'] for x in lifts) / len(lifts):+.1%} |")
    eces = [report.ece for report in reports.values()]
    print(f"\nECE: at most 0.05 in {sum(e <= 0.05 for e in eces)} of {len(eces)} worlds; mean "
          f"{sum(eces) / len(eces):.3f}, largest {max(eces):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default=",".join(PRESETS), help=f"presets, of: {', '.join(PRESETS)}")
    parser.add_argument("--people", type=int, default=None, help="override every preset's people")
    parser.add_argument("--seed", type=int, default=None, help="override every preset's seed")
    parser.add_argument("--seeds", default=None, help="several seeds, comma-separated (e.g. 7,11,23): every world at "
                        "each, then a summary across all of them")
    parser.add_argument("--window-hours", type=int, default=24)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--state", type=Path, default=None, help="keep the endpoint's data here (reused)")
    args = parser.parse_args()
    names = [w.strip() for w in args.worlds.split(",") if w.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown world(s) {unknown}; presets: {', '.join(PRESETS)}")

    home = args.state or Path(tempfile.mkdtemp(prefix="sendflowr-quality-"))
    home.mkdir(parents=True, exist_ok=True)
    port_file = home / "port"
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    port_file.write_text(str(port))
    base = Settings(home=home, clickhouse_url=f"http://127.0.0.1:{port}")
    config = EvalConfig(window_hours=args.window_hours, max_decisions=args.decisions)
    started_here = False
    try:
        try:
            get_client(base, with_database=False).command("SELECT 1")
        except Exception:
            chdb_server.start_background(base)
            started_here = True
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
        results = {}
        for seed in seeds:
            for name in names:
                print(f"world {name}" + ("" if seed is None else f", seed {seed}") + " ...", flush=True)
                results[(name, seed)] = world_report(base, name, args.people, seed, config, log=print)
        print(f"\n# Decision quality, {args.window_hours} h windows (lift = ours / baseline - 1, 95% interval over "
              "people)")
        goals = {key: print_world(key[0] if len(seeds) == 1 else f"{key[0]}, seed {key[1]}", *results[key])
                 for key in results}
        print("\n# Goals (every bucket beats every baseline with an interval above zero; 20+ beats the genuine-open "
              "rule by >= 5%; ECE <= 0.05)")
        for (name, seed), missed in goals.items():
            label = name if len(seeds) == 1 else f"{name}, seed {seed}"
            print(f"- {label}: " + ("all hold" if not missed else "MISSED: " + "; ".join(missed)))
        if len(seeds) > 1:
            print_across({key: value[0] for key, value in results.items()})
        return 0
    finally:
        if started_here and args.state is None:
            processes.stop(base, chdb_server.PROCESS_NAME)
        if args.state is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
