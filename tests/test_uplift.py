"""The uplift measurement (sendflowr/uplift, sql/uplift/outcomes.sql) on the real engine: decisions joined to their
deliveries by message_id or by the nearest delivery, the timing signal rules for genuine engagement, compliance,
maturity; the bootstrap's coverage and the power calculation; the asset and its check's verdicts."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from api_world import Person, write_identity
from dagster import AssetCheckSeverity, materialize
from dagster_resources import resource_for

from sendflowr.clickhouse import get_client
from sendflowr.decisions import records
from sendflowr.migrations import apply_migrations
from sendflowr.settings import Settings
from sendflowr.timing.signals import SignalRules
from sendflowr.uplift.measure import EVIDENCE_BUCKETS, UpliftConfig, measure_uplift, outcome_units
from sendflowr.uplift.stats import compare_arms, decisions_needed, poisson_weights
from sendflowr_assets.defs.decisions.assets import UPLIFT_CHECK, timing_uplift

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = (NOW - timedelta(days=10)).replace(minute=0, second=0)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
PROXY = "Mozilla/5.0"
NO_WORLD = {"ops": {"timing_uplift": {"config": {"ground_truth": "/nonexistent/world"}}}}  # no synthetic truth here
S, MIN, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)


@pytest.fixture
def db(base_settings: Settings, clickhouse: Settings):
    settings = base_settings.model_copy(update={"clickhouse_database": f"up_{uuid.uuid4().hex[:10]}"})
    apply_migrations(settings)
    client = get_client(settings)
    yield settings, client
    client.close()


def decision(person: Person, arm: str, chosen: datetime, message_id: str = "", campaign_id: str = "c1",
             level: str = "person", evidence: float = 2.0, window: timedelta = timedelta(days=2),
             decided: datetime | None = None, expected: float = 0.2) -> dict:
    after = T0 - 5 * H
    return {"decision_id": uuid.uuid4().hex, "decided_at": decided or after - H, "endpoint": "batch",
            "universal_id": person.universal_id, "known_person": 1, "campaign_id": campaign_id,
            "message_id": message_id, "send_after": after, "send_before": after + window, "latency_seconds": 0.0,
            "trigger_at": chosen, "delivery_at": chosen, "arm": arm, "model_delivery_at": chosen,
            "confidence": 0.5, "expected_engagement": expected, "model_expected_engagement": expected,
            "fallback_level": level, "evidence": evidence, "cohort": "", "snapshot_version": "t1",
            "control_share": 0.5, "policy": "greedy", "exploration": 0.0, "kafka_topic": "decisions",
            "kafka_partition": 0, "kafka_offset": 0, "kafka_row": 0}


def write_decisions(client, database: str, rows: list[dict]) -> None:
    names = [*records.NAMES, "kafka_topic", "kafka_partition", "kafka_offset", "kafka_row"]
    client.insert(f"{database}.decision_log", [[r[n] for n in names] for r in rows], column_names=names)


EVENT_NAMES = ["event_id", "event_type", "occurred_at", "person_key", "email", "message_id", "user_agent", "ip",
               "url", "machine_open", "bot_click", "kafka_topic", "kafka_partition", "kafka_offset"]


def event(kind: str, at: datetime, person: Person, message_id: str, ua: str = "", ip: str = "198.51.100.7",
          url: str = "", machine_open: int = 0) -> list:
    email = person.identifiers["email"]
    return [uuid.uuid4().hex, kind, at, email.lower(), email, message_id, ua, ip, url, machine_open, 0, "events", 0, 0]


def write_events(client, database: str, rows: list[list]) -> None:
    """Events as ingestion leaves them: the rows, and their offset range (all at offset 0 here) committed."""
    client.insert(f"{database}.events", rows, column_names=EVENT_NAMES)
    client.insert(f"{database}.ingest_ranges", [["events", "events", 0, 0, 1, "committed", "test", len(rows),
                                                 len(rows), 0]],
                  column_names=["kafka_topic", "sink", "kafka_partition", "start_offset", "end_offset", "state",
                                "run_id", "messages", "valid", "rejected"])


def people(n: int, prefix: str = "p") -> list[Person]:
    return [Person({"email": f"{prefix}{i}@fastmail.com"}, peak=None) for i in range(n)]


def sums(table) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    arm = table.column("arm").to_pylist()
    for key in ("decisions", "due", "delivered", "compliant", "matured", "engaged"):
        values = table.column(key).to_pylist()
        for a, v in zip(arm, values, strict=True):
            out.setdefault(a, {}).setdefault(key, 0)
            out[a][key] += v
    return out


def test_decisions_meet_their_deliveries_and_genuine_engagement(db) -> None:
    settings, client = db
    database = settings.clickhouse_database
    p = people(11)
    write_identity(client, database, p)
    late = NOW - 10 * H  # delivered too recently to have matured (72 h horizon)
    write_decisions(client, database, [
        decision(p[1], "treatment", T0, "M1", evidence=25.0),
        decision(p[2], "treatment", T0 + H, "M2", evidence=7.0),
        decision(p[3], "treatment", T0 + 2 * H, "M3", level="cohort", evidence=0.0),
        decision(p[4], "control", T0 + 3 * H, "M4"),
        decision(p[5], "control", T0 + 5 * H),  # no message_id: the nearest of the person's deliveries
        decision(p[6], "control", T0 + 6 * H, window=timedelta(days=1)),  # their only delivery is outside
        decision(p[7], "treatment", T0 + 7 * H, "M7", decided=T0 - 30 * H),  # asked twice (a retry): once
        decision(p[7], "treatment", T0 + 7 * H, "M7", decided=T0 - 20 * H),
        decision(p[8], "treatment", late, "M8"),
        decision(p[9], "control", T0 + 9 * H, "M9"),
        decision(p[10], "control", T0 + 10 * H, "M10"),
    ])
    write_events(client, database, [
        event("delivered", T0 + 3 * S, p[1], "M1"), event("opened", T0 + 30 * MIN, p[1], "M1", BROWSER),
        # Apple's prefetch is never an engagement; a second proxy open is the reader
        event("delivered", T0 + H + 2 * S, p[2], "M2"), event("opened", T0 + H + 20 * S, p[2], "M2", PROXY, "17.1.2.3"),
        event("delivered", T0 + 2 * H, p[3], "M3"), event("opened", T0 + 2 * H + 10 * S, p[3], "M3", PROXY, "17.1.2.3"),
        event("opened", T0 + 4 * H, p[3], "M3", PROXY, "17.9.9.9"),
        # delivered two hours late (not compliant); the only click is a security scanner's
        event("delivered", T0 + 5 * H, p[4], "M4"),
        event("clicked", T0 + 5 * H + 5 * S, p[4], "M4", "Mimecast Safe Links", url="https://x/1"),
        # two deliveries of p5 in the window: the one at the chosen moment is theirs, engaged by a human click
        event("delivered", T0 + 5 * H + 10 * S, p[5], "M5a"),
        event("clicked", T0 + 5 * H + 10 * MIN, p[5], "M5a", BROWSER, url="https://x/2"),
        event("delivered", T0 + 30 * H, p[5], "M5b"), event("opened", T0 + 31 * H, p[5], "M5b", BROWSER),
        event("delivered", T0 + 80 * H, p[6], "M6"), event("opened", T0 + 81 * H, p[6], "M6", BROWSER),
        event("delivered", T0 + 7 * H + S, p[7], "M7"),
        event("delivered", late + S, p[8], "M8"), event("opened", late + H, p[8], "M8", BROWSER),
        event("delivered", T0 + 9 * H, p[9], "M9"), event("opened", T0 + 89 * H, p[9], "M9", BROWSER),  # too late
        # an ESP that flags its machine opens: the first unflagged open is the reader
        event("delivered", T0 + 10 * H, p[10], "M10"),
        event("opened", T0 + 10 * H + 5 * S, p[10], "M10", PROXY, "17.1.1.1", machine_open=1),
        event("opened", T0 + 11 * H, p[10], "M10", PROXY, "17.1.1.2"),
    ])
    config = UpliftConfig(horizon_hours=72)
    table = outcome_units(client, database, SignalRules(), config, NOW)
    assert sums(table) == {
        "treatment": {"decisions": 5, "due": 5, "delivered": 5, "compliant": 5, "matured": 4, "engaged": 2},
        "control": {"decisions": 5, "due": 5, "delivered": 4, "compliant": 3, "matured": 4, "engaged": 2},
    }
    by_bucket: dict[int, int] = {}
    for bucket, n in zip(table.column("bucket").to_pylist(), table.column("decisions").to_pylist(), strict=True):
        by_bucket[bucket] = by_bucket.get(bucket, 0) + n
    names = [name for name, _ in EVIDENCE_BUCKETS]
    assert {names[b - 1]: n for b, n in by_bucket.items()} == {"20+": 1, "5-20": 1, "0": 1, "1-5": 7}

    report = measure_uplift(client, database, SignalRules(), config, NOW)
    assert report.verdict == "too_little_data"
    overall = report.overall.comparison
    assert (overall.treatment_decisions, overall.treatment_engaged, overall.control_decisions,
            overall.control_engaged) == (4, 2, 4, 2)
    assert overall.uplift.point == 0.0 and report.compliance("control") == pytest.approx(3 / 5)
    cohort = next(g for g in report.groups if g.kind == "fallback_level" and g.name == "cohort").comparison
    assert (cohort.treatment_decisions, cohort.treatment_engaged, cohort.control_decisions) == (1, 1, 0)
    assert math.isnan(cohort.uplift.point)
    # seen from T0 + 90 min: the later chosen moments are not due and nothing has matured
    assert sums(outcome_units(client, database, SignalRules(), config, T0 + 90 * MIN)) == {
        "treatment": {"decisions": 5, "due": 2, "delivered": 2, "compliant": 2, "matured": 0, "engaged": 0},
        "control": {"decisions": 5, "due": 0, "delivered": 0, "compliant": 0, "matured": 0, "engaged": 0},
    }


def test_the_bootstrap_interval_covers_the_true_uplift() -> None:
    """Clustered data (people with several decisions, a person effect on their rate): the 95% interval of the
    difference covers the true difference in about 95% of repeated experiments."""
    rng = np.random.default_rng(0)
    units, reps, covered = 1500, 200, 0
    weights = poisson_weights(units)
    for _ in range(reps):
        base = rng.beta(2, 10, units)  # person effect
        n_t, n_c = rng.poisson(3, units), rng.poisson(1, units)
        e_t, e_c = rng.binomial(n_t, np.minimum(base * 1.3, 1)), rng.binomial(n_c, base)
        truth = (np.minimum(base * 1.3, 1) * n_t).sum() / n_t.sum() - (base * n_c).sum() / n_c.sum()
        interval = compare_arms(n_t, e_t, n_c, e_c, weights).uplift
        covered += interval.low <= truth <= interval.high
    assert 0.9 <= covered / reps <= 0.99


def test_decisions_needed_gives_the_power_it_promises() -> None:
    # the textbook two-proportion figure: (z_.975 + z_.8)^2 (0.12 * 0.88 + 0.1 * 0.9) / 0.02^2 = 3,838.1 per arm
    assert decisions_needed(0.1, 0.02, 0.5) == 7677
    small_control = decisions_needed(0.1, 0.02, 0.1)
    assert small_control > 2.5 * decisions_needed(0.1, 0.02, 0.5)  # a 10% control costs decisions
    n = decisions_needed(0.15, 0.03, 0.2)
    rng = np.random.default_rng(1)
    n_c, n_t = int(n * 0.2), n - int(n * 0.2)
    c, t = rng.binomial(n_c, 0.15, 4000) / n_c, rng.binomial(n_t, 0.18, 4000) / n_t
    pooled = np.sqrt(t * (1 - t) / n_t + c * (1 - c) / n_c)
    power = ((t - c) / pooled > 1.96).mean()
    assert 0.77 < power < 0.83
    with pytest.raises(ValueError):
        decisions_needed(0.1, 0.02, 0.0)


def _experiment(client, database: str, n: int, treatment_rate: float, control_rate: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = people(2 * n, prefix=f"x{seed}-")
    write_identity(client, database, p)
    decisions, events = [], []
    for i, person in enumerate(p):
        arm = "treatment" if i < n else "control"
        chosen = T0 + timedelta(minutes=int(rng.integers(0, 2000)))
        message = f"E{seed}-{i}"
        decisions.append(decision(person, arm, chosen, message, expected=0.3 if arm == "treatment" else 0.2))
        events.append(event("delivered", chosen + 2 * S, person, message))
        if rng.random() < (treatment_rate if arm == "treatment" else control_rate):
            events.append(event("opened", chosen + 40 * MIN, person, message, BROWSER))
    write_decisions(client, database, decisions)
    write_events(client, database, events)



@pytest.mark.parametrize(("treatment_rate", "control_rate", "verdict", "passed"), [
    (0.10, 0.45, "significantly_worse", False),
    (0.45, 0.10, "significantly_better", True),
])
def test_the_asset_check_warns_when_treatment_is_significantly_worse(db, treatment_rate, control_rate, verdict,
                                                                    passed) -> None:
    settings, client = db
    _experiment(client, settings.clickhouse_database, 200, treatment_rate, control_rate, seed=3)
    result = materialize([timing_uplift], resources={"sendflowr": resource_for(settings)}, run_config=NO_WORLD)
    assert result.success
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == UPLIFT_CHECK and check.passed is passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["verdict"].value == verdict
    metadata = result.asset_materializations_for_node("timing_uplift")[0].metadata
    assert metadata["verdict"].value == verdict
    low, high = metadata["uplift_ci95"].value
    assert low <= metadata["uplift"].value <= high and (high < 0 if verdict == "significantly_worse" else low > 0)
    assert metadata["rates_plot"].value.startswith("![rates](data:image/png;base64,")
    assert metadata["uplift_plot"].value.startswith("![uplift](data:image/png;base64,")
    assert "| all decisions | 200, " in metadata["uplift_table"].value
    assert "ground_truth" not in metadata  # no synthetic world here
    report = metadata["report"].value
    assert report["groups"][0]["predicted_uplift"] == pytest.approx(0.1, abs=1e-6)


def test_the_check_never_passes_on_too_little_data(db) -> None:
    settings, client = db
    _experiment(client, settings.clickhouse_database, 30, 0.5, 0.1, seed=4)  # 30 a side: below the minimum
    result = materialize([timing_uplift], resources={"sendflowr": resource_for(settings)}, run_config=NO_WORLD)
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["verdict"].value == "too_little_data" and "too little data" in check.description
    empty = Settings(clickhouse_url=settings.clickhouse_url, clickhouse_database=settings.clickhouse_database)
    client.command(f"TRUNCATE TABLE {empty.clickhouse_database}.decision_log")
    nothing = materialize([timing_uplift], resources={"sendflowr": resource_for(settings)}, run_config=NO_WORLD)
    assert not nothing.get_asset_check_evaluations()[0].passed
    assert nothing.asset_materializations_for_node("timing_uplift")[0].metadata["verdict"].value == "too_little_data"
