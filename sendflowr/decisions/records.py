"""The decision log's record: which fields a served decision is recorded with, and how they travel on Kafka.

One Kafka message carries up to CHUNK_ROWS decisions as columns, JSON:

    {"v": 1, "rows": 2, "columns": {"decision_id": ["9f..", "3a.."], "decided_at": [1765..., 1765...], ...}}

Times are epoch milliseconds (UTC). Columns instead of one message per decision: a 10,000-recipient batch is
encoded with a few orjson calls on numpy columns, not 10,000 dicts, and ClickHouse turns a message back into
rows with one ARRAY JOIN (sql/decision_log/). FIELDS is the one list every layer reads: the encoder here, the
parsing and insert SQL (rendered from it by log_ingest.py) and, checked by tests, the table of migration 0013.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

from sendflowr.decisions import arms, explore

VERSION = 1
CHUNK_ROWS = 500  # decisions per message: well under Kafka's default 1 MB message limit even with long ids
_TIME = "fromUnixTimestamp64Milli({}, 'UTC')"

# (field, JSON element type as ClickHouse reads it, expression turning that element into the table's column)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("decision_id", "String", "{}"),
    ("decided_at", "Int64", _TIME),
    ("endpoint", "String", "{}"),  # single | batch
    ("universal_id", "String", "{}"),
    ("known_person", "Bool", "toUInt8({})"),
    ("campaign_id", "String", "{}"),
    ("message_id", "String", "{}"),
    ("send_after", "Int64", _TIME),
    ("send_before", "Int64", _TIME),
    ("latency_seconds", "Float64", "{}"),
    ("trigger_at", "Int64", _TIME),
    ("delivery_at", "Int64", _TIME),  # the moment served
    ("arm", "String", "{}"),  # treatment | control
    ("model_delivery_at", "Int64", _TIME),  # the model's choice (= delivery_at in the treatment arm)
    ("confidence", "Float64", "{}"),
    ("expected_engagement", "Float64", "{}"),  # the curve at the moment served
    ("model_expected_engagement", "Float64", "{}"),  # the curve at the model's choice
    ("fallback_level", "String", "{}"),
    ("evidence", "Float64", "{}"),  # the person's weighted genuine engagements behind the curve
    ("cohort", "String", "{}"),
    ("snapshot_version", "String", "{}"),
    ("control_share", "Float64", "{}"),  # the share in force when this decision was made
    ("policy", "String", "{}"),  # the rule that chose the moment served: greedy | thompson | random (control arm)
    ("exploration", "Float64", "{}"),  # the exploration scale in force (explore.py; 0: off)
)
NAMES = tuple(name for name, _, _ in FIELDS)
# Fields added after the first release of the record, with the value a message from an API before them means
# (log_ingest.py fills them in, so messages still in the topic during an upgrade are not rejected).
ADDED = {"policy": "'greedy'", "exploration": "0.0"}
_EPOCH, _MS = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def decision_ids(n: int) -> list[str]:
    """n random 128-bit ids as 32 hex characters: one urandom call and slices of its hex (a few numpy calls cost
    more than this for the dozen ids a flush of single decisions needs, and no less for a batch)."""
    text = os.urandom(16 * n).hex()
    return [text[i:i + 32] for i in range(0, 32 * n, 32)]


def singles(decided_at_ms: int, snapshot_version: str, control_share: float, requests: Sequence,
            results: Sequence, exploration: float = 0.0) -> dict:
    """Columns of single decisions decided together (DecisionRequest, DecisionResult pairs)."""
    n = len(results)

    def ms(moments) -> list[int]:
        return [epoch_ms(m) for m in moments]

    return {
        "decision_id": decision_ids(n), "decided_at": [decided_at_ms] * n, "endpoint": ["single"] * n,
        "universal_id": [r.universal_id for r in results], "known_person": [r.known_person for r in results],
        "campaign_id": [q.campaign_id or "" for q in requests], "message_id": [q.message_id or "" for q in requests],
        "send_after": ms(q.send_after for q in requests), "send_before": ms(q.send_before for q in requests),
        "latency_seconds": [float(q.latency_seconds) for q in requests],
        "trigger_at": ms(r.trigger_at for r in results), "delivery_at": ms(r.delivery_at for r in results),
        "arm": [r.arm for r in results],
        "model_delivery_at": ms(r.model_delivery_at or r.delivery_at for r in results),
        "confidence": [r.confidence for r in results], "expected_engagement": [r.expected_engagement for r in results],
        "model_expected_engagement": [r.expected_engagement if r.model_expected_engagement is None
                                      else r.model_expected_engagement for r in results],
        "fallback_level": [r.fallback_level for r in results], "evidence": [float(r.evidence) for r in results],
        "cohort": [r.cohort for r in results], "snapshot_version": [snapshot_version] * n,
        "control_share": [float(control_share)] * n, "policy": [r.policy for r in results],
        "exploration": [float(exploration)] * n,
    }


def batch(decided_at_ms: int, snapshot_version: str, control_share: float, campaign_id: str | None,
          message_ids: Sequence[str | None], after_ms: int, before_ms: int, latency_seconds: float, result,
          exploration: float = 0.0) -> dict:
    """Columns of a batch's decided recipients (a BatchResult; recipients with an error are not decisions)."""
    rows = np.flatnonzero(np.array([f is None for f in result.error_field], bool))
    n = len(rows)

    def ms(column: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(column[rows].astype("datetime64[ms]").astype(np.int64))

    return {
        "decision_id": decision_ids(n), "decided_at": np.full(n, decided_at_ms, np.int64),
        "endpoint": ["batch"] * n, "universal_id": result.universal_id[rows].tolist(),
        "known_person": np.ascontiguousarray(result.known_person[rows]), "campaign_id": [campaign_id or ""] * n,
        "message_id": [message_ids[i] or "" for i in rows.tolist()], "send_after": np.full(n, after_ms, np.int64),
        "send_before": np.full(n, before_ms, np.int64), "latency_seconds": np.full(n, float(latency_seconds)),
        "trigger_at": ms(result.trigger_at), "delivery_at": ms(result.delivery_at),
        "arm": np.where(result.control[rows], arms.CONTROL, arms.TREATMENT).tolist(),
        "model_delivery_at": ms(result.model_delivery_at),
        "confidence": np.ascontiguousarray(result.confidence[rows], np.float64),
        "expected_engagement": np.ascontiguousarray(result.expected_engagement[rows], np.float64),
        "model_expected_engagement": np.ascontiguousarray(result.model_expected_engagement[rows], np.float64),
        "fallback_level": result.fallback_level[rows].tolist(),
        "evidence": np.ascontiguousarray(result.evidence[rows], np.float64), "cohort": result.cohort[rows].tolist(),
        "snapshot_version": [snapshot_version] * n, "control_share": np.full(n, float(control_share)),
        "policy": np.where(result.control[rows], explore.RANDOM,
                           np.where(result.explored[rows], explore.THOMPSON, explore.GREEDY)).tolist(),
        "exploration": np.full(n, float(exploration)),
    }


def encode(columns: dict) -> list[tuple[int, bytes]]:
    """(rows, JSON message) per chunk of at most CHUNK_ROWS decisions."""
    n = len(columns["decision_id"])
    out = []
    for lo in range(0, n, CHUNK_ROWS):
        part = {name: columns[name][lo:lo + CHUNK_ROWS] for name in NAMES}
        rows = len(part["decision_id"])
        out.append((rows, orjson.dumps({"v": VERSION, "rows": rows, "columns": part},
                                       option=orjson.OPT_SERIALIZE_NUMPY)))
    return out
