"""The `sendflowr` command's user-facing errors: specific, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("variable, value, fragment", [
    ("SENDFLOWR_KAFKA_PARTITIONS", "zero", "SENDFLOWR_KAFKA_PARTITIONS"),
    ("SENDFLOWR_KAFKA_PARTITIONS", "0", "greater than or equal to 1"),
    ("SENDFLOWR_CLICKHOUSE_URL", "ftp://somewhere", "must look like http://host:port"),
])
def test_invalid_setting_is_named_without_traceback(variable: str, value: str, fragment: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sendflowr.cli", "migrate"], capture_output=True, text=True,
                            env={**os.environ, variable: value}, timeout=60)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
