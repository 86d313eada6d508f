"""Campaign schedule: when each campaign goes out, through which ESP, to what share of the list, with which
links. Send times cluster on a few popular UTC hours and weekdays, so exposure is deliberately biased.

Weekly send slots (WorldConfig.send_slots, slot_share): most senders mail in a few fixed weekly slots. K
distinct (weekday, UTC hour) slots are drawn per world (weekdays and hours as popular as above), each with
a Dirichlet popularity; exactly round(slot_share * campaigns) campaigns, chosen at random, go out on the
hour in a slot, at distinct weekly occurrences while there are enough. The rest keep the schedule above.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def build_campaigns(config: WorldConfig, rng: np.random.Generator, slot_rng: np.random.Generator) -> Campaigns:
    """`slot_rng` draws the weekly slots (its own stream: slots never shift the other draws)."""
    n = config.campaigns
    end_ms = int(config.end.timestamp() * 1000)
    start_ms = int(config.start.timestamp() * 1000)
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
    if config.send_slots and config.slot_share > 0:
        send = _in_slots(config, send, days, slot_rng, start_ms, last_day_ms)
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


def draw_slots(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """K distinct weekly slots as UTC hour-of-week (Monday 00:00 = 0) and their popularity (sums to 1)."""
    hour_p = np.full(24, (1 - POPULAR_SHARE) / 24)
    hour_p[list(POPULAR_HOURS_UTC)] += POPULAR_SHARE * np.asarray(POPULAR_WEIGHTS)
    cell = (np.asarray(WEEKDAY_WEIGHTS)[:, None] * hour_p[None, :]).ravel()
    slots = rng.choice(cell.size, size=k, replace=False, p=cell / cell.sum())
    return slots.astype(np.int64), rng.dirichlet(np.full(k, 3.0))


def _in_slots(config: WorldConfig, send: np.ndarray, days: np.ndarray, rng: np.random.Generator, start_ms: int,
              last_ms: int) -> np.ndarray:
    slots, popularity = draw_slots(config.send_slots, rng)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    # every occurrence of every slot inside the sending period
    slot_of = np.repeat(np.arange(slots.size), days.size)
    at = (np.tile(days, slots.size) * MS_PER_DAY + (slots[slot_of] % 24) * 3_600_000)
    keep = (np.tile(weekday, slots.size) == slots[slot_of] // 24) & (at >= start_ms) & (at <= last_ms)
    slot_of, at = slot_of[keep], at[keep]
    send = send.copy()
    count = round(config.slot_share * send.size)
    if count == 0 or at.size == 0:
        return send
    weight = popularity[slot_of] / np.bincount(slot_of, minlength=slots.size)[slot_of]
    picked = rng.choice(at.size, size=count, replace=count > at.size, p=weight / weight.sum())
    send[rng.choice(send.size, size=count, replace=False)] = at[picked]
    return send
