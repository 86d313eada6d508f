"""Identifier normalization for identity stitching: one canonical string per identifier, or a rejection reason.

    col = normalize("email", pa.array([" Jane.Doe+news@GMAIL.com ", "noreply@shop.com"]))
    col.value   -> ["janedoe@gmail.com", null]
    col.reason  -> [null, "email: blocked pattern noreply"]

Rejected values (invalid or generic) are never stitched; their reasons feed the over-merge audit table.
Everything is column-wise pyarrow.compute except phone parsing (see `_phones`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

from sendflowr.events import IDENTIFIER_TYPES

PLUS_MODES = ("keep", "known_providers", "all")
# Mailbox providers documented to deliver local+tag@ to local@, so stripping the tag cannot merge two people.
PLUS_PROVIDERS = frozenset({"gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "icloud.com",
                            "me.com", "fastmail.com", "proton.me", "protonmail.com"})
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})  # the only provider that ignores dots in the local part
ROLE_ACCOUNTS_FILE = Path(__file__).with_name("role_accounts.txt")
_ROLE_NOISE = r"[._-]|[0-9]+$"  # "Front.Desk2" -> "frontdesk": separators and a trailing number do not make it personal


def load_role_accounts(path: Path = ROLE_ACCOUNTS_FILE) -> frozenset[str]:
    """The role-mailbox local parts listed in `path` (one per line, '#' comments), in their matched form."""
    lines = (line.split("#", 1)[0].strip().lower() for line in Path(path).read_text().splitlines())
    return frozenset(re.sub(_ROLE_NOISE, "", line) for line in lines if line)


ROLE_ACCOUNTS = load_role_accounts()
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
_PLACEHOLDERS = frozenset({"null", "none", "nil", "n/a", "unknown", "undefined", "nan", "0", "-1"})
_ID_BLOCKED = _PLACEHOLDERS | {"test", "guest", "anonymous"}
_EMAIL_SHAPE = r"^(?P<local>[^@\s]+)@(?P<domain>[^@\s.][^@\s]*\.[^@\s]*[^@\s.])$"
# RE2 (pyarrow's engine) has no backreferences, hence the spelled-out alternation. Optional +1 = NANP prefix.
_SAME_DIGIT = r"^\+?1?(" + "|".join(f"{d}{{7,}}" for d in range(10)) + ")$"
_ID_PATTERNS = (("zeros", r"^[0-]+$"),)  # 0000, the nil UUID


def _default_blocked_values() -> dict[str, frozenset[str]]:
    return {
        "email": _PLACEHOLDERS | {"test@test.com", "test@example.com", "email@example.com", "no@email.com"},
        "phone": _PLACEHOLDERS | {"0000000000", "1234567890"},
        "klaviyo_id": _ID_BLOCKED,
        "external_id": _ID_BLOCKED,
    }


def _default_blocked_patterns() -> dict[str, tuple[tuple[str, str], ...]]:
    return {
        "email": (
            ("noreply", r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer-daemon|postmaster)@"),
            ("placeholder domain", r"@(example|test)\.(com|org|net)$|\.(example|test|invalid|localhost)$"),
            ("placeholder local", r"^(none|null|nil|nobody|noemail|no-email|unknown|asdf)@"),
        ),
        "phone": (
            ("same digit", _SAME_DIGIT),
            ("sequential", r"(0123456789|1234567890|9876543210|0987654321)$"),
            ("fictional 555", r"^\+?1?\d{3}55501\d{2}$"),  # NANP 555-0100..0199 is reserved for fiction
        ),
        "klaviyo_id": _ID_PATTERNS,
        "external_id": _ID_PATTERNS,
    }


@dataclass(frozen=True)
class NormalizationRules:
    """Rules in force; every field has a default so the guards are on unless someone turns them off.

    blocked_values are compared case-insensitively to the trimmed raw value and to the normalized value
    (for phones also to the raw digits). blocked_patterns are (name, RE2 regex) pairs matched
    case-insensitively the same way; the name appears in the rejection reason.
    """

    phone_default_region: str = "US"  # region for numbers written without +country code
    email_plus_addressing: str = "known_providers"  # keep | known_providers | all: strip "+tag" from the local part
    plus_providers: frozenset[str] = PLUS_PROVIDERS
    email_gmail_dots: bool = True  # gmail.com/googlemail.com: drop local-part dots, googlemail.com -> gmail.com
    block_role_accounts: bool = True  # info@, orders@...: shared inboxes; off for B2B lists that mail them
    role_accounts: frozenset[str] = ROLE_ACCOUNTS  # data: role_accounts.txt (`load_role_accounts`)
    block_business_lines: bool = True  # toll-free, premium-rate and shared-cost numbers are never one person's
    block_local_equals_domain: bool = True  # test@test.com, a@a.com, none@none.com: typed-in filler
    blocked_values: dict[str, frozenset[str]] = field(default_factory=_default_blocked_values)
    blocked_patterns: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=_default_blocked_patterns)

    def __post_init__(self) -> None:
        if self.email_plus_addressing not in PLUS_MODES:
            raise ValueError(f"email_plus_addressing must be one of {PLUS_MODES}, got {self.email_plus_addressing!r}")
        if self.phone_default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {self.phone_default_region!r}")
        object.__setattr__(self, "role_accounts", frozenset(re.sub(_ROLE_NOISE, "", r.lower())
                                                           for r in self.role_accounts))
        unknown = (set(self.blocked_values) | set(self.blocked_patterns)) - set(IDENTIFIER_TYPES)
        if unknown:
            raise ValueError(f"blocked values/patterns for unknown identifier types: {sorted(unknown)}")


DEFAULT_RULES = NormalizationRules()


@dataclass(frozen=True)
class NormalizedColumn:
    value: pa.StringArray  # normalized identifier, null when rejected
    reason: pa.StringArray  # null when accepted, else a short stable reason

    def __post_init__(self) -> None:
        if len(self.value) != len(self.reason):
            raise ValueError("value and reason must have the same length")

    def __len__(self) -> int:
        return len(self.value)

    @property
    def accepted(self) -> pa.BooleanArray:
        return pc.is_null(self.reason)


class _Reasons:
    """First failing check wins, so the audit shows the most basic problem of each value."""

    def __init__(self, n: int) -> None:
        self.reason = pa.nulls(n, pa.string())

    def add(self, mask: pa.Array, text: str) -> None:
        hit = pc.if_else(pc.fill_null(mask, False), pa.scalar(text, pa.string()), pa.scalar(None, pa.string()))
        self.reason = pc.coalesce(self.reason, hit)

    def done(self, value: pa.Array) -> NormalizedColumn:
        value = pc.if_else(pc.is_null(self.reason), value, pa.scalar(None, pa.string()))
        return NormalizedColumn(value.cast(pa.string()), self.reason)


def _strings(raw: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.StringArray:
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    if not isinstance(raw, pa.Array):
        raw = pa.array(list(raw), pa.string())
    if pa.types.is_dictionary(raw.type):
        raw = raw.dictionary_decode()
    return raw.cast(pa.string())


def _any(masks: Iterable[pa.Array]) -> pa.BooleanArray:
    masks = [pc.fill_null(m, False) for m in masks]
    out = masks[0]
    for m in masks[1:]:
        out = pc.or_(out, m)
    return out


def _blocked_value(columns: list[pa.Array], blocked: Iterable[str]) -> pa.BooleanArray:
    value_set = pa.array(sorted({b.lower() for b in blocked}), pa.string())
    return _any(pc.is_in(pc.utf8_lower(c), value_set=value_set) for c in columns)


def _guards(reasons: _Reasons, type_name: str, prefix: str, columns: list[pa.Array], rules: NormalizationRules) -> None:
    reasons.add(_blocked_value(columns, rules.blocked_values.get(type_name, ())), f"{prefix}: blocked value")
    for name, regex in rules.blocked_patterns.get(type_name, ()):
        hit = _any(pc.match_substring_regex(c, regex, ignore_case=True) for c in columns)
        reasons.add(hit, f"{prefix}: blocked pattern {name}")


def _emails(raw: pa.StringArray, rules: NormalizationRules) -> NormalizedColumn:
    reasons = _Reasons(len(raw))
    text = pc.utf8_lower(pc.utf8_trim_whitespace(raw))  # trims tabs/newlines too
    reasons.add(pc.is_null(raw), "email: missing")
    reasons.add(pc.equal(text, ""), "email: empty")
    reasons.add(_blocked_value([text], rules.blocked_values.get("email", ())), "email: blocked value")
    shaped = pc.match_substring_regex(text, _EMAIL_SHAPE)
    reasons.add(pc.invert(shaped), "email: not an address")
    reasons.add(pc.greater(pc.utf8_length(text), MAX_EMAIL_LENGTH), "email: too long")
    # exactly one '@' where the shape matched: a split is ~3x cheaper than extract_regex's named groups
    parts = pc.split_pattern(pc.if_else(shaped, text, pa.scalar(None, pa.string())), "@", max_splits=1)
    local, domain = pc.list_element(parts, 0), pc.list_element(parts, 1)

    if rules.email_plus_addressing != "keep":
        strip = (pa.repeat(True, len(raw)) if rules.email_plus_addressing == "all"
                 else pc.is_in(domain, value_set=pa.array(sorted(rules.plus_providers), pa.string())))
        # "+tag@x" (nothing before the +) is left alone: stripping would leave no mailbox.
        local = pc.if_else(strip, pc.replace_substring_regex(local, r"^([^+]+)\+.*$", r"\1"), local)
    if rules.email_gmail_dots:
        gmail = pc.is_in(domain, value_set=pa.array(sorted(GMAIL_DOMAINS), pa.string()))
        local = pc.if_else(gmail, pc.replace_substring(local, ".", ""), local)
        domain = pc.if_else(gmail, pa.scalar("gmail.com"), domain)
    reasons.add(pc.equal(local, ""), "email: not an address")  # e.g. "...@gmail.com" after dropping dots
    value = pc.binary_join_element_wise(local, domain, "@")

    _guards(reasons, "email", "email", [text, value], rules)
    if rules.block_local_equals_domain:
        label = pc.replace_substring_regex(domain, r"\..*$", "")
        reasons.add(pc.equal(local, label), "email: blocked pattern local equals domain")
    if rules.block_role_accounts:
        bare = pc.replace_substring_regex(local, _ROLE_NOISE, "")
        role = pc.is_in(bare, value_set=pa.array(sorted(rules.role_accounts), pa.string()))
        reasons.add(role, "generic: role account")
    return reasons.done(value)


BUSINESS_LINE = "generic: toll-free, premium-rate or shared-cost line"
# libphonenumber's number types that are a business's line, never one person's (a store's toll-free number is
# typed into thousands of profiles). They are the first three types it tests, so a number matching one of their
# patterns gets that type whatever else it matches -- the column-wise path below relies on it.
_BUSINESS_TYPES = ("premium_rate", "toll_free", "shared_cost")
_BUSINESS_CODES = frozenset({phonenumbers.PhoneNumberType.PREMIUM_RATE, phonenumbers.PhoneNumberType.TOLL_FREE,
                             phonenumbers.PhoneNumberType.SHARED_COST})


def _parse_phone(text: str, region: str, block_business: bool) -> tuple[str | None, str | None]:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None, "phone: not a number"
    if not phonenumbers.is_valid_number(number):
        where = "" if text.startswith("+") else f" for region {region}"
        return None, f"phone: not a valid number{where}"
    if block_business and phonenumbers.number_type(number) in _BUSINESS_CODES:
        return None, BUSINESS_LINE
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


# Fast path for the common shapes of NANP numbers (+1 and 10 digits, or 10 digits when the default region is in
# country code 1): "+14155552671", "+1 (415) 555-2671", "415.555.2671". A national number starting with 0 or 1
# is left to phonenumbers (it may read a leading 1 as a trunk prefix).
_NANP_INTL = r"^\+1[ .-]?\(?[2-9]\d{2}\)?[ .-]?\d{3}[ .-]?\d{4}$"
_NANP_NATIONAL = r"^\(?[2-9]\d{2}\)?[ .-]?\d{3}[ .-]?\d{4}$"
_TYPE_DESCS = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
               "fixed_line", "mobile")


@cache
def _nanp_regions() -> tuple[tuple[str | None, str, str, str], ...]:
    """libphonenumber's own metadata for country code 1, in its region order: per region (leading digits or None,
    general pattern, alternation of every number-type pattern that allows 10 digits, alternation of the business
    types' patterns). `_nanp_valid` applies them with RE2 exactly as phonenumbers.is_valid_number and number_type
    do (region choice, then validity and type for that region)."""
    out = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        md = phonenumbers.PhoneMetadata.metadata_for_region(region)

        def fits(desc) -> bool:
            return (desc is not None and bool(desc.national_number_pattern)
                    and (not desc.possible_length or 10 in desc.possible_length))

        def alternation(names, md=md) -> str:
            found = [getattr(md, name).national_number_pattern for name in names if fits(getattr(md, name))]
            return "^(?:" + "|".join(f"(?:{t})" for t in found) + ")$" if found else "^$"

        general = md.general_desc.national_number_pattern if fits(md.general_desc) else None
        types = alternation(_TYPE_DESCS)
        if general and types != "^$":
            out.append((md.leading_digits, f"^(?:{general})$", types, alternation(_BUSINESS_TYPES)))
        elif md.leading_digits:
            out.append((md.leading_digits, "^$", "^$", "^$"))  # chosen by its leading digits, but never valid
    return tuple(out)


def _nanp_valid(nsn: pa.StringArray) -> tuple[pa.BooleanArray, pa.BooleanArray]:
    """(is_valid_number, number_type is a business line) for +1 numbers, given their 10-digit national numbers,
    column-wise."""
    valid = business = pa.repeat(False, len(nsn))
    open_ = pa.repeat(True, len(nsn))  # no region chosen yet
    for leading, general, types, business_types in _nanp_regions():
        ok = pc.and_(pc.match_substring_regex(nsn, general), pc.match_substring_regex(nsn, types))
        chosen = pc.match_substring_regex(nsn, f"^(?:{leading})") if leading else ok
        chosen = pc.and_(open_, chosen)
        hit = pc.and_(chosen, ok)
        valid = pc.or_(valid, hit)
        business = pc.or_(business, pc.and_(hit, pc.match_substring_regex(nsn, business_types)))
        open_ = pc.and_(open_, pc.invert(chosen))
        if not pc.any(open_).as_py():
            break
    return valid, business


def _phones(raw: pa.StringArray, rules: NormalizationRules, fast_path: bool = True) -> NormalizedColumn:
    reasons = _Reasons(len(raw))
    text = pc.utf8_trim_whitespace(raw)
    compact = pc.replace_substring_regex(text, r"[^0-9+]", "")  # digits and +, what the patterns look at
    reasons.add(pc.is_null(raw), "phone: missing")
    reasons.add(pc.equal(text, ""), "phone: empty")
    _guards(reasons, "phone", "phone", [text, compact], rules)
    pending = pc.is_null(reasons.reason)
    e164 = pa.nulls(len(raw), pa.string())

    # NANP fast path (column-wise, libphonenumber's metadata through RE2); everything else below.
    shapes = [pc.match_substring_regex(text, _NANP_INTL)]
    if phonenumbers.country_code_for_region(rules.phone_default_region) == 1:
        shapes.append(pc.match_substring_regex(text, _NANP_NATIONAL))
    fast = pc.and_(pending, _any(shapes))
    if fast_path and pc.any(fast).as_py():
        rows = pc.indices_nonzero(fast)
        nsn = pc.utf8_slice_codeunits(compact.take(rows), -10)
        ok, business = _nanp_valid(nsn)
        where = pc.if_else(pc.starts_with(text.take(rows), "+"), pa.scalar(""),
                           pa.scalar(f" for region {rules.phone_default_region}"))
        why = pc.if_else(ok, pa.scalar(None, pa.string()),
                         pc.binary_join_element_wise(pa.scalar("phone: not a valid number"), where, ""))
        if rules.block_business_lines:
            why = pc.if_else(business, pa.scalar(BUSINESS_LINE), why)
            ok = pc.and_(ok, pc.invert(business))
        value = pc.if_else(ok, pc.binary_join_element_wise(pa.scalar("+1"), nsn, ""), pa.scalar(None, pa.string()))
        e164 = _scatter(e164, rows, value)
        reasons.reason = pc.coalesce(reasons.reason, _scatter(pa.nulls(len(raw), pa.string()), rows, why))
        pending = pc.and_(pending, pc.invert(fast))

    # phonenumbers has no vectorized API: parse each DISTINCT still-pending raw value once in Python, then
    # map the results back to every row column-wise (index_in + take).
    distinct = pc.unique(pc.filter(text, pending))
    if len(distinct):
        parsed = [_parse_phone(t, rules.phone_default_region, rules.block_business_lines)
                  for t in distinct.to_pylist()]
        at = pc.if_else(pending, pc.index_in(text, value_set=distinct), pa.scalar(None, pa.int32()))
        e164 = pc.coalesce(e164, pa.array([p[0] for p in parsed], pa.string()).take(at))
        reasons.reason = pc.coalesce(reasons.reason, pa.array([p[1] for p in parsed], pa.string()).take(at))
    _guards(reasons, "phone", "phone", [e164], rules)  # e.g. a fictional 555-01xx written without +1
    return reasons.done(e164)


def _scatter(base: pa.Array, rows: pa.Array, values: pa.Array) -> pa.Array:
    """`base` with `values` put at positions `rows` (column-wise)."""
    pos = np.full(len(base), -1, np.int64)
    pos[rows.to_numpy()] = np.arange(len(rows))
    mask = pos >= 0
    taken = values.take(pa.array(np.where(mask, pos, 0)))
    return pc.if_else(pa.array(mask), taken, base)


def _ids(raw: pa.StringArray, type_name: str, rules: NormalizationRules) -> NormalizedColumn:
    # Case is kept: Klaviyo profile ids (ULIDs) and customer ids are case-sensitive keys.
    reasons = _Reasons(len(raw))
    text = pc.utf8_trim_whitespace(raw)
    reasons.add(pc.is_null(raw), "id: missing")
    reasons.add(pc.equal(text, ""), "id: empty")
    _guards(reasons, type_name, "id", [text], rules)
    return reasons.done(text)


def normalize(identifier_type: str, raw: pa.Array | pa.ChunkedArray | Sequence[str | None],
              rules: NormalizationRules = DEFAULT_RULES) -> NormalizedColumn:
    """Normalize one column of identifiers of a single type."""
    values = _strings(raw)
    if identifier_type == "email":
        return _emails(values, rules)
    if identifier_type == "phone":
        return _phones(values, rules)
    if identifier_type in ("klaviyo_id", "external_id"):
        return _ids(values, identifier_type, rules)
    raise ValueError(f"unknown identifier type {identifier_type!r}; expected one of {IDENTIFIER_TYPES}")


def normalize_many(types: pa.Array | pa.ChunkedArray | Sequence[str | None],
                   raws: pa.Array | pa.ChunkedArray | Sequence[str | None],
                   rules: NormalizationRules = DEFAULT_RULES) -> NormalizedColumn:
    """Normalize a mixed column: group rows by type, normalize each group, scatter back to input order."""
    types, raws = _strings(types), _strings(raws)
    if len(types) != len(raws):
        raise ValueError(f"types and raws differ in length: {len(types)} != {len(raws)}")
    positions, values, reasons = [], [], []
    for type_name in IDENTIFIER_TYPES:
        rows = pc.indices_nonzero(pc.fill_null(pc.equal(types, type_name), False))
        if len(rows):
            col = normalize(type_name, raws.take(rows), rules)
            positions.append(rows)
            values.append(col.value)
            reasons.append(col.reason)
    other = pc.indices_nonzero(pc.invert(pc.is_in(types, value_set=pa.array(IDENTIFIER_TYPES))))
    positions.append(other)
    values.append(pa.nulls(len(other), pa.string()))
    reasons.append(pa.repeat(pa.scalar("type: unknown identifier type"), len(other)))
    order = pc.sort_indices(pa.concat_arrays(positions))  # positions are a permutation of 0..n-1
    return NormalizedColumn(pa.concat_arrays(values).take(order), pa.concat_arrays(reasons).take(order))


def describe_rules(rules: NormalizationRules = DEFAULT_RULES) -> str:
    """The rules in force as markdown, for asset metadata and docs."""
    plus = {"keep": "kept (never stripped)", "all": "stripped for every domain",
            "known_providers": "stripped only for " + ", ".join(sorted(rules.plus_providers))}
    on = {True: "on", False: "off"}
    lines = [
        "### Identifier normalization",
        "",
        "- **email**: trimmed (spaces, tabs, newlines) and lower-cased; valid = exactly one `@`, non-empty "
        f"local part, a domain with a dot, no inner whitespace, at most {MAX_EMAIL_LENGTH} characters.",
        f"  - plus-addressing (`local+tag@`): {plus[rules.email_plus_addressing]}.",
        f"  - Gmail dots ({on[rules.email_gmail_dots]}): dots dropped from the local part for gmail.com and "
        "googlemail.com, and googlemail.com -> gmail.com.",
        f"  - role accounts ({on[rules.block_role_accounts]}): rejected as generic when the local part, lower-cased "
        "without `.`, `-`, `_` and a trailing number, is one of: "
        + ", ".join(f"`{r}@`" for r in sorted(rules.role_accounts)) + ".",
        f"  - local part equal to the domain name (`a@a.com`) rejected: {on[rules.block_local_equals_domain]}.",
        f"- **phone**: E.164 via libphonenumber; numbers without `+country` are read as "
        f"{rules.phone_default_region}; numbers that are not valid are rejected; toll-free, premium-rate and "
        f"shared-cost numbers (a business's line) rejected as generic: {on[rules.block_business_lines]}.",
        "- **klaviyo_id / external_id**: trimmed, case kept (case-sensitive ids).",
        "- Rejected values are never stitched; each gets a reason (`<type>: <why>`).",
        "",
        "#### Blocked values (case-insensitive)",
    ]
    for type_name in IDENTIFIER_TYPES:
        values = sorted(rules.blocked_values.get(type_name, ()))
        lines.append(f"- {type_name}: " + (", ".join(f"`{v}`" for v in values) or "none"))
    lines += ["", "#### Blocked patterns (RE2, case-insensitive)"]
    for type_name in IDENTIFIER_TYPES:
        for name, regex in rules.blocked_patterns.get(type_name, ()):
            lines.append(f"- {type_name} / {name}: `{regex}`")
    return "\n".join(lines) + "\n"
