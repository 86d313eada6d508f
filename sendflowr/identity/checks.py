"""Checks on the identity graph as ClickHouse holds it; the Dagster checks and the tests call these.

Each returns a Finding (sendflowr.findings): the violations found and a few examples, or `skipped` when there is no
graph (or no merge) to check yet.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from sendflowr.findings import Finding, skip, violations
from sendflowr.identity.graph import Guards


def _nodes(client: Client, database: str) -> int:
    return int(client.command(f"SELECT count() FROM {database}.identity_nodes"))


def one_universal_id_per_identifier(client: Client, database: str) -> Finding:
    """No identifier is mapped to two universal_ids: neither a node (identity_nodes FINAL) nor a raw identifier
    (every stored normalization of it, unmerged rows included)."""
    if not _nodes(client, database):
        return skip("no identity graph yet (identity_nodes is empty)")
    nodes = client.query(
        f"SELECT 'node', toString(node_key), groupUniqArray(universal_id) FROM {database}.identity_nodes FINAL "
        "GROUP BY node_key HAVING uniqExact(universal_id) > 1 ORDER BY node_key").result_rows
    # identity_identifiers is a ReplacingMergeTree: read without FINAL, two runs that normalized the same raw
    # value differently (rules changed without a rebuild) show up as two rows.
    raws = client.query(
        f"SELECT 'raw', concat(toString(i.identifier_type), ':', i.raw_value), groupUniqArray(n.universal_id) "
        f"FROM {database}.identity_identifiers AS i INNER JOIN "
        f"(SELECT node_key, universal_id FROM {database}.identity_nodes FINAL) AS n ON i.node_key = n.node_key "
        "WHERE i.reason = '' GROUP BY i.identifier_type, i.raw_value HAVING uniqExact(n.universal_id) > 1 "
        "ORDER BY i.identifier_type, i.raw_value").result_rows
    return violations(nodes + raws)


def no_person_over_size_cap(client: Client, database: str, cap: int = Guards().max_person_size) -> Finding:
    """No person holds more identifiers than the size cap (Guards().max_person_size)."""
    if not _nodes(client, database):
        return skip("no identity graph yet (identity_nodes is empty)")
    rows = client.query(
        f"SELECT universal_id, count() AS n FROM {database}.identity_nodes FINAL GROUP BY universal_id "
        "HAVING n > {cap:UInt64} ORDER BY n DESC", parameters={"cap": cap}).result_rows
    return violations(rows)


def merge_log_acyclic(client: Client, database: str) -> Finding:
    """The merge log old_id -> new_id has no cycle (an id merged away never comes back as the target of its own
    chain)."""
    edges = client.query(f"SELECT DISTINCT old_id, new_id FROM {database}.identity_merge_log").result_rows
    if not edges:
        return skip("no merge yet (identity_merge_log is empty)")
    return violations(cycles(edges))


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Cycles of the directed graph `edges` (old -> new), each as its path back to its start: an iterative DFS with
    colours, where a grey node reached again closes a cycle."""
    nxt: dict[str, set[str]] = {}
    for old, new in edges:
        nxt.setdefault(old, set()).add(new)
    colour: dict[str, int] = {}
    found: list[list[str]] = []
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
                found.append(path[path.index(child):] + [child])
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(nxt.get(child, ())))))
                path.append(child)
    return found
