"""What the ground truth says about the decisions of `sendflowr campaign` rounds: per decision, the true probability
of a genuine open at the moment served (the world's curve at its hour of week), and the uplift those decisions
carry in expectation. Written next to the world's ground truth, one file per round:

    <world>/campaigns/round_NNN.parquet   campaign_id, message_id, person_id, universal_id, arm, fallback_level,
                                          delivery_at, trigger_at (epoch ms), p_true
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sendflowr.decisions.arms import CONTROL, TREATMENT

DIRECTORY = "campaigns"


def round_files(world_dir: Path) -> list[Path]:
    return sorted((Path(world_dir) / DIRECTORY).glob("round_*.parquet"))


def write_round(world_dir: Path, index: int, table: pa.Table) -> Path:
    path = Path(world_dir) / DIRECTORY / f"round_{index:03d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path


def truth_uplift(world_dir: Path, campaign_ids: list[str] | None = None) -> dict | None:
    """Expected genuine-open rate of the treatment and control decisions of the rounds (all, or those campaigns),
    their difference and ratio; None when there are no rounds. The world's opens are what its people do; what the
    signal sees of them is a share (Apple hides some opens) that is the same in both arms, so the relative uplift
    is what the measured relative uplift estimates, while the measured absolute uplift is this one scaled down by
    that share."""
    files = round_files(world_dir)
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f, columns=["campaign_id", "arm", "p_true"]) for f in files])
    campaign = table.column("campaign_id").to_numpy(zero_copy_only=False).astype(str)
    keep = np.isin(campaign, campaign_ids) if campaign_ids is not None else np.ones(len(campaign), bool)
    arm = table.column("arm").to_numpy(zero_copy_only=False).astype(str)[keep]
    p = table.column("p_true").to_numpy()[keep].astype(np.float64)
    t, c = p[arm == TREATMENT], p[arm == CONTROL]
    treatment, control = (float(t.mean()) if len(t) else math.nan), (float(c.mean()) if len(c) else math.nan)
    return {"rounds": len(files), "treatment_decisions": int(len(t)), "control_decisions": int(len(c)),
            "treatment_rate": treatment, "control_rate": control, "uplift": treatment - control,
            "relative_uplift": treatment / control - 1 if control else math.nan}
