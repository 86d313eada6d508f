"""Bulk import of exported provider files (JSON lines, a JSON array, or CSV) into Kafka.

Rows are read in chunks, normalized by the provider's connector, serialized and handed to one
producer for the whole run; the run ends with one flush that confirms every message, so a returned
report means every accepted row is on the broker. A rerun after a failure is safe: event ids are
deterministic and ingestion drops duplicates. Bad rows go to the rejects file with their line number.
"""

from __future__ import annotations

import csv
import gc
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from sendflowr.connectors import FORMATS
from sendflowr.connectors.common import ConnectorError, serialize
from sendflowr.kafka_io import ensure_topic, produce_all
from sendflowr.settings import Settings

CHUNK_ROWS = 20_000


@dataclass
class ImportReport:
    rows: int = 0
    events: int = 0
    skipped: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    trimmed: Counter = field(default_factory=Counter)  # optional fields fitted to the contract, events kept
    rejects_path: Path | None = None
    seconds: float = 0.0

    @property
    def rejected_rows(self) -> int:
        return sum(self.rejected.values())


@dataclass
class Chunk:
    """Up to CHUNK_ROWS rows of one file as columns: each record with its line (or element) number, and the rows
    that could not be read at all (line, record, reason)."""

    lines: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    errors: list[tuple[int, Any, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.errors)


def _unflatten(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row to the provider's JSON shape: dotted headers nest (message.headers.message-id) and
    cells holding JSON arrays or objects are parsed; empty cells are absent."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        if value[:1] in "[{":
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
        target = out
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target[parts[-1]] = value
    return out


def read_chunks(path: Path, as_csv: bool, size: int = CHUNK_ROWS) -> Iterator[Chunk]:
    if as_csv:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            chunk = Chunk()
            for row in reader:
                chunk.lines.append(reader.line_num)
                chunk.records.append(_unflatten(row))
                if len(chunk) >= size:
                    yield chunk
                    chunk = Chunk()
            if len(chunk):
                yield chunk
        return
    with open(path, "rb") as handle:
        head = handle.read(1024).lstrip()
        handle.seek(0)
        if head.startswith(b"["):  # one JSON array (e.g. a saved SendGrid webhook body): element numbers
            try:
                items = orjson.loads(handle.read())
            except orjson.JSONDecodeError as exc:
                raise ConnectorError(f"{path}: not valid JSON ({exc})") from None
            for first in range(0, len(items), size):
                part = items[first:first + size]
                yield Chunk(list(range(first + 1, first + len(part) + 1)), part)
            return
        number = 0
        while lines := list(islice(handle, size)):
            first, number = number + 1, number + len(lines)
            try:  # the usual chunk: every line one JSON value, parsed in one pass
                yield Chunk(list(range(first, number + 1)), list(map(orjson.loads, lines)))
                continue
            except orjson.JSONDecodeError:
                pass
            chunk = Chunk()  # blank lines are skipped; a line that is not JSON is a reject with its number
            for line_no, line in enumerate(lines, start=first):
                if not line.strip():
                    continue
                try:
                    chunk.records.append(orjson.loads(line))
                    chunk.lines.append(line_no)
                except orjson.JSONDecodeError as exc:
                    chunk.errors.append((line_no, None, f"line: invalid JSON ({str(exc).split(':')[0]})"))
            yield chunk


def import_files(settings: Settings, fmt: str, paths: list[Path], as_csv: bool = False,
                 rejects_path: Path | None = None, on_rows: Callable[[int], None] | None = None) -> ImportReport:
    if fmt not in FORMATS:
        raise ConnectorError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for path in paths:
        if not path.is_file():
            raise ConnectorError(f"{path}: no such file")
    normalize = FORMATS[fmt]
    ensure_topic(settings)  # a missing topic would otherwise fail every message at the end of the run
    report = ImportReport()
    rejects_path = rejects_path or paths[0].with_name(paths[0].name + ".rejects.jsonl")
    started = time.perf_counter()
    rejects_file = None

    def reject(path: Path, line: int, record: Any, reason: str) -> None:
        nonlocal rejects_file
        if rejects_file is None:
            rejects_file = open(rejects_path, "wb")
            report.rejects_path = rejects_path
        report.rejected[reason] += 1
        rejects_file.write(orjson.dumps({"file": str(path), "line": line, "reason": reason, "record": record},
                                        default=str) + b"\n")

    def messages() -> Iterator[tuple[None, bytes]]:
        for path in paths:
            for chunk in read_chunks(path, as_csv):
                for line, record, reason in chunk.errors:
                    reject(path, line, record, reason)
                result = normalize(chunk.records)
                for index, reason in result.rejects:
                    reject(path, chunk.lines[index], chunk.records[index], reason)
                report.rows += len(chunk)
                report.events += len(result.events)
                report.skipped.update(result.skipped)
                report.trimmed.update(result.trimmed)
                if on_rows:
                    on_rows(len(chunk))
                for raw in serialize(result.events):
                    yield None, raw

    # Parsed records are plain dicts and lists: no reference cycles for the cyclic GC to find, but tens of
    # thousands of new containers per chunk set it off again and again (it tripled the cost of parsing).
    collecting = gc.isenabled()
    gc.disable()
    try:
        produce_all(settings, messages())
    finally:
        if collecting:
            gc.enable()
        if rejects_file is not None:
            rejects_file.close()
    report.seconds = time.perf_counter() - started
    return report
