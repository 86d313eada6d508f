"""What recording a decision costs, in process (no HTTP, no Kafka): a timeit-style loop per step.

    .venv/bin/python bench/decision_log.py [--people 20000] [--repeat 5]

On the request path (the event loop), a flush of single decisions pays `DecisionLog.offer` (a lock and a queue
append) and the control arm's hash; the log's own thread pays building the record columns and the JSON encoding
(records.singles / records.batch + records.encode), off the request but on the same interpreter. Each figure is
the best of --repeat timings of a loop, per decision, against the decision itself measured the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from sendflowr.decisions import records
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.log import DecisionLog
from sendflowr.decisions.service import DecisionRequest, decide_batch, decide_requests
from sendflowr.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_api_service import synthetic_snapshot  # noqa: E402 - the in-memory snapshot the service tests decide on


def best_per_item(fns: list, items: int, repeat: int, loops: int) -> list[float]:
    """Best of `repeat` timings of `loops` calls of each fn, in microseconds per item. The functions alternate within
    each repetition, so that load from elsewhere on the machine hits them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            for _ in range(loops):
                fn()
            best[i] = min(best[i], (time.perf_counter() - started) / loops / items)
    return [b * 1e6 for b in best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    snap = synthetic_snapshot(args.people, seed=1, without_curve=0, version=1)
    cache = NormalizeCache()
    now = datetime.now(UTC)
    after, before = now + timedelta(days=1), now + timedelta(days=8)
    rng = np.random.default_rng(2)

    def requests(k: int) -> list[DecisionRequest]:
        ids = dict.fromkeys(("email", "klaviyo_id", "phone", "external_id"))
        return [DecisionRequest({**ids, "klaviyo_id": f"K{int(i)}"}, None, after, before, 300.0, "spring",
                                f"m{int(i)}") for i in rng.integers(0, args.people, k)]

    print(f"{args.people:,} people; best of {args.repeat}; microseconds per decision")
    print(f"{'flush size':>10} {'decide':>9} {'+control':>9} {'offer':>8} {'build+encode':>13}  (request path: "
          "decide, control arm, offer; log thread: build+encode)")
    for k in (1, 8, 64):
        reqs = requests(k)
        loops = max(20, 2000 // k)
        results = decide_requests(snap, cache, reqs, now, 0.1)
        log = DecisionLog(Settings(decision_log_queue_size=10**12, decision_log_topic="bench"))  # never started
        plain, control, offer, encode = best_per_item([
            lambda r=reqs: decide_requests(snap, cache, r, now),
            lambda r=reqs: decide_requests(snap, cache, r, now, 0.1),
            lambda r=reqs, res=results, k=k, log=log: log.offer(k, records.singles, 0, "v", 0.1, r, res),
            lambda r=reqs, res=results: records.encode(records.singles(0, "v", 0.1, r, res)),
        ], k, args.repeat, loops)
        print(f"{k:>10} {plain:>9.1f} {control - plain:>+9.1f} {offer:>8.2f} {encode:>13.1f}")

    n = 10_000
    columns = {f: [None] * n for f in ("email", "phone", "external_id")}
    columns["klaviyo_id"] = [f"K{int(i)}" for i in rng.integers(0, args.people, n)]
    message_ids = [f"m{i}" for i in range(n)]
    result = decide_batch(snap, cache, columns, [None] * n, after, before, 300.0, now, 0.1, "spring")
    plain, control, encode = best_per_item([
        lambda: decide_batch(snap, cache, columns, [None] * n, after, before, 300.0, now),
        lambda: decide_batch(snap, cache, columns, [None] * n, after, before, 300.0, now, 0.1, "spring"),
        lambda: records.encode(records.batch(0, "v", 0.1, "spring", message_ids, 0, 1, 300.0, result)),
    ], n, args.repeat, 2)
    print(f"batch of {n:,}: decide {plain:.2f} us/decision ({plain * n / 1000:.1f} ms), control arm "
          f"{control - plain:+.2f} us ({(control - plain) * n / 1000:+.1f} ms), build+encode on the log thread "
          f"{encode:.2f} us ({encode * n / 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
