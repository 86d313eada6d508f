"""Decision API benchmark over HTTP on loopback, with wrk as the load generator, against a bare FastAPI endpoint
(constant JSON body) under the same uvicorn settings, measured in the same run.

    .venv/bin/python bench/api.py [--people 200000] [--duration 10] [--connections 32] [--control-share 0.1]
                                  [--no-decision-log]

Needs `wrk` (the OS package `wrk`, e.g. `apt-get install wrk`).

1. starts a private chDB endpoint and a private Kafka broker (own ports, temp home), applies the migrations and
   writes a materialized world straight into the identity and timing tables (people with 1-3 identifiers, a
   curve each, priors, a commit);
2. starts two uvicorn processes with identical flags (1 worker, uvloop + httptools, no access log): the
   decision API (`sendflowr_api.app:app`, which loads the snapshot; its decision log ON, producing every decision
   to the broker, and the demo's 10% control arm, unless --no-decision-log / --control-share say otherwise) and
   the anchor `bench/api_bare.py`;
3. max throughput: wrk POSTs decision bodies (a Lua script rotates through known people's identifiers; the bare
   endpoint gets the same bodies) -> requests/s, p50, p99 for both, and the ratio; also each server process's CPU
   per request (from /proc, threads included) and their ratio, which load from elsewhere on the box moves less;
4. latency under load: wrk paced (Lua `delay`, less the response time a short probe run measures) at half of the
   API's measured maximum -> the rate reached, p50/p99;
5. batch: one POST /timing-decisions with 10,000 recipients, several times -> wall time per batch;
6. the decision log's counts from /metrics: decisions queued, confirmed by Kafka, dropped (by reason).

Nothing here is asserted; figures depend on the machine (2 cores shared with wrk and chDB here).
"""

from __future__ import annotations

import argparse
import json
import math
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
import pyarrow as pa

from sendflowr.clickhouse import get_client
from sendflowr.decisions.identity_map import TYPE_CODE
from sendflowr.identity import graph
from sendflowr.identity.normalize import normalize_many
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.kafka_broker import LocalKafka
from sendflowr.local.processes import free_port
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing.decide import HOURS, Calibration

BENCH_DIR = Path(__file__).resolve().parent
UVICORN_FLAGS = ["--host", "127.0.0.1", "--workers", "1", "--loop", "uvloop", "--http", "httptools",
                 "--no-access-log", "--log-level", "warning"]
LUA = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
local headers = {["Content-Type"] = "application/json"}
local pace = %(pace_ms)s
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/timing-decision", headers, bodies[i])
end
if pace > 0 then delay = function() return pace end end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {\"requests\": %%d, \"seconds\": %%f, \"p50_us\": %%d, \"p99_us\": %%d, " ..
    "\"errors\": %%d}\n", summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def write_world(client, database: str, people: int, seed: int) -> dict[str, np.ndarray]:
    """Identity + timing rows for `people` people, column-wise, ids derived as stitching derives them."""
    rng = np.random.default_rng(seed)
    idx = np.arange(people)
    domains = np.char.add("mail", (idx % 40).astype(str))
    emails = np.char.add(np.char.add(np.char.add("person.", idx.astype(str)), "@"), np.char.add(domains, ".com"))
    klaviyo = np.char.add("k_", idx.astype(str))
    has_klaviyo = rng.random(people) < 0.6
    types = np.concatenate([np.full(people, "email"), np.full(int(has_klaviyo.sum()), "klaviyo_id")])
    raws = np.concatenate([emails, klaviyo[has_klaviyo]]).astype(object)
    owner = np.concatenate([idx, idx[has_klaviyo]])
    col = normalize_many(types.tolist(), raws.tolist())
    codes = np.array([TYPE_CODE[t] for t in types.tolist()], np.int8)
    values = col.value.to_numpy(zero_copy_only=False)
    keys = graph.identifier_key(codes, values)
    anchor = np.full(people, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(anchor, owner, keys)
    uid = graph.format_uid(graph.mix(anchor))
    now_ms = int(time.time() * 1000)
    ts = pa.timestamp("ms", tz="UTC")
    client.insert_arrow(f"{database}.identity_identifiers", pa.table({
        "identifier_type": pa.array(types.tolist(), pa.string()), "raw_value": pa.array(raws.tolist(), pa.string()),
        "normalized": pa.array(values.tolist(), pa.string()), "node_key": pa.array(keys, pa.uint64()),
        "reason": pa.array([""] * len(types), pa.string())}))
    n = len(keys)
    client.insert_arrow(f"{database}.identity_nodes", pa.table({
        "node_key": pa.array(keys, pa.uint64()), "identifier_type": pa.array(types.tolist(), pa.string()),
        "value": pa.array(values.tolist(), pa.string()),
        "first_seen": pa.array(np.full(n, now_ms), pa.int64()).cast(ts),
        "last_seen": pa.array(np.full(n, now_ms), pa.int64()).cast(ts),
        "cluster": pa.array(anchor[owner], pa.uint64()), "shared": pa.array(np.zeros(n, np.uint8)),
        "universal_id": pa.array(uid[owner].tolist(), pa.string()),
        "updated_at": pa.array(np.full(n, now_ms * 1000), pa.int64()).cast(pa.timestamp("us", tz="UTC"))}))
    order = np.argsort(uid)
    curves = rng.gamma(2.0, 0.02, (people, HOURS)).astype(np.float32)
    curves[idx, rng.integers(0, HOURS, people)] += 0.3
    offsets = pa.array(np.arange(people + 1, dtype=np.int32) * HOURS)
    client.insert_arrow(f"{database}.timing_curves", pa.table({
        "universal_id": pa.array(uid[order].tolist(), pa.string()), "version": pa.array(np.ones(people), pa.uint64()),
        "curve": pa.ListArray.from_arrays(offsets, pa.array(curves[order].ravel())),
        "evidence": pa.array(rng.gamma(2.0, 10.0, people).astype(np.float32)),
        "engagements": pa.array(rng.integers(1, 50, people), pa.uint32()),
        "deliveries": pa.array(rng.integers(50, 100, people), pa.uint32()),
        "fallback_level": pa.array(["person"] * people, pa.string()),
        "cohort": pa.array(np.char.add("email:", domains[order]).tolist(), pa.string()),
        "best_hour": pa.array(curves[order].argmax(axis=1), pa.uint8()),
        "stats_hash": pa.array(np.zeros(people), pa.uint64())}))
    client.insert_arrow(f"{database}.timing_priors", pa.table({
        "level": ["global"], "cohort": [""], "version": pa.array([1], pa.uint64()),
        "curve": pa.array([curves.mean(axis=0).tolist()], pa.list_(pa.float32())),
        "evidence": pa.array([1000.0], pa.float32()), "people": pa.array([people], pa.uint64())}))
    client.command(f"INSERT INTO {database}.timing_runs (version, run_id, materialized_at, people, calibration) "
                   "VALUES (1, 'bench', now64(3), {p:UInt64}, {c:String})",
                   parameters={"p": people, "c": Calibration.default().to_json()})
    return {"email": emails, "klaviyo_id": np.where(has_klaviyo, klaviyo, "")}


def start_uvicorn(app: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([str(Path(sys.executable).parent / "uvicorn"), app, "--port", str(port), *UVICORN_FLAGS],
                            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH_DIR.parent,
                            start_new_session=True)


def wait_ready(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, script: Path, duration: int, connections: int, server: subprocess.Popen | None = None) -> dict:
    """wrk's figures; with `server`, also the server process's CPU per request (robust to load from elsewhere on
    the machine, which moves requests/s of both servers alike only roughly)."""
    cpu = cpu_seconds(server.pid) if server else 0.0
    proc = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
                           f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    if server:
        result["cpu_us"] = (cpu_seconds(server.pid) - cpu) / max(result["requests"], 1) * 1e6
    return result


def lua(workdir: Path, bodies: Path, name: str, pace_ms: float = 0) -> Path:
    path = workdir / f"{name}.lua"
    path.write_text(LUA % {"bodies": bodies, "pace_ms": f"{pace_ms:.3f}"})
    return path


def show(name: str, r: dict) -> None:
    cpu = f"   CPU {r['cpu_us']:5.0f} us/req" if "cpu_us" in r else ""
    print(f"  {name:<36} {r['rps']:>9,.0f} req/s   p50 {r['p50_us'] / 1000:6.2f} ms   p99 {r['p99_us'] / 1000:6.2f} ms"
          f"   errors {r['errors']}{cpu}", flush=True)


def show_decision_log(port: int, settle: float = 30.0) -> None:
    """The decision log's counts once Kafka confirmed what it could (every decision of the run, single and batch)."""
    def counts() -> dict[str, float]:
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in httpx.get(
            f"http://127.0.0.1:{port}/metrics").text.splitlines() if ln.startswith("sendflowr_api_decision_log_")}

    deadline = time.monotonic() + settle
    found = counts()
    while found.get("sendflowr_api_decision_log_pending", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        found = counts()
    dropped = {k.split('"')[1]: int(v) for k, v in found.items()
               if k.startswith("sendflowr_api_decision_log_dropped") and v}
    print(f"\ndecision log: {'on' if found.get('sendflowr_api_decision_log_enabled') else 'OFF'}; "
          f"{found.get('sendflowr_api_decision_log_queued_total', 0):,.0f} decisions queued, "
          f"{found.get('sendflowr_api_decision_log_delivered_total', 0):,.0f} confirmed by Kafka, "
          f"{found.get('sendflowr_api_decision_log_pending', 0):,.0f} pending, dropped {dropped or 'none'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/API rounds at full load")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--control-share", type=float, default=0.1, help="the API's control arm (the demo's 10%%)")
    parser.add_argument("--no-decision-log", action="store_true", help="run the API with its decision log off")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: install the OS package `wrk`", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="sendflowr-bench-api-"))
    settings = Settings(home=workdir, clickhouse_url=f"http://127.0.0.1:{free_port()}", clickhouse_database="bench",
                        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
                        decision_log_topic="" if args.no_decision_log else "bench.decisions",
                        api_control_share=args.control_share)
    procs: list[subprocess.Popen] = []
    kafka = LocalKafka(settings) if settings.decision_log_topic else None
    try:
        if kafka is not None:
            print(f"starting Kafka for the decision log at {settings.kafka_bootstrap_servers}", flush=True)
            kafka.start()
            ensure_topic(settings, settings.decision_log_topic)
        print(f"starting chDB endpoint under {workdir}", flush=True)
        chdb_server.start_background(settings)
        apply_migrations(settings)
        client = get_client(settings)
        started = time.perf_counter()
        ids = write_world(client, settings.clickhouse_database, args.people, args.seed)
        print(f"wrote {args.people:,} people (identity + curves) in {time.perf_counter() - started:.1f}s", flush=True)

        api_port, bare_port = free_port(), free_port()
        env = {**settings.as_env(), "SENDFLOWR_API_SNAPSHOT_REFRESH_SECONDS": "3600"}
        t0 = time.perf_counter()
        procs.append(start_uvicorn("sendflowr_api.app:app", api_port, env, workdir / "api.log"))
        procs.append(start_uvicorn("bench.api_bare:app", bare_port, {}, workdir / "bare.log"))
        wait_ready(f"http://127.0.0.1:{api_port}/readyz")
        wait_ready(f"http://127.0.0.1:{bare_port}/healthz")
        ready = httpx.get(f"http://127.0.0.1:{api_port}/readyz").json()
        print(f"API ready in {time.perf_counter() - t0:.1f}s: snapshot {ready['snapshot_version']}, "
              f"{ready['people_with_curves']:,} curves, {ready['identifiers']:,} identifiers; decision log "
              f"{'ON to ' + settings.decision_log_topic if settings.decision_log_topic else 'OFF'}, control share "
              f"{settings.api_control_share:.0%}", flush=True)

        start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        window = {"send_after": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "send_before": (start + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "latency_estimate_seconds": 300}
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(args.people, 2000, replace=False)
        bodies = workdir / "bodies.jsonl"
        with open(bodies, "w") as out:
            for i in pick.tolist():
                who = {"klaviyo_id": str(ids["klaviyo_id"][i])} if ids["klaviyo_id"][i] and i % 2 else \
                    {"email": str(ids["email"][i])}
                out.write(json.dumps({**who, **window}) + "\n")
        probe = httpx.post(f"http://127.0.0.1:{api_port}/timing-decision",
                           content=bodies.read_text().splitlines()[0], headers={"Content-Type": "application/json"})
        assert probe.status_code == 200 and probe.json()["fallback_level"] == "person", probe.text

        full = lua(workdir, bodies, "full")
        print(f"\nmax throughput (wrk -t1 -c{args.connections} -d{args.duration}s, 1 uvicorn worker each):", flush=True)
        wrk(bare_port, full, 2, args.connections)  # warm-up
        wrk(api_port, full, 2, args.connections)
        # rounds alternate the two servers so that load from elsewhere on the machine hits both alike
        ratios, bares, apis = [], [], []
        for r in range(args.rounds):
            bares.append(wrk(bare_port, full, args.duration, args.connections, procs[1]))
            show(f"round {r + 1} bare FastAPI", bares[-1])
            apis.append(wrk(api_port, full, args.duration, args.connections, procs[0]))
            show(f"round {r + 1} POST /timing-decision", apis[-1])
            ratios.append(apis[-1]["rps"] / bares[-1]["rps"])
        bare = max(bares, key=lambda x: x["rps"])
        api = max(apis, key=lambda x: x["rps"])
        show("best bare FastAPI (constant JSON)", bare)
        show("best POST /timing-decision", api)
        print(f"  ratio API / bare: {statistics.median(ratios):.2f}x throughput (median of {len(ratios)} rounds; "
              f"best/best {api['rps'] / bare['rps']:.2f}x)", flush=True)
        cpu_ratio = statistics.median(b["cpu_us"] / a["cpu_us"] for a, b in zip(apis, bares, strict=True))
        print(f"  ratio of server CPU per request, bare / API: {cpu_ratio:.2f}x (median of {len(ratios)} rounds; the "
              "API's own process: its decision log thread included, the Kafka broker not)", flush=True)

        counters = {ln.split()[0]: float(ln.split()[1]) for ln in httpx.get(
            f"http://127.0.0.1:{api_port}/metrics").text.splitlines() if ln.startswith("sendflowr_api_coalesced_")}
        per_call = (counters["sendflowr_api_coalesced_decisions_total"]
                    / max(counters["sendflowr_api_coalesced_flushes_total"], 1))
        print(f"  single decisions per vectorized decide call: {per_call:.1f} on average (whole run so far)",
              flush=True)

        target = api["rps"] / 2
        # wrk's `delay` is the pause, in whole milliseconds, between a response and the connection's next request:
        # enough connections for a period of ~10 ms each, and the pause is that period less the response time a
        # short probe run measures
        conns = max(8, math.ceil(target / 100))
        period = conns * 1000.0 / target
        probe = wrk(api_port, lua(workdir, bodies, "probe", pace_ms=round(period)), 3, conns)
        pace = max(round(period - (conns * 1000.0 / probe["rps"] - round(period))), 0)
        paced = lua(workdir, bodies, "paced", pace_ms=pace)
        print(f"\nat half the API's max (~{target:,.0f} req/s, wrk -c{conns}, {pace} ms between a response and the "
              "connection's next request):", flush=True)
        api_half = wrk(api_port, paced, args.duration, conns)
        show("POST /timing-decision", api_half)
        bare_half = wrk(bare_port, paced, args.duration, conns)
        show("bare FastAPI at same pace", bare_half)

        recipients = [{"email": str(ids["email"][i])} for i in rng.choice(args.people, args.batch).tolist()]
        batch_body = json.dumps({**window, "recipients": recipients})
        times = []
        with httpx.Client(timeout=120) as http:
            for _ in range(6):
                t = time.perf_counter()
                r = http.post(f"http://127.0.0.1:{api_port}/timing-decisions", content=batch_body,
                              headers={"Content-Type": "application/json"})
                times.append(time.perf_counter() - t)
                assert r.status_code == 200 and r.json()["decided"] == args.batch, r.text[:300]
        times = times[1:]  # first call warms caches
        print(f"\nbatch of {args.batch:,} recipients (POST /timing-decisions, {len(batch_body) / 1e6:.1f} MB body): "
              f"median {statistics.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms over {len(times)}",
              flush=True)
        show_decision_log(api_port)
        return 0
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        processes.stop(settings, chdb_server.PROCESS_NAME)
        if kafka is not None:
            kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
