"""Checks beside the `identity_graph` asset: each reads the graph as ClickHouse holds it."""

from dagster import AssetCheckResult, MetadataValue, asset_check

from sendflowr.identity.graph import Guards
from sendflowr_assets.resources import SendflowrResource


def _result(violations: int, examples: list) -> AssetCheckResult:
    return AssetCheckResult(passed=violations == 0,
                            metadata={"violations": MetadataValue.int(violations),
                                      "examples": MetadataValue.json([[str(v) for v in row] for row in examples])})


@asset_check(asset="identity_graph", description="No identifier is mapped to two universal_ids: neither a node "
                                                 "(identity_nodes FINAL) nor a raw identifier (every stored "
                                                 "normalization of it, unmerged rows included).")
def one_universal_id_per_identifier(sendflowr: SendflowrResource) -> AssetCheckResult:
    db = sendflowr.clickhouse_database
    client = sendflowr.client()
    nodes = client.query(
        f"SELECT 'node', toString(node_key), groupUniqArray(universal_id) FROM {db}.identity_nodes FINAL "
        "GROUP BY node_key HAVING uniqExact(universal_id) > 1 ORDER BY node_key").result_rows
    # identity_identifiers is a ReplacingMergeTree: read without FINAL, two runs that normalized the same raw
    # value differently (rules changed without a rebuild) show up as two rows.
    raws = client.query(
        f"SELECT 'raw', concat(toString(i.identifier_type), ':', i.raw_value), groupUniqArray(n.universal_id) "
        f"FROM {db}.identity_identifiers AS i "
        f"INNER JOIN (SELECT node_key, universal_id FROM {db}.identity_nodes FINAL) AS n ON i.node_key = n.node_key "
        "WHERE i.reason = '' GROUP BY i.identifier_type, i.raw_value HAVING uniqExact(n.universal_id) > 1 "
        "ORDER BY i.identifier_type, i.raw_value").result_rows
    return _result(len(nodes) + len(raws), (nodes + raws)[:10])


@asset_check(asset="identity_graph", description="No person holds more identifiers than the size cap "
                                                 f"(Guards().max_person_size = {Guards().max_person_size}).")
def no_person_over_size_cap(sendflowr: SendflowrResource) -> AssetCheckResult:
    db = sendflowr.clickhouse_database
    rows = sendflowr.client().query(
        f"SELECT universal_id, count() AS n FROM {db}.identity_nodes FINAL GROUP BY universal_id "
        "HAVING n > {cap:UInt64} ORDER BY n DESC", parameters={"cap": Guards().max_person_size}).result_rows
    return _result(len(rows), rows[:10])


@asset_check(asset="identity_graph", description="The merge log old_id -> new_id has no cycle (an id merged "
                                                 "away never comes back as the target of its own chain).")
def merge_log_acyclic(sendflowr: SendflowrResource) -> AssetCheckResult:
    db = sendflowr.clickhouse_database
    edges = sendflowr.client().query(
        f"SELECT DISTINCT old_id, new_id FROM {db}.identity_merge_log").result_rows
    nxt: dict[str, set[str]] = {}
    for old, new in edges:
        nxt.setdefault(old, set()).add(new)
    # iterative DFS with colours: a grey node reached again closes a cycle
    colour: dict[str, int] = {}
    cycles: list[list[str]] = []
    for start in nxt:
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(nxt.get(start, ()))))]
        colour[start] = 1
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                cycles.append(path[path.index(child):] + [child])
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(nxt.get(child, ())))))
                path.append(child)
    return _result(len(cycles), cycles[:10])


IDENTITY_CHECKS = [one_universal_id_per_identifier, no_person_over_size_cap, merge_log_acyclic]
