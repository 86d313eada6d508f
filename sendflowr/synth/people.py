"""The population: time zone, archetype, engagement propensity and mail environment per person.

Time zones use ONE FIXED UTC offset per IANA zone (standard time, no daylight saving), so a person's
local day maps onto the UTC week the same way in every week of the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.synth.config import WorldConfig

# (IANA zone, fixed UTC offset in hours, population weight, ISO country for phone numbers)
ZONES: tuple[tuple[str, float, float, str], ...] = (
    ("America/New_York", -5, 0.20, "US"),
    ("America/Chicago", -6, 0.10, "US"),
    ("America/Denver", -7, 0.04, "US"),
    ("America/Phoenix", -7, 0.02, "US"),
    ("America/Los_Angeles", -8, 0.12, "US"),
    ("America/Toronto", -5, 0.03, "CA"),
    ("America/Mexico_City", -6, 0.02, "MX"),
    ("America/Sao_Paulo", -3, 0.04, "BR"),
    ("Europe/London", 0, 0.09, "GB"),
    ("Europe/Berlin", 1, 0.07, "DE"),
    ("Europe/Paris", 1, 0.05, "FR"),
    ("Europe/Madrid", 1, 0.03, "ES"),
    ("Asia/Dubai", 4, 0.02, "AE"),
    ("Asia/Kolkata", 5.5, 0.04, "IN"),
    ("Asia/Singapore", 8, 0.03, "SG"),
    ("Asia/Tokyo", 9, 0.03, "JP"),
    ("Australia/Sydney", 10, 0.05, "AU"),
    ("Pacific/Auckland", 12, 0.02, "NZ"),
)

ARCHETYPES = ("morning", "lunch", "evening", "weekend", "night")
ARCHETYPE_WEIGHTS = (0.26, 0.20, 0.30, 0.14, 0.10)

# Mail client used for reading (drives human-open user agents and IPs); MPP users read in Apple Mail.
CLIENTS = ("gmail", "apple_mail", "iphone_mail", "outlook", "webmail", "yahoo", "thunderbird")
CLIENT_WEIGHTS = (0.40, 0.07, 0.10, 0.16, 0.17, 0.07, 0.03)
# Browser/device used when clicking a link.
BROWSERS = ("chrome_win", "safari_iphone", "chrome_android", "safari_mac", "firefox", "edge")
BROWSER_WEIGHTS = (0.30, 0.25, 0.20, 0.10, 0.07, 0.08)


@dataclass(frozen=True)
class People:
    zone: np.ndarray  # int16 index into ZONES
    utc_offset_hours: np.ndarray  # float32
    archetype: np.ndarray  # int8 index into ARCHETYPES
    propensity: np.ndarray  # float32, P(genuine open) when delivered at the person's best hour
    segment: np.ndarray  # int8: 0 never, 1 sparse, 2 heavy
    apple_mpp: np.ndarray  # bool
    behind_scanner: np.ndarray  # bool
    scanner_vendor: np.ndarray  # int8 index into clients.SCANNERS (meaningful when behind_scanner)
    hard_bouncer: np.ndarray  # bool: every send bounces (hard, then dropped)
    client: np.ndarray  # int8 index into CLIENTS
    browser: np.ndarray  # int8 index into BROWSERS
    home_zone: np.ndarray | None = None  # int16 zone whose country the identifiers carry (zones.py); None: zone

    def __len__(self) -> int:
        return int(self.zone.shape[0])

    @property
    def tz_names(self) -> np.ndarray:
        return np.array([z[0] for z in ZONES], dtype=object)[self.zone]

    @property
    def countries(self) -> np.ndarray:
        """Country of the person's identifiers (phone numbers), normally their time zone's."""
        home = self.zone if self.home_zone is None else self.home_zone
        return np.array([z[3] for z in ZONES], dtype=object)[home]


def _weights(values: tuple[float, ...]) -> np.ndarray:
    w = np.asarray(values, dtype=np.float64)
    return w / w.sum()


def build_people(config: WorldConfig, rng: np.random.Generator, n_scanner_vendors: int) -> People:
    n = config.people
    zone = rng.choice(len(ZONES), size=n, p=_weights(tuple(z[2] for z in ZONES))).astype(np.int16)
    offsets = np.array([z[1] for z in ZONES], dtype=np.float32)[zone]
    archetype = rng.choice(len(ARCHETYPES), size=n, p=_weights(ARCHETYPE_WEIGHTS)).astype(np.int8)

    u = rng.random(n)
    segment = np.where(u < config.share_never, 0, np.where(u < config.share_never + config.share_heavy, 2, 1))
    heavy = rng.beta(9.0, 2.5, size=n)
    sparse = rng.beta(2.0, 4.5, size=n)
    propensity = np.where(segment == 2, heavy, np.where(segment == 1, sparse, 0.0)).astype(np.float32)

    apple_mpp = rng.random(n) < config.apple_mpp_share
    behind_scanner = rng.random(n) < config.scanner_share
    scanner_vendor = rng.integers(0, n_scanner_vendors, size=n).astype(np.int8)
    hard_bouncer = rng.random(n) < config.hard_bounce_share
    client = rng.choice(len(CLIENTS), size=n, p=_weights(CLIENT_WEIGHTS)).astype(np.int8)
    client[apple_mpp] = CLIENTS.index("apple_mail")
    browser = rng.choice(len(BROWSERS), size=n, p=_weights(BROWSER_WEIGHTS)).astype(np.int8)
    return People(
        zone=zone,
        utc_offset_hours=offsets,
        archetype=archetype,
        propensity=propensity,
        segment=segment.astype(np.int8),
        apple_mpp=apple_mpp,
        behind_scanner=behind_scanner,
        scanner_vendor=scanner_vendor,
        hard_bouncer=hard_bouncer,
        client=client,
        browser=browser,
    )
