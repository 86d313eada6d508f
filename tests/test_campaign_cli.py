"""`sendflowr campaign` refuses what it cannot play with a named reason, and the demo's control share rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sendflowr.campaign import loop
from sendflowr.cli import main
from sendflowr.decisions.arms import DEMO_CONTROL_SHARE, demo_control_share
from sendflowr.errors import SendflowrError


def test_missing_world_and_bad_arguments_are_named(tmp_path, capsys) -> None:
    assert main(["campaign", "--world", str(tmp_path / "nowhere"), "--no-materialize"]) == 2
    assert "no synthetic world at" in capsys.readouterr().err
    assert main(["campaign", "--world", str(tmp_path), "--recipients", "0"]) == 2
    assert "--recipients must be at least 1" in capsys.readouterr().err
    assert main(["campaign", "--world", str(tmp_path), "--control-share", "1.5"]) == 2
    assert "--control-share" in capsys.readouterr().err


def test_rounds_end_before_now_and_leave_the_horizon_to_mature() -> None:
    now = datetime(2026, 3, 4, 15, 27, tzinfo=UTC)
    plan = loop.schedule(now, 4, timedelta(days=7), 72)
    assert plan.decided_at < plan.first_window and plan.first_window.minute == 0
    last_start, last_end = plan.window_of(3)
    assert last_start - plan.first_window == timedelta(weeks=3)
    assert last_end + loop.LATE_DELIVERY + timedelta(hours=72) <= now
    assert plan.clock_offset_seconds(now) == (now - plan.decided_at).total_seconds()
    with pytest.raises(SendflowrError):
        loop.schedule(now, 0, timedelta(days=7), 72)
    with pytest.raises(SendflowrError):
        loop.schedule(now, 2, timedelta(days=9), 72)


def test_the_demo_runs_a_control_arm_unless_the_environment_sets_the_share(monkeypatch) -> None:
    monkeypatch.delenv("SENDFLOWR_API_CONTROL_SHARE", raising=False)
    assert demo_control_share(0.0) == DEMO_CONTROL_SHARE == 0.1
    monkeypatch.setenv("SENDFLOWR_API_CONTROL_SHARE", "0")
    assert demo_control_share(0.0) == 0.0  # a user who turned it off keeps it off
