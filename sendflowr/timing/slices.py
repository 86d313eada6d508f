"""A full build in slices of people (docs/TIMING.md, "Builds in slices"): when the message pass takes several
slices (stats.SLICE_EVENTS), the build never holds every message's row, or a statistics row's full width, at once.

1. Each slice of the messages (stats.message_rows, part i of n) becomes partial per-person cell statistics
   (person_stats), written at once as the base's cells (timing_cells: every reader sums a person's rows), added to
   the cohort sums (estimate.CohortSums) and to per-person counts of engaged and delivered messages, and kept in
   compact form (`Partial`: 18 bytes a cell instead of person_stats' 32 and the message rows' ~100).
2. The model from the sums: the decay and the priors (fit.model_from_sums, what a build in one piece runs), and the
   ML prior from its sample of data-rich people.
3. The curves, a slice of people at a time: their partials summed into statistics (`combine`) and estimated as a
   build in one piece estimates them.

The result is a build in one piece's, up to the order of floating-point sums (tests/test_timing_slices.py).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from clickhouse_connect.driver.client import Client

from sendflowr.arrays import lookup
from sendflowr.timing import incremental
from sendflowr.timing.decide import HOURS
from sendflowr.timing.estimate import (
    ActivityClusters,
    CohortSums,
    EstimatorParams,
    Priors,
    cohort_sums,
    learned_cohorts,
)
from sendflowr.timing.fit import Fit, ml_prior_of, model_from_sums, rich_sample
from sendflowr.timing.hazard import Decay
from sendflowr.timing.owners import cohort_members, cohorts_by_index, owner_map, owner_persons
from sendflowr.timing.signals import SignalRules
from sendflowr.timing.stats import PersonStats, cell_positions, message_rows, person_stats, summed_cells

# People estimated per slice at most: what a slice adds to the partials is their full statistics and the
# estimate's blocks (~0.3 GB for 500,000 people at 7 messages a person).
PEOPLE_PER_SLICE = 500_000


@dataclass
class Model:
    """What a full build writes beside the curves (priors, the base's model), however it was fitted."""

    decay: Decay
    priors: Priors
    clusters: ActivityClusters | None
    people: int  # people with deliveries
    delivered: float  # messages
    totals: dict[str, int]
    slices: int = 1


@dataclass
class SlicedBuild:
    """A build in slices once its model is fitted, and who its people are (owner-map indexes: universal_id
    order)."""

    model: Model
    params: EstimatorParams
    persons: np.ndarray  # universal_id by owner index - 1
    people: np.ndarray  # owner indexes of the people with deliveries, ascending
    cohort: np.ndarray  # per owner index: row of priors.cohorts
    parts: list[Partial]

    def fits(self) -> Iterator[Fit]:
        """The people in ranges of at most PEOPLE_PER_SLICE (at least `slices` ranges), each a Fit over their
        statistics summed from the partials."""
        n, m = self.people.size, self.model
        size = max(min(PEOPLE_PER_SLICE, -(-n // m.slices)), 1)
        for lo in range(0, n, size):
            who = self.people[lo:lo + size]
            stats = combine(self.parts, who, self.persons, self.params.horizon_hours)
            yield Fit(stats, m.decay, m.priors, self.cohort[who], self.params, m.clusters)


@dataclass
class Partial:
    """One slice of the messages' statistics, compact: rows by owner index (ascending), cells as offsets into
    the flat columns. Messages and engaged messages are counts (exact in float32); the share left is summed in
    float64 as person_stats sums it."""

    owners: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n + 1]
    cell: np.ndarray  # uint16 (or uint32 past 65,535 cells) [m]
    messages: np.ndarray  # float32 [m]
    events: np.ndarray  # float32 [m]
    fresh: np.ndarray  # float64 [m]

    @classmethod
    def of(cls, stats: PersonStats, owners: np.ndarray) -> Partial:
        cells = HOURS * stats.horizon
        return cls(owners.astype(np.int64), stats.offsets.astype(np.int64),
                   stats.cell.astype(np.min_scalar_type(cells - 1)), stats.messages.astype(np.float32),
                   stats.events.astype(np.float32), stats.fresh.astype(np.float64))

    def take(self, owners: np.ndarray) -> tuple[np.ndarray, ...]:
        """(owner index, cell, messages, events, fresh) of every cell of these owners (ascending)."""
        at, found = lookup(self.owners, owners)
        rows = at[found]
        offsets, flat = cell_positions(self.offsets, rows)
        return (np.repeat(self.owners[rows], np.diff(offsets)), self.cell[flat], self.messages[flat],
                self.events[flat], self.fresh[flat])


def combine(parts: list[Partial], owners: np.ndarray, persons: np.ndarray, horizon: int) -> PersonStats:
    """PersonStats of these owners (ascending; every one with a cell in some part): their cells summed over the
    parts, rows in owner order and cells sorted, as person_stats makes them (stats.summed_cells)."""
    taken = [part.take(owners) for part in parts]
    owner, cell, messages, events, fresh = (np.concatenate([t[i] for t in taken]) for i in range(5))
    by_cell, by_events, by_fresh = summed_cells(np.searchsorted(owners, owner), cell.astype(np.int64),
                                                (messages, events, fresh), (owners.size, HOURS * horizon))
    offsets = by_cell.indptr.astype(np.int64)
    if (np.diff(offsets) == 0).any():
        raise RuntimeError("timing: a person of the build has no statistics in any slice")
    starts = offsets[:-1]
    total_messages = by_cell.data.astype(np.float64)
    total_events = by_events.data.astype(np.float64)
    per = (lambda v: np.add.reduceat(v, starts)) if owners.size else (lambda v: np.zeros(0))
    return PersonStats(universal_id=persons[owners - 1], offsets=offsets, cell=by_cell.indices.astype(np.int64),
                       messages=total_messages, events=total_events, fresh=by_fresh.data,
                       engaged=per(total_events), delivered=per(total_messages), horizon=horizon)


def fit_in_slices(client: Client, database: str, rules: SignalRules, params: EstimatorParams, observed: datetime,
                  ends: dict[tuple[str, int], int], version: int, parts: int,
                  log: Callable[[str], None]) -> SlicedBuild:
    """Steps 1 and 2 of the module's docstring: the base's cells written, the model fitted."""
    horizon = params.horizon_hours
    with owner_map(client, database) as owners, ThreadPoolExecutor(1, thread_name_prefix="timing-cells") as writer:
        # as read_inputs does: the owner map's people and cohorts, and scikit-learn's import, beside the first pass
        persons_read = writer.submit(owner_persons, client, owners)
        members_read = writer.submit(cohort_members, client, database, owners)
        if params.clusters > 0:
            writer.submit(importlib.import_module, "sklearn.cluster")
        messages = message_rows(client, database, rules, owners, params, observed, ends, part=(0, parts))
        persons = persons_read.result()
        code, names = cohorts_by_index(members_read.result(), np.arange(persons.size + 1))
        # Only a cohort with min_cohort_people known members can have that many with deliveries: the others are
        # summed into row 0 from the start, so the sums hold a row per candidate, not per email domain.
        candidates = learned_cohorts(np.bincount(code, minlength=len(names)), params)
        row = np.zeros(len(names), np.int64)
        row[candidates] = np.arange(1, candidates.size + 1)
        row_of = row[code]
        engaged, delivered = np.zeros(persons.size + 1), np.zeros(persons.size + 1)
        sums: CohortSums | None = None
        totals: Counter = Counter()
        written: Future | None = None
        kept: list[Partial] = []
        for i in range(parts):
            if i:
                messages = message_rows(client, database, rules, owners, params, observed, ends, part=(i, parts))
            totals.update(messages.totals)
            stats, present = person_stats(messages, persons, params)
            del messages
            engaged[present] += stats.engaged
            delivered[present] += stats.delivered
            kept.append(Partial.of(stats, present))
            part = cohort_sums(row_of[present][stats.person], candidates.size + 1, stats.cell, stats.messages,
                               stats.events, stats.fresh, horizon)
            sums = part if sums is None else sums + part
            if written is not None:
                written.result()  # one slice's cells in flight: the next slice's statistics are being made
            written = writer.submit(incremental.write_base_cells, client, database, version, stats)
            log(f"timing: message slice {i + 1}/{parts}: {len(stats):,} people, {stats.cell.size:,} cells")
        if written is not None:
            written.result()
    people = np.flatnonzero(delivered > 0)
    sums.people = np.bincount(row_of[people], minlength=candidates.size + 1)
    learned = learned_cohorts(sums.people, params)
    final = np.zeros(candidates.size + 1, np.int64)
    final[learned] = np.arange(1, learned.size + 1)
    decay, priors = model_from_sums(sums.rows(learned), [""] + [names[candidates[r - 1]] for r in learned], horizon,
                                    params)
    clusters = None
    if params.clusters > 0:
        rich = people[rich_sample(engaged[people], params)]
        if rich.size:
            stats = combine(kept, rich, persons, horizon)
            clusters = ml_prior_of(Fit(stats, decay, priors, final[row_of[rich]], params))
    model = Model(decay, priors, clusters, int(people.size), float(delivered.sum()),
                  {k: int(v) for k, v in totals.items()}, parts)
    return SlicedBuild(model, params, persons, people, final[row_of], kept)
