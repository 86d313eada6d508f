"""Identifiers as ESPs emit them: emails with case/whitespace noise, Klaviyo profile ids, phones in human
formats, external ids; plus family-shared phones, reused external ids and generic junk values; and, when their
WorldConfig knobs are on, households sharing a phone (and an account), role addresses of small businesses, ESP
profile merges, placeholders and second mailboxes (sendflowr.synth.phenomena).

All raw strings live in one table (`values`); people point at it by index. Normalization rules the ground
truth uses: email -> strip + lowercase; phone -> E.164 (numbers without +country are US/Canada, i.e. parse
with default region "US"); klaviyo_id and external_id -> strip.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from sendflowr.contract import IDENTIFIER_TYPES
from sendflowr.synth import fmt
from sendflowr.synth.config import WorldConfig
from sendflowr.synth.people import People
from sendflowr.synth.phenomena import Phenomena, build_phenomena, groups

TYPES = IDENTIFIER_TYPES

FIRST = ("james", "mary", "john", "patricia", "robert", "jennifer", "michael", "linda", "david", "elizabeth",
         "william", "barbara", "richard", "susan", "joseph", "jessica", "thomas", "sarah", "carlos", "maria",
         "luis", "ana", "jose", "sofia", "mohammed", "fatima", "wei", "mei", "hiroshi", "yuki", "arjun",
         "priya", "liam", "olivia", "noah", "emma", "lukas", "lena", "pierre", "camille", "oliver", "amelia",
         "raj", "ananya", "chloe", "ethan", "isabella", "mateo", "valentina", "jack")
LAST = ("smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis", "rodriguez",
        "martinez", "hernandez", "lopez", "gonzalez", "wilson", "anderson", "thomas", "taylor", "moore",
        "jackson", "martin", "lee", "perez", "thompson", "white", "harris", "sanchez", "clark", "lewis",
        "robinson", "walker", "young", "allen", "king", "wright", "scott", "nguyen", "hill", "flores",
        "green", "adams", "nelson", "baker", "hall", "rivera", "campbell", "mitchell", "carter", "muller",
        "schmidt", "dubois", "kumar", "sharma", "tanaka", "sato", "chen", "wang", "silva", "santos")
CONSUMER_DOMAINS = (("gmail.com", 0.45), ("yahoo.com", 0.12), ("outlook.com", 0.09), ("hotmail.com", 0.08),
                    ("icloud.com", 0.10), ("aol.com", 0.03), ("proton.me", 0.03), ("gmx.de", 0.03),
                    ("orange.fr", 0.02), ("live.com", 0.05))
COMPANY_DOMAINS = ("acme-corp.com", "globex.com", "initech.com", "umbrella-corp.com", "hooli.com",
                   "vandelay-industries.com", "wayne-enterprises.com", "stark-industries.com")

JUNK = {
    "email": ("info@company.com", "test@test.com", "noreply@example.com", "no-reply@shop.example",
              "admin@company.com", "none@none.com", "a@a.com"),
    "phone": ("0000000000", "1234567890", "000-000-0000", "+1 (555) 555-5555", "9999999999"),
    "external_id": ("0", "guest", "null", "undefined", "anonymous"),
}

# NANP area codes (US + Canada) used for North American numbers.
_AREA = {"US": (212, 213, 305, 312, 404, 415, 503, 512, 602, 617, 646, 702, 713, 718, 773, 818, 917, 206),
         "CA": (416, 604, 647, 514, 403)}


@dataclass(frozen=True)
class Identifiers:
    values: list[str]  # every raw identifier string, referenced by index
    email: np.ndarray  # (people, 3) int32 indices of the person's email forms, -1 padded
    email_forms: np.ndarray  # int8 number of forms (0 = no email)
    klaviyo: np.ndarray  # int32 index or -1
    phone: np.ndarray  # (people, 2) int32, -1 padded
    phone_forms: np.ndarray  # int8
    external: np.ndarray  # int32 index or -1
    junk: dict[str, np.ndarray]  # identifier type -> indices of junk values
    # ground truth, one row per (raw value, person): parallel arrays
    truth_type: np.ndarray  # int8 index into TYPES
    truth_value: np.ndarray  # int32 index into values
    truth_person: np.ndarray  # int64, -1 for junk
    truth_normalized: list[str]
    truth_kind: np.ndarray  # int8: 0 personal, 1 shared, 2 junk
    truth_detail: list[str]  # what the value is (phenomena.DETAILS): '' a plain personal identifier
    phenomena: Phenomena  # per-person identity phenomena the events draw on (all off by default)


def _email_forms(canonical: str, r: float, r2: float) -> list[str]:
    local, domain = canonical.split("@")
    variants = [
        f"{local.title()}@{domain}",
        canonical.upper(),
        f" {canonical} ",
        f"{local}@{domain.capitalize()}",
        f"{canonical}\t",
    ]
    forms = [canonical]
    if r < 0.35:
        forms.append(variants[int(r2 * len(variants))])
    if r < 0.10:
        forms.append(variants[(int(r2 * len(variants)) + 2) % len(variants)])
    return list(dict.fromkeys(forms))


def _phone(country: str, d: list[int], style: int) -> tuple[str, str]:
    """(E.164, the number written in display style `style`; 0 = E.164) from 10 random digits `d`."""
    s = "".join(map(str, d))
    if country in ("US", "CA"):
        areas = _AREA[country]
        a = str(areas[(d[0] * 10 + d[1]) % len(areas)])
        e = f"{2 + d[2] % 8}{d[3]}{d[4]}"
        if e[1:] == "11" or e == "555":  # N11 service codes and 555 are not subscriber exchanges
            e = e[:2] + "2"
        sub = s[6:10]
        e164 = f"+1{a}{e}{sub}"
        formats = [e164, f"({a}) {e}-{sub}", f"{a}-{e}-{sub}", f"{a}.{e}.{sub}", f"1-{a}-{e}-{sub}",
                   f"+1 {a} {e} {sub}", f"+1 ({a}) {e}-{sub}", f"{a}{e}{sub}"]
    else:
        cc, nsn, pretty = {
            "MX": ("52", f"55{s[2:10]}", lambda n: f"{n[:2]} {n[2:6]} {n[6:]}"),
            "BR": ("55", f"119{s[2:10]}", lambda n: f"{n[:2]} {n[2:7]}-{n[7:]}"),
            "GB": ("44", f"7{1 + d[0] % 3}{s[1:9]}", lambda n: f"{n[:4]} {n[4:]}"),
            "DE": ("49", f"15{1 + d[0] % 2}{s[1:9]}", lambda n: f"{n[:3]} {n[3:]}"),
            "FR": ("33", f"6{d[0] % 3}{s[2:9]}", lambda n: f"{n[0]} {n[1:3]} {n[3:5]} {n[5:7]} {n[7:]}"),
            "ES": ("34", f"6{s[1:9]}", lambda n: f"{n[:3]} {n[3:6]} {n[6:]}"),
            "AE": ("971", f"5{(0, 2, 5, 6)[d[0] % 4]}{s[1:8]}", lambda n: f"{n[:2]} {n[2:5]} {n[5:]}"),
            "IN": ("91", f"9{s[1:10]}", lambda n: f"{n[:5]} {n[5:]}"),
            "SG": ("65", f"8{1 + d[0] % 8}{s[2:8]}", lambda n: f"{n[:4]} {n[4:]}"),
            "JP": ("81", f"{(7, 8, 9)[d[0] % 3]}0{1 + d[1] % 9}{s[2:9]}",
                   lambda n: f"{n[:2]}-{n[2:6]}-{n[6:]}"),
            "AU": ("61", f"4{d[0] % 4}{s[2:9]}", lambda n: f"{n[:3]} {n[3:6]} {n[6:]}"),
            "NZ": ("64", f"2{(1, 2, 7)[d[0] % 3]}{s[1:8]}", lambda n: f"{n[:2]} {n[2:5]} {n[5:]}"),
        }[country]
        e164 = f"+{cc}{nsn}"
        formats = [e164, f"+{cc} {pretty(nsn)}", f"+{cc}-{pretty(nsn).replace(' ', '-')}", f"+{cc} {nsn}"]
    return e164, formats[style % len(formats)]


class _Table:
    def __init__(self) -> None:
        self.values: list[str] = []
        self.rows: list[tuple[int, int, int, str, int, str]] = []  # type, value, person, normalized, kind, detail

    def add(self, kind_type: int, raw: str, person: int, normalized: str, kind: int = 0, detail: str = "") -> int:
        self.values.append(raw)
        index = len(self.values) - 1
        self.rows.append((kind_type, index, person, normalized, kind, detail))
        return index


def build_identifiers(config: WorldConfig, people: People, rng: np.random.Generator) -> Identifiers:
    n = len(people)
    table = _Table()
    has_email = rng.random(n) < config.email_share
    has_klaviyo = rng.random(n) < config.klaviyo_share
    has_phone = rng.random(n) < config.phone_share
    has_external = rng.random(n) < config.external_share
    nothing = ~(has_email | has_klaviyo | has_phone | has_external)
    has_email |= nothing  # everyone is reachable by something
    # Households (their own random stream: with the knobs at 0 nothing below draws differently): every member
    # has the head's phone; some households also share one customer account.
    extra = rng.spawn(1)[0]
    households = groups(extra, np.arange(n), config.household_share, config.household_max)
    accounts = [h for h in households if extra.random() < config.household_account_share]
    for h in households:
        has_phone[h] = True
    for h in accounts:
        has_external[h] = True

    # --- emails (per person; O(people) Python work, never per event)
    email = np.full((n, 3), -1, dtype=np.int32)
    email_forms = np.zeros(n, dtype=np.int8)
    first = rng.integers(0, len(FIRST), size=n)
    last = rng.integers(0, len(LAST), size=n)
    style = rng.integers(0, 4, size=n)
    number = rng.integers(1, 1000, size=n) * (rng.random(n) < 0.6)
    dom_p = np.array([w for _, w in CONSUMER_DOMAINS])
    consumer = rng.choice(len(CONSUMER_DOMAINS), size=n, p=dom_p / dom_p.sum())
    consumer[people.apple_mpp & (rng.random(n) < 0.5)] = [d for d, _ in CONSUMER_DOMAINS].index("icloud.com")
    company = rng.integers(0, len(COMPANY_DOMAINS), size=n)
    form_r, form_r2 = rng.random(n), rng.random(n)
    seen: set[str] = set()
    for p in np.flatnonzero(has_email).tolist():
        f, la, num = FIRST[first[p]], LAST[last[p]], int(number[p])
        suffix = str(num) if num else ""
        local = (f"{f}.{la}{suffix}", f"{f}{la}{suffix}", f"{f[0]}{la}{suffix}",
                 f"{f}_{la[0]}{suffix}")[style[p]]
        domain = COMPANY_DOMAINS[company[p]] if people.behind_scanner[p] else CONSUMER_DOMAINS[consumer[p]][0]
        canonical = f"{local}@{domain}"
        if _mailbox(canonical) in seen:
            canonical = f"{local}_x{p}@{domain}"
        seen.add(_mailbox(canonical))
        forms = _email_forms(canonical, float(form_r[p]), float(form_r2[p]))
        for k, raw in enumerate(forms):
            email[p, k] = table.add(0, raw, p, canonical)
        email_forms[p] = len(forms)

    # --- Klaviyo profile ids: mostly ULIDs ("01H..."/"01J..."), some legacy "k_<hex>"
    klaviyo = np.full(n, -1, dtype=np.int32)
    owners = np.flatnonzero(has_klaviyo)
    start = int(datetime(2023, 5, 1, tzinfo=UTC).timestamp() * 1000)
    stop = int(datetime(2024, 9, 30, tzinfo=UTC).timestamp() * 1000)
    ulids = fmt.codes_to_str(fmt.ulid_codes(rng.integers(start, stop, size=owners.size), rng))
    legacy = fmt.codes_to_str(fmt.with_prefix(b"k_", fmt.hex_codes(
        fmt.mix64(owners.astype(np.uint64) ^ fmt.salt(config.seed, 11)))))  # bijective: unique
    is_legacy = rng.random(owners.size) < 0.15
    for i, p in enumerate(owners.tolist()):
        raw = legacy[i] if is_legacy[i] else ulids[i]
        klaviyo[p] = table.add(1, raw, p, raw)

    # --- phones: E.164 per person (families share one), 1-2 human formats each
    phone = np.full((n, 2), -1, dtype=np.int32)
    phone_forms = np.zeros(n, dtype=np.int8)
    countries = people.countries
    owners = np.flatnonzero(has_phone)
    digits = rng.integers(0, 10, size=(owners.size, 10)).tolist()
    styles = rng.integers(0, 8, size=(owners.size, 2))
    styles[rng.random(owners.size) < 0.4, 0] = 0
    second = rng.random(owners.size) < 0.3
    member = rng.random(owners.size) < config.shared_phone_share
    e164_of: dict[int, str] = {}
    used: set[str] = set()
    by_country: dict[str, list[int]] = {}
    for i, p in enumerate(owners.tolist()):
        d = digits[i]
        e164, _ = _phone(countries[p], d, 0)
        bump = 0
        while e164 in used:  # keep personal numbers unique
            bump += 1
            d = d[:6] + [int(c) for c in f"{(int(''.join(map(str, d[6:]))) + bump) % 10000:04d}"]
            e164, _ = _phone(countries[p], d, 0)
        digits[i] = d
        used.add(e164)
        e164_of[p] = e164
        by_country.setdefault(countries[p], []).append(i)
    shared: set[str] = set()
    in_household = {int(p) for h in households for p in h}
    for i in np.flatnonzero(member).tolist():  # join a family: take a same-country owner's number
        p = int(owners[i])
        candidates = by_country[countries[p]]
        head_i = candidates[int(rng.integers(0, len(candidates)))]
        if member[head_i] or p in in_household or int(owners[head_i]) in in_household:
            continue  # heads never move, so every shared number has at least two people
        digits[i] = digits[head_i]
        e164_of[p] = e164_of[int(owners[head_i])]
        shared.add(e164_of[p])
    at = {p: i for i, p in enumerate(owners.tolist())}
    household_phones: set[str] = set()
    phone_country = {p: countries[p] for p in owners.tolist()}
    for h in households:  # relatives write the head's number (each in their own style)
        head = int(h[0])
        for p in h[1:].tolist():
            digits[at[p]], e164_of[p], phone_country[p] = digits[at[head]], e164_of[head], phone_country[head]
        household_phones.add(e164_of[head])
    shared |= household_phones
    for i, p in enumerate(owners.tolist()):
        kinds = [int(styles[i, 0])] + ([int(styles[i, 1])] if second[i] else [])
        raws = list(dict.fromkeys(_phone(phone_country[p], digits[i], s)[1] for s in kinds))
        kind = 1 if e164_of[p] in shared else 0
        detail = "household" if e164_of[p] in household_phones else "family" if kind else ""
        for k, raw in enumerate(raws):
            phone[p, k] = table.add(2, raw, p, e164_of[p], kind, detail)
        phone_forms[p] = len(raws)

    # --- external ids: "cust_0001234", plain numbers or UUIDs; a few reused for a second person
    external = np.full(n, -1, dtype=np.int32)
    owners = np.flatnonzero(has_external)
    numbers = 1_000_003 + rng.permutation(owners.size) * 13 + rng.integers(0, 13, size=owners.size)
    uuid_hex = fmt.codes_to_str(np.concatenate([
        fmt.hex_codes(fmt.mix64(owners.astype(np.uint64) ^ fmt.salt(config.seed, 21))),
        fmt.hex_codes(fmt.mix64(owners.astype(np.uint64) ^ fmt.salt(config.seed, 22)))], axis=1))
    ext_style = rng.choice(3, size=owners.size, p=[0.6, 0.25, 0.15])
    reused = rng.random(owners.size) < config.shared_external_share
    raw_of: list[str] = []
    for i in range(owners.size):
        num, h = int(numbers[i]), uuid_hex[i]
        raw_of.append((f"cust_{num:07d}", str(num), f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}")
                      [ext_style[i]])
    shared_ext: set[str] = set()
    for i in np.flatnonzero(reused).tolist():
        j = int(rng.integers(0, owners.size))
        if not reused[j]:
            raw_of[i] = raw_of[j]
            shared_ext.add(raw_of[i])
    at = {p: i for i, p in enumerate(owners.tolist())}
    family_accounts: set[str] = set()
    for h in accounts:  # the household orders through the head's account
        for p in h[1:].tolist():
            raw_of[at[p]] = raw_of[at[int(h[0])]]
        family_accounts.add(raw_of[at[int(h[0])]])
    shared_ext |= family_accounts
    for i, p in enumerate(owners.tolist()):
        detail = "household" if raw_of[i] in family_accounts else "reused" if raw_of[i] in shared_ext else ""
        external[p] = table.add(3, raw_of[i], p, raw_of[i], 1 if raw_of[i] in shared_ext else 0, detail)

    # --- junk shared by nobody in particular
    junk: dict[str, np.ndarray] = {}
    for type_name, raws in JUNK.items():
        t = TYPES.index(type_name)
        junk[type_name] = np.array([table.add(t, raw, -1, _normalize(type_name, raw), 2, "junk") for raw in raws],
                                   dtype=np.int32)
    # The other phenomena only add values (after all of the above, so their indices never move).
    extras = build_phenomena(config, extra, table.add, table.values, klaviyo, email, (start, stop), _normalize)

    # Shared external ids: mark the original owner's row as shared too.
    rows = table.rows
    kinds = [r[4] if not (r[0] == 3 and table.values[r[1]] in shared_ext) else 1 for r in rows]
    details = [r[5] if not (r[0] == 3 and table.values[r[1]] in shared_ext and not r[5]) else
               ("household" if table.values[r[1]] in family_accounts else "reused") for r in rows]
    return Identifiers(
        values=table.values,
        email=email,
        email_forms=email_forms,
        klaviyo=klaviyo,
        phone=phone,
        phone_forms=phone_forms,
        external=external,
        junk=junk,
        truth_type=np.array([r[0] for r in rows], dtype=np.int8),
        truth_value=np.array([r[1] for r in rows], dtype=np.int32),
        truth_person=np.array([r[2] for r in rows], dtype=np.int64),
        truth_normalized=[r[3] for r in rows],
        truth_kind=np.array(kinds, dtype=np.int8),
        truth_detail=details,
        phenomena=extras,
    )


def _mailbox(address: str) -> str:
    # Gmail ignores dots in the local part: two people must not get addresses of one Gmail mailbox.
    local, _, domain = address.partition("@")
    return f"{local.replace('.', '')}@{domain}" if domain in ("gmail.com", "googlemail.com") else address


def _normalize(type_name: str, raw: str) -> str:
    if type_name == "email":
        return raw.strip().lower()
    if type_name == "phone":
        digits = "".join(c for c in raw if c.isdigit())
        return "+" + digits if raw.strip().startswith("+") else "+1" + digits[-10:]
    return raw.strip()
