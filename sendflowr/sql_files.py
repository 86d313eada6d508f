"""Load the SQL the pipeline runs from sql/, with ${database} and the contract's identifier lists
(sendflowr.contract.sql_substitutions) filled in; values go as query parameters. A `${sql:` + path + `}`
placeholder includes another file's SELECT (as a subquery), so a join several queries need is written once.

sql/ ships inside the package as `sendflowr._sql` (setup.py), so the same lookup works from a wheel, an
editable install and the Docker image: importlib.resources, never a path relative to the source tree.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from sendflowr.contract import sql_substitutions

SQL_DIR: Traversable = files("sendflowr._sql")


def sql_path(relative: str) -> Traversable:
    return SQL_DIR.joinpath(*relative.split("/"))


@cache
def _text(relative: str) -> str:
    return sql_path(relative).read_text(encoding="utf-8")


_CONTRACT = sql_substitutions()


def render(sql: str, database: str) -> str:
    # Only named placeholders are substituted: SQL text is full of `$` and `{}` that must stay as they are.
    for placeholder, text in _CONTRACT.items():
        sql = sql.replace(placeholder, text)
    return sql.replace("${database}", database)


_INCLUDE = re.compile(r"\$\{sql:([\w/]+\.sql)\}")


def load_sql(relative: str, database: str) -> str:
    return _INCLUDE.sub(lambda m: load_sql(m.group(1), database), render(_text(relative), database))
