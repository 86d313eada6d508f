"""Who each message belongs to, and which cohort each person is in: the run-private owner map (identifier hash ->
person) probed by sql/timing/message_outputs.sql, and the cohort features (phone country, email domain)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup
from sendflowr.contract import IDENTIFIER_TYPES
from sendflowr.sql_files import load_sql
from sendflowr.timing.scratch import people_table
from sendflowr.timing.store import EMAIL_COHORT, PHONE_COHORT, calling_codes

OWNER_MAP_PREFIX = "timing_owners_"

STALE_OWNER_MAP_SECONDS = 86_400  # a run-private owner map older than this was left by a dead process

@contextmanager
def owner_map(client: Client, database: str, identifiers_of: str | None = None) -> Iterator[str]:
    """A run-private Join-engine table (its name): identifier hash -> person index and universal_id; of every
    accepted identifier, or only of those a table of message states (`identifiers_of`) carries. Dropped when the
    block ends (also on error); maps a killed process left behind are dropped a day later."""
    _drop_stale_owner_maps(client, database)
    name = f"{database}.{OWNER_MAP_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:12]}"
    restrict = "" if identifiers_of is None else " AND (" + " OR ".join(
        f"(identifier_type = '{t}' AND raw_value IN (SELECT {t} FROM {identifiers_of}))"
        for t in IDENTIFIER_TYPES) + ")"
    client.command(load_sql("timing/owners_table.sql", database).replace("${owners}", name))
    try:
        client.command(load_sql("timing/owners.sql", database).replace("${owners}", name)
                       .replace("${restrict}", restrict))
        yield name
    finally:
        client.command(f"DROP TABLE IF EXISTS {name}")

def _drop_stale_owner_maps(client: Client, database: str) -> None:
    names = client.query("SELECT name FROM system.tables WHERE database = {d:String} AND startsWith(name, {p:String})",
                         parameters={"d": database, "p": OWNER_MAP_PREFIX}).result_rows
    for (name,) in names:
        born = name[len(OWNER_MAP_PREFIX):].split("_")[0]
        if born.isdigit() and time.time() - int(born) > STALE_OWNER_MAP_SECONDS:
            client.command(f"DROP TABLE IF EXISTS {database}.{name}")

def owner_persons(client: Client, owners: str) -> np.ndarray:
    """universal_id by owner-map index - 1."""
    table = client.query_arrow(f"SELECT p, any(universal_id) AS universal_id FROM {owners} GROUP BY p ORDER BY p",
                               use_strings=True)
    return np.asarray(table.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)

def cohort_members(client: Client, database: str, owners: str) -> pa.Table:
    """Each cohort name with the owner-map indexes of its people: the features are joined to the map in
    ClickHouse, one row per name, so no universal_id string is matched in Python."""
    sql = load_sql("timing/person_cohorts.sql", database).replace(
        "${features}", load_sql("timing/person_features.sql", database).replace("${people}", "")).replace(
        "${owners}", owners)
    return client.query_arrow(sql, parameters={"codes": list(calling_codes()), "phone": PHONE_COHORT,
                                               "email": EMAIL_COHORT}, use_strings=True)

def cohorts_by_index(table: pa.Table, index: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """person_cohorts for people given by their owner-map index, from cohort_members."""
    labels = table.column("label").to_pylist()
    names = [""] + [name for name in labels if name != ""]  # sorted by ClickHouse; '' (no cohort) is code 0
    code = np.zeros(int(index.max()) + 1 if index.size else 1, dtype=np.int64)
    if table.num_rows:
        ps = pa.concat_arrays(table.column("ps").chunks)
        lengths = np.diff(ps.offsets.to_numpy())
        member = ps.flatten().to_numpy().astype(np.int64)
        keep = member < code.size
        position = {name: i for i, name in enumerate(names)}
        code[member[keep]] = np.repeat(np.array([position[name] for name in labels]), lengths)[keep]
    return code[index], names

def person_cohorts(client: Client, database: str, universal_id: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each person's candidate cohort (phone calling code, else email domain, else '') as codes into names. Only
    these people's identifiers are read: an incremental run's cost follows what changed, not everyone known."""
    table = _features_of(client, database, universal_id)
    ids = np.asarray(table.column("universal_id").to_numpy(zero_copy_only=False), dtype=object)
    code = np.asarray(table.column("calling_code").to_numpy(zero_copy_only=False), dtype=object)
    domain = np.asarray(table.column("email_domain").to_numpy(zero_copy_only=False), dtype=object)
    label = np.where(code != "", PHONE_COHORT + code, np.where(domain != "", EMAIL_COHORT + domain, ""))
    order = np.argsort(ids)
    ids, label = ids[order], label[order]
    at, found = lookup(ids, universal_id)
    person_label = np.where(found, label[at] if len(ids) else "", "")
    names, codes = np.unique(np.concatenate([[""], person_label]).astype(str), return_inverse=True)
    return codes[1:].astype(np.int64), names.tolist()


def _features_of(client: Client, database: str, universal_id: np.ndarray) -> pa.Table:
    with people_table(client, database, universal_id) as people:
        sql = load_sql("timing/person_features.sql", database).replace(
            "${people}", f"AND universal_id IN (SELECT universal_id FROM {people})")
        return client.query_arrow(sql, parameters={"codes": list(calling_codes())}, use_strings=True)
