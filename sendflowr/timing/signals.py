"""Signal cleaning rules: which opens and clicks are machines' (docs/TIMING.md, "Signal cleaning").

The rules run in ClickHouse (sql/timing/person_stats.sql classifies each event and decides per message once
its delivery time is known, in the same pass); this module holds their parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

# Security gateways and link checkers that follow every link of a message: user-agent substrings, matched
# case-insensitively (a substring search: far cheaper per event than a regular expression).
SCANNER_AGENTS = ("mimecast", "proofpoint", "barracuda", "python-requests", "go-http-client", "curl/", "wget/",
                  "urldefense", "url defense", "safelinks", "trident/7.0; rv:11.0) like gecko", "bot/", "bot;",
                  "crawler", "spider", "scanner", "headlesschrome")
FAR_FUTURE = datetime(2299, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SignalRules:
    scanner_window_ms: int = 60_000  # no human clicks a link within a minute of delivery
    scanner_burst_ms: int = 5_000  # ... nor reaches this many distinct links within seconds
    scanner_burst_links: int = 3
    open_weight: float = 1.0
    click_weight: float = 2.0
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS

    def parameters(self) -> dict:
        rules = asdict(self)
        del rules["open_weight"], rules["click_weight"]
        return {**rules, "scanner_agents": list(self.scanner_agents)}

    def describe(self) -> str:
        return ("machine open: flagged machine_open, or a message's first Apple-proxy open (UA 'Mozilla/5.0' or "
                f"IP 17.0.0.0/8) whenever it comes; scanner click: flagged "
                f"bot_click, a scanner user agent, a click within {self.scanner_window_ms // 1000} s of delivery, "
                f"or a burst of >= {self.scanner_burst_links} distinct links within "
                f"{self.scanner_burst_ms // 1000} s; weights: open {self.open_weight}, click {self.click_weight}")
