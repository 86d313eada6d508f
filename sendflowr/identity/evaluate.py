"""How good is the identity graph against a synthetic world's ground truth (identifiers.parquet)?

Units are the truth's *personal* raw identifiers (person set, not generic): every one of them, also those that
normalization rejected or that never reached the graph (they count as their own singleton, so a miss is a miss).

* pairwise precision / recall: pairs of units in one universal_id vs pairs of units of one true person (exact
  pair counts from the contingency tables, no sampling);
* achievable recall: the recall of joining *every* pair the evidence connects -- components of the units over
  "carried by one event" (both personal, same person) and "spellings of one value" (same person, same truth
  normal form, both seen). No stitching can do better without guessing; ours is reported as a share of it;
* glued people: true people whose universal_id holds another true person's identifier;
* split people: true people whose evidence-connected identifiers ended in several universal_ids; merged
  profiles are the true people with two Klaviyo ids the evidence connects (an ESP-side profile merge), split
  when those ids ended in different universal_ids.

The event pairs come from ClickHouse (sql/identity/eval_cooccurrence.sql, raw values hashed as in the API's
snapshot); the rest is column work on the truth (tens of thousands of rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sendflowr.identity.graph import TYPE_NAMES, raw_hashes
from sendflowr.sql_files import load_sql


@dataclass(frozen=True)
class IdentityScore:
    identifiers: int  # personal raw identifiers in the truth (the units)
    unstitched: int  # of them, not in the graph (rejected by normalization, or never in an event)
    people: int  # true people holding them
    precision: float
    recall: float
    achievable_recall: float
    predicted_pairs: int
    true_pairs: int
    achievable_pairs: int
    glued_people: int  # true people sharing a universal_id with another true person
    split_people: int  # true people with evidence-connected identifiers in several universal_ids
    merged_profiles: int  # true people with two evidence-connected Klaviyo ids (ESP profile merges)
    merged_profiles_split: int

    achievable_joined: int  # achievable pairs that ended in one universal_id
    glued_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # person ids
    split_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    merged_split_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @property
    def recall_of_achievable(self) -> float:
        """Of the pairs the evidence connects, the share joined (can only fall short of 1)."""
        return self.achievable_joined / self.achievable_pairs if self.achievable_pairs else 1.0

    @property
    def glued_share(self) -> float:
        return self.glued_people / self.people if self.people else 0.0

    def summary(self) -> str:
        return (f"precision {self.precision:.4f}, recall {self.recall:.4f} of an achievable "
                f"{self.achievable_recall:.4f} ({self.recall_of_achievable:.4f} of achievable), "
                f"{self.glued_people} people glued ({self.glued_share:.2%}), {self.split_people} split, "
                f"merged profiles split {self.merged_profiles_split}/{self.merged_profiles}, "
                f"{self.identifiers} identifiers ({self.unstitched} not stitched) of {self.people} people")


def _pairs(*labels: np.ndarray) -> int:
    """Pairs of units that agree on every label (exact, from the group sizes)."""
    keys = np.stack(labels, axis=1) if len(labels) > 1 else labels[0][:, None]
    _, counts = np.unique(keys, axis=0, return_counts=True)
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _labels(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def score_identity(client: Client, database: str, truth_path: Path) -> IdentityScore | None:
    """The score of the graph in `database` against the world whose identifiers.parquet is `truth_path`; None
    when there is no truth file or nothing to score."""
    if not Path(truth_path).exists():
        return None
    truth = pq.read_table(truth_path, columns=["identifier_type", "raw_value", "normalized", "person_id",
                                                "is_generic"])
    truth = truth.filter(pc.and_(pc.invert(truth["is_generic"]), pc.is_valid(truth["person_id"])))
    truth = truth.group_by(["identifier_type", "raw_value"]).aggregate(
        [("person_id", "min"), ("normalized", "min")]).rename_columns(
        ["identifier_type", "raw_value", "person_id", "normalized"])
    n = truth.num_rows
    if n < 2:
        return None
    types = np.asarray(truth["identifier_type"].to_pylist(), object)
    raws = truth["raw_value"].to_pylist()
    person = truth["person_id"].to_numpy().astype(np.int64)

    # universal_id of each unit; units outside the graph get a label of their own
    stitched = client.query_arrow(load_sql("identity/identifier_owners.sql", database), use_strings=True)
    joined = truth.select(["identifier_type", "raw_value"]).append_column("row", pa.array(np.arange(n))).join(
        stitched.select(["identifier_type", "raw_value", "universal_id"]), ["identifier_type", "raw_value"],
        join_type="inner")
    rows = joined["row"].to_numpy()
    uid_text = np.array([f"~{i}" for i in range(n)], object)
    uid_text[rows] = np.asarray(joined["universal_id"].to_pylist(), object)
    uid = _labels(uid_text.astype(str))

    # the evidence: units carried by one event, and spellings of one value (among units seen at all)
    key = np.zeros(n, np.uint64)
    for t in TYPE_NAMES:
        at = np.flatnonzero(types == t)
        if len(at):
            key[at] = raw_hashes(t, [raws[i] for i in at.tolist()])
    order = np.argsort(key)
    pairs = client.query_arrow(load_sql("identity/eval_cooccurrence.sql", database))
    a, b = (_units(key, order, pairs[c].to_numpy().astype(np.uint64)) for c in ("a", "b"))
    ok = (a >= 0) & (b >= 0)
    a, b = a[ok], b[ok]
    seen = np.zeros(n, bool)
    seen[a[a == b]] = True
    same = (a != b) & (person[a] == person[b])
    src, dst = [a[same]], [b[same]]
    # one value of one person: link each seen spelling to the first seen one
    value = _labels(np.array([f"{t}|{v}|{p}" for t, v, p in zip(types.tolist(), truth["normalized"].to_pylist(),
                                                               person.tolist(), strict=True)]))
    spelled = np.flatnonzero(seen)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, value[spelled], spelled)
    src.append(spelled)
    dst.append(first[value[spelled]])
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(s), np.int8), (s, d)), shape=(n, n))
    _, achievable = connected_components(graph, directed=False)

    true_pairs, predicted, both = _pairs(person), _pairs(uid), _pairs(uid, person)
    possible = _pairs(achievable.astype(np.int64))
    people_per_uid = _distinct_per(uid, person)
    glued = np.unique(person[people_per_uid[uid] > 1])
    uids_per_part = _distinct_per(achievable, uid)
    split = np.unique(person[uids_per_part[achievable] > 1])
    klaviyo = np.flatnonzero(types == "klaviyo_id")
    k_per_part = np.bincount(achievable[klaviyo], minlength=n)
    merged_parts = np.flatnonzero(k_per_part >= 2)
    k_uids = _distinct_per(achievable[klaviyo], uid[klaviyo], n)
    broken = merged_parts[k_uids[merged_parts] > 1]
    return IdentityScore(
        identifiers=n, unstitched=n - len(rows), people=len(np.unique(person)),
        precision=both / predicted if predicted else 1.0, recall=both / true_pairs if true_pairs else 1.0,
        achievable_recall=possible / true_pairs if true_pairs else 1.0, predicted_pairs=predicted,
        true_pairs=true_pairs, achievable_pairs=possible, glued_people=len(glued), split_people=len(split),
        merged_profiles=len(merged_parts), merged_profiles_split=len(broken),
        achievable_joined=_pairs(achievable.astype(np.int64), uid), glued_ids=glued, split_ids=split,
        merged_split_ids=np.unique(person[klaviyo][np.isin(achievable[klaviyo], broken)]))


def _units(key: np.ndarray, order: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Unit index of each raw hash, -1 when it is not a personal identifier of the truth."""
    if not len(key):
        return np.full(len(hashes), -1, np.int64)
    at = np.minimum(np.searchsorted(key[order], hashes), len(key) - 1)
    return np.where(key[order][at] == hashes, order[at], -1).astype(np.int64)


def _distinct_per(group: np.ndarray, value: np.ndarray, size: int | None = None) -> np.ndarray:
    """Per group label: the number of distinct values in it."""
    pairs = np.unique(np.stack([group, value], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=size or (int(group.max()) + 1 if len(group) else 0))
