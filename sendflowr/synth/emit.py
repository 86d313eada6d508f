"""Events -> JSON bytes (the v1 contract).

Every string value is JSON-encoded by orjson, in chunks: the world's string tables (identifiers, user
agents, IPs, URLs, ...) once per world, other values once per batch. Events are then assembled from those
encoded pieces by bytes templates, one per combination of fields (`template % values`, in C):

* event_id, occurred_at and message_id, when fixed-width ASCII without nulls (as generated), are
  pre-assembled in numpy into one '"k":"v",...' head block per row;
* small dictionaries (event_type, esp, bounce_type) and booleans are baked into the template;
* everything else fills a %s slot.

No per-event dict or dumps call is needed, and the output is exactly what `orjson.dumps` gives for the same
dict (the tests check `orjson.dumps(orjson.loads(line)) == line` for every event).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from sendflowr.contract import IDENTIFIER_TYPES
from sendflowr.synth.stream import TOKEN_KEY
from sendflowr.synth.world import Dictionaries, registered_dictionaries

IDENTIFIER_FIELDS = IDENTIFIER_TYPES
# Output key order (JSON objects are unordered; this one is fixed so equal events give equal bytes).
TOP_FIELDS = ("event_id", "occurred_at", "message_id", "event_type", "identifiers", "esp", "campaign_id",
              "user_agent", "ip", "url", "bounce_type", "machine_open", "bot_click", "schema_version")
HEAD_FIELDS = TOP_FIELDS[:3]  # pre-assembled in numpy when fixed-width ASCII (a leading run of them)
FIELDS = tuple(k for k in TOP_FIELDS if k != "identifiers") + IDENTIFIER_FIELDS
ENCODE_CHUNK = 50_000
CONST_MAX = 31  # dictionaries with at most this many entries become template constants (5-bit codes)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of short-lived objects exist (none hold cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def encode_strings(values: list[Any]) -> np.ndarray:
    """JSON-encode values with orjson, a chunk per call: object array of bytes like b'"x@y.com"'."""
    out = np.empty(len(values), dtype=object)
    for lo in range(0, len(values), ENCODE_CHUNK):
        chunk = values[lo:lo + ENCODE_CHUNK]
        parts = None
        if all(type(v) is str for v in chunk):
            # Inside an encoded string every '"' is escaped, so '","' only ever separates two items.
            parts = orjson.dumps(chunk)[2:-2].split(b'","')
            parts = [b'"' + p + b'"' for p in parts] if len(parts) == len(chunk) else None
        if parts is None:
            parts = [orjson.dumps(v) for v in chunk]
        out[lo:lo + len(chunk)] = np.fromiter(parts, dtype=object, count=len(chunk))
    return out


def _encode_entries(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    return encode_strings(values), np.array([v is not None and v != "" for v in values], dtype=bool)


def _encoded_dictionary(dictionaries: Dictionaries | None, name: str,
                        dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(JSON-encoded entries, entry is a non-empty string); cached per world for the world's tables."""
    known = dictionaries.arrow.get(name) if dictionaries is not None else None
    if known is not None and len(known) == len(dictionary):
        cached = dictionaries.encoded.get(name)
        if cached is None:
            cached = dictionaries.encoded[name] = _encode_entries(dictionaries.objects[name].tolist())
        return cached
    return _encode_entries(dictionary.to_pylist())


def _chunk(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _fixed_ascii(chunk: pa.Array) -> np.ndarray | None:
    """(n, w) codes of a fixed-width, JSON-safe ASCII string column without nulls (zero-copy read)."""
    if chunk.null_count or len(chunk) == 0 or not pa.types.is_string(chunk.type):
        return None
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
    width = int(offsets[1] - offsets[0])
    if width == 0 or not np.all(np.diff(offsets) == width):
        return None
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(-1, width)
    if ((data < 0x20) | (data > 0x7E) | (data == 0x22) | (data == 0x5C)).any():
        return None
    return data


@dataclass
class _Field:
    key: str
    present: np.ndarray  # bool per row
    values: np.ndarray | None = None  # encoded bytes per row (slot fields)
    codes: np.ndarray | None = None  # dictionary index per row (constant fields)
    constants: np.ndarray | None = None  # encoded dictionary (constant fields)


def _field(table: pa.Table, key: str, dictionaries: Dictionaries | None) -> _Field:
    chunk = _chunk(table, key)
    if pa.types.is_dictionary(chunk.type):
        index = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)
        name = "identifier" if key in IDENTIFIER_FIELDS else key
        encoded, nonempty = _encoded_dictionary(dictionaries, name, chunk.dictionary)
        safe = np.where(index >= 0, index, 0)
        present = (index >= 0) & (nonempty[safe] if len(nonempty) else False)
        if len(encoded) <= CONST_MAX:
            return _Field(key, present, codes=safe, constants=encoded)
        return _Field(key, present, values=encoded[safe])
    present = chunk.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(chunk.type):
        flags = chunk.fill_null(False).to_numpy(zero_copy_only=False).astype(np.intp)
        return _Field(key, present, codes=flags, constants=np.array([b"false", b"true"], dtype=object))
    python = chunk.to_pylist()
    if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
        present &= np.array([bool(v) for v in python], dtype=bool)  # "" means absent
    return _Field(key, present, values=encode_strings(python))


def _head(table: pa.Table, keys: list[str]) -> tuple[tuple[str, ...], np.ndarray | None]:
    """One '"k1":"v1","k2":"v2"' block per row for the leading run of HEAD_FIELDS that are present and
    fixed-width ASCII, built in numpy (key order stays TOP_FIELDS either way)."""
    used, blocks = [], []
    for key in HEAD_FIELDS:
        data = _fixed_ascii(_chunk(table, key)) if key in keys else None
        if data is None:
            break
        label = f'{"," if blocks else ""}"{key}":"'.encode()
        block = np.empty((data.shape[0], len(label) + data.shape[1] + 1), dtype=np.uint8)
        block[:, :len(label)] = np.frombuffer(label, dtype=np.uint8)
        block[:, len(label):-1] = data
        block[:, -1] = ord('"')
        used.append(key)
        blocks.append(block)
    if not blocks:
        return (), None
    joined = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    return tuple(used), joined.view(f"S{joined.shape[1]}").ravel()


@cache
def _template(head: bool, fields: tuple[tuple[str, bytes | None], ...]) -> bytes:
    """Template for one group: head slot, then fields in contract order; constants baked in, None -> %s."""
    parts = ["%s"] if head else []
    by_key = dict(fields)

    def item(key: str) -> str:
        value = by_key[key]
        return f'"{key}":' + ("%s" if value is None else value.decode().replace("%", "%%"))

    for key in TOP_FIELDS:
        if key == "identifiers":
            idents = [k for k in IDENTIFIER_FIELDS if k in by_key]
            if idents:
                parts.append('"identifiers":{' + ",".join(item(k) for k in idents) + "}")
        elif key in by_key:
            parts.append(item(key))
    return ("{" + ",".join(parts) + "}").encode()


def _slot_keys(fields: tuple[tuple[str, bytes | None], ...]) -> list[str]:
    slots = {k for k, v in fields if v is None}
    ordered = [k for k in TOP_FIELDS if k != "identifiers"]
    at = TOP_FIELDS.index("identifiers")
    ordered[at:at] = IDENTIFIER_FIELDS
    return [k for k in ordered if k in slots]


def serialize_table(table: pa.Table) -> list[bytes]:
    n = table.num_rows
    if n == 0:
        return []
    token = (table.schema.metadata or {}).get(TOKEN_KEY)
    dictionaries = registered_dictionaries(token.decode()) if token else None
    keys = [k for k in FIELDS if k in table.column_names]
    with _gc_paused():
        head_keys, head = _head(table, keys)
        fields = [_field(table, k, dictionaries) for k in keys if k not in head_keys]
        # Group rows by (which slot fields are present, which constant each constant field takes).
        group = np.zeros(n, dtype=np.int64)
        offsets, bit = [], 0
        for f in fields:
            offsets.append(bit)
            if f.constants is not None:
                group |= np.where(f.present, f.codes + 1, 0).astype(np.int64) << bit
                bit += 5
            else:
                group |= f.present.astype(np.int64) << bit
                bit += 1
        if bit > 63:
            raise ValueError("too many optional fields to group events by")
        order = np.argsort(group, kind="stable")
        codes, starts = np.unique(group[order], return_index=True)
        bounds = np.append(starts, n)
        out = np.empty(n, dtype=object)
        by_key = {f.key: f for f in fields}
        for g, code in enumerate(codes.tolist()):
            rows = order[bounds[g]:bounds[g + 1]]
            chosen: list[tuple[str, bytes | None]] = []
            for f, offset in zip(fields, offsets, strict=True):
                if f.constants is not None:
                    c = code >> offset & 31
                    if c:
                        chosen.append((f.key, f.constants[c - 1]))
                elif code >> offset & 1:
                    chosen.append((f.key, None))
            shape = tuple(chosen)
            slots = [by_key[k].values[rows].tolist() for k in _slot_keys(shape)]
            if head is not None:
                slots.insert(0, head[rows].tolist())
            template = _template(head is not None, shape)
            out[rows] = np.fromiter(map(template.__mod__, zip(*slots, strict=True)), dtype=object,
                                    count=rows.size)
        return out.tolist()


def serialize_batch(batch: pa.Table | list[dict[str, Any]]) -> list[bytes]:
    """JSON bytes per event, in batch order. Columns starting with '_' (ground truth) are never emitted."""
    if isinstance(batch, pa.Table):
        return serialize_table(batch)
    with _gc_paused():
        return [orjson.dumps(event) for event in batch]
