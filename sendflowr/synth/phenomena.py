"""Identity phenomena of real ESP data, as WorldConfig knobs (all off by default):

* households of 2..`household_max` people share one phone (each writes it their way); some also share one
  customer account (`identifiers.build_identifiers` does these two, they change how phones and accounts are
  handed out);
* small businesses: 2..`business_max` people whose email events carry the business's role address
  (`<role prefix>@<business>.com`) instead of their own on a share of events;
* ESP profile merges: a Klaviyo profile had an old id until a moment inside the world (during a Klaviyo
  campaign, `merge_moments`); events before it carry the old id, after it the new one (so the messages of that
  campaign carry the old id on their send and delivery and the new one on their opens and clicks);
* placeholders: filler the backend's forms put in a field (`+10000000000`, the store's toll-free line,
  `customer@...`, `web-checkout`, `GUEST`), on a share of people's backend events (phones also on Klaviyo);
* second mailboxes: a share of people use a second address next to the first on some events;
* single-source events: backend events that carry only the phone or only the customer id.

Everything here draws from its own random stream, so the knobs at 0 leave a world byte for byte as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sendflowr.contract import IDENTIFIER_TYPES
from sendflowr.synth import fmt
from sendflowr.synth.campaigns import ESPS
from sendflowr.synth.config import WorldConfig

KLAVIYO, SENDGRID, BACKEND = (ESPS.index(e) for e in ("klaviyo", "sendgrid", "synthetic"))
TYPES = IDENTIFIER_TYPES
# identifiers.parquet `detail`: what a value is, beyond personal / shared / junk
DETAILS = ("", "household", "family", "reused", "business", "merged_profile", "second_mailbox", "placeholder", "junk")
_TRADES = ("dental", "bakery", "studio", "law", "garage", "salon", "clinic", "design", "florist", "yoga")
_NAMES = ("maple", "harbor", "summit", "cedar", "bright", "north", "golden", "river", "union", "park")
_OTHER_DOMAINS = ("outlook.com", "yahoo.com", "icloud.com", "proton.me", "gmx.de", "hotmail.com")


@dataclass(frozen=True)
class Phenomena:
    """Per person (index = person id): value indices into Identifiers.values, -1 = none."""

    klaviyo_old: np.ndarray  # int32: the profile's id before the ESP merged it
    merge_ms: np.ndarray  # int64: when the ESP merged it (events before carry klaviyo_old)
    email2: np.ndarray  # int32: second mailbox
    role: np.ndarray  # int32: the business's role address
    placeholder: np.ndarray  # int32: the placeholder this person's forms carry ...
    placeholder_type: np.ndarray  # int8: ... in this field (type code of TYPES)

    @property
    def active(self) -> bool:
        return bool((self.klaviyo_old >= 0).any() or (self.email2 >= 0).any() or (self.role >= 0).any()
                    or (self.placeholder >= 0).any())


def groups(rng: np.random.Generator, people: np.ndarray, share: float, max_size: int) -> list[np.ndarray]:
    """About `share` of `people`, cut into groups of 2..max_size (uniform); no one is in two groups."""
    if share <= 0 or len(people) < 2:
        return []
    chosen = rng.permutation(people)[:int(round(share * len(people)))]
    sizes = rng.integers(2, max_size + 1, size=len(chosen) // 2 + 1)
    bounds = np.cumsum(sizes)
    bounds = bounds[bounds <= len(chosen)]
    return [g for g in np.split(chosen, bounds) if len(g) >= 2]


def build_phenomena(config: WorldConfig, rng: np.random.Generator, add: Callable[..., int], values: list[str],
                    klaviyo: np.ndarray, email: np.ndarray, ulid_range: tuple[int, int],
                    normal_form: Callable[[str, str], str]) -> Phenomena:
    """The values of merges, second mailboxes, role addresses and placeholders (`add` puts one row in the
    identifier table and returns its index; `normal_form` is the ground truth's normalization); households are
    handled where phones and accounts are made."""
    n = len(klaviyo)
    none = np.full(n, -1, np.int32)
    klaviyo_old, email2, role, placeholder = none.copy(), none.copy(), none.copy(), none.copy()
    placeholder_type = np.full(n, -1, np.int8)
    merge_ms = np.zeros(n, np.int64)
    end = int(config.end.timestamp() * 1000)
    start = end - config.weeks * 7 * 86_400_000

    merged = np.flatnonzero((klaviyo >= 0) & (rng.random(n) < config.esp_merge_share))
    if len(merged):
        old = fmt.codes_to_str(fmt.ulid_codes(rng.integers(*ulid_range, size=len(merged)), rng))
        # merges inside the world, never at its very edges, so both ids have a history
        when = start + ((0.15 + 0.7 * rng.random(len(merged))) * (end - start)).astype(np.int64)
        for p, raw, t in zip(merged.tolist(), old, when.tolist(), strict=True):
            klaviyo_old[p] = add(1, raw, p, raw, 0, "merged_profile")
            merge_ms[p] = t

    owners = np.flatnonzero(email[:, 0] >= 0)
    second = owners[rng.random(len(owners)) < config.second_mailbox_share]
    domains = rng.integers(0, len(_OTHER_DOMAINS), size=len(second))
    for p, d in zip(second.tolist(), domains.tolist(), strict=True):
        local = values[email[p, 0]].split("@")[0]
        address = f"{local}.{p}@{_OTHER_DOMAINS[d]}"  # the person number keeps it unique
        email2[p] = add(0, address, p, address, 0, "second_mailbox")

    for b, staff in enumerate(groups(rng, np.arange(n), config.business_share, config.business_max)):
        prefix = config.role_prefixes[int(rng.integers(0, len(config.role_prefixes)))]
        address = f"{prefix}@{_NAMES[b % len(_NAMES)]}-{_TRADES[b // len(_NAMES) % len(_TRADES)]}{b}.com"
        for p in staff.tolist():
            role[p] = add(0, address, p, address, 1, "business")

    carriers = np.flatnonzero(rng.random(n) < config.placeholder_share)
    if len(carriers):
        table = [add(TYPES.index(t), raw, -1, normal_form(t, raw), 2, "placeholder")
                 for t, raw in config.placeholder_values]
        pick = rng.integers(0, len(table), size=len(carriers))
        placeholder[carriers] = np.array(table, np.int32)[pick]
        placeholder_type[carriers] = [TYPES.index(config.placeholder_values[k][0]) for k in pick.tolist()]
    return Phenomena(klaviyo_old, merge_ms, email2, role, placeholder, placeholder_type)


MERGE_AFTER_SEND_MS = 25 * 60_000  # after a send's burst went out (<= 20 min) and mostly before its opens


def merge_moments(world) -> np.ndarray:
    """When each merged profile changes id: during the first Klaviyo campaign at or after the drawn moment, once
    its messages went out, so that a message's send and delivery carry the old id and its opens the new one (a
    click identifying the browser is what merges profiles on the ESP side)."""
    ph, camp = world.identifiers.phenomena, world.campaigns
    sends = np.sort(camp.send_ms[camp.esp == KLAVIYO].astype(np.int64))
    if not len(sends):
        return ph.merge_ms
    at = np.searchsorted(sends, ph.merge_ms)
    snapped = sends[np.minimum(at, len(sends) - 1)] + MERGE_AFTER_SEND_MS
    return np.where(at < len(sends), snapped, ph.merge_ms)


def apply(world, esp: int, ts: np.ndarray, person: np.ndarray, fields: list[np.ndarray], wants: list[np.ndarray],
          rng: np.random.Generator) -> None:
    """Change one campaign's per-event identifier choices in place: fields = [email, klaviyo, phone, external]
    value indices, wants = whether the event carries each (same order)."""
    cfg, ph = world.config, world.identifiers.phenomena
    if not ph.active and cfg.single_source_rate <= 0:
        return
    email, klaviyo, phone, external = fields
    want_e, want_k, want_ph, want_x = wants
    m = len(person)
    # before the ESP merged the profile, every event carrying its id carries the old one
    old = ph.klaviyo_old[person]
    before = (old >= 0) & (ts < merge_moments(world)[person])
    if cfg.esp_merge_overlap > 0:  # duplicates: the surviving profile was in use before the merge too
        before &= rng.random(m) >= cfg.esp_merge_overlap
    klaviyo[:] = np.where(before, old, klaviyo)
    if esp != KLAVIYO or cfg.second_mailbox_on_profile:
        second = ph.email2[person]
        email[:] = np.where((second >= 0) & (rng.random(m) < cfg.second_mailbox_rate), second, email)
    if esp != KLAVIYO:  # the business's orders and its subscription go through the role address
        role = ph.role[person]
        use = (role >= 0) & (rng.random(m) < cfg.role_address_rate)
        email[:] = np.where(use, role, email)
        if esp == BACKEND:
            want_e |= use
    if esp == BACKEND:  # a form that asked for only one of them
        both = want_ph & want_x & (rng.random(m) < cfg.single_source_rate)
        drop_phone = rng.random(m) < 0.5
        want_ph &= ~(both & drop_phone)
        want_x &= ~(both & ~drop_phone)
    value, kind = ph.placeholder[person], ph.placeholder_type[person]
    use = (value >= 0) & (rng.random(m) < cfg.placeholder_rate)
    for t, col, want in ((0, email, want_e), (2, phone, want_ph), (3, external, want_x)):
        here = use & (kind == t) & ((esp == BACKEND) | ((esp == KLAVIYO) & (t == 2)))
        col[:] = np.where(here, value, col)
        want |= here
