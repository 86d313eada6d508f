"""bench/exploration.py at a tiny size on the real broker and engine (the experiment of docs/EVALUATION.md,
"Exploration"): both policies decide the same recipients each round, the exploring one serves other moments, every
round's events come back through Kafka and the curves are refitted between rounds, and the report prints the
per-round and cumulative figures. Also the paired bootstrap on numbers whose answer is known."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from sendflowr import progress
from sendflowr.clickhouse import get_client
from sendflowr.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import exploration  # noqa: E402 - the benchmark script under test

pytestmark = pytest.mark.integration


def test_the_experiment_pairs_its_policies_and_learns_between_rounds(base_settings: Settings, kafka, clickhouse,
                                                                    tmp_path: Path) -> None:
    prefix = f"x{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    result = exploration.run_experiment(base_settings, people=300, rounds=2, scales=(1.0,), weeks=4, prefix=prefix,
                                        work=tmp_path, log=lines.append)
    greedy, thompson = (p.name for p in result.policies)
    assert (greedy, thompson) == ("greedy", "thompson x1")
    # the same recipients every round for both policies (the bench checks the person ids too)
    assert result.persons.shape[0] == 2 and result.persons.shape[1] > 250
    for name in (greedy, thompson):
        p = result.p_true[name]
        assert p.shape == result.persons.shape and ((p >= 0) & (p < 1)).all() and 0.1 < p.mean() < 0.6
    # greedy serves the curve's best; Thompson mostly another moment, and so other outcomes
    assert result.policies[0].explored_away == [0.0, 0.0]
    assert all(x > 0.3 for x in result.policies[1].explored_away)
    assert not np.array_equal(result.p_true[greedy], result.p_true[thompson])
    assert result.final[greedy].shape == result.final[thompson].shape and result.final[greedy].size > 250
    # each policy's pipeline ingested its rounds' events and refitted the curves after each round
    for i, policy in enumerate(result.policies):
        client = get_client(policy.settings)
        database = policy.settings.clickhouse_database
        assert database == f"{prefix}_{i}"
        assert int(client.command(f"SELECT max(version) FROM {database}.timing_runs")) == 3  # history + 2 rounds
        topics = {t for t, _ in progress.committed_ends(client, database)}
        assert topics == {f"{prefix}-history", f"{prefix}-rounds-{i}"}
        rounds = int(client.command(f"SELECT count() FROM {database}.events WHERE kafka_topic = "
                                    f"'{prefix}-rounds-{i}' AND event_type = 'delivered'"))
        assert rounds > 0.9 * result.persons.size
        client.close()
    printed = exploration.report(result, resamples=200)
    table = [line for line in printed if line.startswith("| 0 ") or line.startswith("| 1 ")]
    # this round's and the cumulative difference, each absolute and relative with its interval
    assert len(table) == 2 and all(line.count("[") == 4 for line in table)
    assert any(line.startswith("next round decided greedily") for line in printed)


def test_the_paired_bootstrap_covers_a_known_difference() -> None:
    rng = np.random.default_rng(1)
    people = 4000
    level = rng.uniform(0.1, 0.5, people)  # people differ a lot: pairing removes that
    b = level + rng.normal(0, 0.02, (3, people))
    a = b + 0.01 + rng.normal(0, 0.02, (3, people))
    x = exploration.paired_bootstrap(a, b, rng, 1000)
    assert x["diff"] == pytest.approx(0.01, abs=0.002) and x["diff_ci"][0] < 0.01 < x["diff_ci"][1]
    assert x["diff_ci"][1] - x["diff_ci"][0] < 0.003  # paired: the spread between people does not widen it
    assert x["rel"] == pytest.approx(a.sum() / b.sum() - 1)
    same = exploration.paired_bootstrap(b, b, rng, 200)
    assert same["diff"] == 0 and same["diff_ci"][0] == same["diff_ci"][1] == 0
