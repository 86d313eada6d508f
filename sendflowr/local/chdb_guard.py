"""What a client may send to the embedded endpoint, decided on the engine's own parse tree.

The engine's grants (chdb_access) refuse table functions and engines that reach files, URLs and other
servers. Four things stay that grants cannot express in chDB's local mode, and this module refuses them:

- more than one statement in a request (chDB runs `SELECT 1; INSERT INTO ...` as two; a server refuses it);
- INTO OUTFILE and FROM INFILE (performed by chDB's client side, as the stack's user, on any path);
- the scalar file() function (local mode reads any path) and executable() / Executable engines;
- SET and USE, which would change a pooled connection for whoever uses it next (there are no sessions).

Every decision comes from ClickHouse's parser: `parseQueryToJSON` (one statement, the AST as JSON; it
refuses multi-statements), `formatQuery` and `tokenizeQuery` for the statements the JSON form does not cover
(inline INSERT data, a few node types). What is executed is the text that was parsed, except that data
following an inline `INSERT ... FORMAT <name>` goes through a spool file like a request body, so nothing
after it can be read as SQL.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sendflowr.local.chdb_errors import ClickHouseError, error_name

FORBIDDEN_FUNCTIONS = frozenset({"file", "executable", "Executable", "ExecutablePool", "catboostEvaluate"})
_NOT_JSON = "does not support JSON serialization"
_INLINE_DATA = "inline data"
_SKIPPED_TOKENS = frozenset({"Whitespace", "Comment", "Semicolon", "EndOfStream"})
_OPENING = frozenset({"OpeningRoundBracket", "OpeningSquareBracket", "OpeningCurlyBrace"})
_CLOSING = frozenset({"ClosingRoundBracket", "ClosingSquareBracket", "ClosingCurlyBrace"})
_CACHE_SIZE = 4096
_CACHE_MAX_SQL = 16 * 1024

# run(query, params, fmt) -> the engine's answer as bytes, on the caller's connection
Runner = Callable[[str, dict[str, str], str], bytes]


@dataclass(frozen=True)
class Vetted:
    """A statement the endpoint may execute. `data` is inline INSERT data moved out of the SQL text (sent to
    the engine as a spool file); `insert_format` is set for an INSERT that takes data."""

    sql: str
    insert_format: str | None = None
    data: bytes | None = None


def _escaped(text: str) -> str:
    # A {q:String} parameter is read in ClickHouse's escaped (TSV) form.
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\0", "\\0"))


def _refuse(message: str, code: int = 497, status: int = 403) -> ClickHouseError:
    return ClickHouseError(message, code=code, status=status)


def walk(node: Any) -> None:
    """Raise for anything forbidden anywhere in a parseQueryToJSON tree."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if item.get("out_file") is not None or kind == "InsertQuery" and item.get("infile") is not None:
            raise _refuse("INTO OUTFILE and FROM INFILE are not allowed on the embedded endpoint (they would "
                          "read or write files of the endpoint's host); send data in the request body")
        if kind == "Function" and item.get("name") in FORBIDDEN_FUNCTIONS:
            raise _refuse(f"{item['name']}() is not allowed on the embedded endpoint (it reads files or runs "
                          f"programs of the endpoint's host)")
        if kind == "SetQuery" and item.get("is_standalone") or kind == "UseQuery":
            raise _refuse("SET and USE need a session, which the embedded endpoint does not keep: pass settings "
                          "as URL parameters and the database as `database=`", code=48, status=400)
        stack.extend(item.values())


class QueryGuard:
    """Vets one statement per request; allowed statements are remembered by text (most requests repeat)."""

    def __init__(self) -> None:
        self._allowed: OrderedDict[str, Vetted] = OrderedDict()
        self._lock = threading.Lock()

    def vet(self, run: Runner, sql: str, has_body: bool) -> Vetted:
        with self._lock:
            cached = self._allowed.get(sql)
            if cached is not None:
                self._allowed.move_to_end(sql)
        vetted = cached or self._vet(run, sql)
        if has_body and vetted.insert_format is None:
            raise ClickHouseError("a request body with data needs `INSERT INTO ... FORMAT <format>`", code=62,
                                  status=400)
        if has_body and vetted.data is not None:
            raise ClickHouseError("INSERT data arrives either in the query text or in the body, not both", code=62,
                                  status=400)
        if cached is None and vetted.data is None and len(sql) <= _CACHE_MAX_SQL:
            with self._lock:
                self._allowed[sql] = vetted
                while len(self._allowed) > _CACHE_SIZE:
                    self._allowed.popitem(last=False)
        return vetted

    def _vet(self, run: Runner, sql: str) -> Vetted:
        try:
            tree = _parse(run, sql)
        except ClickHouseError as exc:
            if _INLINE_DATA in exc.message:
                return _vet_inline_insert(run, sql)
            if _NOT_JSON in exc.message:
                return _vet_by_tokens(run, sql)
            raise
        walk(tree)
        return Vetted(sql, insert_format=_insert_format(tree))


def _engine_error(exc: Exception) -> ClickHouseError:
    # The engine's message names our wrapper query ("In scope SELECT parseQueryToJSON('...')"); drop that part
    # and keep the error's name, as the engine would have reported the statement itself.
    error = exc if isinstance(exc, ClickHouseError) else ClickHouseError(str(exc))
    for marker in (": In scope SELECT ", " In scope SELECT "):
        if marker in error.message:
            name = error_name(error.message)
            head = error.message.split(marker, 1)[0].rstrip(". ")
            return ClickHouseError(f"{head}. ({name})" if name else head, code=error.code)
    return error


def _call(run: Runner, function: str, sql: str, fmt: str = "TabSeparatedRaw") -> bytes:
    try:
        return run(f"SELECT {function}({{q:String}})", {"q": _escaped(sql)}, fmt)
    except Exception as exc:
        raise _engine_error(exc) from None


def _parse(run: Runner, sql: str) -> dict:
    return json.loads(_call(run, "parseQueryToJSON", sql))


def _format(run: Runner, sql: str) -> str:
    return _call(run, "formatQuery", sql).decode("utf-8").rstrip("\n")


def _tokens(run: Runner, sql: str) -> list[tuple[int, int, str]]:
    answer = json.loads(_call(run, "tokenizeQuery", sql, "JSONCompact"))
    return [(int(t["begin"]), int(t["end"]), t["type"]) for t in answer["data"][0][0]]


def _insert_format(tree: dict) -> str | None:
    if tree.get("type") == "InsertQuery" and tree.get("select") is None and isinstance(tree.get("format"), str):
        return tree["format"]
    return None


def _vet_by_tokens(run: Runner, sql: str) -> Vetted:
    """Statements whose AST has no JSON form (DESCRIBE, EXISTS, ...): formatQuery proves there is one
    statement; its canonical text, lexed by the engine, must not name OUTFILE, INFILE or a forbidden function."""
    canonical = _format(run, sql)
    raw = canonical.encode("utf-8")
    tokens = [t for t in _tokens(run, canonical) if t[2] not in ("Whitespace", "Comment")]
    for (begin, end, kind), following in zip(tokens, tokens[1:] + [(0, 0, "EndOfStream")], strict=True):
        word = raw[begin:end].decode("utf-8", "replace").strip("`\"")
        if kind == "BareWord" and word.upper() in ("OUTFILE", "INFILE"):
            raise _refuse("INTO OUTFILE and FROM INFILE are not allowed on the embedded endpoint; send data in "
                          "the request body")
        if kind in ("BareWord", "QuotedIdentifier") and word in FORBIDDEN_FUNCTIONS \
                and following[2] == "OpeningRoundBracket":
            raise _refuse(f"{word}() is not allowed on the embedded endpoint")
    return Vetted(sql)


def _vet_inline_insert(run: Runner, sql: str) -> Vetted:
    """`INSERT ... VALUES (...)` or `INSERT ... FORMAT X <data>` in the SQL text. The statement is what the
    engine's formatQuery keeps of it; where its data starts is found on the engine's tokens."""
    canonical = _format(run, sql)
    tree = _parse(run, canonical)
    walk(tree)
    fmt = _insert_format(tree)
    if fmt is None:
        raise ClickHouseError("cannot read this INSERT's inline data", code=62, status=400)
    raw = sql.encode("utf-8")
    tokens = _tokens(run, sql)
    start = _data_start(run, raw, tokens, canonical)
    if fmt != "Values":  # opaque data: moved to a spool, so no part of it is ever read as SQL
        return Vetted(canonical, insert_format=fmt, data=_after_format_name(raw, start))
    data = [t for t in tokens if t[0] >= start]
    significant = [i for i, t in enumerate(data) if t[2] not in _SKIPPED_TOKENS]
    first_semicolon = next((i for i, t in enumerate(data) if t[2] == "Semicolon"), len(data))
    if significant and significant[-1] > first_semicolon:
        raise ClickHouseError("Syntax error (Multi-statements are not allowed)", code=62, status=400)
    values = raw[start:data[first_semicolon][0] if first_semicolon < len(data) else len(raw)].decode("utf-8")
    try:  # Values rows are SQL expressions (evaluated when they are not plain literals): vet them as a select list
        walk(_parse(run, f"SELECT {values}"))
    except ClickHouseError as exc:
        if exc.code == 497:
            raise
        raise ClickHouseError(f"VALUES data the endpoint cannot vet: {exc.message}", code=62, status=400) from None
    return Vetted(sql, insert_format=fmt)


def _data_start(run: Runner, raw: bytes, tokens: list[tuple[int, int, str]], canonical: str) -> int:
    """Byte offset just after `VALUES` or `FORMAT <name>` of the statement: the first such place at bracket
    depth 0 whose prefix the engine formats to the statement itself."""
    depth = 0
    significant = [t for t in tokens if t[2] not in ("Whitespace", "Comment")]
    for i, (begin, end, kind) in enumerate(significant):
        if kind in _OPENING:
            depth += 1
        elif kind in _CLOSING:
            depth -= 1
        if depth or kind != "BareWord":
            continue
        word = raw[begin:end].upper()
        if word == b"VALUES":
            split = end
        elif word == b"FORMAT" and i + 1 < len(significant) and significant[i + 1][2] == "BareWord":
            split = significant[i + 1][1]
        else:
            continue
        try:
            if _format(run, raw[:split].decode("utf-8")) == canonical:
                return split
        except ClickHouseError:
            continue
    raise ClickHouseError("cannot find where this INSERT's inline data starts", code=62, status=400)


def _after_format_name(raw: bytes, start: int) -> bytes:
    # ClickHouse's rule: data starts after the spaces following the format name and one line break, if any.
    position = start
    while position < len(raw) and raw[position] in b" \t\f":
        position += 1
    if raw[position:position + 2] == b"\r\n":
        position += 2
    elif raw[position:position + 1] == b"\n":
        position += 1
    return raw[position:]
