"""People whose identifiers say another country than their time zone (WorldConfig.zone_mix_share): expats,
travellers, numbers kept after a move. Their phone numbers (identifiers.py reads People.countries) come from
a zone of another country, drawn by population weight, so a phone-country cohort mixes time zones. (An
email domain already says nothing about the zone: consumer domains are drawn independently of it.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sendflowr.synth.config import WorldConfig
from sendflowr.synth.people import ZONES, People


def mix_home_zones(config: WorldConfig, people: People, rng: np.random.Generator) -> People:
    if config.zone_mix_share <= 0:
        return people
    n = len(people)
    country = np.array([z[3] for z in ZONES], dtype=object)
    weights = np.array([z[2] for z in ZONES], dtype=np.float64)
    home = people.zone.copy()
    mixed = np.flatnonzero(rng.random(n) < config.zone_mix_share)
    pending = mixed
    while pending.size:  # redraw until the country differs (a few rounds: no country holds most people)
        home[pending] = rng.choice(len(ZONES), size=pending.size, p=weights / weights.sum())
        pending = pending[country[home[pending]] == country[people.zone[pending]]]
    return dataclasses.replace(people, home_zone=home.astype(np.int16))
