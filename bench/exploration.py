"""Exploration against greedy decisions in the closed loop (issue 15, item 7; docs/EVALUATION.md, "Exploration").

    .venv/bin/python bench/exploration.py [--people 4000] [--rounds 8] [--scales 1] [--seed 7]
    .venv/bin/python bench/exploration.py --calibrate [--people 4000] [--seed 11] [--worlds weekly_slots,...]
    .venv/bin/python bench/exploration.py --cost

The experiment starts a private Kafka broker and chDB endpoint (as tests/conftest.py does). A `weekly_slots` world
(90% of its campaigns in 3 weekly slots) is generated into Kafka, its history ending the hour before the first
round. Every policy, greedy (exploration 0) and Thompson sampling at each of --scales, gets its own database, which
ingests that history (sendflowr.ingest), stitches identity and fits the timing curves (sendflowr.identity,
sendflowr.timing: what the assets run). Then, week after week, for each policy in turn:

- the decision service (sendflowr.decisions.service.decide_batch, in process, on the snapshot the API would load)
  decides the round's campaign: the same recipients for every policy (loop.py draws them from the world's seed and
  the round), a 7-day window, no control arm;
- each recipient is sent at its trigger through the world's own simulation (sendflowr.campaign.loop.run_rounds:
  the same random streams for every policy, so outcomes differ only where the moments do), the events go to the
  policy's own topic, and the truth of each decision (the world's true open probability at the moment served) is
  written beside it;
- the policy's pipeline ingests those events, stitches and refits the curves: the next round is decided on what
  this one taught.

Printed: per round and cumulated, the mean true open probability at the moments served per policy, and each
exploring policy against greedy: the difference with a 95% interval (bootstrap over people, paired: same world,
same recipients, same seeds). Then a last greedy round decided (not sent) on every policy's final curves: what the
exploration taught, apart from what exploring cost.

--calibrate measures the noise explore.py draws with (sigma by evidence, the spectrum over hours) on the timing
model's own posterior draws of a world loaded straight into a database (no Kafka); --cost times what exploration
adds to a decision in process. Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sendflowr.campaign import loop, truth
from sendflowr.clickhouse import get_client
from sendflowr.decisions import explore
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.service import IDENTIFIER_FIELDS, BatchResult, decide_batch
from sendflowr.decisions.snapshot import DecisionSnapshot, load_decision_snapshot
from sendflowr.decisions.snapshot_store import PartStore
from sendflowr.identity.run import stitch_once
from sendflowr.ingest import IngestOptions, ingest_once
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.synth import generate
from sendflowr.synth.fmt import hour_of_week
from sendflowr.synth.presets import preset
from sendflowr.synth.world import World, build_world
from sendflowr.timing import fit as timing_fit
from sendflowr.timing import run as timing_run
from sendflowr.timing.estimate import EstimatorParams, direct_curves, kernel_mass
from sendflowr.timing.signals import SignalRules

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)  # the rounds end before it: a fixed past, the same figures every run
WINDOW = timedelta(days=7)


@dataclass
class Policy:
    name: str
    scale: float  # exploration (0: greedy)
    settings: Settings  # its own database; kafka_topic: its rounds' topic
    truth_dir: Path
    explored_away: list[float] = field(default_factory=list)  # per round: share served another moment than greedy


@dataclass
class Result:
    policies: list[Policy]
    rounds: int
    p_true: dict[str, np.ndarray]  # policy -> [rounds, recipients] true open probability at the moment served
    persons: np.ndarray  # [rounds, recipients] world person ids (the same for every policy)
    final: dict[str, np.ndarray]  # policy -> true open probability of a greedy round on its final curves
    novel: dict[str, list[float]]  # policy -> per round: share served at an hour of week no history campaign used
    seconds: float = 0.0


def _refresh(settings: Settings, log: Callable[[str], None]) -> None:
    """What the assets run after new events: ingestion, identity, the timing curves."""
    client = get_client(settings)
    try:
        ingest_once(settings, client, IngestOptions(until_caught_up=True), log=lambda _: None)
        stitch_once(settings, client, log=lambda _: None)
        report = timing_run.materialize(client, settings.clickhouse_database, log=lambda _: None)
        log(f"    {settings.clickhouse_database}: timing v{report.version}, {report.people:,} people "
            f"{report.by_level}")
    finally:
        client.close()


def _fresh_database(settings: Settings) -> None:
    admin = get_client(settings, with_database=False)
    try:
        admin.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    finally:
        admin.close()
    apply_migrations(settings)


def _snapshot(settings: Settings) -> DecisionSnapshot:
    client = get_client(settings)
    try:
        # parts under the bench's home, as the API keeps them under its own (sendflowr/decisions/snapshot_store.py)
        parts = PartStore(Path(settings.home) / "api-snapshots" / settings.clickhouse_database)
        snapshot = load_decision_snapshot(client, settings.clickhouse_database, parts)
    finally:
        client.close()
    if snapshot is None:
        raise RuntimeError(f"no timing curves in {settings.clickhouse_database}")
    return snapshot


def _iso(moments: np.ndarray) -> list[str]:
    return [f"{s}Z" for s in np.datetime_as_string(moments.astype("datetime64[s]")).tolist()]


def _decide(snapshot: DecisionSnapshot, body: dict, now: datetime, scale: float) -> BatchResult:
    recipients = body["recipients"]
    columns = {f: [r.get(f) for r in recipients] for f in IDENTIFIER_FIELDS}
    after, before = (datetime.fromisoformat(body[k].replace("Z", "+00:00")) for k in ("send_after", "send_before"))
    return decide_batch(snapshot, NormalizeCache(), columns, [None] * len(recipients), after, before,
                        body["latency_estimate_seconds"], now, 0.0, body["campaign_id"], exploration=scale)


def in_process(snapshot: DecisionSnapshot, now: datetime, scale: float, away: list[int]) -> Callable[[dict], dict]:
    """POST /timing-decisions answered by the decision service in this process (loop.run_rounds' `post`); counts
    in `away` the decisions served another moment than the curve's best, and how many were decided."""

    def post(body: dict) -> dict:
        result = _decide(snapshot, body, now, scale)
        ok = np.array([f is None for f in result.error_field], bool)
        away[0] += int((ok & (result.delivery_at != result.model_delivery_at)).sum())
        away[1] += int(ok.sum())
        trigger, delivery = _iso(result.trigger_at), _iso(result.delivery_at)
        uids, levels = result.universal_id.tolist(), result.fallback_level.tolist()
        return {"decisions": [
            {"index": i, "universal_id": uids[i], "arm": "treatment", "fallback_level": levels[i],
             "trigger_timestamp_utc": trigger[i], "delivery_timestamp_utc": delivery[i]} if ok[i]
            else {"index": i, "error": {"field": result.error_field[i]}} for i in range(len(ok))]}

    return post


def _history_hours(world: World) -> np.ndarray:
    """bool [168]: hours of week some campaign of the world's history was sent in."""
    used = np.zeros(168, bool)
    used[hour_of_week(world.campaigns.send_ms)] = True
    return used


def run_experiment(base: Settings, people: int = 4000, rounds: int = 8, scales: tuple[float, ...] = (1.0,),
                   seed: int = 7, weeks: int | None = None, recipients: int | None = None,
                   anchor: datetime = ANCHOR, prefix: str = "explore", work: Path | None = None,
                   log: Callable[[str], None] = print) -> Result:
    """The experiment on running services (`base`: the broker and the ClickHouse endpoint); databases and topics are
    named from `prefix`. Returns the truth of every decision."""
    started = time.perf_counter()
    work = work or base.home / prefix
    plan = loop.schedule(anchor, rounds + 1, WINDOW, base.uplift_horizon_hours)  # + the final, unsent round
    config = preset("weekly_slots", people=people, seed=seed, weeks=weeks, end=plan.decided_at)
    history = base.model_copy(update={"kafka_topic": f"{prefix}-history"})
    log(f"world: weekly_slots, {config.people:,} people, {config.weeks} weeks to {config.end:%Y-%m-%d %H:%M}, seed "
        f"{config.seed}; {rounds} weekly rounds from {plan.first_window:%Y-%m-%d}")
    generate(config, work / "world", to_kafka=history, event_truth=False)
    world = build_world(config)
    used = _history_hours(world)
    policies = [Policy(name, scale, base.model_copy(update={
        "clickhouse_database": f"{prefix}_{i}", "kafka_topic": f"{prefix}-rounds-{i}"}), work / f"policy_{i}")
        for i, (name, scale) in enumerate([("greedy", 0.0)] + [(f"thompson x{s:g}", s) for s in scales])]
    for p in policies:
        _fresh_database(p.settings)
        ensure_topic(p.settings)
        shutil.rmtree(p.truth_dir, ignore_errors=True)
        log(f"  {p.name}: the history")
        _refresh(p.settings.model_copy(update={"kafka_topic": history.kafka_topic}), log)
    novel: dict[str, list[float]] = {p.name: [] for p in policies}
    for r in range(rounds):
        window = plan.first_window + timedelta(weeks=r)
        one = loop.Schedule(first_window=window, window=WINDOW, rounds=1, decided_at=window - timedelta(hours=1))
        for p in policies:
            away = [0, 0]
            post = in_process(_snapshot(p.settings), one.decided_at, p.scale, away)
            loop.run_rounds(p.settings, world, p.truth_dir, one, post, recipients, now=datetime.now(UTC),
                            log=lambda _: None)
            p.explored_away.append(away[0] / max(away[1], 1))
            table = pq.read_table(truth.round_files(p.truth_dir)[-1], columns=["delivery_at", "p_true"])
            novel[p.name].append(float((~used[hour_of_week(table.column("delivery_at").to_numpy())]).mean()))
            log(f"  round {r} {p.name}: true open rate {np.mean(table.column('p_true').to_numpy()):.4f}, "
                f"{p.explored_away[-1]:.0%} served another moment than the curve's best")
            _refresh(p.settings, log)
    p_true, persons = {}, None
    for p in policies:
        tables = [pq.read_table(f, columns=["person_id", "p_true"]) for f in truth.round_files(p.truth_dir)]
        ids = np.stack([t.column("person_id").to_numpy() for t in tables])
        if persons is not None and not np.array_equal(ids, persons):
            raise RuntimeError("the policies' rounds do not have the same recipients")
        persons = ids
        p_true[p.name] = np.stack([t.column("p_true").to_numpy() for t in tables])
    final = {p.name: _final_round(p, world, plan, rounds, recipients) for p in policies}
    return Result(policies, rounds, p_true, persons, final, novel, time.perf_counter() - started)


def _final_round(p: Policy, world: World, plan: loop.Schedule, rounds: int, recipients: int | None) -> np.ndarray:
    """True open probability of greedy decisions on the policy's final curves, for a next round's recipients (the
    same for every policy), nothing sent."""
    window = plan.first_window + timedelta(weeks=rounds)
    has_id = (world.identifiers.email[:, 0] >= 0) | (world.identifiers.klaviyo >= 0)
    eligible = np.flatnonzero(~world.people.hard_bouncer & has_id)
    rng = np.random.default_rng([world.config.seed, 0xF1A1])
    size = len(eligible) if recipients is None else min(recipients, len(eligible))
    persons = np.sort(rng.choice(eligible, size=size, replace=False))
    body = {"send_after": f"{window:%Y-%m-%dT%H:%M:%SZ}", "send_before": f"{window + WINDOW:%Y-%m-%dT%H:%M:%SZ}",
            "latency_estimate_seconds": 0, "campaign_id": "final", "recipients": loop._identifiers(world, persons)}
    result = _decide(_snapshot(p.settings), body, window - timedelta(hours=1), 0.0)
    ok = np.array([f is None for f in result.error_field], bool)
    return world.curves[persons[ok], hour_of_week(result.delivery_at[ok].astype(np.int64))].astype(np.float64)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> dict:
    """a, b: [rounds, people] (columns paired). Mean per decision of each, the difference a - b and the relative
    difference a / b - 1, with 95% intervals from resampling people."""
    sa, sb, count = a.sum(axis=0), b.sum(axis=0), a.shape[0]
    pick = rng.integers(0, sa.size, (resamples, sa.size))
    ra, rb = sa[pick].sum(axis=1), sb[pick].sum(axis=1)
    diff, rel = (ra - rb) / (count * sa.size), ra / rb - 1
    return {"a": sa.mean() / count, "b": sb.mean() / count, "diff": (sa.sum() - sb.sum()) / (count * sa.size),
            "diff_ci": np.percentile(diff, [2.5, 97.5]), "rel": sa.sum() / sb.sum() - 1,
            "rel_ci": np.percentile(rel, [2.5, 97.5])}


def _pm(x: dict) -> str:
    return (f"{x['diff']:+.4f} [{x['diff_ci'][0]:+.4f}, {x['diff_ci'][1]:+.4f}] "
            f"({x['rel']:+.2%} [{x['rel_ci'][0]:+.2%}, {x['rel_ci'][1]:+.2%}])")


def report(result: Result, resamples: int = 2000, seed: int = 0) -> list[str]:
    """The figures as printed lines."""
    rng = np.random.default_rng(seed)
    names = [p.name for p in result.policies]
    greedy = result.p_true[names[0]]
    lines = [f"# Exploration vs greedy: {result.rounds} weekly rounds, {result.persons.shape[1]:,} recipients each, "
             f"{result.seconds / 60:.1f} min",
             "true open probability at the moments served (mean per decision); exploring - greedy: difference "
             "[95% interval] (relative), paired bootstrap over people",
             "| round | " + " | ".join(names) + " | " + " | ".join(f"{n} - greedy" for n in names[1:])
             + " | cumulative " + " | cumulative ".join(f"{n} - greedy" for n in names[1:]) + " |",
             "|---|" + "---|" * (2 * len(names) - 1 + len(names) - 1)]
    for r in range(result.rounds):
        row = [f"{result.p_true[n][r].mean():.4f}" for n in names]
        now = [_pm(paired_bootstrap(result.p_true[n][r:r + 1], greedy[r:r + 1], rng, resamples)) for n in names[1:]]
        cum = [_pm(paired_bootstrap(result.p_true[n][:r + 1], greedy[:r + 1], rng, resamples)) for n in names[1:]]
        lines.append(f"| {r} | " + " | ".join(row + now + cum) + " |")
    lines.append("")
    lines.append("served another moment than the curve's best, per round: " + "; ".join(
        f"{p.name} " + " ".join(f"{x:.0%}" for x in p.explored_away) for p in result.policies))
    lines.append("served at an hour of week no history campaign was sent in, per round: " + "; ".join(
        f"{n} " + " ".join(f"{x:.1%}" for x in result.novel[n]) for n in names))
    base = result.final[names[0]]
    lines.append("next round decided greedily on each policy's final curves (what exploring taught, nothing sent): "
                 + "; ".join(f"{n} {result.final[n].mean():.4f}" for n in names) + "; " + "; ".join(
                     f"{n} - greedy {_pm(paired_bootstrap(result.final[n][None], base[None], rng, resamples))}"
                     for n in names[1:]))
    return lines


# --- calibration of the noise (explore.py) --------------------------------------------------------------------------


def noise_statistics(f: timing_fit.Fit, rng: np.random.Generator, people: int = 3000, draws: int = 32,
                     knots: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24)) -> dict:
    """sigma by evidence and the spectrum over hours of posterior draws of the fitted model (explore.py's
    docstring): draws as sendflowr.timing.confidence makes them, log ratio to the served curve, weekly mean
    removed."""
    n = len(f.stats)
    pick = np.sort(rng.choice(n, min(n, people), replace=False))
    sub = f.subset(pick)
    shape, rate, _ = sub.posterior()
    mean, evidence, _ = sub.curves()
    mass = np.float32(kernel_mass(f.params))
    a, b = shape / mass, rate / mass
    s, e = sub.stats.deliveries(0, pick.size, f.decay)
    logs = np.empty((draws, pick.size, 168), np.float32)
    for d in range(draws):
        drawn = direct_curves(f.decay.curves(rng.gamma(a, 1.0).astype(np.float32) / b), s, e, f.params)
        logs[d] = np.log(np.maximum(drawn, 1e-9) / np.maximum(mean, 1e-9))
    logs -= logs.mean(axis=2, keepdims=True)  # a level shift moves no choice
    logs -= logs.mean(axis=0, keepdims=True)  # around the person's mean draw
    sigma = np.sqrt(np.square(logs).mean(axis=(0, 2)))
    unit = (logs / np.maximum(sigma[None, :, None], 1e-6)).reshape(-1, 168).astype(np.float64)
    by_lag = np.array([(unit * np.roll(unit, -k, axis=1)).mean() for k in range(168)])
    spectrum = np.real(np.fft.rfft(by_lag))
    ev = evidence.astype(np.float64)
    edges = list(knots) + [np.inf]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (ev >= lo) & (ev < hi)
        if inside.sum() >= 20:
            rows.append((float(ev[inside].mean()), float(sigma[inside].mean()), int(inside.sum())))
    share = np.cumsum(spectrum[1:]) / spectrum[1:].sum()
    return {"sigma": rows, "spectrum": spectrum, "share": share, "by_lag": by_lag}


def calibrate(base: Settings, worlds: list[str], people: int, seed: int, frequencies: int) -> None:
    from sendflowr.timing.worldload import load_world

    for name in worlds:
        config = preset(name, people=people, seed=seed)
        settings = base.model_copy(update={"clickhouse_database": f"calibrate_{name}"})
        _fresh_database(settings)
        client = get_client(settings)
        load_world(settings, client, build_world(config), base.home / name, log=lambda _: None)
        f = timing_fit.fit(client, settings.clickhouse_database, SignalRules(), EstimatorParams())
        stats = noise_statistics(f, np.random.default_rng(seed))
        amplitudes = np.sqrt(np.maximum(stats["spectrum"][1:frequencies + 1], 0.0))
        amplitudes /= np.sqrt(np.square(amplitudes).sum())
        print(f"\n## {name}: {config.people:,} people, seed {config.seed}")
        print("evidence (mean of the group) -> sigma (people): " + ", ".join(
            f"{e:.1f} -> {s:.3f} ({k})" for e, s, k in stats["sigma"]))
        print(f"correlation by lag 0..24 h: {np.round(stats['by_lag'][:25], 2).tolist()}")
        print(f"variance share of the first {frequencies} weekly frequencies: {stats['share'][frequencies - 1]:.1%}")
        print(f"EVIDENCE_KNOTS = {tuple(round(e, 1) for e, _, _ in stats['sigma'])}")
        print(f"SIGMA_KNOTS = {tuple(round(s, 3) for _, s, _ in stats['sigma'])}")
        print(f"AMPLITUDES = {tuple(round(float(a), 3) for a in amplitudes)}")


# --- cost ------------------------------------------------------------------------------------------------------------


def cost(repeat: int) -> None:
    """What exploration adds to decisions in process (best of `repeat`), on the service tests' synthetic snapshot."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_api_service import synthetic_snapshot

    from sendflowr.decisions.service import DecisionRequest, decide_requests

    snap = synthetic_snapshot(200_000, seed=1, without_curve=0, version=1)
    now = datetime.now(UTC)
    after, before = now + timedelta(days=1), now + timedelta(days=8)
    rng = np.random.default_rng(2)
    n = 10_000
    columns = {f: [None] * n for f in ("email", "phone", "external_id")}
    columns["klaviyo_id"] = [f"K{int(i)}" for i in rng.integers(0, 200_000, n)]
    ids = dict.fromkeys(IDENTIFIER_FIELDS)
    singles = [[DecisionRequest({**ids, "klaviyo_id": f"K{int(i)}"}, None, after, before, 300.0, "spring")
                for i in rng.integers(0, 200_000, k)] for k in (1, 8)]
    cache = NormalizeCache()
    calls = {
        "batch of 10,000": lambda x: decide_batch(snap, cache, columns, [None] * n, after, before, 300.0, now, 0.1,
                                                  "spring", exploration=x),
        "1 single decision": lambda x: decide_requests(snap, cache, singles[0], now, 0.1, x),
        "8 coalesced singles": lambda x: decide_requests(snap, cache, singles[1], now, 0.1, x),
    }
    for label, call in calls.items():
        best = {0.0: np.inf, 1.0: np.inf}
        loops = 3 if label.startswith("batch") else 300
        for _ in range(repeat):
            for x in best:  # alternating, so that load from elsewhere hits both alike
                started = time.perf_counter()
                for _ in range(loops):
                    call(x)
                best[x] = min(best[x], (time.perf_counter() - started) / loops)
        print(f"{label}: greedy {best[0.0] * 1e3:.3f} ms, exploring {best[1.0] * 1e3:.3f} ms "
              f"({(best[1.0] - best[0.0]) * 1e3:+.3f} ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--scales", default="1", help="exploration scales of the Thompson policies (comma-separated)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (default 7; --calibrate: 11)")
    parser.add_argument("--recipients", type=int, default=None, help="per round (default: every eligible person)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--calibrate", action="store_true", help="measure explore.py's noise instead")
    parser.add_argument("--worlds", default="weekly_slots", help="--calibrate: presets to measure")
    parser.add_argument("--frequencies", type=int, default=len(explore.AMPLITUDES))
    parser.add_argument("--cost", action="store_true", help="time what exploration adds to a decision instead")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.cost:
        cost(args.repeat)
        return 0
    home = Path(tempfile.mkdtemp(prefix="sendflowr-explore-"))
    base = Settings(home=home, clickhouse_url=f"http://127.0.0.1:{free_port()}",
                    kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port())
    broker = None
    try:
        chdb_server.start_background(base)
        if args.calibrate:
            calibrate(base, [w.strip() for w in args.worlds.split(",") if w.strip()], args.people,
                      11 if args.seed is None else args.seed, args.frequencies)
            return 0
        broker = LocalKafka(base)
        broker.start()
        scales = tuple(float(s) for s in args.scales.split(","))
        result = run_experiment(base, args.people, args.rounds, scales, 7 if args.seed is None else args.seed,
                                recipients=args.recipients, prefix=f"explore_{uuid.uuid4().hex[:6]}")
        print("\n".join(report(result, args.resamples)))
        return 0
    finally:
        if broker is not None:
            broker.stop()
        processes.stop(base, chdb_server.PROCESS_NAME)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
