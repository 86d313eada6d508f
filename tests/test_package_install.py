"""A non-editable install works: the project is built as a wheel from its tracked files, installed into a fresh
virtualenv, and `sendflowr migrate` of that install migrates a ClickHouse database with SQL read from the
installed package (sendflowr._sql), far from the source tree.

The fresh virtualenv borrows the third-party dependencies of the running one through a .pth line (installing
dagster, pandas, chDB, ... again would only test pip); the sendflowr package itself comes from the wheel alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from sendflowr.clickhouse import get_client, password_for
from sendflowr.migrations import discover

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_in_a_fresh_virtualenv_migrates_clickhouse(clickhouse, tmp_path):
    # Only what git tracks (or would track): no build output, no state, no local virtualenvs.
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout.split("\0")
    source = tmp_path / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
         tmp_path)
    (wheel,) = (tmp_path / "dist").glob("sendflowr-*.whl")

    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", str(fresh)], tmp_path)
    ask = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([str(fresh / "bin" / "python"), "-c", ask], tmp_path).stdout.strip())
    (purelib / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(fresh / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDFLOWR_", "PYTHON"))}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = _run([str(fresh / "bin" / "python"), "-c",
                  "import sendflowr, sendflowr.sql_files as s; print(sendflowr.__file__); print(s.SQL_DIR)"],
                 workdir, env).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in where), where  # the wheel's copy, not the source tree
    shipped = sorted(p.name for p in (Path(where[1]) / "migrations").glob("*.sql"))
    assert shipped == sorted(m.path.name for m in discover())

    database = f"pkg_{uuid.uuid4().hex[:8]}"
    # another state directory than the endpoint's: its password is given as for any server
    env.update({"SENDFLOWR_CLICKHOUSE_URL": clickhouse.clickhouse_url, "SENDFLOWR_CLICKHOUSE_DATABASE": database,
                "SENDFLOWR_HOME": str(tmp_path / "home"), "SENDFLOWR_CLICKHOUSE_PASSWORD": password_for(clickhouse)})
    out = _run([str(fresh / "bin" / "sendflowr"), "migrate"], workdir, env).stdout
    assert f"applied {len(shipped)} migration(s)" in out, out
    client = get_client(clickhouse.model_copy(update={"clickhouse_database": database}))
    try:
        applied = [r[0] for r in client.query(f"SELECT name FROM {database}.schema_migrations ORDER BY version")
                   .result_rows]
        tables = {r[0] for r in client.query(f"SHOW TABLES FROM {database}").result_rows}
    finally:
        client.close()
    assert applied == [m.name for m in discover()]
    assert {"events", "ingest_staging", "ingest_ranges", "identity_nodes", "timing_curves"} <= tables
