"""Campaign schedule: when each campaign goes out, through which ESP, to what share of the list, with which
links. Send times cluster on a few popular UTC hours and weekdays, so exposure is deliberately biased.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from sendflowr.synth.config import WorldConfig

ESPS = ("klaviyo", "sendgrid", "synthetic")
ESP_WEIGHTS = (0.5, 0.35, 0.15)
POPULAR_HOURS_UTC = (8, 14, 15, 18)
POPULAR_WEIGHTS = (0.2, 0.35, 0.25, 0.2)
POPULAR_SHARE = 0.7
WEEKDAY_WEIGHTS = (0.15, 0.22, 0.18, 0.22, 0.12, 0.06, 0.05)  # Monday first
PATHS = ("collections/new-arrivals", "sale", "products/bestsellers", "blog/style-guide", "account/rewards",
         "collections/gifts", "stores", "products/limited-edition", "faq/shipping", "collections/outlet")
MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class Campaigns:
    send_ms: np.ndarray  # int64 epoch ms, ascending
    esp: np.ndarray  # int8 index into ESPS
    audience: np.ndarray  # float64 share of eligible people
    link_start: np.ndarray  # int32 first index into urls
    n_links: np.ndarray  # int8
    ids: list[str]
    urls: list[str]

    def __len__(self) -> int:
        return int(self.send_ms.shape[0])


def build_campaigns(config: WorldConfig, rng: np.random.Generator) -> Campaigns:
    n = config.campaigns
    end_ms = int(config.end.timestamp() * 1000)
    start_ms = int((config.end - timedelta(weeks=config.weeks)).timestamp() * 1000)
    last_day_ms = end_ms - MS_PER_DAY * 3 // 2  # leave ~36 h for the last campaign's opens
    first_day = start_ms // MS_PER_DAY
    days = np.arange(first_day, max(first_day + 1, last_day_ms // MS_PER_DAY))
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    w = np.asarray(WEEKDAY_WEIGHTS)[weekday]
    day = rng.choice(days, size=n, p=w / w.sum())
    popular = rng.random(n) < POPULAR_SHARE
    hour = np.where(popular, rng.choice(POPULAR_HOURS_UTC, size=n, p=POPULAR_WEIGHTS), rng.integers(0, 24, n))
    u = rng.random(n)
    minute = np.where(u < 0.7, 0, np.where(u < 0.9, 30, rng.integers(0, 60, n)))
    send = day * MS_PER_DAY + hour * 3_600_000 + minute * 60_000
    send = np.clip(send, start_ms, last_day_ms)
    order = np.argsort(send, kind="stable")
    send = send[order].astype(np.int64)
    esp = rng.choice(len(ESPS), size=n, p=ESP_WEIGHTS).astype(np.int8)
    audience = rng.uniform(config.audience_min, config.audience_max, size=n)
    n_links = rng.integers(2, 7, size=n).astype(np.int8)
    link_start = np.concatenate([[0], np.cumsum(n_links)[:-1]]).astype(np.int32)
    ids, urls = [], []
    for k in range(n):
        stamp = np.datetime64(int(send[k]), "ms").astype("datetime64[m]").item()
        cid = f"cmp_{stamp:%Y%m%d_%H%M}_{k:03d}"
        ids.append(cid)
        paths = rng.choice(len(PATHS), size=int(n_links[k]), replace=False)
        urls += [f"https://shop.example.com/{PATHS[p]}?utm_source=email&utm_campaign={cid}" for p in paths]
    return Campaigns(send_ms=send, esp=esp, audience=audience, link_start=link_start, n_links=n_links,
                     ids=ids, urls=urls)
