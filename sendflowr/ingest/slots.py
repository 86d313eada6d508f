"""Writer slots: which Kafka partitions one ingestion writer owns, so that several writers run at once.

Slot k of N owns the partitions p with p % N == k. Each slot has its own lease (scope `<topic>#k/N`; the single
writer of N = 1 keeps the plain topic name as before), and every piece of per-partition bookkeeping (planned
and committed ranges, replays) is touched by the owner of that partition only. Two slots of different layouts
(say 0/2 and 1/4) may share partitions; their leases then exclude each other: slot k of N and slot j of M own a
common partition exactly when k = j modulo gcd(N, M) (Chinese remainder theorem), whatever the partition count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sendflowr.errors import SendflowrError

_SEPARATOR = "#"  # never in a Kafka topic name ([a-zA-Z0-9._-]), so a scope never meets a real topic


@dataclass(frozen=True)
class Slot:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SendflowrError(f"ingestion writer slot {self.index} of {self.count} does not exist: the slot "
                                 "must be in [0, writers) (SENDFLOWR_INGEST_SLOT, SENDFLOWR_INGEST_WRITERS)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, partition: int) -> bool:
        return partition % self.count == self.index

    def overlaps(self, other: Slot) -> bool:
        step = math.gcd(self.count, other.count)
        return self.index % step == other.index % step

    def scope(self, name: str) -> str:
        """The lease scope of this slot of `name` (a topic): the name itself for the whole topic."""
        return name if self.count == 1 else f"{name}{_SEPARATOR}{self}"


WHOLE = Slot()


def parse_scope(scope: str) -> tuple[str, Slot]:
    """(name, slot) of a lease scope written by Slot.scope; a scope without a slot covers the whole name."""
    name, sep, slot = scope.rpartition(_SEPARATOR)
    if not sep:
        return scope, WHOLE
    index, _, count = slot.partition("/")
    return name, Slot(int(index), int(count))
