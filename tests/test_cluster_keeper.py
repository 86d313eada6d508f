"""Cluster mode's lease for real: two ClickHouse engines (two chDB endpoints, each with its own data, like two
replicas) share a real Apache ZooKeeper started here, and the lease table in its cluster form (KeeperMap) is one
lease across both. The control: the single-server lease table (MergeTree) on each engine lets both hold it at once.

What each engine runs is the cluster rendering of migration 0003's lease table without its ON CLUSTER clause: that
is what every host's distributed-DDL worker executes. chDB itself runs no distributed DDL and cannot activate a
Replicated table (docs/SCALING.md, "Cluster mode"), so only the Keeper-backed state is exercised here.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_ingest_exactly_once import assert_exact, make_corpus, produce
from test_ingest_writers import SLOTS, Rendezvous, run_writers

from sendflowr import lease
from sendflowr.clickhouse import get_client
from sendflowr.ingest.run import IngestReport
from sendflowr.ingest.slots import WHOLE, Slot
from sendflowr.kafka_io import ensure_topic
from sendflowr.local import chdb_server, processes
from sendflowr.local.processes import free_port
from sendflowr.local.zookeeper import LocalZooKeeper
from sendflowr.migrations import apply_migrations, discover
from sendflowr.settings import Settings

pytestmark = pytest.mark.integration

CLUSTER = "sendflowr_test"


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZooKeeper]:
    keeper = LocalZooKeeper(Settings(home=tmp_path_factory.mktemp("zookeeper")), free_port())
    keeper.start()
    yield keeper
    keeper.stop()


def _engine_config(zookeeper: LocalZooKeeper, replica: str, section: str) -> str:
    host, port = zookeeper.address.split(":")
    return f"""<clickhouse>
  <{section}><node><host>{host}</host><port>{port}</port></node></{section}>
  <keeper_map_path_prefix>/sendflowr_keeper_map</keeper_map_path_prefix>
  <macros><shard>01</shard><replica>{replica}</replica></macros>
</clickhouse>
"""


@pytest.fixture(scope="module")
def replicas(zookeeper: LocalZooKeeper, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Settings]]:
    """Two chDB endpoints, each its own process and data directory, both on the one ZooKeeper."""
    started = []
    try:
        # chDB has no server UUID (clickhouse-local loads none, so it is all zeros), and ClickHouse keeps one Keeper
        # node per server UUID and Keeper section name (/clickhouse/sessions/<section>/<uuid>) whose version each new
        # session bumps: two engines under one name kill each other's sessions. `keeper` is the other accepted
        # name of the same section, so the two engines keep apart; a real server has a UUID of its own.
        for name, section in (("r1", "zookeeper"), ("r2", "keeper")):
            home: Path = tmp_path_factory.mktemp(f"replica-{name}")
            (home / "chdb-engine" / "config.d").mkdir(parents=True)
            (home / "chdb-engine" / "config.d" / "zookeeper.xml").write_text(_engine_config(zookeeper, name, section))
            settings = Settings(home=home, clickhouse_url=f"http://127.0.0.1:{free_port()}")
            chdb_server.start_background(settings)
            started.append(settings)
        yield started
    finally:
        for settings in started:
            processes.stop(settings, chdb_server.PROCESS_NAME)


def _lease_table(database: str, on_cluster: bool) -> str:
    [migration] = [m for m in discover() if m.version == 3]  # 0003_ingestion_state.sql creates the lease table
    [statement] = [s for s in migration.statements(database, CLUSTER if on_cluster else "")
                   if re.search(r"^CREATE TABLE IF NOT EXISTS \w+\.ingest_leases\b", s, re.MULTILINE)]
    # A host's distributed-DDL worker runs the queued statement without its ON CLUSTER clause.
    return statement.replace(f" ON CLUSTER {CLUSTER}", "")


def _clients(replicas: list[Settings], on_cluster: bool) -> list:
    """A client per engine on a fresh database holding the lease table (its cluster or single-server form)."""
    database = f"k_{uuid.uuid4().hex[:10]}"
    clients = []
    for settings in replicas:
        admin = get_client(settings, with_database=False)
        admin.command(f"CREATE DATABASE {database}")
        admin.command(_lease_table(database, on_cluster))
        admin.close()
        clients.append(get_client(settings.model_copy(update={"clickhouse_database": database})))
    return clients


def _refused(client, slot: Slot, name: str = "sendflowr.events") -> bool:
    try:
        with lease.hold(client, client.database, name, f"probe-{slot}", slot=slot):
            return False
    except lease.LeaseHeld:
        return True


def test_the_cluster_lease_table_is_keeper_backed_on_every_engine(replicas: list[Settings]) -> None:
    clients = _clients(replicas, on_cluster=True)
    for client in clients:
        assert client.command("SELECT engine FROM system.tables WHERE database = currentDatabase() "
                              "AND name = 'ingest_leases'") == "KeeperMap"
    clients[0].insert(f"{clients[0].database}.ingest_leases", [["t", "written-on-r1", datetime.now(UTC), 0]],
                      column_names=["kafka_topic", "holder", "expires_at", "released"])
    assert clients[1].command("SELECT holder FROM ingest_leases") == "written-on-r1"  # one state, two engines


def test_a_lease_taken_on_one_engine_holds_on_the_other(replicas: list[Settings]) -> None:
    one, two = _clients(replicas, on_cluster=True)
    with lease.hold(one, one.database, "sendflowr.events", "writer-on-r1"):
        assert _refused(two, WHOLE) and _refused(two, Slot(1, 2))
    assert not _refused(two, WHOLE)

    with lease.hold(one, one.database, "sendflowr.events", "slot-0", slot=Slot(0, 2)):
        with lease.hold(two, two.database, "sendflowr.events", "slot-1", slot=Slot(1, 2)):
            assert _refused(one, WHOLE) and _refused(two, Slot(2, 4)) and _refused(one, Slot(3, 4))
        assert not _refused(two, Slot(1, 4))


def test_the_single_server_lease_table_does_not_span_engines(replicas: list[Settings]) -> None:
    """Control: with the MergeTree lease table each engine only sees its own leases, so both hold the lease."""
    one, two = _clients(replicas, on_cluster=False)
    with lease.hold(one, one.database, "sendflowr.events", "writer-on-r1"):
        assert not _refused(two, WHOLE)


def test_lease_races_across_engines_have_one_winner(replicas: list[Settings]) -> None:
    first, second = _clients(replicas, on_cluster=True)
    contenders = [first, second, get_client(replicas[0].model_copy(update={"clickhouse_database": first.database})),
                  get_client(replicas[1].model_copy(update={"clickhouse_database": second.database}))]
    for trial in range(8):
        start, lock = threading.Barrier(len(contenders)), threading.Lock()
        holding: list[int] = []
        most: list[int] = []
        errors: list[BaseException] = []

        def contend(i: int, start=start, lock=lock, holding=holding, most=most, trial=trial, errors=errors) -> None:
            start.wait()
            try:
                with lease.hold(contenders[i], contenders[i].database, f"race-{trial}", f"run-{i}"):
                    with lock:
                        holding.append(i)
                        most.append(len(holding))
                    time.sleep(0.05)
                    with lock:
                        holding.remove(i)
            except lease.LeaseHeld:
                pass
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert most and max(most) == 1, f"trial {trial}: holders at once {most}"


def test_keeper_keeps_no_lease_older_than_a_day(replicas: list[Settings]) -> None:
    one, two = _clients(replicas, on_cluster=True)
    old = datetime.now(UTC) - lease.KEEPER_MAP_KEEP - timedelta(hours=1)
    one.insert(f"{one.database}.ingest_leases", [["sendflowr.events", "long-gone", old, 1],
                                                   ["sendflowr.events", "expired-recently", datetime.now(UTC), 1]],
               column_names=["kafka_topic", "holder", "expires_at", "released"])
    with lease.hold(two, two.database, "sendflowr.events", "next-run"):
        pass
    left = {h for (h,) in one.query("SELECT holder FROM ingest_leases").result_rows}
    assert "long-gone" not in left and "expired-recently" in left



def test_two_writers_ingest_exactly_once_with_the_keeper_lease_table(replicas: list[Settings], kafka,
                                                                      base_settings: Settings) -> None:
    """The whole ingestion (slot leases, the event-id section, renewals, releases, purges) on an engine whose lease
    table is the cluster's KeeperMap; the other tables are the single-server ones (chDB cannot replicate)."""
    settings = replicas[0].model_copy(update={
        "clickhouse_database": f"w_{uuid.uuid4().hex[:10]}", "kafka_topic": f"events-{uuid.uuid4().hex[:10]}",
        "kafka_bootstrap_servers": base_settings.kafka_bootstrap_servers, "kafka_partitions": 4})
    apply_migrations(settings)
    client = get_client(settings)
    client.command("DROP TABLE ingest_leases")
    client.command(_lease_table(settings.clickhouse_database, on_cluster=True))
    ensure_topic(settings)
    corpus = make_corpus(unique=4000, duplicates=900, invalid=100, tag="keeper")
    produce(settings, corpus)
    barrier = threading.Barrier(2)
    reports = run_writers(settings, SLOTS, [Rendezvous(barrier), Rendezvous(barrier)], attempt_messages=700)
    assert all(isinstance(r, IngestReport) for r in reports), reports
    assert client.command("SELECT countIf(released = 0 AND expires_at > now64(6)) FROM ingest_leases") == 0
    assert client.command("SELECT count() FROM ingest_leases WHERE kafka_topic = 'ingest:event_ids'") > 2
    assert_exact(settings, corpus, client)
    client.close()
