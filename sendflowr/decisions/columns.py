"""Column files of a snapshot part: one raw little-endian array per column (`<name>.bin`), described by
`manifest.json` (dtype and shape of each column, plus the part's small metadata). Written by appending batches
as they stream in from ClickHouse (so the writer never holds a whole column), read back as read-only memory maps:
every process that maps the same file shares its pages through the OS page cache.

A raw file plus a manifest rather than `.npy`: a `.npy` header holds the row count, unknown until the stream ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sendflowr.identity import graph

MANIFEST = "manifest.json"


class ColumnWriter:
    """Appends batches to the column files of one directory; `finish` writes the manifest (last, so a part with a
    manifest is complete)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, Any] = {}
        self._layout: dict[str, tuple[str, tuple[int, ...], int]] = {}  # name -> dtype, trailing shape, rows

    def append(self, name: str, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values)
        if values.dtype == object or values.dtype.hasobject:
            raise TypeError(f"column {name!r}: object arrays cannot be mapped")
        dtype = values.dtype.newbyteorder("<") if values.dtype.byteorder == ">" else values.dtype
        values = values.astype(dtype, copy=False)
        if name not in self._layout:
            self._layout[name] = (dtype.str, values.shape[1:], 0)
            self._files[name] = open(self.directory / f"{name}.bin", "wb")  # noqa: SIM115 - closed in finish
        kind, trailing, rows = self._layout[name]
        if kind != dtype.str or trailing != values.shape[1:]:
            raise ValueError(f"column {name!r}: batch {dtype.str}{values.shape[1:]} after {kind}{trailing}")
        if values.size:
            self._files[name].write(memoryview(values).cast("B"))
        self._layout[name] = (kind, trailing, rows + len(values))

    def declare(self, name: str, dtype: np.dtype | str, trailing: tuple[int, ...] = ()) -> None:
        """A column that may get no batch at all (an empty result): still present, with zero rows."""
        if name not in self._layout:
            self.append(name, np.zeros((0, *trailing), dtype))

    def finish(self, meta: dict[str, Any]) -> None:
        for handle in self._files.values():
            handle.flush()
            handle.close()
        columns = {name: {"dtype": kind, "shape": [rows, *trailing]}
                   for name, (kind, trailing, rows) in self._layout.items()}
        (self.directory / MANIFEST).write_text(json.dumps({"columns": columns, "meta": meta}, sort_keys=True))

    def abort(self) -> None:
        for handle in self._files.values():
            handle.close()


def read_columns(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every column of a finished directory as a read-only array mapped from its file, and the metadata."""
    manifest = json.loads((directory / MANIFEST).read_text())
    columns = {}
    for name, spec in manifest["columns"].items():
        shape = tuple(spec["shape"])
        if not shape[0]:  # mmap cannot map an empty file
            columns[name] = np.zeros(shape, np.dtype(spec["dtype"]))
            continue
        mapped = np.memmap(directory / f"{name}.bin", dtype=np.dtype(spec["dtype"]), mode="r", shape=shape)
        columns[name] = mapped.view(np.ndarray)  # a plain array over the mapping (memmap's subclass hooks cost)
    return columns, manifest["meta"]


def block(batch: pa.Table | pa.RecordBatch) -> dict[str, pa.Array]:
    """A streamed block's columns, each as one Arrow array (a Table's columns are chunked, and a chunked column's
    to_numpy goes through pandas)."""
    return {name: column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            for name, column in zip(batch.column_names, batch.columns, strict=True)}


def values(array: pa.Array, dtype) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def uid_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Universal ids as ClickHouse sends them (Arrow text, `sf_` + 16 hex) -> uint64, parsed straight from Arrow's
    value buffer (every id is 19 bytes) by graph.parse_uid, which raises on anything else."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = [np.zeros(0, np.uint64)]
    for chunk in chunks:
        if not len(chunk):
            continue
        if chunk.null_count:
            raise ValueError("universal ids must not be null")
        wide = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
        offsets = np.frombuffer(chunk.buffers()[1], np.int64 if wide else np.int32, len(chunk) + 1, chunk.offset
                                * (8 if wide else 4))
        if (np.diff(offsets) != 19).any():
            raise ValueError("universal ids must be 'sf_' + 16 lowercase hex characters")
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        out.append(graph.parse_uid(data.view("S19")))
    return np.concatenate(out)


class Ascending:
    """Checks that a column streamed in batches is strictly increasing (binary searches depend on it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: int | None = None

    def check(self, values: np.ndarray) -> np.ndarray:
        if len(values):
            if (values[1:] <= values[:-1]).any() or (self.last is not None and int(values[0]) <= self.last):
                raise ValueError(f"{self.name} is not strictly increasing (a duplicate or an unsorted result)")
            self.last = int(values[-1])
        return values
