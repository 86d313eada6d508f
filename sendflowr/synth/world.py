"""World: everything about the synthetic list except its events (people, curves, identifiers, campaigns)."""

from __future__ import annotations

import dataclasses
import uuid
import weakref
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sendflowr.events import EVENT_TYPES
from sendflowr.synth import fmt
from sendflowr.synth.campaigns import ESPS, PATHS, Campaigns, build_campaigns
from sendflowr.synth.clients import SCANNERS, Clients, build_clients
from sendflowr.synth.config import WorldConfig
from sendflowr.synth.curves import build_curves
from sendflowr.synth.habits import Habits, build_habits, needs_habits
from sendflowr.synth.identifiers import Identifiers, build_identifiers
from sendflowr.synth.opens import true_curves
from sendflowr.synth.people import People, build_people
from sendflowr.synth.zones import mix_home_zones

BOUNCE_TYPES = ("hard", "soft", "dropped")
# Who caused an event (ground truth only, never serialized): the ESP itself, a person, Apple's MPP proxy
# prefetching, or a security gateway following links.
ORIGINS = ("system", "human", "apple_mpp", "scanner")

# Random streams: one per concern, so changing how one part draws never shifts another.
STREAM_PEOPLE, STREAM_CURVES, STREAM_IDS, STREAM_CLIENTS, STREAM_CAMPAIGNS, STREAM_EVENTS = range(6)
# The phenomena knobs' streams (config.py's last block), numbered apart from the rest. Per campaign, events
# draw from (STREAM_EVENTS, c) and (c, 1) for stream effects; the knobs from (c, EVENTS_OPENS ...).
STREAM_ZONES, STREAM_HABITS, STREAM_SLOTS = 16, 17, 18
EVENTS_OPENS, EVENTS_MPP_LATE, EVENTS_SCANNER_UA = 2, 3, 4


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


class Dictionaries:
    """String tables the event batches point into: Arrow arrays for the tables, object arrays to serialize."""

    def __init__(self, columns: dict[str, list[str]]):
        self.arrow = {name: pa.array(values, type=pa.string()) for name, values in columns.items()}
        self.objects = {name: np.array(values, dtype=object) for name, values in columns.items()}
        self.encoded: dict[str, np.ndarray] = {}  # JSON-encoded tables, filled lazily by emit.py


_REGISTRY: weakref.WeakValueDictionary[str, Dictionaries] = weakref.WeakValueDictionary()


def registered_dictionaries(token: str) -> Dictionaries | None:
    return _REGISTRY.get(token)


@dataclass(eq=False)
class World:
    config: WorldConfig
    people: People
    # (people, 168) float32: P(genuine open | delivered at a uniform moment of UTC hour-of-week h), in the
    # habits in force at the world's end (opens.py)
    curves: np.ndarray
    identifiers: Identifiers
    clients: Clients
    campaigns: Campaigns
    dictionaries: Dictionaries = field(repr=False)
    token: str = ""
    habits: Habits | None = field(default=None, repr=False)  # None: the original world's open delays

    def __len__(self) -> int:
        return len(self.people)

    def with_campaign(self, campaign_id: str, send_ms: int, esp: int, n_links: int) -> tuple[World, int]:
        """This world plus one more campaign (its links appended to the URL table), and the new campaign's index.
        Events of the new campaign serialize like the world's own (its dictionaries are registered)."""
        from dataclasses import replace

        camp = self.campaigns
        k = len(camp)
        start = len(camp.urls)
        urls = [f"https://shop.example.com/{path}?utm_source=email&utm_campaign={campaign_id}"
                for path in PATHS[:n_links]]
        campaigns = Campaigns(
            send_ms=np.append(camp.send_ms, np.int64(send_ms)), esp=np.append(camp.esp, np.int8(esp)),
            audience=np.append(camp.audience, 1.0), link_start=np.append(camp.link_start, np.int32(start)),
            n_links=np.append(camp.n_links, np.int8(n_links)), ids=[*camp.ids, campaign_id], urls=[*camp.urls, *urls])
        tables = {name: self.dictionaries.objects[name].tolist() for name in self.dictionaries.objects}
        tables.update(campaign_id=campaigns.ids, url=campaigns.urls)
        dictionaries = Dictionaries(tables)
        token = uuid.uuid4().hex
        _REGISTRY[token] = dictionaries
        return replace(self, campaigns=campaigns, dictionaries=dictionaries, token=token), k

    def partition_keys(self, persons: np.ndarray) -> np.ndarray:
        """(n, 18) codes of the Kafka key 'r_<16 hex>': opaque, stable per person for a seed."""
        mixed = fmt.mix64(np.asarray(persons, dtype=np.uint64) ^ fmt.salt(self.config.seed, 3))
        return fmt.with_prefix(b"r_", fmt.hex_codes(mixed))


def build_world(config: WorldConfig) -> World:
    seed = config.seed
    people = build_people(config, rng_for(seed, STREAM_PEOPLE), n_scanner_vendors=len(SCANNERS))
    people = mix_home_zones(config, people, rng_for(seed, STREAM_ZONES))
    curves, attention = build_curves(people, rng_for(seed, STREAM_CURVES), keep_attention=needs_habits(config),
                                     keep_noise=config.drift_share > 0 or config.switch_share > 0)
    campaigns = build_campaigns(config, rng_for(seed, STREAM_CAMPAIGNS), rng_for(seed, STREAM_SLOTS))
    habits = None
    if attention is not None:
        habits = build_habits(config, people, attention, campaigns.send_ms, lambda k: rng_for(seed, STREAM_HABITS, k))
        curves, propensity = true_curves(habits, curves)
        people = habits.people = dataclasses.replace(people, propensity=propensity)
    identifiers = build_identifiers(config, people, rng_for(seed, STREAM_IDS))
    clients = build_clients(len(people), rng_for(seed, STREAM_CLIENTS))
    dictionaries = Dictionaries({
        "event_type": list(EVENT_TYPES),
        "esp": list(ESPS),
        "campaign_id": campaigns.ids,
        "identifier": identifiers.values,
        "user_agent": clients.ua_values,
        "ip": clients.ip_values,
        "url": campaigns.urls,
        "bounce_type": list(BOUNCE_TYPES),
        "origin": list(ORIGINS),
    })
    token = uuid.uuid4().hex  # process-local handle; never part of the output
    _REGISTRY[token] = dictionaries
    return World(config=config, people=people, curves=curves, identifiers=identifiers, clients=clients,
                 campaigns=campaigns, dictionaries=dictionaries, token=token, habits=habits)
