"""Run-private Memory tables of a timing run: sets too large for a URL parameter travel as an insert body and are
read back with IN (SELECT ...). Each is dropped when its block ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

SCRATCH_PREFIX = "timing_scratch_"


@contextmanager
def scratch(client: Client, database: str, columns: str) -> Iterator[str]:
    """A run-private Memory table (its name), dropped when the block ends."""
    name = f"{database}.{SCRATCH_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:12]}"
    client.command(f"CREATE TABLE {name} ({columns}) ENGINE = Memory")
    try:
        yield name
    finally:
        client.command(f"DROP TABLE IF EXISTS {name}")


@contextmanager
def people_table(client: Client, database: str, universal_ids: np.ndarray) -> Iterator[str]:
    """A scratch table holding these universal_ids (column `universal_id`)."""
    with scratch(client, database, "universal_id String") as name:
        client.insert_arrow(name, pa.table({"universal_id": pa.array(np.asarray(universal_ids, object), pa.string())}))
        yield name
