"""Load the SQL the pipeline runs from sql/, with ${database} filled in; values go as query parameters."""

from __future__ import annotations

from functools import cache

from sendflowr.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"


@cache
def _text(relative: str) -> str:
    return (SQL_DIR / relative).read_text()


def render(sql: str, database: str) -> str:
    # Only ${database} is substituted: SQL text is full of `$` and `{}` that must stay as they are.
    return sql.replace("${database}", database)


def load_sql(relative: str, database: str) -> str:
    return render(_text(relative), database)
