"""A benchmark's own chDB endpoint: a temporary home (kept with --keep), a free port, stopped when the bench ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.settings import Settings


@contextmanager
def private_endpoint(prefix: str, keep: bool = False, database: str = "bench") -> Iterator[tuple[Settings, int]]:
    """Settings of the endpoint and the pid of its process (for CPU accounting)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    settings = Settings(home=workdir, clickhouse_url=f"http://127.0.0.1:{free_port()}", clickhouse_database=database)
    try:
        print(f"starting chDB endpoint under {workdir}", flush=True)
        yield settings, chdb_server.start_background(settings)
    finally:
        processes.stop(settings, chdb_server.PROCESS_NAME)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
