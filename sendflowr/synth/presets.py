"""Named synthetic worlds: each combines the phenomena knobs (config.py's last block) differently, so a
timing method is judged on worlds with different send schedules, open-delay mechanisms, habits and noise,
not tuned to one. `sendflowr generate --preset NAME` (--people, --weeks, --campaigns-per-week, --seed and
--end still override). Table in docs/TIMING.md, "Synthetic worlds".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sendflowr.errors import SendflowrError
from sendflowr.synth.config import WorldConfig


@dataclass(frozen=True)
class Preset:
    description: str
    config: WorldConfig


PRESETS: dict[str, Preset] = {
    "baseline": Preset(
        "the original world: every knob at its default (sends clustered on popular UTC hours, open "
        "probability = the curve at the delivery hour, lognormal open delay, prompt MPP prefetches)",
        WorldConfig()),
    "weekly_slots": Preset(
        "a newsletter sender: 90% of campaigns in 3 weekly slots, opens at the person's check sessions, 30% "
        "of Apple MPP prefetches late (10 min - 6 h)",
        WorldConfig(people=10_000, weeks=12, campaigns_per_week=3.0, send_slots=3, slot_share=0.9,
                    open_delay="sessions", mpp_late_share=0.30)),
    "shifting_habits": Preset(
        "habits that move: continuous-hazard opens, 35% of people drifting up to 3 h and 10% switching "
        "archetype (settled for the last third), 25% whose phone country is not their zone's, half the "
        "scanner visits with a browser user agent",
        WorldConfig(people=10_000, weeks=16, campaigns_per_week=3.0, open_delay="hazard", drift_share=0.35,
                    drift_hours=3.0, switch_share=0.10, zone_mix_share=0.25, scanner_browser_ua_share=0.5)),
    "sparse_sender": Preset(
        "a big list mailed weekly: 20,000 people, one campaign a week for 16 weeks (75% in 2 slots), hazard "
        "or session opens per person, some drift, zone mixing, late prefetches and posing scanners",
        WorldConfig(people=20_000, weeks=16, campaigns_per_week=1.0, send_slots=2, slot_share=0.75,
                    open_delay="mixed", drift_share=0.15, zone_mix_share=0.10, mpp_late_share=0.15,
                    scanner_browser_ua_share=0.25)),
    "daily_sender": Preset(
        "a daily sender to an iPhone-heavy list: 10 campaigns a week at spread hours for 8 weeks, 5,000 "
        "people, 45% on Apple MPP with 30% of prefetches late, hazard or session opens, drift and switches",
        WorldConfig(people=5_000, weeks=8, campaigns_per_week=10.0, apple_mpp_share=0.45, mpp_late_share=0.30,
                    open_delay="mixed", drift_share=0.20, drift_hours=2.0, switch_share=0.05)),
}


def preset(name: str, **overrides) -> WorldConfig:
    """The named preset's config with `overrides` (None values ignored) applied, validated again."""
    if name not in PRESETS:
        raise SendflowrError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name].config, **{k: v for k, v in overrides.items() if v is not None})
