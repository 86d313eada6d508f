"""Engine errors with ClickHouse's own code and message, and the HTTP status the endpoint answers with.

The status follows a ClickHouse server (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by the error's name,
which chDB writes at the end of every message (`... (UNKNOWN_TABLE)`). One deliberate difference: an error a
server does not map (it answers 500) is a 400 here unless it is a fault of the engine itself, because a
request's mistake (a bad argument, an impossible cast, a too deep expression) must never look like the
endpoint failing.
"""

from __future__ import annotations

import re

_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?:\s*\(version [^)]*\))?\s*\.?\s*$")

_STATUS_BY_NAME = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
                     "ACCESS_DENIED", "READONLY", "SETTING_CONSTRAINT_VIOLATION"), 403),
    **dict.fromkeys(("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
                     "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
                     "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
                     "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "TIMEOUT_EXCEEDED": 408,
    "HTTP_LENGTH_REQUIRED": 411,
    "QUERY_IS_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    # the engine's own trouble: a server says 500/503 too
    **dict.fromkeys(("LOGICAL_ERROR", "STD_EXCEPTION", "UNKNOWN_EXCEPTION", "POCO_EXCEPTION",
                     "CANNOT_ALLOCATE_MEMORY", "NOT_ENOUGH_SPACE", "CANNOT_WRITE_TO_FILE_DESCRIPTOR"), 500),
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_SCHEDULE_TASK", "TOO_MANY_SIMULTANEOUS_QUERIES",
                     "MEMORY_LIMIT_EXCEEDED"), 503),
}
_FAULT_CODES = {1000: 500, 1001: 500, 1002: 500, 49: 500}  # POCO, STD, UNKNOWN exception, LOGICAL_ERROR
UNKNOWN_EXCEPTION = 1002


def error_name(message: str) -> str | None:
    match = _ERROR_NAME.search(message)
    return match.group(1) if match else None


class ClickHouseError(Exception):
    """An error as a ClickHouse server reports it: `Code: N. DB::Exception: ...` plus an HTTP status."""

    def __init__(self, message: str, code: int | None = None, status: int | None = None):
        super().__init__(message)
        match = _ERROR_CODE.search(message)
        self.code = code if code is not None else (int(match.group(1)) if match else UNKNOWN_EXCEPTION)
        self.message = message if message.startswith("Code:") else f"Code: {self.code}. DB::Exception: {message}"
        self._status = status

    @property
    def http_status(self) -> int:
        if self._status is not None:
            return self._status
        name = error_name(self.message)
        if name in _STATUS_BY_NAME:
            return _STATUS_BY_NAME[name]
        return _FAULT_CODES.get(self.code, 400)
