"""The event contract's shared facts, read by every layer: Python imports them, SQL gets them templated in
(`sql_substitutions`, applied by sendflowr.sql_files.render).

The JSON schema (sendflowr/schemas/event.v1.json) stays the source of the field limits; this module reads them
from it. Migrations 0003 and 0008 spell the same limits in SQL they cannot change (applied migrations are
checksummed); tests/test_ingest_validation.py holds them to the schema's verdicts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1

# The identifier types in their code order: the type code stored in identity tables (identity_nodes.node_type
# is the position here), so this order never changes; a new type goes at the end.
IDENTIFIER_TYPES = ("email", "klaviyo_id", "phone", "external_id")

# The one priority order of identifier types, most specific first. Stitching's greedy pass keeps edges of
# better-ranked types first when a guard binds; so when the guards split a message's (or a request's)
# identifiers between people, the best-ranked identifier names the person everywhere: ingestion's person_key,
# timing's message owner, the uplift's owner, the decision API. An email ranks above a customer id: households
# share accounts more often than mailboxes.
IDENTIFIER_PRIORITY = ("klaviyo_id", "email", "external_id", "phone")

EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between an ESP and us
MAX_EVENT_BYTES = 64 * 1024


@cache
def event_schema() -> dict[str, Any]:
    text = resources.files("sendflowr.schemas").joinpath(f"event.v{SCHEMA_VERSION}.json").read_text()
    return json.loads(text)


def _properties() -> dict[str, Any]:
    return event_schema()["properties"]


EVENT_TYPES: tuple[str, ...] = tuple(_properties()["event_type"]["enum"])
# Longest value, in characters, of each identifier and of each optional text field.
IDENTIFIER_MAX_CHARS: dict[str, int] = {
    t: _properties()["identifiers"]["properties"][t]["maxLength"] for t in IDENTIFIER_TYPES}
FIELD_MAX_CHARS: dict[str, int] = {
    name: spec["maxLength"] for name, spec in _properties().items() if "maxLength" in spec}

if set(_properties()["identifiers"]["properties"]) != set(IDENTIFIER_TYPES) or \
        sorted(IDENTIFIER_PRIORITY) != sorted(IDENTIFIER_TYPES):
    raise RuntimeError("the event schema, IDENTIFIER_TYPES and IDENTIFIER_PRIORITY name different identifiers")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _owner_key() -> str:
    """The owner-map key (cityHash64(type, value)) of a row's best-ranked identifier the map holds, 0 for none.
    A multiIf, not arrayFirst over all of them: it stops at the first hit, and most rows hit on the first probe
    (arrayFirst probed all four: the timing build's message pass took ~30% longer at 200k people)."""
    probes = ", ".join(f"joinGet({{owners:String}}, 'p', cityHash64('{t}', {t})) > 0, cityHash64('{t}', {t})"
                       for t in IDENTIFIER_PRIORITY)
    return f"multiIf({probes}, 0)"


def _best_identifier() -> str:
    """A row's first non-empty identifier in priority order (a multiIf: no array built per row)."""
    return "multiIf(" + ", ".join(f"{t} != '', {t}" for t in IDENTIFIER_PRIORITY) + ", '')"


def sql_substitutions() -> dict[str, str]:
    """Placeholders SQL files use for the contract (always in the same order as the Python tuples):
    identifier columns and type names in code order; the owner-map probe in priority
    order (`${owner_key}`, over a run's owner map passed as the {owners:String} parameter) and the best
    non-empty identifier (`${best_identifier}`)."""
    return {
        "${owner_key}": _owner_key(),
        "${best_identifier}": _best_identifier(),
        "${identifier_columns}": ", ".join(IDENTIFIER_TYPES),
        "${identifier_types}": _quoted(IDENTIFIER_TYPES),
    }
