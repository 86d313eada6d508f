"""Snapshot parts on local disk, written once per version and mapped read-only by every API worker of the host.

A part (the identity map of one identity state, the timing curves of one committed timing version) is a directory
of column files (columns.py) named after what it holds. The first worker that needs a part builds it: under an
exclusive lock on `<root>/.lock`, into a temporary directory renamed into place when complete, so a part that
exists is whole. Every other worker waits on that lock, then maps the same files: the OS page cache holds them
once, whatever the number of workers.

A worker marks each part it serves with a shared lock on the part's `.in-use` file, held as long as a snapshot
uses the part (a request still running on the previous version included). `prune` removes the parts no process
holds, under the build lock; a part is only ever opened under the build lock too, so a part is never removed
between being found and being marked. Locks die with their process: a killed worker leaves nothing locked, and
a build it left half-done is a temporary directory removed by the next build.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sendflowr.decisions.columns import MANIFEST, ColumnWriter, read_columns

log = logging.getLogger("sendflowr.decisions")
IN_USE = ".in-use"
TMP_PREFIX = ".tmp-"


class Part:
    """An opened part: its mapped columns and metadata; marks the part in use until it is garbage-collected."""

    def __init__(self, directory: Path) -> None:
        self.name = directory.name
        self.directory = directory
        self.built = False  # by this process (else mapped from another's build)
        fd = os.open(directory / IN_USE, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        weakref.finalize(self, os.close, fd)
        self.columns, self.meta = read_columns(directory)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]


class PartStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: weakref.WeakValueDictionary[str, Part] = weakref.WeakValueDictionary()

    @contextmanager
    def _locked(self, wait: bool = True) -> Iterator[bool]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def parts(self, prefix: str) -> list[str]:
        """Names of the complete parts starting with `prefix`."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.name.startswith(prefix) and (p / MANIFEST).is_file())

    def get(self, name: str, build: Callable[[ColumnWriter], dict[str, Any]]) -> Part:
        """The part `name`, built by `build` (which appends its columns and returns its metadata) if no process
        built it yet. `build` runs under the build lock and may read other parts (`open_existing`)."""
        part = self._open.get(name)
        if part is not None:
            return part
        with self._locked():
            final = self.root / name
            built = not (final / MANIFEST).is_file()
            if built:
                self._build(final, build)
            part = self._mark(final)
            part.built = built
            return part

    def open_existing(self, name: str) -> Part | None:
        """A complete part, if one exists (call under the build lock, i.e. from a `build`)."""
        part = self._open.get(name)
        if part is None and (self.root / name / MANIFEST).is_file():
            part = self._mark(self.root / name)
        return part

    def _mark(self, directory: Path) -> Part:
        part = Part(directory)
        self._open[directory.name] = part
        return part

    def _build(self, final: Path, build: Callable[[ColumnWriter], dict[str, Any]]) -> None:
        for leftover in self.root.glob(TMP_PREFIX + "*"):  # we hold the lock: nobody is building
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        writer = ColumnWriter(tmp)
        try:
            meta = build(writer)
            writer.finish(meta)
            (tmp / IN_USE).touch()
            if final.exists():  # a directory without a manifest is no part (an older layout, a copy gone wrong)
                shutil.rmtree(final)
            os.rename(tmp, final)  # atomic: the part appears whole or not at all
        except BaseException:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prune(self, wait: bool = False) -> list[str]:
        """Remove every part no process has in use; returns their names. Without `wait`, skips the round when a
        build holds the lock (the next round prunes)."""
        removed = []
        with self._locked(wait) as locked:
            if not locked:
                return removed
            for directory in sorted(self.root.iterdir()):
                if not directory.is_dir() or directory.name.startswith(TMP_PREFIX) or directory.name in self._open:
                    continue
                if (directory / IN_USE).exists():
                    fd = os.open(directory / IN_USE, os.O_RDONLY)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another worker serves it
                    finally:
                        os.close(fd)
                trash = self.root / f"{TMP_PREFIX}removed-{directory.name}-{uuid.uuid4().hex[:8]}"
                os.rename(directory, trash)  # gone at once for every reader; the files go with rmtree
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(directory.name)
        if removed:
            log.info("decision snapshot parts removed (no worker uses them): %s", ", ".join(removed))
        return removed
