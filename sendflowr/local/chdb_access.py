"""Who may use the embedded ClickHouse endpoint, and what the engine behind it may touch.

Credentials: two users, as a locked-down ClickHouse server has them. The writer (SENDFLOWR_CLICKHOUSE_USER,
`default`) is what migrations, ingestion and Dagster use; `sendflowr_api` is read-only (every query of it runs
with readonly=1, which a request cannot lift) and is what the API uses in the embedded stack, as in
docker-compose. Their passwords are random per install, generated when the endpoint first starts, and kept in
<home>/secrets/clickhouse.json (directory 0700, file 0600, written whole with a rename, so a reader never
sees half a file). The file also names the URL the endpoint serves: `sendflowr.clickhouse.get_client` uses a
password from it only for that URL, so it never goes to another server. A configured
SENDFLOWR_CLICKHOUSE_PASSWORD replaces the writer's generated one.

Engine: chDB runs ClickHouse in local mode, where file(), url() and friends reach any path or host of the
machine. The engine is started with its own configuration (<home>/chdb-engine/): the only engine user holds
explicit grants without SOURCES (file, url, s3, remote, mysql, postgresql, hdfs, jdbc, odbc, sqlite, azure,
mongo, redis, ... as table functions and as table or database engines), without dictionaries, functions,
SYSTEM, BACKUP and access management; settings that name files or URLs (Template/Protobuf schemas, the Avro
schema registry) and the SQL dialect are locked by constraints; user_files, user_scripts and format_schemas
point at empty private directories. What grants cannot express in local mode (the scalar file() function,
INTO OUTFILE / FROM INFILE, which the client side of chDB performs) is refused by `chdb_guard`.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from sendflowr.settings import Settings, reveal

READER_USER = "sendflowr_api"
SECRETS_FILE = "clickhouse.json"
# Everything SendFlowr's SQL does, and nothing that reaches outside the engine's own tables.
WRITER_GRANTS = ("SELECT, INSERT, ALTER, CREATE DATABASE, CREATE TABLE, CREATE VIEW, DROP DATABASE, DROP TABLE, "
                 "DROP VIEW, TRUNCATE, OPTIMIZE, SHOW, KILL QUERY ON *.*")
# Settings whose value is a path or URL the engine would open, and the parser's dialect (the guard parses
# ClickHouse SQL; another dialect would run text the guard never read).
LOCKED_SETTINGS = ("dialect", "enable_json_ast_dialect", "format_schema", "format_schema_source",
                   "output_format_schema", "format_template_resultset", "format_template_row",
                   "format_avro_schema_registry_url")


@dataclass(frozen=True)
class EndpointUsers:
    """The endpoint's users and passwords (never logged; compared in constant time by the server)."""

    writer: str
    writer_password: str
    reader_password: str

    def password_of(self, user: str) -> str | None:
        if user == self.writer:
            return self.writer_password
        if user == READER_USER:
            return self.reader_password
        return None


def secrets_dir(settings: Settings) -> Path:
    path = settings.home / "secrets"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte, replacing it in one rename."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def prepare_users(settings: Settings, served_url: str) -> EndpointUsers:
    """The endpoint's users for this start: generated passwords are kept across starts (per install), the
    served URL is recorded so clients of exactly that URL find them."""
    path = secrets_dir(settings) / SECRETS_FILE
    stored = _read(path)
    generated = stored.get("generated") if isinstance(stored.get("generated"), dict) else {}
    for role in ("writer", "reader"):
        if not isinstance(generated.get(role), str) or len(generated[role]) < 32:
            generated[role] = secrets.token_urlsafe(32)
    configured = reveal(settings.clickhouse_password)
    users = EndpointUsers(settings.clickhouse_user, configured or generated["writer"], generated["reader"])
    # Clients read passwords by user name; a configured writer password stays in the environment only.
    usable = {READER_USER: users.reader_password}
    if not configured:
        usable[users.writer] = users.writer_password
    wanted = {"url": served_url, "users": usable, "generated": generated}
    if stored != wanted:
        _write_private(path, json.dumps(wanted, indent=2))
    return users


def embedded_password(settings: Settings) -> str | None:
    """The generated password of settings.clickhouse_user when settings.clickhouse_url is the embedded endpoint
    this state directory started (None otherwise: another server never receives it)."""
    stored = _read(settings.home / "secrets" / SECRETS_FILE)
    users = stored.get("users")
    if stored.get("url") != settings.clickhouse_url or not isinstance(users, dict):
        return None
    password = users.get(settings.clickhouse_user)
    return password if isinstance(password, str) else None


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_engine_config(settings: Settings) -> Path:
    """The engine's configuration (rewritten at every start, so an upgrade applies it); returns config.xml."""
    root = _private_dir(settings.home / "chdb-engine")
    places = {name: _private_dir(root / name) for name in ("user_files", "user_scripts", "format_schemas")}
    constraints = "".join(f"<{name}><readonly/></{name}>" for name in LOCKED_SETTINGS)
    users_xml = root / "users.xml"
    # The engine user has no password: only this process opens the engine; the HTTP server authenticates.
    users_xml.write_text(f"""<clickhouse>
  <profiles><default><constraints>{constraints}</constraints></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
      <grants><query>GRANT {WRITER_GRANTS}</query></grants>
    </default>
  </users>
  <quotas><default/></quotas>
</clickhouse>
""")
    config = root / "config.xml"
    config.write_text(f"""<clickhouse>
  <users_config>{escape(str(users_xml))}</users_config>
  <user_files_path>{escape(str(places["user_files"]))}/</user_files_path>
  <user_scripts_path>{escape(str(places["user_scripts"]))}/</user_scripts_path>
  <format_schema_path>{escape(str(places["format_schemas"]))}/</format_schema_path>
</clickhouse>
""")
    return config
