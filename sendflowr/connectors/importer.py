"""Bulk import of exported provider files (JSON lines, a JSON array, or CSV) into Kafka.

Rows are read in chunks, normalized by the provider's connector, serialized and handed to one
producer for the whole run; the run ends with one flush that confirms every message, so a returned
report means every accepted row is on the broker. A rerun after a failure is safe: event ids are
deterministic and ingestion drops duplicates. Bad rows go to the rejects file with their line number.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
class Row:
    path: Path
    line: int
    record: Any = None
    error: str | None = None


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


def read_rows(path: Path, as_csv: bool) -> Iterator[Row]:
    if as_csv:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield Row(path, reader.line_num, _unflatten(row))
        return
    with open(path, "rb") as handle:
        head = handle.read(1024).lstrip()
        handle.seek(0)
        if head.startswith(b"["):  # one JSON array (e.g. a saved SendGrid webhook body): element numbers
            try:
                items = orjson.loads(handle.read())
            except orjson.JSONDecodeError as exc:
                raise ConnectorError(f"{path}: not valid JSON ({exc})") from None
            for number, item in enumerate(items, start=1):
                yield Row(path, number, item)
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Row(path, number, orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                yield Row(path, number, error=f"line: invalid JSON ({str(exc).split(':')[0]})")


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
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

    def reject(row: Row, reason: str) -> None:
        nonlocal rejects_file
        if rejects_file is None:
            rejects_file = open(rejects_path, "wb")
            report.rejects_path = rejects_path
        report.rejected[reason] += 1
        rejects_file.write(orjson.dumps({"file": str(row.path), "line": row.line, "reason": reason,
                                         "record": row.record}, default=str) + b"\n")

    def messages() -> Iterator[tuple[None, bytes]]:
        for path in paths:
            for chunk in _chunks(read_rows(path, as_csv), CHUNK_ROWS):
                good = [row for row in chunk if row.error is None]
                for row in chunk:
                    if row.error is not None:
                        reject(row, row.error)
                result = normalize([row.record for row in good])
                for index, reason in result.rejects:
                    reject(good[index], reason)
                report.rows += len(chunk)
                report.events += len(result.events)
                report.skipped.update(result.skipped)
                report.trimmed.update(result.trimmed)
                if on_rows:
                    on_rows(len(chunk))
                for raw in serialize(result.events):
                    yield None, raw

    try:
        produce_all(settings, messages())
    finally:
        if rejects_file is not None:
            rejects_file.close()
    report.seconds = time.perf_counter() - started
    return report
