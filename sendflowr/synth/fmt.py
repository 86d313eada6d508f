"""Vectorized text for millions of events: opaque ids, RFC 3339 times, ULIDs, zero-copy Arrow strings.

Everything works on whole numpy arrays; strings are built as (n, width) uint8 matrices of ASCII codes and
handed to Arrow without a per-row Python step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_CROCKFORD = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# zero-padded decimal codes for 0..9999 at widths 2, 3, 4 (lookups beat integer division per digit)
_DEC = {w: np.array([list(f"{v:0{w}d}".encode()) for v in range(10**w)], dtype=np.uint8) for w in (2, 3, 4)}
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def mix64(values: np.ndarray | int) -> np.ndarray:
    """SplitMix64 finalizer: a bijection on uint64, so distinct inputs always give distinct outputs."""
    z = np.asarray(values, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def salt(seed: int, purpose: int) -> np.uint64:
    """A per-seed constant to XOR into keys before mixing (XOR keeps the mapping a bijection)."""
    return np.uint64(mix64(np.uint64(seed) ^ mix64(np.uint64(purpose + 1)))[()])


def hex_codes(values: np.ndarray) -> np.ndarray:
    """uint64 -> (n, 16) lowercase hex ASCII codes."""
    raw = np.ascontiguousarray(values, dtype=">u8")
    text = raw.tobytes().hex().encode("ascii")  # one C call for the whole array
    return np.frombuffer(text, dtype=np.uint8).reshape(raw.shape[0], 16)


def with_prefix(prefix: bytes | np.ndarray, body: np.ndarray) -> np.ndarray:
    """Prepend a constant prefix (bytes) or per-row prefixes ((n, k) codes) to an (n, w) code matrix."""
    if isinstance(prefix, bytes):
        prefix = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (body.shape[0], len(prefix)))
    return np.concatenate([prefix, body], axis=1)


def civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days since 1970-01-01 -> (year, month, day); Howard Hinnant's algorithm, vectorized."""
    z = days.astype(np.int64) + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


_CLOCK: np.ndarray | None = None


def _clock() -> np.ndarray:
    """(86400, 8) codes of 'HH:MM:SS' for every second of a day, built once."""
    global _CLOCK
    if _CLOCK is None:
        sec = np.arange(86_400)
        clock = np.empty((86_400, 8), dtype=np.uint8)
        clock[:, 0:2] = _DEC[2][sec // 3600]
        clock[:, 3:5] = _DEC[2][sec // 60 % 60]
        clock[:, 6:8] = _DEC[2][sec % 60]
        clock[:, [2, 5]] = ord(":")
        _CLOCK = clock
    return _CLOCK


def date_codes(days: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 -> (n, 10) codes of 'YYYY-MM-DD'."""
    year, month, day = civil_from_days(days)
    if days.size and (year.min() < 0 or year.max() > 9999):
        raise ValueError("RFC 3339 times need years 0000-9999")
    out = np.empty((days.shape[0], 10), dtype=np.uint8)
    out[:, 0:4] = _DEC[4][year]
    out[:, 5:7] = _DEC[2][month]
    out[:, 8:10] = _DEC[2][day]
    out[:, [4, 7]] = ord("-")
    return out


def rfc3339_ms_codes(ms: np.ndarray) -> np.ndarray:
    """Epoch milliseconds -> (n, 24) codes of 'YYYY-MM-DDTHH:MM:SS.mmmZ'."""
    ms = np.asarray(ms, dtype=np.int64)
    out = np.empty((ms.shape[0], 24), dtype=np.uint8)
    if ms.size == 0:
        return out
    days, rem = np.divmod(ms, MS_PER_DAY)
    first = int(days.min())
    out[:, 0:10] = date_codes(np.arange(first, int(days.max()) + 1))[days - first]  # few distinct days
    out[:, 10] = ord("T")
    seconds, millis = np.divmod(rem, 1000)
    out[:, 11:19] = _clock()[seconds]
    out[:, 19] = ord(".")
    out[:, 20:23] = _DEC[3][millis]
    out[:, 23] = ord("Z")
    return out


def ulid_codes(ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 26) Crockford base32 ULIDs: 48-bit millisecond time then 80 random bits."""
    ms = np.asarray(ms, dtype=np.int64)
    shifts = np.arange(45, -1, -5, dtype=np.int64)  # 10 chars * 5 bits, top char carries 3 bits
    time_part = _CROCKFORD[(ms[:, None] >> shifts) & 31]
    random_part = _CROCKFORD[rng.integers(0, 32, size=(ms.shape[0], 16))]
    return np.concatenate([time_part, random_part], axis=1)


def codes_to_str(codes: np.ndarray) -> list[str]:
    """(n, w) ASCII codes -> list of Python str (for per-person tables, not per event)."""
    if codes.shape[0] == 0:
        return []
    return codes.astype(np.uint32).view(f"<U{codes.shape[1]}").ravel().tolist()


def arrow_fixed_strings(codes: np.ndarray) -> pa.StringArray:
    """(n, w) ASCII codes -> Arrow string array sharing the same bytes (no per-row work)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, width = codes.shape
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(codes))


def hour_of_week(ms: np.ndarray) -> np.ndarray:
    """UTC hour of the week, Monday 00:00 = 0 (1970-01-01 was a Thursday, i.e. day 3)."""
    return ((np.asarray(ms, dtype=np.int64) // MS_PER_HOUR + 72) % 168).astype(np.int16)
