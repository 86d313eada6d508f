"""The event contract checked a column at a time: which records of a batch are certainly valid.

`certify(records, now)` returns a mask: True where a record (a parsed JSON value) is valid by the contract
(`sendflowr.events.event_errors` would return no error) and fits every length limit as it is (no optional field
to trim). False means "not certified", not "invalid": the caller runs the one per-record validator on those, so
verdicts and reject reasons stay exactly that validator's. The check is stricter than the validator, never
looser; tests/test_connectors_native.py holds it to that on the ingestion corpus and on random hostile events.

The field rules are read from the JSON Schema itself (required fields, allowed keys, lengths, enums, consts,
booleans, the identifiers object), so a schema edit cannot leave this check behind: a keyword it does not know
fails at import. `occurred_at` is read column-wise as a byte matrix (numpy: the schema's form, stricter, then
date arithmetic) with the checks `events.parse_occurred_at` makes (a real calendar time, an offset below 24 h
with minutes 00-59) and the range [2000-01-01, now + 5 minutes] in microseconds, as Python compares datetimes.

Records of one batch mostly share their keys in the same order: they are grouped by that shape, each shape's
keys are checked once, and each group's values are pulled out as columns with one itemgetter pass.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import repeat
from typing import Any

import numpy as np

from sendflowr.events import EARLIEST_OCCURRED_AT, FUTURE_TOLERANCE, event_schema

_ANNOTATIONS = frozenset({"description", "title", "$comment", "$schema", "$id", "examples"})
# The schema's pattern for times, as this check was written for it (a different one fails at import). _times_ok
# checks the same form, stricter: ASCII text and digits only (Python's \d also takes other digits), nothing after
# the end (Python's $ also matches before a final newline).
_SCHEMA_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class UncoveredSchema(NotImplementedError):
    """The event schema uses a JSON-schema feature the column checks do not implement. Raised when the checks are
    built from the schema, so a schema change fails loudly instead of letting unchecked records through."""


class _Field:
    """What one schema property allows, in the few forms the event schema uses."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        unknown = set(spec) - _ANNOTATIONS - {"type", "minLength", "maxLength", "enum", "const", "pattern",
                                              "format", "minProperties", "additionalProperties", "properties"}
        if unknown:
            raise UncoveredSchema(f"event_columns does not check {sorted(unknown)} of field {name!r}")
        self.name = name
        self.kind = spec.get("type")
        self.enum = frozenset(spec["enum"]) if "enum" in spec else None
        self.has_const = "const" in spec
        self.const = spec.get("const")
        self.min_length = int(spec.get("minLength", 0))
        self.max_length = int(spec.get("maxLength", 1 << 62))
        self.pattern = spec.get("pattern")
        self.format = spec.get("format")
        if self.enum is not None and not all(isinstance(v, str) for v in self.enum):
            raise UncoveredSchema(f"event_columns checks enums of strings only ({name!r})")
        if self.has_const and type(self.const) not in (int, str):
            raise UncoveredSchema(f"event_columns checks int or string consts only ({name!r})")
        if self.format not in (None, "date-time") or (self.format and self.kind != "string"):
            raise UncoveredSchema(f"event_columns does not check format {self.format!r} of {name!r}")
        if self.pattern not in (None, _SCHEMA_TIME):
            raise UncoveredSchema(f"event_columns does not know the pattern of {name!r}")
        if self.kind == "object":
            self.object = _Object(name, spec)
        elif self.kind not in (None, "string", "boolean") or (self.kind is None and self.enum is None
                                                              and not self.has_const):
            raise UncoveredSchema(f"event_columns does not check type {self.kind!r} of {name!r}")

    def check(self, values: Sequence[Any], latest_us: int) -> np.ndarray:
        """Each check first asks, at C speed, whether the whole column passes (the usual case); only a column with
        a failing value is checked value by value."""
        n = len(values)
        if self.kind == "object":
            return self.object.check(values, latest_us)
        types = list(map(type, values))
        if self.kind == "boolean":
            return np.ones(n, bool) if types.count(bool) == n else _is(types, bool)
        if self.has_const:
            kind = type(self.const)
            if types.count(kind) == n and values.count(self.const) == n:
                return np.ones(n, bool)
            return _is(types, kind) & np.fromiter(map(operator.eq, values, repeat(self.const)), bool, n)
        if types.count(str) != n:  # anything but text is not certified: check the strings alone
            return _only(values, _is(types, str), lambda chosen: self.check(chosen, latest_us))
        if self.enum is not None:
            ok = np.ones(n, bool) if self.enum.issuperset(values) else np.fromiter(
                map(self.enum.__contains__, values), bool, n)
        elif max(map(len, values)) <= self.max_length and (not self.min_length
                                                           or min(map(len, values)) >= self.min_length):
            ok = np.ones(n, bool)
        else:
            lengths = np.fromiter(map(len, values), np.int64, n)
            ok = (lengths >= self.min_length) & (lengths <= self.max_length)
        if self.pattern is not None or self.format is not None:
            ok &= _times_ok(values, latest_us)
        return ok


def _is(types: list[type], kind: type) -> np.ndarray:
    return np.fromiter(map(operator.is_, types, repeat(kind)), bool, len(types))


class _Object:
    """An object with fixed properties: additionalProperties false, required keys, minProperties."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        unknown = set(spec) - _ANNOTATIONS - {"type", "required", "additionalProperties", "properties",
                                              "minProperties"}
        if unknown or spec.get("additionalProperties") is not False or spec.get("type") != "object":
            raise UncoveredSchema(f"event_columns checks closed objects only ({name!r}: {sorted(unknown)})")
        self.fields = {key: _Field(key, sub) for key, sub in spec.get("properties", {}).items()}
        self.required = frozenset(spec.get("required", ()))
        self.min_properties = int(spec.get("minProperties", 0))

    def shape_ok(self, keys: frozenset) -> bool:
        return len(keys) >= self.min_properties and self.required <= keys and keys <= self.fields.keys()

    def check(self, values: Sequence[Any], latest_us: int) -> np.ndarray:
        n = len(values)
        types = list(map(type, values))
        if types.count(dict) != n:
            return _only(values, _is(types, dict), lambda chosen: self.check(chosen, latest_us))
        ok = np.ones(n, bool)
        # Records of a batch share a few key sets: each is checked once, its members' values column by column.
        # (key tuples are cheap to build; each distinct one becomes a set once, so key order makes no new group)
        shapes = list(map(tuple, values))
        keys_of = {shape: frozenset(shape) for shape in set(shapes)}
        distinct = list(set(keys_of.values()))
        if len(distinct) == 1:
            groups = [(distinct[0], None)]
        else:
            code_of = {keys: code for code, keys in enumerate(distinct)}
            code_of = {shape: code_of[keys] for shape, keys in keys_of.items()}
            codes = np.fromiter(map(code_of.__getitem__, shapes), np.int64, n)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(distinct) + 1))
            groups = [(keys, order[bounds[c]:bounds[c + 1]]) for c, keys in enumerate(distinct)]
        for shape, rows in groups:
            where = slice(None) if rows is None else rows
            if not self.shape_ok(shape):
                ok[where] = False
                continue
            members = values if rows is None else _pick(values, rows)
            good = np.ones(len(members), bool)
            for key in shape:
                good &= self.fields[key].check(list(map(operator.itemgetter(key), members)), latest_us)
            ok[where] &= good
        return ok


def _pick(values: Sequence[Any], rows: np.ndarray) -> list[Any]:
    """values[rows] of a Python sequence, at C speed."""
    if len(rows) == 1:
        return [values[int(rows[0])]]
    return list(operator.itemgetter(*rows.tolist())(values)) if len(rows) else []


def _only(values: Sequence[Any], mask: np.ndarray, check) -> np.ndarray:
    """`check` run on the values where mask holds; False elsewhere."""
    out = np.zeros(len(values), bool)
    rows = np.flatnonzero(mask)
    if len(rows):
        out[rows] = check(_pick(values, rows))
    return out


@cache
def _schema() -> _Object:
    return _Object("event", event_schema())


def _limit_us(now: datetime) -> int:
    return ((now + FUTURE_TOLERANCE) - _EPOCH) // _US


_EARLIEST_US = (EARLIEST_OCCURRED_AT - _EPOCH) // _US


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm), vectorized."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_WIDTH = 35  # the longest text of the form: 19 + a fraction of 10 + an offset of 6
_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_MARKS = ((4, b"-"), (7, b"-"), (10, b"T"), (13, b":"), (16, b":"))


def _times_ok(values: list[str], latest_us: int) -> np.ndarray:
    """RFC 3339 times that parse to a real moment in [2000-01-01, now + tolerance] (the semantic rules of
    events.event_errors), in the schema's form (stricter, see _SCHEMA_TIME). It is checked on a byte matrix: the date
    and time of day sit at fixed places, the offset (Z or +hh:mm) at fixed places from the end, the fraction
    between them."""
    n = len(values)
    ends = np.fromiter(map(len, values), np.int64, n)
    ascii_ = np.fromiter(map(str.isascii, values), bool, n) & (ends >= 20) & (ends <= _WIDTH)
    rows = np.flatnonzero(ascii_)
    out = np.zeros(n, bool)
    if not len(rows):
        return out
    ends = ends[rows]
    m = np.array(values if len(rows) == n else _pick(values, rows), f"S{_WIDTH}").view(np.uint8)
    m = m.reshape(len(rows), _WIDTH).astype(np.int32)
    digit = m - 48
    is_digit = (digit >= 0) & (digit <= 9)
    at = np.arange(len(rows))

    def char(places: np.ndarray) -> np.ndarray:
        return m[at, np.clip(places, 0, _WIDTH - 1)]

    def number(*places: int) -> np.ndarray:
        value = digit[:, places[0]].copy()
        for place in places[1:]:
            value = value * 10 + digit[:, place]
        return value.astype(np.int64)

    zulu = char(ends - 1) == ord("Z")
    suffix = np.where(zulu, ends - 1, ends - 6)  # where the fraction ends
    sign = char(ends - 6)
    form = is_digit[:, _DIGITS].all(axis=1)
    for place, mark in _MARKS:
        form &= m[:, place] == mark[0]
    tail = [char(ends - k) - 48 for k in (5, 4, 2, 1)]  # the offset's digits when there is one
    offset_digits = np.logical_and.reduce([(t >= 0) & (t <= 9) for t in tail])
    form &= zulu | (((sign == ord("+")) | (sign == ord("-"))) & (char(ends - 3) == ord(":")) & offset_digits)
    # a fraction: "." at 19 and 1 to 9 digits up to the suffix; none: the suffix starts at 19
    in_fraction = np.arange(20, 29)[None, :] < suffix[:, None]
    counted = (is_digit[:, 20:29] & in_fraction).sum(axis=1)
    form &= (suffix == 19) | ((m[:, 19] == ord(".")) & (suffix >= 21) & (suffix <= 29) & (counted == suffix - 20))
    y, mo, d = number(0, 1, 2, 3), number(5, 6), number(8, 9)
    h, mi, s = number(11, 12), number(14, 15), number(17, 18)
    oh = np.where(zulu, 0, tail[0] * 10 + tail[1]).astype(np.int64)
    om = np.where(zulu, 0, tail[2] * 10 + tail[3]).astype(np.int64)
    # Python keeps microseconds and drops further digits; fraction digits sit at 20 up to the suffix
    micros = np.zeros(len(rows), np.int64)
    for k in range(6):
        micros = micros * 10 + np.where(in_fraction[:, k], digit[:, 20 + k], 0)
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(mo, 0, 12)]
    real = ((y >= 1) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= month_days + (leap & (mo == 2)))
            & (h <= 23) & (mi <= 59) & (s <= 59) & (oh <= 23) & (om <= 59))
    seconds = (_days_from_civil(y, np.clip(mo, 1, 12), d) * 86_400 + h * 3600 + mi * 60 + s
               - np.where(sign == ord("-"), -1, 1) * (oh * 3600 + om * 60))
    moment = seconds * 1_000_000 + micros
    out[rows] = form & real & (moment >= _EARLIEST_US) & (moment <= latest_us)
    return out


def certify(records: Sequence[Any], now: datetime | None = None) -> np.ndarray:
    """Mask of records certainly valid by the event contract as they are (see the module docstring)."""
    if not len(records):
        return np.zeros(0, bool)
    return _schema().check(records, _limit_us(now or datetime.now(UTC)))
