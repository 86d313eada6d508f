"""A small run's wall time under Dagster's in-process executor against the multiprocess one (a process per step),
as a launched run executes it (`execute_job` on a persistent instance: the run worker's start-up is not counted).

    SENDFLOWR_HOME=/tmp/x .venv/bin/python bench/dagster_executor.py [--job identity] [--repeats 3]

Against the stack of that SENDFLOWR_HOME (`sendflowr up`, on free ports: README "Configuration"), after its first
`sendflowr_all` run, so the runs here find little or nothing new: the steps are small, the overhead shows. Prints
each run's seconds and the median per executor; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from dagster import (
    DagsterInstance,
    Definitions,
    ExecutorDefinition,
    execute_job,
    in_process_executor,
    multiprocess_executor,
    reconstructable,
)

from sendflowr_assets.definitions import defs

# The job is named in the environment: a step process rebuilds the job by calling in_process_job/multiprocess_job
# again in a fresh interpreter, which sees no argument parsed here.
JOB_VARIABLE = "SENDFLOWR_BENCH_DAGSTER_JOB"


def _with(executor: ExecutorDefinition) -> Definitions:
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=defs.resources,
                       executor=executor)


def _job() -> str:
    return os.environ.get(JOB_VARIABLE, "identity")


def in_process_job():
    return _with(in_process_executor).resolve_job_def(_job())


def multiprocess_job():
    return _with(multiprocess_executor).resolve_job_def(_job())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=_job(), help="a job of the code location (default: identity)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ[JOB_VARIABLE] = args.job
    jobs = {"in_process": in_process_job, "multiprocess": multiprocess_job}
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    with tempfile.TemporaryDirectory() as home, DagsterInstance.local_temp(home) as instance:
        for _ in range(args.repeats):
            for name, make in jobs.items():  # alternated, so both meet the same load of the machine
                started = time.perf_counter()
                with execute_job(reconstructable(make), instance=instance) as result:
                    assert result.success, f"{name} run of {args.job} failed"
                seconds[name].append(time.perf_counter() - started)
                print(f"{name:>12}: {seconds[name][-1]:.2f} s", flush=True)
    for name, values in seconds.items():
        print(f"{name:>12}: median {statistics.median(values):.2f} s over {len(values)} runs of {args.job!r}")


if __name__ == "__main__":
    main()
