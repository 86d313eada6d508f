"""A snapshot of the code location: asset keys (group, dependencies, pool, automation condition, checks), jobs (assets,
executor, tags), sensors and schedules (targets, intervals, default status), against the committed
tests/fixtures/dagster_definitions.json, so that an accidental change of what Dagster runs fails here.

After an intended change, write the new snapshot with `.venv/bin/python tests/test_definitions.py` and review its diff.
"""

from __future__ import annotations

import json
from pathlib import Path

from dagster import Definitions

from sendflowr.settings import get_settings
from sendflowr_assets.definitions import defs

EXPECTED = Path(__file__).parent / "fixtures" / "dagster_definitions.json"


def snapshot(definitions: Definitions) -> dict:
    repo = definitions.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "pool": repo.assets_defs_by_key[key].op.pool,
            "automation": condition.get_label() if condition is not None else None,
            "checks": sorted(check.name for check in node.check_keys),
        }
    jobs = {job.name: {"assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
                       "executor": job.executor_def.name, "tags": dict(sorted(job.tags.items()))}
            for job in repo.get_all_jobs() if not job.name.startswith("__")}
    sensors = {sensor.name: {"kind": type(sensor).__name__,
                             "target": sorted(t.job_name for t in sensor.targets) if sensor.targets
                             else str(sensor.asset_selection),
                             "minimum_interval_seconds": sensor.minimum_interval_seconds,
                             "default_status": sensor.default_status.value}
               for sensor in repo.sensor_defs}
    schedules = {schedule.name: {"target": schedule.job_name, "cron": schedule.cron_schedule,
                                 "default_status": schedule.default_status.value}
                 for schedule in repo.schedule_defs}
    # What comes from the environment is named, not spelled out: the snapshot holds for any configuration.
    settings = get_settings()
    sensors["ingest_sensor"]["minimum_interval_seconds"] = "${SENDFLOWR_INGEST_POLL_SECONDS}"
    text = json.dumps({"assets": assets, "jobs": jobs, "sensors": sensors, "schedules": schedules}, indent=2,
                      sort_keys=True)
    for name in ("timing_cron", "uplift_cron"):
        text = text.replace(getattr(settings, name), f"${{SENDFLOWR_{name.upper()}}}")
    return json.loads(text)


def test_definitions_match_the_committed_snapshot() -> None:
    actual = snapshot(defs)
    expected = json.loads(EXPECTED.read_text())
    assert actual == expected, (
        f"the code location changed; if that is intended, run `.venv/bin/python tests/test_definitions.py` "
        f"and review {EXPECTED.name}'s diff:\n{json.dumps(actual, indent=2, sort_keys=True)}")


if __name__ == "__main__":
    EXPECTED.write_text(json.dumps(snapshot(defs), indent=2, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
