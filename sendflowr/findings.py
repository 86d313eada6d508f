"""What a data check found: passed / failed with its facts, or `skipped` with the reason when there was nothing to
check (an empty table, no evaluation yet). Shown by the Dagster checks, where a skip is a warning, never a pass."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Finding:
    passed: bool
    skipped: str = ""  # why there was nothing to check
    facts: dict = field(default_factory=dict)
    summary: str = ""  # one sentence on what was found, when the facts alone do not say it


def skip(reason: str, **facts) -> Finding:
    return Finding(passed=False, skipped=reason, facts=facts)


def violations(found: list, examples: int = 10, count: int | None = None) -> Finding:
    """Passed when nothing was found; the count (`count` when `found` holds only the first few) and the first few
    as facts."""
    n = len(found) if count is None else count
    return Finding(passed=n == 0, facts={"violations": n,
                                         "examples": [[str(v) for v in row] for row in found[:examples]]})
