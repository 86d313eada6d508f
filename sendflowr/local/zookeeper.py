"""A single-node Apache ZooKeeper from Maven Central, for the cluster-mode tests (docs/SCALING.md, "Cluster mode").

Not part of the embedded stack: SendFlowr on one server needs no ZooKeeper. The tests start one to give two chDB
engines a shared Keeper, as the servers of a ClickHouse cluster have, and run the KeeperMap lease across them.
Jars are fetched once into ~/.cache/sendflowr/zookeeper/<version> (zookeeper/pom.xml), like the Kafka broker's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from sendflowr.errors import SendflowrError
from sendflowr.local import processes
from sendflowr.local.kafka_broker import COMPLETE_MARKER, FETCH_TIMEOUT, _flock, _tail
from sendflowr.settings import PROJECT_ROOT, Settings

POM = PROJECT_ROOT / "zookeeper" / "pom.xml"
VERSION = "3.9.3"
PROCESS_NAME = "zookeeper"
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class LocalZooKeeper:
    """Fetch, start and stop one standalone ZooKeeper on 127.0.0.1:`port` with its data under the state dir."""

    def __init__(self, settings: Settings, port: int, version: str = VERSION):
        self.settings, self.port, self.version = settings, port, version
        self.home = (settings.home / "zookeeper").absolute()
        self.jars_dir = (Path.home() / ".cache" / "sendflowr" / "zookeeper" / version).absolute()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fetch(self) -> Path:
        marker = self.jars_dir / COMPLETE_MARKER
        with _flock(self.jars_dir.parent / f".{self.version}.lock"):
            if not marker.is_file():
                self._run_maven()
                marker.write_text("\n".join(sorted(p.name for p in self.jars_dir.glob("*.jar"))) + "\n")
        return self.jars_dir

    def _run_maven(self) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise SendflowrError("Maven (`mvn`) is not on PATH; it fetches ZooKeeper's jars from Maven Central once")
        shutil.rmtree(self.jars_dir, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.jars_dir}", f"-Dzookeeper.version={self.version}", "-DincludeScope=runtime"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=FETCH_TIMEOUT)
        if result.returncode != 0 or not (self.jars_dir / f"zookeeper-{self.version}.jar").is_file():
            raise SendflowrError(f"Maven failed to fetch ZooKeeper {self.version} into {self.jars_dir}:\n"
                                 + _tail(result.stdout + "\n" + result.stderr))

    def start(self, timeout: float = 60.0) -> None:
        jars = self.fetch()
        java = shutil.which("java")
        if java is None:
            raise SendflowrError("`java` is not on PATH; ZooKeeper needs Java 11 or newer")
        processes.require_free_port("127.0.0.1", self.port, "LocalZooKeeper(port=...)")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        config = self.home / "zoo.cfg"
        config.write_text(f"tickTime=500\ndataDir={self.home / 'data'}\nclientPort={self.port}\n"
                          "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n")
        pid = processes.spawn(self.settings, PROCESS_NAME, [java, "-Xmx256m", "-cp", f"{jars}/*", MAIN_CLASS,
                                                            str(config)], cwd=self.home)
        processes.wait_until(self.is_ready, timeout=timeout, what=f"ZooKeeper on {self.address}", pid=pid,
                             log=processes.log_file(self.settings, PROCESS_NAME))

    def is_ready(self) -> bool:
        # "ruok" answers "imok" as soon as the port listens; only a served session proves the server runs (a missing
        # optional jar leaves the port open and every session refused), so also ask for its state with "srvr".
        return self._four_letters(b"ruok") == b"imok" and b"Mode: standalone" in self._four_letters(b"srvr")

    def _four_letters(self, word: bytes) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(word)
                chunks = []
                while chunk := conn.recv(4096):
                    chunks.append(chunk)
                return b"".join(chunks)
        except OSError:
            return b""

    def stop(self) -> None:
        processes.stop(self.settings, PROCESS_NAME)
