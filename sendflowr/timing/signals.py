"""Signal cleaning rules: which opens and clicks are machines' (docs/TIMING.md, "Signal cleaning").

The rules run in ClickHouse (sql/timing/messages.sql classifies each event and decides per message once
its delivery time is known, in the same pass); this module holds their parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Security gateways and link checkers that follow every link of a message: user-agent substrings, matched
# case-insensitively (a substring search: far cheaper per event than a regular expression).
SCANNER_AGENTS = ("mimecast", "proofpoint", "barracuda", "python-requests", "go-http-client", "curl/", "wget/",
                  "urldefense", "url defense", "safelinks", "trident/7.0; rv:11.0) like gecko", "bot/", "bot;",
                  "crawler", "spider", "scanner", "headlesschrome")


@dataclass(frozen=True)
class SignalRules:
    scanner_window_ms: int = 60_000  # no human clicks a link within a minute of delivery
    scanner_burst_ms: int = 5_000  # ... nor reaches this many distinct links within seconds
    scanner_burst_links: int = 3
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS

    def parameters(self) -> dict:
        return {**asdict(self), "scanner_agents": list(self.scanner_agents)}

    def describe(self) -> str:
        return ("machine open: flagged machine_open, or a message's first Apple-proxy open (UA 'Mozilla/5.0' or "
                f"IP 17.0.0.0/8) whenever it comes; scanner click: flagged "
                f"bot_click, a scanner user agent, a click within {self.scanner_window_ms // 1000} s of delivery, "
                f"or a burst of >= {self.scanner_burst_links} distinct links within "
                f"{self.scanner_burst_ms // 1000} s; a delivery is engaged at its first genuine open or click")
