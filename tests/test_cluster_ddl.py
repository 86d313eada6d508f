"""Cluster mode's DDL (sendflowr/cluster.py): every migration rendered for a cluster, statement by statement.

Every MergeTree-family table becomes its Replicated twin with its own Keeper path and a replicated deduplication
window, every statement runs ON CLUSTER, the lease table is a KeeperMap, the scratch tables keep their local
engines, and nothing else in a statement changes. The rendered text parses in the real engine; the embedded
engine itself refuses cluster mode with a clear error (it runs no distributed DDL).
"""

from __future__ import annotations

import re
import uuid

import pytest

from sendflowr import cluster
from sendflowr.clickhouse import get_client
from sendflowr.decisions.log_ingest import DECISIONS
from sendflowr.ingest.sink import EVENTS
from sendflowr.migrations import MigrationError, apply_migrations, discover
from sendflowr.settings import Settings

DB, CLUSTER = "sf_db", "sf_cluster"
HEAD = re.compile(rf"^(?:CREATE (?:TABLE|VIEW|MATERIALIZED VIEW)(?: IF NOT EXISTS)?|ALTER TABLE|"
                  rf"DROP TABLE(?: IF EXISTS)?|EXCHANGE TABLES {DB}\.\w+ AND) {DB}\.(\w+) ON CLUSTER {CLUSTER}\b",
                  re.MULTILINE)
ENGINE = re.compile(r"\nENGINE = (\w+)(\([^\n]*\))?")


def code(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))


def pairs() -> list[tuple[str, str]]:
    """(single-server statement, the same statement for the cluster) of every migration."""
    return [(plain, rendered) for m in discover()
            for plain, rendered in zip(m.statements(DB), m.statements(DB, CLUSTER), strict=True)]


def created(statement: str) -> str | None:
    match = re.search(rf"^CREATE TABLE IF NOT EXISTS {DB}\.(\w+)", statement, re.MULTILINE)
    return match.group(1) if match else None


def test_every_statement_runs_on_the_cluster() -> None:
    for plain, rendered in pairs():
        if re.search(rf"^INSERT INTO {DB}\.", rendered, re.MULTILINE):
            assert rendered == plain  # data: runs on the migrator's replica, replicated from there
            continue
        assert HEAD.search(rendered), rendered[:300]
        if re.search(r"^DROP TABLE", rendered, re.MULTILINE):
            assert rendered.endswith(" SYNC")  # a re-created Replicated table must find its Keeper path free


def test_every_merge_tree_is_replicated_except_the_scratch_tables() -> None:
    paths = []
    for plain, rendered in pairs():
        table = created(plain)
        engine = ENGINE.search(plain)
        if table is None or engine is None:
            continue
        kind, args = engine.group(1), engine.group(2) or ""
        new = ENGINE.search(rendered)
        if table in cluster.LOCAL_TABLES:
            assert new.group(0) == engine.group(0), table  # scratch stays local to the writer's replica
        elif table in cluster.KEEPER_MAP_TABLES:
            continue
        elif kind.endswith("MergeTree"):
            path = f"'/clickhouse/tables/{{shard}}/{DB}/{table}'"
            extra = f", {args[1:-1]}" if args else ""
            assert new.group(0) == f"\nENGINE = Replicated{kind}({path}, '{{replica}}'{extra})", table
            paths.append(path)
        else:
            assert kind in ("Memory", "Null") and table in cluster.LOCAL_TABLES, table
    assert len(paths) == len(set(paths)) > 15  # one Keeper path per table


def test_scratch_tables_are_all_declared_and_all_exist() -> None:
    tables = {created(plain) for plain, _ in pairs()} - {None}
    assert cluster.LOCAL_TABLES <= tables  # no stale name
    assert {*EVENTS.scratch_tables, *DECISIONS.scratch_tables} <= cluster.LOCAL_TABLES
    for plain, rendered in pairs():
        engine = re.search(r"ENGINE = (\w+)", plain)
        if created(plain) and engine and engine.group(1) in ("Memory", "Null"):
            assert created(plain) in cluster.LOCAL_TABLES
        if created(plain) in cluster.LOCAL_TABLES:
            assert "Replicated" not in rendered and "KeeperMap" not in rendered


def test_deduplication_window_is_replicated_and_outlasts_an_outage() -> None:
    had = 0
    for plain, rendered in pairs():
        assert "non_replicated_deduplication_window" not in code(rendered)
        if "non_replicated_deduplication_window = 10000" in code(plain):
            had += 1
            assert ("SETTINGS replicated_deduplication_window = 10000, "
                    "replicated_deduplication_window_seconds = 604800") in rendered
    assert had == 5  # events, rejected_events, event_ids (twice: 0003, 0019), decision_log: written with tokens


def test_the_lease_table_is_a_keeper_map() -> None:
    [(plain, rendered)] = [(p, r) for p, r in pairs() if created(p) == "ingest_leases"]
    assert rendered.endswith(f"\nENGINE = KeeperMap('/{DB}/ingest_leases') PRIMARY KEY holder")
    assert "TTL" not in rendered and "ORDER BY" not in rendered
    assert rendered.split("\nENGINE")[0].replace(f" ON CLUSTER {CLUSTER}", "") == plain.split("\nENGINE")[0]


def test_nothing_else_changes() -> None:
    def normalized(statement: str) -> str:
        statement = statement.replace(f" ON CLUSTER {CLUSTER}", "").removesuffix(" SYNC")
        statement = statement.replace(cluster.DEDUPLICATION_WINDOW, "non_replicated_deduplication_window = 10000")
        return re.sub(r"ENGINE = \w+(\([^\n]*\))?", "ENGINE = <engine>", statement)

    for plain, rendered in pairs():
        if created(plain) not in cluster.KEEPER_MAP_TABLES:  # its tail is checked above
            assert normalized(rendered) == normalized(plain)


def test_statement_it_cannot_place_is_refused() -> None:
    with pytest.raises(cluster.ClusterRenderError, match="cannot place ON CLUSTER"):
        cluster.render(f"RENAME TABLE {DB}.a TO {DB}.b", DB, CLUSTER)


@pytest.mark.integration
def test_rendered_statements_parse_in_the_engine(clickhouse: Settings) -> None:
    client = get_client(clickhouse, with_database=False)
    try:
        for _, rendered in pairs():
            formatted = client.command("SELECT formatQuery({q:String})", parameters={"q": rendered})
            assert (f"ON CLUSTER {CLUSTER}" in formatted) != formatted.startswith("INSERT INTO")
    finally:
        client.close()


@pytest.mark.integration
def test_embedded_engine_refuses_cluster_mode_clearly(base_settings: Settings, clickhouse: Settings) -> None:
    settings = base_settings.model_copy(update={"clickhouse_database": f"c_{uuid.uuid4().hex[:8]}",
                                                "clickhouse_cluster": CLUSTER})
    with pytest.raises(MigrationError, match=r"SENDFLOWR_CLICKHOUSE_CLUSTER=sf_cluster: .*refused ON CLUSTER DDL "
                                             r"\(.*cluster 'sf_cluster' not found.*no distributed DDL"):
        apply_migrations(settings)
