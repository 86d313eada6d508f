"""User agents and IP addresses: mail clients, browsers, Apple's MPP proxy, image proxies, link scanners.

Every string lives once in a table; events refer to it by index. Per-person home IPs come first in the IP
table (index = person id), then the shared pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.synth.people import BROWSERS, CLIENTS

# What a human open looks like per mail client (Gmail and Yahoo fetch images through their proxies).
OPEN_UA = {
    "gmail": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "apple_mail": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "iphone_mail": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "outlook": "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17628; Pro)",
    "webmail": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
    "yahoo": "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    "thunderbird": "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.12.0",
}
CLICK_UA = {
    "chrome_win": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "safari_iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "chrome_android": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "safari_mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "firefox": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
}
MPP_UA = "Mozilla/5.0"  # all Apple's proxy sends
# (vendor, user agent, first two octets of its crawler range)
SCANNERS = (
    ("microsoft_defender", "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko", (40, 94)),
    ("mimecast", "Mimecast-URL-Protect/1.0", (207, 211)),
    ("proofpoint", "Mozilla/5.0 (compatible; Proofpoint URL Defense)", (148, 163)),
    ("barracuda", "Barracuda Sentinel (EE)", (209, 222)),
    ("generic_gateway", "python-requests/2.31.0", (3, 80)),
)
# Shared IP pools: (name, list of (a, b) /16 prefixes, size)
POOLS = (
    ("apple_mpp", [(17, 58), (17, 59), (17, 121), (17, 123)], 2048),
    ("google_proxy", [(66, 249), (74, 125)], 512),
    ("yahoo_proxy", [(98, 137), (74, 6)], 128),
    ("mobile", [(172, 58), (174, 205), (92, 40), (49, 204)], 1024),
) + tuple((f"scanner_{name}", [octets], 64) for name, _, octets in SCANNERS)

_PUBLIC_FIRST_OCTETS = np.array(
    [o for o in range(1, 224) if o not in (10, 17, 100, 127, 169, 172, 192, 198, 203)], dtype=np.int64
)


@dataclass(frozen=True)
class Clients:
    ua_values: list[str]
    ip_values: list[str]
    open_ua: np.ndarray  # by client
    click_ua: np.ndarray  # by browser
    mpp_ua: int
    scanner_ua: np.ndarray  # by vendor
    pools: dict[str, tuple[int, int]]  # name -> (first index in ip_values, size)

    def pool_ip(self, name: str, rng: np.random.Generator, n: int) -> np.ndarray:
        start, size = self.pools[name]
        return (start + rng.integers(0, size, size=n)).astype(np.int32)


def _ip_strings(first: np.ndarray, rest: np.ndarray) -> list[str]:
    return [f"{a}.{b}.{c}.{d}" for a, (b, c, d) in zip(first.tolist(), rest.tolist(), strict=True)]


def build_clients(people: int, rng: np.random.Generator) -> Clients:
    ua_values = [OPEN_UA[c] for c in CLIENTS] + [CLICK_UA[b] for b in BROWSERS] + [MPP_UA]
    ua_values += [ua for _, ua, _ in SCANNERS]
    n_open, n_click = len(CLIENTS), len(BROWSERS)
    first = _PUBLIC_FIRST_OCTETS[rng.integers(0, _PUBLIC_FIRST_OCTETS.size, size=people)]
    rest = np.column_stack([rng.integers(0, 256, size=people), rng.integers(0, 256, size=people),
                            rng.integers(1, 255, size=people)])
    ip_values = _ip_strings(first, rest)
    pools: dict[str, tuple[int, int]] = {}
    for name, prefixes, size in POOLS:
        pick = rng.integers(0, len(prefixes), size=size)
        a = np.array([p[0] for p in prefixes])[pick]
        b = np.array([p[1] for p in prefixes])[pick]
        cd = np.column_stack([b, rng.integers(0, 256, size=size), rng.integers(1, 255, size=size)])
        pools[name] = (len(ip_values), size)
        ip_values += _ip_strings(a, cd)
    return Clients(
        ua_values=ua_values,
        ip_values=ip_values,
        open_ua=np.arange(n_open, dtype=np.int32),
        click_ua=np.arange(n_open, n_open + n_click, dtype=np.int32),
        mpp_ua=n_open + n_click,
        scanner_ua=np.arange(n_open + n_click + 1, n_open + n_click + 1 + len(SCANNERS), dtype=np.int32),
        pools=pools,
    )
