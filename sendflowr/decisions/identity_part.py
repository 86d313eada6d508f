"""The identity map as a snapshot part: what the identity_graph asset materialized (sql/decisions/), streamed from
ClickHouse into column files once per identity state, then mapped by every API worker (snapshot_store.py).

Columns (all uint64 but `node_shared`, uint8), each array of IdentityMap: node_key (sorted) / node_uid /
node_shared, raw_hash (sorted) / raw_node, live_uid (sorted, unique), merged_old (sorted) / merged_final.
"""

from __future__ import annotations

import numpy as np
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import unique
from sendflowr.decisions.columns import Ascending, ColumnWriter, block, uid_column, values
from sendflowr.decisions.identity_map import IdentityMap, follow_merges
from sendflowr.decisions.snapshot_store import Part
from sendflowr.sql_files import load_sql

U64 = np.uint64


def write_identity(client: Client, database: str, out: ColumnWriter) -> dict:
    """Stream the identity tables into `out`; returns the part's metadata."""
    node_keys, raw_hashes = Ascending("identity node_key"), Ascending("raw identifier hash")
    uids = []
    with client.query_arrow_stream(load_sql("decisions/identity_nodes.sql", database), use_strings=True) as stream:
        for batch in stream:
            col = block(batch)
            out.append("node_key", node_keys.check(values(col["node_key"], U64)))
            uids.append(uid_column(col["universal_id"]))
            out.append("node_uid", uids[-1])
            out.append("node_shared", values(col["shared"], np.uint8))
    with client.query_arrow_stream(load_sql("decisions/identity_raw.sql", database)) as stream:
        for batch in stream:
            col = block(batch)
            out.append("raw_hash", raw_hashes.check(values(col["raw_hash"], U64)))
            out.append("raw_node", values(col["node_key"], U64))
    live = unique(np.concatenate(uids)) if uids else np.zeros(0, U64)
    del uids
    merges = client.query_arrow(load_sql("decisions/merge_log.sql", database), use_strings=True)
    merged_old, merged_final = follow_merges(uid_column(merges.column("old_id")), uid_column(merges.column("new_id")),
                                             live)
    out.append("live_uid", live)
    out.append("merged_old", merged_old)
    out.append("merged_final", merged_final)
    for name in ("node_key", "node_uid", "raw_hash", "raw_node"):
        out.declare(name, U64)
    out.declare("node_shared", np.uint8)
    return {"people": len(live), "merged_ids": len(merged_old)}


def identity_from_part(part: Part) -> IdentityMap:
    return IdentityMap(node_key=part["node_key"], node_uid=part["node_uid"], raw_hash=part["raw_hash"],
                       raw_node=part["raw_node"], live_uid=part["live_uid"], merged_old=part["merged_old"],
                       merged_final=part["merged_final"], node_shared=part["node_shared"])
