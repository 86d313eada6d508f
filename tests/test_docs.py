"""Docs that must match the code."""

from __future__ import annotations

import re

from sendflowr.settings import PROJECT_ROOT, Settings


def test_readme_configuration_table_lists_exactly_the_settings() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(SENDFLOWR_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    expected = {f"SENDFLOWR_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_readme_first_screen_has_the_two_commands_ci_runs() -> None:
    first_screen = "\n".join((PROJECT_ROOT / "README.md").read_text().splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
