"""WorldConfig: every knob of the synthetic world, validated once; defaults look like a real list."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sendflowr.errors import SendflowrError

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
NOT_PROBABILITIES = ("campaigns_per_week", "drift_hours")
# How a genuine open's moment is drawn (opens.py): the original independent lognormal delay, a continuous
# hazard following the person's attention, discrete check sessions, or each person one of the last two.
OPEN_DELAYS = ("lognormal", "hazard", "sessions", "mixed")


@dataclass(frozen=True)
class WorldConfig:
    people: int = 10_000
    weeks: int = 12
    campaigns_per_week: float = 3.0
    seed: int = 7
    end: datetime = DEFAULT_END
    # Audience: each campaign goes to a uniform [min, max] share of the people still subscribed.
    audience_min: float = 0.35
    audience_max: float = 0.85
    # Engagement propensity mixture (the rest are "sparse" readers).
    share_never: float = 0.10
    share_heavy: float = 0.15
    # Mail environment.
    apple_mpp_share: float = 0.30  # Apple Mail Privacy Protection users (machine opens on delivery)
    mpp_open_rate: float = 0.97  # P(MPP prefetch open | delivered) for those users
    mpp_human_open_visible: float = 0.5  # P(an MPP user's genuine open reaches the ESP; cache hides others)
    machine_open_flag_rate: float = 0.6  # share of MPP opens on SendGrid campaigns flagged machine_open
    scanner_share: float = 0.03  # people at companies whose security gateway clicks every link
    scanner_click_rate: float = 0.85  # P(scanner visits the links | delivered) for those people
    # Deliverability.
    hard_bounce_share: float = 0.015  # addresses that bounce forever (later sends are dropped)
    soft_bounce_rate: float = 0.01
    late_delivery_rate: float = 0.02  # deliveries taking 30 min - 6 h instead of seconds
    # Engagement after opening.
    reopen_rate: float = 0.2
    click_rate: float = 0.15  # P(click | genuine open)
    unsubscribe_rate: float = 0.004  # P(unsubscribe | genuine open)
    complaint_rate: float = 0.0004  # P(spam complaint | delivered)
    # Identifiers.
    email_share: float = 0.93
    klaviyo_share: float = 0.70
    phone_share: float = 0.35
    external_share: float = 0.40
    shared_phone_share: float = 0.03  # of phone owners, share living in a family that shares the number
    shared_external_share: float = 0.004  # of external-id owners, share whose id was reused for someone else
    junk_identifier_rate: float = 0.02  # events carrying a generic junk identifier next to real ones
    # Events that carry identifiers of two sources (what lets identity stitching bridge them), per event:
    klaviyo_phone_rate: float = 0.08  # Klaviyo profile/SMS-consent events with the profile's phone
    klaviyo_external_rate: float = 0.05  # Klaviyo events with the store's customer id synced to the profile
    backend_email_rate: float = 0.10  # the brand's backend (orders, accounts) with the customer's email
    # Stream.
    duplicate_rate: float = 0.01  # events delivered twice with the same event_id (ESP retries)
    late_rate: float = 0.02  # events arriving minutes to days after they occurred

    # --- Phenomena of real senders (docs/TIMING.md, "Synthetic worlds"; presets in presets.py). Every default
    # reproduces the original world byte for byte; each knob draws from its own random stream.
    send_slots: int = 0  # K weekly (weekday, UTC hour) send slots drawn per world; 0 = no slots
    slot_share: float = 0.0  # share of campaigns sent in those slots (exactly round(share * campaigns))
    open_delay: str = "lognormal"  # when a genuine open happens: one of OPEN_DELAYS
    mpp_late_share: float = 0.0  # share of Apple MPP prefetches arriving 10 min - 6 h after delivery
    scanner_browser_ua_share: float = 0.0  # share of scanner visits sending an ordinary browser user agent
    drift_share: float = 0.0  # share of people whose daily rhythm drifts by up to drift_hours over the world
    drift_hours: float = 3.0  # largest drift (either direction); each drifter gets 0.5-1 times it
    switch_share: float = 0.0  # share of people who switch archetype at a random week
    zone_mix_share: float = 0.0  # share of people whose phone country is not their time zone's
    # --- Identity phenomena (sendflowr/synth/phenomena.py). Every share at 0 (the default) leaves the world
    # exactly as without them: they draw from their own random streams.
    household_share: float = 0.0  # share of people living in a household of 2..household_max sharing one phone
    household_max: int = 4
    household_account_share: float = 0.0  # of households, share that also share one customer account
    business_share: float = 0.0  # share of people working at a small business (2..business_max staff) ...
    business_max: int = 6
    role_prefixes: tuple[str, ...] = ("info", "frontdesk", "orders", "office", "reception", "hello")  # ... whose
    role_address_rate: float = 0.5  # role address <prefix>@<business>.com is on this share of their email events
    esp_merge_share: float = 0.0  # of Klaviyo profiles, share merged on the ESP side during the world: the old id
    #   before the merge, the new one after (same email; a message's early events old, later events new)
    esp_merge_overlap: float = 0.0  # share of events before a merge already carrying the surviving id (the two
    #   profiles were duplicates in use side by side until the ESP merged them)
    placeholder_share: float = 0.0  # share of people whose backend (and Klaviyo phone) fields hold a placeholder
    placeholder_rate: float = 0.5  # share of those people's events of that source carrying it
    placeholder_values: tuple[tuple[str, str], ...] = (
        ("phone", "+10000000000"), ("phone", "+1 (888) 240-1234"), ("email", "customer@mystore.com"),
        ("external_id", "web-checkout"), ("external_id", "GUEST"))  # (identifier type, raw value)
    second_mailbox_share: float = 0.0  # of email owners, share with a second mailbox used next to the first
    second_mailbox_rate: float = 0.3  # share of their email-carrying events with the second mailbox
    second_mailbox_on_profile: bool = True  # also on Klaviyo events (False: only SendGrid and the backend see it)
    single_source_rate: float = 0.0  # share of backend events carrying only the phone or only the customer id

    def __post_init__(self) -> None:
        if isinstance(self.end, str):  # convenience for callers passing ISO strings
            object.__setattr__(self, "end", parse_end(self.end))
        if self.end.tzinfo is None:
            object.__setattr__(self, "end", self.end.replace(tzinfo=UTC))
        if not 1 <= self.people < 2**31:
            raise SendflowrError(f"people must be between 1 and 2^31-1, got {self.people}")
        if not 1 <= self.weeks <= 520:
            raise SendflowrError(f"weeks must be between 1 and 520, got {self.weeks}")
        if not 0 < self.campaigns_per_week <= 200:
            raise SendflowrError(f"campaigns_per_week must be in (0, 200], got {self.campaigns_per_week}")
        if not 0 <= self.seed < 2**63:
            raise SendflowrError(f"seed must be a non-negative 63-bit integer, got {self.seed}")
        if not 0 < self.audience_min <= self.audience_max <= 1:
            raise SendflowrError("need 0 < audience_min <= audience_max <= 1")
        if self.share_never + self.share_heavy > 1:
            raise SendflowrError("share_never + share_heavy must not exceed 1")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and field.name not in NOT_PROBABILITIES and not 0 <= value <= 1:
                raise SendflowrError(f"{field.name} is a probability, got {value}")
        self._check_phenomena()
        self._check_identity_phenomena()

    def _check_phenomena(self) -> None:
        if not 0 <= self.send_slots <= 168:
            raise SendflowrError(f"send_slots must be between 0 and 168, got {self.send_slots}")
        if self.slot_share > 0 and self.send_slots == 0:
            raise SendflowrError("slot_share needs send_slots > 0")
        if self.open_delay not in OPEN_DELAYS:
            raise SendflowrError(f"open_delay must be one of {', '.join(OPEN_DELAYS)}, got {self.open_delay!r}")
        if not 0 <= self.drift_hours <= 12:
            raise SendflowrError(f"drift_hours must be between 0 and 12, got {self.drift_hours}")

    def _check_identity_phenomena(self) -> None:
        for name in ("household_max", "business_max"):
            if not 2 <= getattr(self, name) <= 50:
                raise SendflowrError(f"{name} must be between 2 and 50, got {getattr(self, name)}")
        if not self.role_prefixes or not all(p and "@" not in p for p in self.role_prefixes):
            raise SendflowrError("role_prefixes must be non-empty local parts (no '@')")
        types = ("email", "phone", "external_id")  # fields a backend form fills with filler
        if not self.placeholder_values or not all(len(v) == 2 and v[0] in types and v[1]
                                                  for v in self.placeholder_values):
            raise SendflowrError(f"placeholder_values must be (type, value) pairs with a type of {types}")
        object.__setattr__(self, "role_prefixes", tuple(self.role_prefixes))
        object.__setattr__(self, "placeholder_values", tuple(tuple(v) for v in self.placeholder_values))

    @property
    def campaigns(self) -> int:
        return max(1, round(self.weeks * self.campaigns_per_week))

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=self.weeks)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["end"] = format_time(self.end)
        return data


def parse_end(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SendflowrError(f"end must be an ISO 8601 date or time, got {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
