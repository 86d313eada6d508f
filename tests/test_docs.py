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


# Backticked names in the docs that look like paths but are not files of this repository.
NOT_REPO_PATHS = {"apache/kafka": "a Docker image", "sendflowr/ingest_slot": "a Dagster tag (docs/INGESTION.md)",
                  "Mozilla/5.0": "a user agent", "DIR/campaigns/": "a placeholder directory",
                  "sql/migrations/NNNN_name.sql": "the naming pattern"}
_NOT_A_PATH = re.compile(r"^(?:[/~<]|\.?\./|\.sendflowr|https?:|dagster/)|[<{=:\s#]")  # routes, homes, URLs,
# settings, Dagster's own tag and metadata keys
_PATH_LIKE = re.compile(r"/|\.(?:py|sql|md|yaml|toml)$")


def _tracked() -> list[str]:
    return [str(p.relative_to(PROJECT_ROOT)) for p in PROJECT_ROOT.rglob("*")
            if ".git" not in p.parts and ".venv" not in p.parts and "__pycache__" not in p.parts]


def _exists(name: str, tracked: list[str]) -> bool:
    """A path from the root, or a path's tail (docs name `identity/run.py` in a paragraph about sendflowr/), or a
    glob that matches something."""
    name = name.rstrip("/")
    if "*" in name:
        return any(PROJECT_ROOT.glob(name))
    return (PROJECT_ROOT / name).exists() or any(t == name or t.endswith("/" + name) for t in tracked)


def test_docs_name_only_paths_that_exist() -> None:
    tracked = _tracked()
    checked, missing = 0, []
    for doc in [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"`([^`\n]+)`", doc.read_text()):
            if _PATH_LIKE.search(name) and not _NOT_A_PATH.search(name) and name not in NOT_REPO_PATHS \
                    and not _exists(name, tracked):
                missing.append(f"{doc.name}: {name}")
            checked += bool(_PATH_LIKE.search(name))
    assert checked > 150  # the docs name many paths; each was looked for
    assert len(missing) == 0, missing
    assert _exists("sendflowr/contract.py", tracked) and not _exists("sql/ingest_events.sql", tracked)


def test_sql_files_named_in_code_exist() -> None:
    """load_sql("...") arguments, `${sql:...}` includes and sql/... names in Python and SQL (docstrings and
    comments too). Migrations are left out: they are history, frozen by their checksums."""
    sources = [p for p in [*PROJECT_ROOT.glob("sendflowr*/**/*.py"), *PROJECT_ROOT.glob("bench/*.py"),
                           *PROJECT_ROOT.glob("tests/*.py"), *PROJECT_ROOT.glob("sql/**/*.sql")]
               if "migrations" not in p.parts and p.name != "test_docs.py"]
    named = 0
    missing = []
    for path in sources:
        text = path.read_text()
        names = [*re.findall(r"(?<![\w/.])sql/([\w/]+\.sql)", text), *re.findall(r"load_sql\(\s*\"([^\"{]+)\"", text),
                 *re.findall(r"\$\{sql:([\w/]+\.sql)\}", text)]
        named += len(names)
        missing += [f"{path.relative_to(PROJECT_ROOT)}: {n}" for n in names
                    if n != "migrations/NNNN_name.sql" and not (PROJECT_ROOT / "sql" / n).exists()]
    assert named > 50  # the scan finds the SQL the code runs
    assert len(missing) == 0, missing
