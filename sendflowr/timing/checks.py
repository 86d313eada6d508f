"""Checks on the timing assets' results; the Dagster checks and the tests call these.

A finding is passed / failed, or `skipped` with the reason when there is nothing to check (no evaluation yet, no
held-out deliveries, no ground truth): the Dagster adapter shows a skip as a warning, never as a pass.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from sendflowr.findings import Finding
from sendflowr.findings import skip as _skip
from sendflowr.timing import versions
from sendflowr.timing.evaluation_run import latest_report

ECE_GOAL = 0.05


def curves_well_formed(client: Client, database: str) -> Finding:
    """Every committed curve has 168 finite values in [0, 1], best_hour is its argmax, its level is known."""
    head = versions.latest_version(client, database)
    if head is None:
        return _skip("no committed curves yet")
    rows = client.query(
        "SELECT universal_id, length(c) AS n, b, lvl FROM (SELECT universal_id, argMax(curve, version) AS c, "
        "argMax(best_hour, version) AS b, toString(argMax(fallback_level, version)) AS lvl "
        f"FROM {database}.timing_curves WHERE {versions.committed(database)} GROUP BY universal_id) "
        "WHERE n != 168 OR arrayExists(x -> NOT isFinite(x) OR x < 0 OR x > 1, c) OR b + 1 != indexOf(c, arrayMax(c)) "
        "OR lvl NOT IN ('person', 'cohort', 'global') LIMIT 10", parameters={"v": head}).result_rows
    return Finding(passed=not rows, facts={"examples": [list(map(str, r)) for r in rows]})


def every_person_has_a_curve(client: Client, database: str) -> Finding:
    """The committed curves run's people count equals the distinct people with a committed curve, and a global
    prior is committed."""
    head = versions.latest_run(client, database, kind="curves")
    if head is None:
        return _skip("no committed curves run yet")
    curves = int(client.command(f"SELECT uniqExact(universal_id) FROM {database}.timing_curves "
                                f"WHERE {versions.committed(database)}"))
    priors = int(client.command(f"SELECT count() FROM {database}.timing_priors WHERE level = 'global' "
                                f"AND {versions.committed(database)}"))
    return Finding(passed=curves == head["people"] and priors > 0,
                   facts={"people": head["people"], "curves": curves, "global_priors": priors})


def heldout_beats_cohort_curves(client: Client, database: str) -> Finding:
    """On held-out deliveries, the personal curves predict engagement at least as well (log-loss) as the cohort
    curves alone: personalization does not hurt on the user's own data."""
    report = latest_report(client, database)
    predictive = (report or {}).get("predictive") or {}
    metrics = predictive.get("metrics") or {}
    if "ours" not in metrics or "cohort_curve" not in metrics:
        return _skip("no evaluation with held-out deliveries yet")
    ours, cohort = metrics["ours"]["log_loss"], metrics["cohort_curve"]["log_loss"]
    return Finding(passed=ours <= cohort, facts={"log_loss": ours, "cohort_log_loss": cohort,
                                                 "deliveries": predictive.get("deliveries", 0)})


def no_data_beats_best_single_hour(client: Client, database: str) -> Finding:
    """Against a synthetic world's truth: for people with no data, our choice is not worse than the best single
    hour for everyone (the 95% interval of the lift does not lie below zero)."""
    truth = ((latest_report(client, database) or {}).get("truth") or {})
    lift = ((truth.get("buckets", {}).get("0") or {}).get("lift") or {}).get("best_single_hour")
    if lift is None:
        return _skip("no evaluation against a ground truth with people without data")
    return Finding(passed=lift["ci95"][1] >= 0, facts={"lift": lift["lift"], "ci95": lift["ci95"]})


def confidence_calibrated(client: Client, database: str) -> Finding:
    """Against a synthetic world's truth: the served confidence (fitted without the truth) has an expected
    calibration error of at most ECE_GOAL."""
    truth = (latest_report(client, database) or {}).get("truth")
    if not truth:
        return _skip("no evaluation against a ground truth (the demo's synthetic world) yet")
    return Finding(passed=truth["ece"] <= ECE_GOAL, facts={"ece": truth["ece"], "goal": ECE_GOAL})
