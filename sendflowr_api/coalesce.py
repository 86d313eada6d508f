"""Single decisions that arrive together are decided together.

Each request handler parks its request and awaits a future; the first one schedules the flush two event-loop turns
later (`call_soon` of a `call_soon`), so the flush runs after the requests read in this turn's and the next turn's
socket polls have parked theirs. The flush hands them all to `decide_requests`, one vectorized `decide_many` call
instead of one per request, which is what keeps single-decision throughput close to the bare framework under load:
the decision's set-up costs about as much as a dozen decisions, and the second turn doubles the requests sharing
it (bench/api.py, 32 connections: 14 -> 26 a flush, 5,500 -> 7,400 requests/s). With one request in flight the
batch has one row and it waits two turns of an idle loop (microseconds). The flush also hands its decisions to the
decision log in one record (a queue append; encoding and Kafka happen on the log's own thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from sendflowr.decisions import records
from sendflowr.decisions.identity_map import NormalizeCache
from sendflowr.decisions.log import DecisionLog
from sendflowr.decisions.service import DecisionRequest, DecisionResult, decide_requests, decision_clock
from sendflowr.decisions.snapshot import DecisionSnapshot


class Coalescer:
    def __init__(self, cache: NormalizeCache, clock: Callable[[], datetime] | None = None,
                 control_share: float = 0.0, decision_log: DecisionLog | None = None,
                 exploration: float = 0.0) -> None:
        self.cache = cache
        self.clock = clock or decision_clock()
        self.control_share = control_share
        self.exploration = exploration
        self.decision_log = decision_log
        self._pending: list[tuple[DecisionSnapshot, DecisionRequest, asyncio.Future]] = []
        self._scheduled = False
        self.flushes = 0
        self.decided = 0

    async def decide(self, snapshot: DecisionSnapshot, request: DecisionRequest) -> DecisionResult:
        """The decision, or raises UnusableIdentifiers / DecisionError, as one decided alone would
        (tests/reference.py)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((snapshot, request, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(loop.call_soon, self._flush)  # two turns: see the module's docstring
        return await future

    def _flush(self) -> None:
        pending, self._pending, self._scheduled = self._pending, [], False
        now = self.clock()
        groups: dict[int, list] = {}
        for item in pending:  # a refresh may have swapped the snapshot between two requests of one turn
            groups.setdefault(id(item[0]), []).append(item)
        self.flushes += 1
        self.decided += len(pending)
        for items in groups.values():
            requests = [item[1] for item in items]
            try:
                results = decide_requests(items[0][0], self.cache, requests, now, self.control_share,
                                          self.exploration)
            except Exception as exc:  # a bug must fail these requests, not leave them hanging
                results = [exc] * len(items)
            self._log(items[0][0], now, requests, results)
            for (_, _, future), result in zip(items, results, strict=True):
                if future.cancelled():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _log(self, snapshot: DecisionSnapshot, now: datetime, requests: list, results: list) -> None:
        if self.decision_log is None:
            return
        decided = [i for i, r in enumerate(results) if isinstance(r, DecisionResult)]
        if len(decided) < len(results):
            requests, results = [requests[i] for i in decided], [results[i] for i in decided]
        self.decision_log.offer(len(results), records.singles, records.epoch_ms(now), snapshot.version,
                                self.control_share, requests, results, self.exploration)
