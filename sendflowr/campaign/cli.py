"""`sendflowr campaign`: the demo's closed loop (loop.py) through the real decision API, then the measured uplift.

The API runs as its own uvicorn process with the stack's settings (same ClickHouse snapshot, same decision-log
topic), its clock shifted into the past so that the rounds' outcomes are events that already happened
(loop.py). Its decision log is flushed to Kafka before it stops; the `uplift` job (events, decision_log,
timing_uplift) is then launched on the running Dagster webserver, where timing_uplift shows the measured uplift.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from sendflowr.campaign import loop, truth
from sendflowr.decisions.arms import DEMO_CONTROL_SHARE, demo_control_share
from sendflowr.errors import SendflowrError
from sendflowr.kafka_io import ensure_topic
from sendflowr.local.processes import free_port
from sendflowr.local.stack import api_env
from sendflowr.settings import PROJECT_ROOT, Settings

UPLIFT_JOB = "uplift"


@contextmanager
def decision_api(settings: Settings, clock_offset_seconds: float, log_file: Path,
                 timeout: float = 180.0) -> Iterator[str]:
    """The decision API under uvicorn with a shifted clock; yields its URL. On exit it waits until every decision
    record is confirmed by Kafka (or counted lost), then stops the API."""
    port = free_port()
    env = {**os.environ, **api_env(settings), "SENDFLOWR_API_PORT": str(port),  # read-only, as the stack's API
           "SENDFLOWR_API_CLOCK_OFFSET_SECONDS": f"{clock_offset_seconds:.3f}"}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "uvicorn"), "sendflowr_api.app:app", "--host",
                                 "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, log_file, timeout)
        yield base
        _wait_logged(base)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # graceful: the lifespan flushes the decision log
            proc.wait(timeout=60)


def _wait_ready(base: str, proc: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SendflowrError(f"the decision API exited: {log_file.read_text()[-2000:]}")
        try:
            answer = httpx.get(f"{base}/readyz", timeout=5)
            if answer.status_code == 200:
                return
            detail = answer.json().get("detail", "")
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SendflowrError(f"the decision API was not ready within {timeout:.0f}s: {detail or 'no answer'} "
                         "(materialize timing_curves first)")


def log_counts(base: str) -> dict[str, float]:
    counts = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("sendflowr_api_decision_log_"):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    return counts


def _wait_logged(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while log_counts(base).get("sendflowr_api_decision_log_pending", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def campaign(settings: Settings, world_dir: Path, rounds: int, recipients: int | None = None,
             window_days: float = 7.0, control_share: float | None = None, with_message_ids: bool = True,
             now: datetime | None = None, log=print) -> tuple[list[loop.RoundReport], dict[str, float]]:
    """Play the rounds through a private API process; returns the rounds and the API's decision-log counts.
    `now`: the rounds end before it (default: the time now; an earlier moment replays the same rounds)."""
    if not settings.decision_log_topic:
        raise SendflowrError("SENDFLOWR_DECISION_LOG_TOPIC is empty: decisions would not be recorded")
    world = loop.load_world(world_dir)
    real_now = datetime.now(UTC)
    now = min(now or real_now, real_now)
    plan = loop.schedule(now, rounds, timedelta(days=window_days), settings.uplift_horizon_hours)
    share = demo_control_share(settings.api_control_share) if control_share is None else control_share
    for topic in (settings.kafka_topic, settings.decision_log_topic):
        ensure_topic(settings, topic)
    api_settings = settings.model_copy(update={"api_control_share": share})
    log(f"{rounds} round(s) of {recipients or 'all eligible'} recipients from {world_dir}, control share {share:.0%}; "
        f"the API decides as of {plan.decided_at:%Y-%m-%d %H:%M} UTC (rounds from {plan.first_window:%Y-%m-%d})")
    with decision_api(api_settings, plan.clock_offset_seconds(datetime.now(UTC)),
                      settings.log_dir / "campaign-api.log") as base, httpx.Client(base_url=base, timeout=300) as http:

        def post(body: dict) -> dict:
            answer = http.post("/timing-decisions", json=body)
            if answer.status_code != 200:
                raise SendflowrError(f"POST /timing-decisions answered {answer.status_code}: {answer.text[:500]}")
            return answer.json()

        reports = loop.run_rounds(settings, world, world_dir, plan, post, recipients, with_message_ids, now, log)
        _wait_logged(base)
        counts = log_counts(base)
    log("decision log: {queued:.0f} decisions queued, {delivered:.0f} confirmed by Kafka, {dropped:.0f} lost".format(
        queued=counts.get("sendflowr_api_decision_log_queued_total", 0),
        delivered=counts.get("sendflowr_api_decision_log_delivered_total", 0),
        dropped=sum(v for k, v in counts.items() if k.startswith("sendflowr_api_decision_log_dropped_total"))))
    return reports, counts


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "campaign", help="close the demo's loop: campaigns decided by the API, outcomes from the world's truth",
        description="Play synthetic campaigns through the decision API (batch endpoint), send each recipient at "
        "the returned trigger, draw the outcomes from the synthetic world's true curves and feed the events back "
        "through Kafka; then launch the uplift job so that timing_uplift shows the measured uplift "
        "(docs/EVALUATION.md).")
    parser.add_argument("--world", type=Path, default=None, help="the world's ground truth (default <home>/world)")
    parser.add_argument("--rounds", type=int, default=4, help="campaigns, one week apart (default %(default)s)")
    parser.add_argument("--recipients", type=int, default=None,
                        help="recipients per campaign (default: every person of the world except hard bouncers)")
    parser.add_argument("--window-days", type=float, default=7.0, help="each campaign's window (default 7 days)")
    parser.add_argument("--control-share", type=float, default=None,
                        help=f"the API's control share (default SENDFLOWR_API_CONTROL_SHARE if set, else "
                             f"{DEMO_CONTROL_SHARE})")
    parser.add_argument("--message-ids", action=argparse.BooleanOptionalAction, default=True,
                        help="send each recipient's message_id with the request (default: yes; without them the "
                             "uplift joins decisions to the nearest delivery)")
    parser.add_argument("--materialize", action=argparse.BooleanOptionalAction, default=True,
                        help=f"launch the {UPLIFT_JOB!r} job on the running Dagster webserver (default: yes)")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace, settings: Settings) -> int:
    if args.recipients is not None and args.recipients < 1:
        raise SendflowrError("--recipients must be at least 1")
    if args.control_share is not None and not 0 <= args.control_share <= 1:
        raise SendflowrError("--control-share must be between 0 and 1")
    world_dir = (args.world or settings.home / "world").expanduser().resolve()
    reports, _ = campaign(settings, world_dir, args.rounds, args.recipients, args.window_days, args.control_share,
                          args.message_ids)
    expected = truth.truth_uplift(world_dir, [r.campaign_id for r in reports])
    if expected:
        print(f"ground truth for these {sum(r.decided for r in reports)} decisions: true open rate "
              f"{expected['treatment_rate']:.3f} treatment vs {expected['control_rate']:.3f} control, uplift "
              f"{expected['uplift']:+.3f} ({expected['relative_uplift']:+.1%})")
    if not args.materialize:
        print(f"materialize the {UPLIFT_JOB!r} job (or wait for its automation condition) to see timing_uplift")
        return 0
    launched = subprocess.run([sys.executable, "-m", "sendflowr_assets.launch", UPLIFT_JOB, "--port",
                               str(settings.dagster_port)], cwd=PROJECT_ROOT, env={**os.environ, **settings.as_env()})
    if launched.returncode != 0:
        print(f"could not run the {UPLIFT_JOB!r} job on Dagster (http://127.0.0.1:{settings.dagster_port}); "
              "materialize it from the UI once Dagster runs", file=sys.stderr)
        return 1
    print(f"timing_uplift: http://127.0.0.1:{settings.dagster_port}/assets/timing_uplift")
    return 0
