"""Snapshot parts on disk (sendflowr.decisions.snapshot_store), shared by API workers as separate processes: a part is
built once whatever the number of workers, appears whole or not at all, is removed only when no process uses it,
and a builder that dies leaves nothing a later build trips on."""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sendflowr.decisions.columns import ColumnWriter, read_columns
from sendflowr.decisions.snapshot_store import IN_USE, TMP_PREFIX, PartStore

CTX = multiprocessing.get_context("fork")


def build_numbers(marker: Path | None = None, rows: int = 1000, pause: float = 0.0):
    """A build that writes two columns in several batches, counts itself in `marker` and can take its time."""

    def build(out: ColumnWriter) -> dict:
        if marker is not None:
            with open(marker, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        for first in range(0, rows, 300):
            out.append("n", np.arange(first, min(rows, first + 300), dtype=np.uint64))
            out.append("m", np.arange(first, min(rows, first + 300), dtype=np.uint16).repeat(3).reshape(-1, 3))
            time.sleep(pause)
        return {"rows": rows}

    return build


def _worker(root: str, marker: str, results, pause: float) -> None:
    part = PartStore(Path(root)).get("numbers", build_numbers(Path(marker), pause=pause))
    results.put((int(part["n"].sum()), part["m"].shape, part.meta["rows"], part.built))


def test_a_part_is_built_once_by_concurrent_workers(tmp_path) -> None:
    marker = tmp_path / "builds"
    results = CTX.Queue()
    workers = [CTX.Process(target=_worker, args=(str(tmp_path / "store"), str(marker), results, 0.05))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    seen = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(marker.read_text().split()) == 1  # one build for four workers
    assert {s[:3] for s in seen} == {(sum(range(1000)), (1000, 3), 1000)}
    assert sorted(s[3] for s in seen) == [False, False, False, True]  # the others mapped it
    assert not list((tmp_path / "store").glob(TMP_PREFIX + "*"))


def test_columns_round_trip_read_only(tmp_path) -> None:
    store = PartStore(tmp_path)
    part = store.get("p", build_numbers(rows=1234))
    assert part["n"].tolist() == list(range(1234)) and part["m"][5].tolist() == [5, 5, 5]
    assert type(part["n"]) is np.ndarray  # a plain array over the mapping
    with pytest.raises(ValueError):
        part["n"][0] = 7
    empty = store.get("empty", lambda out: (out.declare("x", np.float32, (4,)), {})[1])
    assert empty["x"].shape == (0, 4)
    columns, meta = read_columns(tmp_path / "p")
    assert meta == {"rows": 1234} and columns["m"].dtype == np.uint16
    with pytest.raises(TypeError):
        ColumnWriter(tmp_path).append("objects", np.array(["a"], object))


def test_a_failed_build_leaves_nothing(tmp_path) -> None:
    store = PartStore(tmp_path)

    def broken(out: ColumnWriter) -> dict:
        out.append("n", np.arange(10, dtype=np.uint64))
        raise RuntimeError("ClickHouse went away")

    with pytest.raises(RuntimeError):
        store.get("p", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert store.get("p", build_numbers(rows=10))["n"].tolist() == list(range(10))


def _die_while_building(root: str) -> None:
    def build(out: ColumnWriter) -> dict:
        out.append("n", np.arange(5, dtype=np.uint64))
        os._exit(3)  # killed mid-build: no cleanup runs, the lock dies with the process

    PartStore(Path(root)).get("p", build)


def test_a_builder_killed_mid_build_blocks_nothing(tmp_path) -> None:
    dead = CTX.Process(target=_die_while_building, args=(str(tmp_path),))
    dead.start()
    dead.join(60)
    assert dead.exitcode == 3
    assert list(tmp_path.glob(TMP_PREFIX + "*")) and not (tmp_path / "p").exists()
    part = PartStore(tmp_path).get("p", build_numbers(rows=7))
    assert part["n"].tolist() == list(range(7))
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))  # the leftover went with the next build


def _hold(root: str, name: str, ready, release) -> None:
    part = PartStore(Path(root)).get(name, build_numbers(rows=3))
    ready.set()
    release.wait(60)
    assert part["n"].tolist() == [0, 1, 2]


def test_prune_removes_only_parts_no_process_uses(tmp_path) -> None:
    store = PartStore(tmp_path)
    mine = store.get("mine", build_numbers(rows=3))
    ready, release = CTX.Event(), CTX.Event()
    other = CTX.Process(target=_hold, args=(str(tmp_path), "theirs", ready, release))
    other.start()
    assert ready.wait(60)
    PartStore(tmp_path).get("unused", build_numbers(rows=3))  # built by a store whose parts are gone
    gc.collect()
    assert store.prune(wait=True) == ["unused"]
    assert sorted(store.parts("")) == ["mine", "theirs"]
    release.set()
    other.join(60)
    assert store.prune(wait=True) == ["theirs"]  # its process ended: its lock went with it
    assert store.parts("") == ["mine"] and mine["n"].tolist() == [0, 1, 2]
    del mine
    gc.collect()
    assert store.prune(wait=True) == ["mine"]
    assert not [p for p in tmp_path.iterdir() if p.name != ".lock"]


def test_a_removed_part_stays_readable_where_it_is_mapped(tmp_path) -> None:
    """Linux keeps a mapped file's pages until the last mapping goes: a request still running on the previous
    version finishes on it even if its directory was removed."""
    part = PartStore(tmp_path).get("p", build_numbers(rows=500))
    column = part["n"]
    os.close(os.open(tmp_path / "p" / IN_USE, os.O_RDONLY))
    shutil.rmtree(tmp_path / "p")
    assert int(column.sum()) == sum(range(500))


def test_prune_skips_a_round_while_a_build_holds_the_lock(tmp_path) -> None:
    store = PartStore(tmp_path)
    store.get("old", build_numbers(rows=3))
    gc.collect()
    with store._locked():  # another worker building
        assert store.prune() == []
    assert store.prune() == ["old"]
