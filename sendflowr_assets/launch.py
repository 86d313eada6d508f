"""Launch a job on a running Dagster webserver and wait for it, so the run shows in the UI.

    python -m sendflowr_assets.launch sendflowr_all --port 3000
"""

import argparse
import sys
import time

from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def launch_and_wait(job: str, host: str, port: int, timeout: float) -> DagsterRunStatus:
    client = DagsterGraphQLClient(host, port_number=port)
    run_id = client.submit_job_execution(job)
    print(f"launched {job}: http://{host}:{port}/runs/{run_id}", flush=True)
    deadline = time.monotonic() + timeout
    status = client.get_run_status(run_id)
    while status not in _FINISHED and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_run_status(run_id)
    print(f"run {run_id}: {status.value}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    try:
        status = launch_and_wait(args.job, args.host, args.port, args.timeout)
    except DagsterGraphQLClientError as exc:
        print(f"could not launch {args.job} on http://{args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0 if status == DagsterRunStatus.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
