"""One campaign's events, vectorized over its recipients: sends, deliveries, bounces, genuine opens drawn
by the people's open-delay mechanism (opens.py), Apple MPP prefetch opens (some late when
mpp_late_share > 0), scanner clicks (some with a browser user agent when scanner_browser_ua_share > 0),
human clicks, unsubscribes, complaints.

Events come out as columns (numpy arrays) in no particular order; stream.py orders and batches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.events import EVENT_TYPES
from sendflowr.synth import phenomena
from sendflowr.synth.campaigns import ESPS
from sendflowr.synth.clients import SCANNERS
from sendflowr.synth.opens import draw_opens, lognormal_delay
from sendflowr.synth.people import BROWSERS, CLIENTS
from sendflowr.synth.world import (
    EVENTS_MPP_LATE,
    EVENTS_OPENS,
    EVENTS_SCANNER_UA,
    ORIGINS,
    STREAM_EVENTS,
    World,
    rng_for,
)

SYSTEM, HUMAN, MPP, SCANNER = (ORIGINS.index(o) for o in ORIGINS)
SENT, DELIVERED, OPENED, CLICKED, BOUNCED, UNSUBSCRIBED, COMPLAINED = (
    EVENT_TYPES.index(t) for t in ("sent", "delivered", "opened", "clicked", "bounced", "unsubscribed",
                                   "complained"))
KLAVIYO, SENDGRID, SYNTHETIC = (ESPS.index(e) for e in ("klaviyo", "sendgrid", "synthetic"))
# Event slot within one (campaign, person) message; part of the event key, so ids stay unique.
SLOT_SENT, SLOT_DELIVERED, SLOT_BOUNCED, SLOT_OPEN, SLOT_REOPEN, SLOT_MPP, SLOT_CLICK = 0, 1, 2, 3, 4, 5, 6
SLOT_SCANNER, SLOT_UNSUBSCRIBED, SLOT_COMPLAINED = 16, 30, 31
SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
NO_TIME = np.iinfo(np.int64).max
DESKTOP_BROWSERS = ("chrome_win", "edge", "firefox", "safari_mac")  # what posing scanners claim to be

Columns = dict[str, np.ndarray]


@dataclass
class SimState:
    """What carries over between campaigns: suppression after unsubscribes/complaints, hard bounces."""

    suppressed_at: np.ndarray  # int64 ms, NO_TIME when still subscribed
    hard_bounced_at: np.ndarray  # int64 ms, NO_TIME when never hard-bounced

    @classmethod
    def fresh(cls, people: int) -> SimState:
        return cls(np.full(people, NO_TIME, dtype=np.int64), np.full(people, NO_TIME, dtype=np.int64))


def _lognormal_ms(rng: np.random.Generator, median_ms: float, sigma: float, n: int,
                  low: float, high: float) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median_ms), sigma, size=n), low, high).astype(np.int64)


def _pick(rng: np.random.Generator, forms: np.ndarray, n_forms: np.ndarray, p_first: float) -> np.ndarray:
    """Per row: form 0 with p_first, else one of the other forms (when the person has several)."""
    k = np.where(rng.random(n_forms.size) < p_first, 0,
                 1 + (rng.random(n_forms.size) * np.maximum(n_forms - 1, 1)).astype(np.int64))
    k = np.where(k < n_forms, k, 0)
    return forms[np.arange(n_forms.size), k]


def simulate_campaign(world: World, c: int, state: SimState, person: np.ndarray | None = None,
                      sent: np.ndarray | None = None) -> Columns:
    """Campaign c's events. By default its audience is drawn and sent from its send time on; `person` and `sent`
    (epoch ms per recipient) let the sender choose who gets it and when (sendflowr campaign: each at the trigger
    the decision API returned)."""
    cfg, P, camp = world.config, world.people, world.campaigns
    rng = rng_for(cfg.seed, STREAM_EVENTS, c)
    t0, esp, n_links = int(camp.send_ms[c]), int(camp.esp[c]), int(camp.n_links[c])
    N = len(P)

    if person is None:
        eligible = state.suppressed_at > t0
        person = np.flatnonzero(eligible & (rng.random(N) < camp.audience[c])).astype(np.int32)
        n = person.size
        spread = min(20 * MINUTE, n * 25)  # ESP throughput: bigger sends take longer to go out
        sent = t0 + (rng.random(n) * spread).astype(np.int64)
    else:
        person, sent = np.asarray(person, np.int32), np.asarray(sent, np.int64)
        n = person.size

    # Bounces: permanent bouncers bounce hard once, then the ESP drops later sends.
    perm = P.hard_bouncer[person]
    dropped = perm & (state.hard_bounced_at[person] < t0)
    hard = perm & ~dropped
    soft = ~perm & (rng.random(n) < cfg.soft_bounce_rate)
    bounce = np.where(hard, 0, np.where(soft, 1, np.where(dropped, 2, -1))).astype(np.int8)
    bounce_at = sent + np.where(soft, rng.integers(5 * MINUTE, 3 * HOUR, n),
                                np.where(dropped, rng.integers(50, 800, n),
                                         _lognormal_ms(rng, 1500, 0.8, n, 100, 2 * MINUTE)))
    delivered = bounce < 0
    latency = _lognormal_ms(rng, 3 * SECOND, 1.0, n, 200, 10 * MINUTE)
    latency += np.where(rng.random(n) < cfg.late_delivery_rate, rng.integers(30 * MINUTE, 6 * HOUR, n), 0)
    deliver = sent + latency

    # Genuine opens: whether and when, by the person's open-delay mechanism (opens.py; originally P(open) is
    # the TRUE curve at the UTC hour of delivery and the delay an independent lognormal).
    u_open = rng.random(n)
    delay = lognormal_delay(rng, n)
    opened, open_at = draw_opens(world, person, deliver, rng_for(cfg.seed, STREAM_EVENTS, c, EVENTS_OPENS),
                                 u_open, delay)
    genuine = delivered & opened
    mpp = P.apple_mpp[person]
    visible = ~mpp | (rng.random(n) < cfg.mpp_human_open_visible)  # MPP caches hide some real opens
    reopen = genuine & (rng.random(n) < cfg.reopen_rate)
    reopen_at = open_at + _lognormal_ms(rng, 3 * HOUR, 1.0, n, MINUTE, 7 * DAY)
    reopen_visible = ~mpp | (rng.random(n) < cfg.mpp_human_open_visible)
    click = genuine & (rng.random(n) < cfg.click_rate)
    click2 = click & (rng.random(n) < 0.25)
    click_at = open_at + 2 * SECOND + _lognormal_ms(rng, 25 * SECOND, 1.0, n, 0, 30 * MINUTE)
    click2_at = click_at + 5 * SECOND + _lognormal_ms(rng, 60 * SECOND, 1.0, n, 0, HOUR)
    link1, link2 = rng.integers(0, n_links, n), rng.integers(0, n_links, n)
    unsub = genuine & (rng.random(n) < cfg.unsubscribe_rate)
    unsub_at = open_at + 10 * SECOND + _lognormal_ms(rng, 60 * SECOND, 0.8, n, 0, HOUR)
    complaint = delivered & ~unsub & (rng.random(n) < cfg.complaint_rate)
    complaint_at = deliver + _lognormal_ms(rng, 2 * HOUR, 1.0, n, MINUTE, 3 * DAY)

    # Machines: Apple's proxy prefetches on delivery; security gateways follow every link.
    machine = delivered & mpp & (rng.random(n) < cfg.mpp_open_rate)
    machine_at = deliver + rng.integers(SECOND, 10 * MINUTE + 1, n)
    if cfg.mpp_late_share > 0:  # some prefetches come late: 10 min - 6 h, log-uniform
        late_rng = rng_for(cfg.seed, STREAM_EVENTS, c, EVENTS_MPP_LATE)
        late = late_rng.random(n) < cfg.mpp_late_share
        wait = np.exp(late_rng.uniform(np.log(10 * MINUTE), np.log(6 * HOUR), n)).astype(np.int64)
        machine_at = np.where(late, deliver + wait, machine_at)
    flagged = machine & (esp == SENDGRID) & (rng.random(n) < cfg.machine_open_flag_rate)
    scan = delivered & P.behind_scanner[person] & (rng.random(n) < cfg.scanner_click_rate)
    scan_at = deliver + rng.integers(SECOND, 15 * SECOND, n)

    # Where human activity comes from.
    cl = world.clients
    client = P.client[person]
    open_ua = np.where(mpp, cl.mpp_ua, cl.open_ua[client]).astype(np.int32)
    home_or_mobile = np.where(rng.random(n) < 0.8, person, cl.pool_ip("mobile", rng, n))
    open_ip = np.where(mpp, cl.pool_ip("apple_mpp", rng, n),
                       np.where(client == CLIENTS.index("gmail"), cl.pool_ip("google_proxy", rng, n),
                                np.where(client == CLIENTS.index("yahoo"), cl.pool_ip("yahoo_proxy", rng, n),
                                         home_or_mobile))).astype(np.int32)
    click_ua = cl.click_ua[P.browser[person]]
    click_ip = np.where(rng.random(n) < 0.7, person, cl.pool_ip("mobile", rng, n)).astype(np.int32)
    mpp_ip = cl.pool_ip("apple_mpp", rng, n)

    blocks: list[Columns] = []

    def add(mask, at, etype, slot, origin, ua=None, ip=None, url=None, bounce_kind=None, flag=None):
        r = np.flatnonzero(mask)
        m = r.size
        blocks.append({
            "ts": at[r], "etype": np.full(m, etype, np.int8), "slot": np.full(m, slot, np.int16),
            "rcpt": r.astype(np.int32), "origin": np.full(m, origin, np.int8),
            "ua": np.full(m, -1, np.int32) if ua is None else ua[r],
            "ip": np.full(m, -1, np.int32) if ip is None else ip[r],
            "url": np.full(m, -1, np.int32) if url is None else url[r],
            "bounce": np.full(m, -1, np.int8) if bounce_kind is None else bounce_kind[r],
            "machine": np.zeros(m, bool) if flag is None else flag[r],
        })

    everyone = np.ones(n, bool)
    first_link = int(camp.link_start[c])
    add(everyone, sent, SENT, SLOT_SENT, SYSTEM)
    add(delivered, deliver, DELIVERED, SLOT_DELIVERED, SYSTEM)
    add(~delivered, bounce_at, BOUNCED, SLOT_BOUNCED, SYSTEM, bounce_kind=bounce)
    add(genuine & visible, open_at, OPENED, SLOT_OPEN, HUMAN, ua=open_ua, ip=open_ip)
    add(reopen & reopen_visible, reopen_at, OPENED, SLOT_REOPEN, HUMAN, ua=open_ua, ip=open_ip)
    mpp_ua = np.full(n, cl.mpp_ua, np.int32)
    add(machine, machine_at, OPENED, SLOT_MPP, MPP, ua=mpp_ua, ip=mpp_ip, flag=flagged)
    add(click, click_at, CLICKED, SLOT_CLICK, HUMAN, ua=click_ua, ip=click_ip, url=first_link + link1)
    add(click2, click2_at, CLICKED, SLOT_CLICK + 1, HUMAN, ua=click_ua, ip=click_ip, url=first_link + link2)
    add(unsub, unsub_at, UNSUBSCRIBED, SLOT_UNSUBSCRIBED, HUMAN, ua=click_ua, ip=click_ip)
    add(complaint, complaint_at, COMPLAINED, SLOT_COMPLAINED, HUMAN)

    # Scanner: every link of the message, seconds after delivery, from the gateway's UA and IP range.
    r = np.flatnonzero(scan)
    rr = np.repeat(r, n_links)
    j = np.tile(np.arange(n_links), r.size)
    vendor = P.scanner_vendor[person[rr]]
    pool_start = np.array([cl.pools[f"scanner_{name}"][0] for name, _, _ in SCANNERS], dtype=np.int32)
    pool_size = np.array([cl.pools[f"scanner_{name}"][1] for name, _, _ in SCANNERS], dtype=np.int32)
    scanner_ip = pool_start[vendor] + (rng.random(rr.size) * pool_size[vendor]).astype(np.int32)
    scanner_ua = cl.scanner_ua[vendor]
    if cfg.scanner_browser_ua_share > 0:  # some visits pose as a desktop browser (same timing, IPs, links)
        ua_rng = rng_for(cfg.seed, STREAM_EVENTS, c, EVENTS_SCANNER_UA)
        posing = ua_rng.random(r.size) < cfg.scanner_browser_ua_share
        browser = cl.click_ua[np.array([BROWSERS.index(b) for b in DESKTOP_BROWSERS])]
        posed = browser[ua_rng.integers(0, browser.size, r.size)]
        scanner_ua = np.where(np.repeat(posing, n_links), np.repeat(posed, n_links), scanner_ua)
    blocks.append({
        "ts": scan_at[rr] + j * rng.integers(30, 1500, rr.size), "etype": np.full(rr.size, CLICKED, np.int8),
        "slot": (SLOT_SCANNER + j).astype(np.int16), "rcpt": rr.astype(np.int32),
        "origin": np.full(rr.size, SCANNER, np.int8), "ua": scanner_ua.astype(np.int32),
        "ip": scanner_ip.astype(np.int32), "url": (first_link + j).astype(np.int32),
        "bounce": np.full(rr.size, -1, np.int8), "machine": np.zeros(rr.size, bool),
    })

    events = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    events["person"] = person[events["rcpt"]]
    events["campaign"] = np.full(events["ts"].size, c, np.int32)
    events["esp"] = np.full(events["ts"].size, esp, np.int8)
    _assign_identifiers(world, esp, events, person, rng)

    # Carry-over: later campaigns skip the unsubscribed and complainers and drop hard bounces.
    np.minimum.at(state.suppressed_at, person[unsub], unsub_at[unsub])
    np.minimum.at(state.suppressed_at, person[complaint], complaint_at[complaint])
    np.minimum.at(state.hard_bounced_at, person[hard], bounce_at[hard])
    return events


def _assign_identifiers(world: World, esp: int, events: Columns, person: np.ndarray,
                        rng: np.random.Generator) -> None:
    """Which identifiers each event carries depends on its source; the email form is chosen per message."""
    ids, cfg = world.identifiers, world.config
    email_msg = _pick(rng, ids.email[person], ids.email_forms[person].astype(np.int64), 0.8)
    phone_msg = _pick(rng, ids.phone[person], ids.phone_forms[person].astype(np.int64), 0.7)
    r, p = events["rcpt"], events["person"]
    m = r.size
    email, phone = email_msg[r], phone_msg[r]
    klaviyo, external = ids.klaviyo[p], ids.external[p]
    has_e, has_k, has_ph, has_x = email >= 0, klaviyo >= 0, phone >= 0, external >= 0
    if esp == KLAVIYO:  # Klaviyo webhooks: profile id + email (sometimes without the email)
        want_k, want_e = has_k.copy(), has_e & (~has_k | (rng.random(m) >= 0.1))
        want_ph, want_x = np.zeros(m, bool), np.zeros(m, bool)
    elif esp == SENDGRID:  # SendGrid: the address only
        want_e = has_e.copy()
        want_k, want_ph, want_x = np.zeros(m, bool), np.zeros(m, bool), np.zeros(m, bool)
    else:  # the brand's own backend: phone + external id
        want_ph, want_x = has_ph.copy(), has_x.copy()
        want_e, want_k = np.zeros(m, bool), np.zeros(m, bool)
    for want, has in ((want_e, has_e), (want_k, has_k), (want_x, has_x), (want_ph, has_ph)):
        none = ~(want_e | want_k | want_ph | want_x)
        want |= none & has
    # Identifiers of two sources on one event, as real exports have them (configurable rates).
    if esp == KLAVIYO:  # SMS consent / profile events carry the phone; the store syncs its customer id
        want_ph |= want_k & has_ph & (rng.random(m) < cfg.klaviyo_phone_rate)
        want_x |= want_k & has_x & (rng.random(m) < cfg.klaviyo_external_rate)
    elif esp == SYNTHETIC:  # order and account events of the backend carry the customer's email
        want_e |= (want_ph | want_x) & has_e & (rng.random(m) < cfg.backend_email_rate)
    # Households, businesses, ESP merges, ... (WorldConfig identity knobs), from their own random stream.
    phenomena.apply(world, esp, events["ts"], p, [email, klaviyo, phone, external], [want_e, want_k, want_ph, want_x],
                    rng.spawn(1)[0])

    junk = rng.random(m) < cfg.junk_identifier_rate
    if esp == KLAVIYO:  # a form fill left "info@company.com" next to a real profile id
        junk &= want_k
        email = np.where(junk, ids.junk["email"][rng.integers(0, ids.junk["email"].size, m)], email)
        want_e = want_e | junk
    elif esp == SENDGRID:  # custom args carried a placeholder external id
        junk &= want_e
        external = np.where(junk, ids.junk["external_id"][rng.integers(0, ids.junk["external_id"].size, m)],
                            external)
        want_x = want_x | junk
    else:  # the backend's phone field holds a dummy number
        junk &= want_x
        phone = np.where(junk, ids.junk["phone"][rng.integers(0, ids.junk["phone"].size, m)], phone)
        want_ph = want_ph | junk
    events["email"] = np.where(want_e, email, -1).astype(np.int32)
    events["klaviyo"] = np.where(want_k, klaviyo, -1).astype(np.int32)
    events["phone"] = np.where(want_ph, phone, -1).astype(np.int32)
    events["external"] = np.where(want_x, external, -1).astype(np.int32)
