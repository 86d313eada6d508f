"""The uplift SendFlowr brings on the user's own list: logged decisions joined to what followed them.

    report = measure_uplift(client, database, SignalRules(), UpliftConfig(horizon_hours=72))

ClickHouse joins every logged decision (decision_log) to its delivery and that delivery's genuine engagement,
and sums the outcomes per unit of people, arm, fallback level and evidence bucket (sql/uplift/outcomes.sql);
numpy bootstraps the per-arm rates over those units (stats.py). Nothing here needs ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sendflowr import progress
from sendflowr.decisions.arms import CONTROL, TREATMENT
from sendflowr.sql_files import load_sql
from sendflowr.timing.decide import LEVELS
from sendflowr.timing.owners import owner_map
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import range_parameters
from sendflowr.uplift.stats import ArmComparison, compare_arms, decisions_needed, poisson_weights

# Evidence behind the curve (weighted genuine engagements of the person): bucket name, upper edge (exclusive).
EVIDENCE_BUCKETS: tuple[tuple[str, float], ...] = (("0", 1.0), ("1-5", 5.0), ("5-20", 20.0), ("20+", math.inf))
UNITS = 10_000  # people are hashed into at most this many bootstrap units


@dataclass(frozen=True)
class UpliftConfig:
    horizon_hours: int = 72  # a delivery counts as engaged when genuinely engaged within this many hours
    tolerance_minutes: int = 15  # compliance: delivered this close to the chosen moment
    since: datetime | None = None  # only decisions made from then on (default: all)
    min_decisions: int = 100  # per arm, matured and delivered, before anything is concluded ...
    min_engaged: int = 10  # ... and engaged decisions per arm


@dataclass(frozen=True)
class Group:
    kind: str  # overall | fallback_level | evidence
    name: str
    comparison: ArmComparison
    enough: bool  # both arms have min_decisions and min_engaged
    predicted_uplift: float  # the model's own expectation: mean expected_engagement, treatment - control

    @property
    def label(self) -> str:
        return "all decisions" if self.kind == "overall" else f"{self.kind} {self.name}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "enough_data": self.enough,
                "predicted_uplift": self.predicted_uplift, **self.comparison.to_dict()}


@dataclass
class UpliftReport:
    observed_before: datetime
    config: UpliftConfig
    decisions: dict[str, int] = field(default_factory=dict)  # per arm: logged (retries counted once)
    due: dict[str, int] = field(default_factory=dict)  # per arm: chosen moment already past
    delivered: dict[str, int] = field(default_factory=dict)  # per arm: a delivery was found
    compliant: dict[str, int] = field(default_factory=dict)  # per arm: delivered within the tolerance, of `due`
    groups: list[Group] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # name -> base64 PNG

    @property
    def overall(self) -> Group | None:
        return next((g for g in self.groups if g.kind == "overall"), None)

    def compliance(self, arm: str | None = None) -> float:
        arms = [arm] if arm else [TREATMENT, CONTROL]
        due = sum(self.due.get(a, 0) for a in arms)
        return sum(self.compliant.get(a, 0) for a in arms) / due if due else math.nan

    @property
    def verdict(self) -> str:
        """too_little_data | significantly_worse | significantly_better | not_significant (overall, absolute)."""
        group = self.overall
        if group is None or not group.enough:
            return "too_little_data"
        uplift = group.comparison.uplift
        if uplift.high < 0:
            return "significantly_worse"
        return "significantly_better" if uplift.low > 0 else "not_significant"

    def decisions_to_detect(self, relative: float = 0.1) -> int | None:
        """Decisions needed to detect a `relative` uplift over the measured control rate at the measured share."""
        group = self.overall
        if group is None or not group.comparison.control_decisions or not group.comparison.treatment_decisions:
            return None
        c = group.comparison
        base, share = c.control_rate.point, c.control_decisions / (c.control_decisions + c.treatment_decisions)
        if not 0 < base < 1 or not 0 < base * (1 + relative) < 1:
            return None
        return decisions_needed(base, base * relative, share)

    def to_dict(self) -> dict:
        return {"observed_before": self.observed_before.isoformat(), "horizon_hours": self.config.horizon_hours,
                "tolerance_minutes": self.config.tolerance_minutes, "verdict": self.verdict,
                "decisions": self.decisions, "due": self.due, "delivered": self.delivered,
                "compliant": self.compliant, "compliance": self.compliance(),
                "groups": [g.to_dict() for g in self.groups]}


def outcome_units(client: Client, database: str, rules: SignalRules, config: UpliftConfig,
                  observed_before: datetime) -> pa.Table:
    """Per (unit, arm, fallback level, evidence bucket index 1..): decisions, due, delivered, compliant, matured,
    engaged and the sum of expected engagement over matured decisions."""
    since = config.since or datetime(2000, 1, 1, tzinfo=UTC)
    # the events that can be a decision's delivery: from the earliest window start, less the tolerance
    logged, first_after = client.query(
        f"SELECT count(), toUnixTimestamp64Milli(min(send_after)) FROM {database}.decision_log "
        "WHERE decided_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
        "AND decided_at < fromUnixTimestamp64Milli({before:Int64}, 'UTC')",
        parameters={"since": _ms(since), "before": _ms(observed_before)}).result_rows[0]
    events_since = int(first_after) - config.tolerance_minutes * 60_000 if logged else _ms(observed_before)
    states = load_sql("timing/message_state.sql", database)
    sql = load_sql("uplift/outcomes.sql", database).replace("${states}", states)
    ranges = range_parameters({k: (0, e) for k, e in progress.committed_ends(client, database).items()})
    with owner_map(client, database) as owners:
        return client.query_arrow(sql, parameters={
            **ranges, "owners": owners, "groups": UNITS, "decided_since_ms": _ms(since), "since_ms": events_since,
            "observed_before_ms": _ms(observed_before),
            "horizon_ms": config.horizon_hours * 3_600_000, "tolerance_ms": config.tolerance_minutes * 60_000,
            "bucket_edges": [edge if math.isfinite(edge) else 1e300 for _, edge in EVIDENCE_BUCKETS],
            "scanner_window_ms": rules.scanner_window_ms, "scanner_burst_ms": rules.scanner_burst_ms,
            "scanner_burst_links": rules.scanner_burst_links, "scanner_agents": list(rules.scanner_agents)},
            use_strings=True)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def measure_uplift(client: Client, database: str, rules: SignalRules, config: UpliftConfig = UpliftConfig(),
                   now: datetime | None = None) -> UpliftReport:
    observed_before = now or datetime.now(UTC)
    return summarize(outcome_units(client, database, rules, config, observed_before), config, observed_before)


def summarize(table: pa.Table, config: UpliftConfig, observed_before: datetime) -> UpliftReport:
    report = UpliftReport(observed_before=observed_before, config=config)
    col = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    arm = col["arm"].astype(str) if table.num_rows else np.zeros(0, str)
    for a in (TREATMENT, CONTROL):
        mine = arm == a
        for key, attr in (("decisions", report.decisions), ("due", report.due), ("delivered", report.delivered),
                          ("compliant", report.compliant)):
            attr[a] = int(col[key][mine].sum()) if table.num_rows else 0
    if not table.num_rows:
        return report
    units, unit = np.unique(col["unit"], return_inverse=True)
    weights = poisson_weights(len(units))
    level, bucket = col["fallback_level"].astype(str), col["bucket"].astype(np.int64)
    selections = [("overall", "all", np.ones(len(arm), bool))]
    selections += [("fallback_level", name, level == name) for name in LEVELS]
    selections += [("evidence", name, bucket == i + 1) for i, (name, _) in enumerate(EVIDENCE_BUCKETS)]
    for kind, name, rows in selections:
        if not rows.any():
            continue
        per_arm = []
        for a in (TREATMENT, CONTROL):
            mine = rows & (arm == a)
            per_arm += [np.bincount(unit[mine], col[key][mine].astype(np.float64), len(units))
                        for key in ("matured", "engaged")]
        comparison = compare_arms(*per_arm, weights)
        expected = {a: (col["expected"][rows & (arm == a)].sum(), col["matured"][rows & (arm == a)].sum())
                    for a in (TREATMENT, CONTROL)}
        predicted = (expected[TREATMENT][0] / expected[TREATMENT][1] - expected[CONTROL][0] / expected[CONTROL][1]
                     if expected[TREATMENT][1] and expected[CONTROL][1] else math.nan)
        enough = (min(comparison.treatment_decisions, comparison.control_decisions) >= config.min_decisions
                  and min(comparison.treatment_engaged, comparison.control_engaged) >= config.min_engaged)
        report.groups.append(Group(kind, name, comparison, enough, float(predicted)))
    return report
