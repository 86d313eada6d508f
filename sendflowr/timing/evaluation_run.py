"""The `timing_evaluation` asset's work: measure the served model on the user's own events and commit what the API
needs to state its confidence and expected engagement honestly (docs/EVALUATION.md, docs/TIMING.md).

1. Fit the model on everything committed (as the curves run does).
2. Predictive evaluation without ground truth (sendflowr.timing.predictive): held-out deliveries scored against
   baselines; how much of the curves' shape they support.
3. The calibration (sendflowr.timing.confidence.calibrate): confidence from posterior draws shaped by (2),
   expected engagement mapped to what held-out deliveries observed.
4. With a synthetic world's ground truth at hand (the demo), the truth-based evaluation too
   (sendflowr.timing.evaluate): lifts over baselines per bucket, and the ECE of (3)'s confidence, which is
   measured against the truth, never fitted on it.
5. One `timing_evaluations` row (the reports, JSON) and a new committed version carrying the calibration (same
   curves): the API loads it with its next refresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from clickhouse_connect.driver.client import Client

from sendflowr.timing import versions
from sendflowr.timing.confidence import calibrate
from sendflowr.timing.decide import Calibration
from sendflowr.timing.estimate import EstimatorParams
from sendflowr.timing.evaluate import EvalConfig, EvalReport, evaluate
from sendflowr.timing.fit import read_inputs
from sendflowr.timing.predictive import Predictive
from sendflowr.timing.signals import SignalRules


@dataclass
class EvaluationOutcome:
    version: int | None  # the committed calibration version; None when there was nothing to evaluate
    predictive: Predictive | None = None
    calibration: Calibration | None = None
    truth: EvalReport | None = None
    skipped: str = ""  # why nothing was evaluated

    def to_dict(self) -> dict:
        return {"version": self.version, "skipped": self.skipped,
                "predictive": self.predictive.to_dict() if self.predictive else None,
                "truth": self.truth.to_dict() if self.truth else None}


EVALUATION_LEASE_WAIT = 900.0  # seconds an evaluation waits for a curves run to commit


def has_truth(truth_dir: Path | None) -> bool:
    return truth_dir is not None and (truth_dir / "true_curves.parquet").exists()


def run_evaluation(client: Client, database: str, rules: SignalRules, params: EstimatorParams, run_id: str,
                   truth_dir: Path | None = None, config: EvalConfig | None = None,
                   log: Callable[[str], None] = print) -> EvaluationOutcome:
    config = config or EvalConfig()
    head = versions.latest_run(client, database)
    if head is None:
        log("timing evaluation: no committed curves yet")
        return EvaluationOutcome(version=None, skipped="no committed curves yet")
    inputs = read_inputs(client, database, rules, params)
    if len(inputs.messages) == 0:
        return EvaluationOutcome(version=None, skipped="no delivered messages yet")
    f = inputs.fit(params)
    predictive, calibration = calibrate(inputs, f, np.random.default_rng(config.seed))
    log(f"timing evaluation: {predictive.deliveries} held-out deliveries, sharpness {predictive.sharpness:.2f}")
    truth = None
    if has_truth(truth_dir):
        truth = evaluate(client, database, truth_dir, rules, params, config)
        calibration = replace(calibration, ece=truth.ece)  # measured against the truth, not fitted on it
        log(f"timing evaluation: against the synthetic truth, share of the oracle "
            f"{truth.overall['share_of_oracle']['ours']:.3f}, ECE {truth.ece:.3f}")
    # Only the version's allocation and its writes hold the timing writer lease (a curves run may be building
    # meanwhile: wait for it rather than fail an evaluation that took minutes).
    with versions.writer(client, database, run_id, wait=EVALUATION_LEASE_WAIT):
        outcome = EvaluationOutcome(version=versions.next_version(client, database), predictive=predictive,
                                    calibration=calibration, truth=truth)
        # In the body, not as query parameters: a report with the truth's details outgrows a URL.
        client.insert(f"{database}.timing_evaluations", [[run_id, outcome.version, datetime.now(UTC),
                                                           json.dumps(outcome.to_dict())]],
                      column_names=["run_id", "version", "evaluated_at", "report"])
        versions.commit(client, database, outcome.version, run_id, "evaluation", head["people"],
                        calibration.to_json(), metadata={"heldout_deliveries": predictive.deliveries,
                                                         "sharpness": predictive.sharpness,
                                                         "ece": truth.ece if truth else None})
    return outcome


def latest_report(client: Client, database: str) -> dict | None:
    """The newest evaluation's reports (EvaluationOutcome.to_dict), None before any."""
    rows = client.query(f"SELECT report FROM {database}.timing_evaluations ORDER BY evaluated_at DESC LIMIT 1"
                        ).result_rows
    return json.loads(rows[0][0]) if rows else None
