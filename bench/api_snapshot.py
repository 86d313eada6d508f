"""API snapshot benchmark: load time, in-process decision latency and per-worker memory of the decision API.

    .venv/bin/python bench/api_snapshot.py [--people 1000000] [--workers 1,2] [--loops 2000] [--compare]
                                           [--keep DIR]

1. starts a private chDB endpoint (own port, temp home), applies the migrations and writes a materialized world
   straight into the identity and timing tables (bench/api.py's `write_world`: 1-2 identifiers and a curve each);
2. in this process: loads the decision snapshot the way an API worker does (SnapshotHolder.refresh: builds its parts
   in a private directory) and prints its load time; then a small timing loop of single decisions
   (`decide_requests` with one request, the coalescer's path at low load) and of 10,000-recipient batches
   (`decide_batch`, the batch endpoint's call); with --compare, in alternating rounds against the same snapshot
   held as before (identity arrays on the heap, float32 curves from store.load_snapshot); with --delta S, a new
   timing version rewriting a share S of the people is committed and loaded (a delta on the part held), then
   removed again;
3. for each worker count: `uvicorn sendflowr_api.app:app --workers N` under the same home, waits until every
   worker has loaded the snapshot, decides one 10,000-recipient batch per worker, and prints RSS, PSS and USS
   and anonymous memory (/proc/<pid>/smaps_rollup) of each worker. USS is what a worker maps alone, PSS charges
   shared pages (a memory-mapped snapshot, libraries) in equal parts to the processes that map them; a page of the
   snapshot's files that only one worker touched counts in its USS although it is page cache, which the kernel
   can drop and read again. Anonymous memory (heap) is what only that worker can ever use.

No HTTP load generator and nothing asserted: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

from sendflowr.clickhouse import get_client
from sendflowr.decisions.identity_map import IdentityMap, NormalizeCache
from sendflowr.decisions.service import DecisionRequest, decide_batch, decide_requests
from sendflowr.decisions.snapshot import DecisionSnapshot, SnapshotHolder
from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing import store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import write_world  # noqa: E402 (bench/api.py, the same synthetic materialization)

BENCH_DIR = Path(__file__).resolve().parent


def endpoint_settings(home: Path | None, prefix: str, database: str) -> Settings:
    """Settings of a private chDB endpoint under `home` (a new temporary one if None), on the same port as the
    previous run there, so a kept home's data is served again."""
    home = home or Path(tempfile.mkdtemp(prefix=prefix))
    home.mkdir(parents=True, exist_ok=True)
    port_file = home / "bench-port"
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    port_file.write_text(str(port))
    return Settings(home=home, clickhouse_url=f"http://127.0.0.1:{port}", clickhouse_database=database,
                    decision_log_topic="")


def smaps(pid: int) -> dict[str, int]:
    """Rss / Pss / Private (USS) / Anonymous in bytes from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"],
            "anon": fields["Anonymous"]}


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:8,.0f} MB"


def in_memory_copy(client, snapshot: DecisionSnapshot) -> DecisionSnapshot:
    """The snapshot as the API held it before its parts: every identity array on the heap, the timing curves as
    store.load_snapshot reads them (float32, object universal ids)."""
    identity = IdentityMap(**{f.name: np.array(getattr(snapshot.identity, f.name))
                              for f in dataclasses.fields(IdentityMap)})
    return DecisionSnapshot(identity=identity, timing=store.load_snapshot(client, "bench"),
                            identity_stamp=snapshot.identity_stamp)


def timing_loops(snapshots: dict[str, DecisionSnapshot], ids: dict[str, np.ndarray], people: int, loops: int,
                 seed: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Single decisions (decide_requests with one request: the coalescer's path at low load) and 10,000-recipient
    batches (decide_batch: the batch endpoint's call) on each snapshot, in alternating rounds; prints and returns
    each snapshot's single p50 and p99 and batch median and best, in seconds."""
    rng = np.random.default_rng(seed)
    start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    after, before = start, start + timedelta(days=7)
    singles: dict[str, list[float]] = {name: [] for name in snapshots}
    batches: dict[str, list[float]] = {name: [] for name in snapshots}
    for _ in range(rounds):
        picks = rng.integers(0, people, loops).tolist()
        requests = [DecisionRequest({"email": str(ids["email"][i])}, None, after, before, 300.0) for i in picks]
        batch_rows = [rng.integers(0, people, 10_000) for _ in range(3)]
        for name, snapshot in snapshots.items():
            cache = NormalizeCache()
            for request in requests[:50]:  # warm-up
                decide_requests(snapshot, cache, [request], datetime.now(UTC))
            for request in requests:
                t = time.perf_counter()
                decide_requests(snapshot, cache, [request], datetime.now(UTC))
                singles[name].append(time.perf_counter() - t)
            for rows in batch_rows:
                columns = {"email": [str(e) for e in ids["email"][rows]]}
                t = time.perf_counter()
                result = decide_batch(snapshot, cache, columns, [None] * 10_000, after, before, 300.0,
                                      datetime.now(UTC))
                batches[name].append(time.perf_counter() - t)
                assert sum(f is None for f in result.error_field) == 10_000
    print(f"in process, {rounds} alternating rounds ({loops} single decisions of people at random and 3 batches "
          "of 10,000 each per round and snapshot):", flush=True)
    out = {}
    for name in snapshots:
        times = sorted(singles[name])
        out[name] = {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
                     "batch_median": statistics.median(batches[name]), "batch_best": min(batches[name])}
        print(f"  {name:<34} single p50 {out[name]['p50'] * 1e6:5,.0f} us  p99 {out[name]['p99'] * 1e6:6,.0f} us   "
              f"batch median {out[name]['batch_median'] * 1000:6,.1f} ms  best {out[name]['batch_best'] * 1000:6,.1f} "
              "ms", flush=True)
    return out


def delta_reload(client, holder: SnapshotHolder, share: float, seed: int) -> None:
    """A timing run that rewrote `share` of the people (version 2, committed): the holder's next load reads only
    those rows and merges them into a copy of the part it serves. The rows are removed again afterwards."""
    client.command(
        "INSERT INTO bench.timing_curves (universal_id, version, curve, evidence, engagements, deliveries, "
        "fallback_level, cohort, best_hour) SELECT universal_id, 2, arrayMap(x -> x * 0.9, curve), evidence, "
        "engagements + 1, deliveries, fallback_level, cohort, best_hour FROM bench.timing_curves "
        "WHERE version = 1 AND cityHash64(universal_id, {seed:UInt64}) % 10000 < {share:UInt64}",
        parameters={"seed": seed, "share": round(share * 10_000)})
    changed = client.command("SELECT count() FROM bench.timing_curves WHERE version = 2")
    client.command("INSERT INTO bench.timing_runs (version, run_id, materialized_at, people, calibration) "
                   "SELECT 2, 'bench-delta', now64(3), people, calibration FROM bench.timing_runs WHERE version = 1")
    try:
        t = time.perf_counter()
        assert holder.refresh()
        timing = holder.current.parts[0]
        print(f"a new timing version rewriting {share:.0%} of the people ({changed:,}): loaded in "
              f"{time.perf_counter() - t:.1f}s ({'a delta on the previous part' if timing.meta['base'] else 'whole'}"
              f"; the identity part kept)", flush=True)
    finally:
        client.command("DELETE FROM bench.timing_curves WHERE version = 2")
        client.command("DELETE FROM bench.timing_runs WHERE version = 2")


def workers_memory(settings: Settings, workers: int, workdir: Path, ids: dict[str, np.ndarray], people: int) -> None:
    port = free_port()
    shutil.rmtree(settings.home / "api-snapshots", ignore_errors=True)  # the first worker builds, the others map
    env = {**os.environ, **settings.as_env(), "SENDFLOWR_API_SNAPSHOT_REFRESH_SECONDS": "2"}
    log = open(workdir / f"api-{workers}.log", "wb")  # noqa: SIM115 - closed below
    log_config = workdir / "log-config.json"  # the snapshot loader's INFO line tells when each worker loaded
    log_config.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False, "handlers": {"err": {"class": "logging.StreamHandler"}},
        "loggers": {"sendflowr.decisions": {"level": "INFO", "handlers": ["err"]}}}))
    argv = [str(Path(sys.executable).parent / "uvicorn"), "sendflowr_api.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-config", str(log_config)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH_DIR.parent,
                            start_new_session=True)
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            pids = children(proc.pid) if workers > 1 else [proc.pid]  # one worker: uvicorn serves in its own process
            if (len(pids) >= workers and (workdir / f"api-{workers}.log").read_text().count("loaded in") >= workers
                    and processes.port_in_use("127.0.0.1", port)):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {(workdir / f'api-{workers}.log').read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            raise RuntimeError("the workers did not load the snapshot in time")
        ready = time.perf_counter() - t0
        loads = [ln.split("loaded in ")[1].split(":")[0] + (f" ({ln.split('(parts ')[1]}" if "(parts " in ln else "")
                 for ln in (workdir / f"api-{workers}.log").read_text().splitlines() if "loaded in" in ln]
        start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        rng = np.random.default_rng(workers)
        for _ in range(3 * workers):  # touch the snapshot in every worker (a new connection each: they spread out)
            body = {"send_after": start.isoformat(), "send_before": (start + timedelta(days=7)).isoformat(),
                    "latency_estimate_seconds": 300, "recipients": [
                        {"email": str(e)} for e in ids["email"][rng.integers(0, people, 10_000)]]}
            response = httpx.post(f"http://127.0.0.1:{port}/timing-decisions", json=body, timeout=300)
            assert response.status_code == 200, response.text[:300]
        print(f"\n{workers} worker(s): all ready {ready:.1f}s after start; snapshot loads:", flush=True)
        for line in loads:
            print(f"  {line}", flush=True)
        total = {"rss": 0, "pss": 0, "uss": 0, "anon": 0}
        for pid in sorted({proc.pid, *pids}):
            m = smaps(pid)
            for k in total:
                total[k] += m[k]
            print(f"  {'master' if pid == proc.pid else 'worker'} {pid:>7}: RSS {mb(m['rss'])}  PSS {mb(m['pss'])}  "
                  f"USS {mb(m['uss'])}  anonymous {mb(m['anon'])}", flush=True)
        print(f"  all processes:  RSS {mb(total['rss'])}  PSS {mb(total['pss'])}  USS {mb(total['uss'])}  "
              f"anonymous {mb(total['anon'])}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated ('' for none)")
    parser.add_argument("--loops", type=int, default=2000, help="single decisions timed in process")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delta", type=float, default=0.0,
                        help="then load a new timing version rewriting this share of the people (0 = skip)")
    parser.add_argument("--compare", action="store_true",
                        help="also time the same decisions on the float32 in-memory snapshot the API held before")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep this home (the world is written once)")
    args = parser.parse_args()

    settings = endpoint_settings(args.keep, "sendflowr-bench-snapshot-", "bench")
    workdir = settings.home
    try:
        print(f"starting chDB endpoint under {workdir}", flush=True)
        chdb_server.start_background(settings)
        apply_migrations(settings)
        client = get_client(settings)
        written = client.command("SELECT count() FROM bench.timing_curves")
        started = time.perf_counter()
        if written and written != args.people:
            raise SystemExit(f"{workdir} holds a world of {written} people, not {args.people}")
        ids = write_world(client if not written else _NoWrite(), "bench", args.people, args.seed)
        if not written:
            print(f"wrote {args.people:,} people (identity + curves) in {time.perf_counter() - started:.1f}s",
                  flush=True)

        holder = SnapshotHolder(lambda: get_client(settings, send_receive_timeout=900), "bench", 3600)
        t = time.perf_counter()
        assert holder.refresh()
        print(f"snapshot loaded in process in {time.perf_counter() - t:.1f}s "
              f"({len(holder.current.timing_uid):,} curves, {holder.current.identity.identifiers:,} identifiers); "
              f"this process: {', '.join(f'{k.upper()} {mb(v).strip()}' for k, v in smaps(os.getpid()).items())}",
              flush=True)
        if args.compare:
            t = time.perf_counter()
            before = in_memory_copy(client, holder.current)
            print(f"float32 in-memory snapshot (as before) loaded in {time.perf_counter() - t:.1f}s", flush=True)
            timing_loops({"float32 in memory (before)": before, "mapped parts, UInt16 curves": holder.current},
                         ids, args.people, args.loops, args.seed)
            del before
        else:
            timing_loops({"mapped parts, UInt16 curves": holder.current}, ids, args.people, args.loops, args.seed)
        if args.delta:
            delta_reload(client, holder, args.delta, args.seed)
        holder.stop()
        del holder
        for workers in [int(w) for w in args.workers.split(",") if w]:
            workers_memory(settings, workers, workdir, ids, args.people)
        return 0
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


class _NoWrite:
    """A client that writes nothing: `write_world` only recomputes the identifiers of a kept world."""

    def insert_arrow(self, *_args, **_kwargs) -> None:
        pass

    def command(self, *_args, **_kwargs) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
