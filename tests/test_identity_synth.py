"""Identity phenomena of the synthetic world (sendflowr/synth/phenomena.py): every knob does what it says, off by
default and then leaves the world as it was, and the ground truth names what each value is."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import replace

import numpy as np
import orjson
import pyarrow as pa
import pytest

from sendflowr.errors import SendflowrError
from sendflowr.identity.normalize import normalize_many
from sendflowr.synth import WorldConfig, build_world, iter_event_batches, serialize_batch
from sendflowr.synth.truth import identifiers_table

SMALL = {"people": 900, "weeks": 4, "campaigns_per_week": 5.0}
HARD = WorldConfig(**SMALL, seed=31, household_share=0.3, household_account_share=0.5, business_share=0.1,
                   esp_merge_share=0.2, placeholder_share=0.3, second_mailbox_share=0.2, single_source_rate=0.5,
                   role_prefixes=("studio", "orders"))


def _digest(config: WorldConfig) -> str:
    world = build_world(config)
    h = hashlib.sha256()
    for batch in iter_event_batches(world):
        h.update(b"".join(serialize_batch(batch)))
    h.update(str(identifiers_table(world).to_pylist()).encode())
    return h.hexdigest()


def _events(config: WorldConfig) -> list[dict]:
    world = build_world(config)
    out = []
    for batch in iter_event_batches(world):
        persons = batch.column("_person").to_pylist()
        for person, line in zip(persons, serialize_batch(batch), strict=True):
            event = orjson.loads(line)
            event["_person"] = person
            out.append(event)
    return out


@pytest.fixture(scope="module")
def hard() -> tuple[list[dict], list[dict]]:
    return _events(HARD), identifiers_table(build_world(HARD)).to_pylist()


def test_phenomena_off_leave_the_world_byte_for_byte_as_it_was() -> None:
    base = WorldConfig(**SMALL, seed=5)
    # everything but the shares changed: the shares are 0, so nothing may move (own random streams)
    other = replace(base, household_max=3, business_max=8, role_prefixes=("x",), role_address_rate=0.9,
                    placeholder_rate=0.9, placeholder_values=(("phone", "+10000000000"),), second_mailbox_rate=0.9,
                    second_mailbox_on_profile=False)
    assert _digest(base) == _digest(other)
    assert _digest(base) != _digest(replace(base, household_share=0.2))


def test_households_share_a_phone_and_some_an_account(hard) -> None:
    _, truth = hard
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in truth:
        if row["detail"] == "household":
            assert row["generic_kind"] == "shared"
            owners[(row["identifier_type"], row["normalized"])].add(row["person_id"])
    sizes = [len(p) for (t, _), p in owners.items() if t == "phone"]
    assert len(sizes) > 30 and min(sizes) >= 2 and max(sizes) <= HARD.household_max
    accounts = [len(p) for (t, _), p in owners.items() if t == "external_id"]
    assert 0 < len(accounts) < len(sizes) and min(accounts) >= 2


def test_esp_profile_merge_old_id_before_new_id_after_on_one_message(hard) -> None:
    events, truth = hard
    old = {r["raw_value"]: r["person_id"] for r in truth if r["detail"] == "merged_profile"}
    assert len(old) > 50
    current = {r["person_id"]: r["raw_value"] for r in truth
               if r["identifier_type"] == "klaviyo_id" and r["person_id"] in set(old.values()) and not r["detail"]}
    seen: dict[int, list[tuple[str, str, str]]] = defaultdict(list)  # person -> (time, id, message)
    for e in events:
        k = e["identifiers"].get("klaviyo_id")
        if k is not None and e["_person"] in current:
            seen[e["_person"]].append((e["occurred_at"], k, e["message_id"]))
    straddling = 0
    for person, rows in seen.items():
        rows.sort()
        ids = [k for _, k, _ in rows]
        old_id = next(k for k, p in old.items() if p == person)
        # every event with the old id comes before every event with the new one
        assert ids == sorted(ids, key=lambda k: k != old_id), person
        first_new = ids.index(current[person]) if current[person] in ids else len(ids)
        straddling += bool({m for _, _, m in rows[:first_new]} & {m for _, _, m in rows[first_new:]})
    assert straddling >= 1  # a message whose send carries the old id and whose open carries the new one


def test_roles_placeholders_and_second_mailboxes(hard) -> None:
    events, truth = hard
    by_value: dict[str, set[int]] = defaultdict(set)
    esps: dict[str, set[str]] = defaultdict(set)
    for e in events:
        for value in e["identifiers"].values():
            by_value[value].add(e["_person"])
            esps[value].add(e["esp"])
    roles = {r["raw_value"] for r in truth if r["detail"] == "business"}
    assert roles and all(r.split("@")[0] in HARD.role_prefixes for r in roles)
    assert max(len(by_value[r]) for r in roles) >= 2 and all("klaviyo" not in esps[r] for r in roles)
    placeholders = {r["raw_value"] for r in truth if r["detail"] == "placeholder"}
    assert placeholders <= {v for _, v in HARD.placeholder_values}
    assert min(len(by_value[p]) for p in placeholders if p in by_value) > 20  # on many profiles
    assert all(r["person_id"] is None and r["generic_kind"] == "junk" for r in truth if r["detail"] == "placeholder")
    second = {r["raw_value"]: r["person_id"] for r in truth if r["detail"] == "second_mailbox"}
    used = [v for v in second if v in by_value]
    assert len(used) > 0.8 * len(second) and all(by_value[v] == {second[v]} for v in used)
    # the ground truth's kinds agree with normalization: personal values are accepted
    personal = [r for r in truth if not r["is_generic"]]
    col = normalize_many(pa.array([r["identifier_type"] for r in personal]),
                         pa.array([r["raw_value"] for r in personal]))
    assert col.accepted.false_count == 0


def test_second_mailbox_off_profile_and_single_source_events() -> None:
    config = replace(HARD, second_mailbox_on_profile=False, single_source_rate=1.0, placeholder_share=0.0, seed=32)
    events = _events(config)
    second = {r["raw_value"] for r in identifiers_table(build_world(config)).to_pylist()
              if r["detail"] == "second_mailbox"}
    assert any(e["identifiers"].get("email") in second for e in events)
    assert not any(e["esp"] == "klaviyo" and e["identifiers"].get("email") in second for e in events)
    backend = [e["identifiers"] for e in events if e["esp"] == "synthetic"]
    both = sum("phone" in ids and "external_id" in ids for ids in backend)
    baseline = [e["identifiers"] for e in _events(replace(config, single_source_rate=0.0)) if e["esp"] == "synthetic"]
    assert both < 0.1 * sum("phone" in ids and "external_id" in ids for ids in baseline)


@pytest.mark.parametrize("bad, message", [
    ({"household_max": 1}, "household_max"),
    ({"business_max": 99}, "business_max"),
    ({"household_share": 1.5}, "household_share is a probability"),
    ({"role_prefixes": ()}, "role_prefixes"),
    ({"role_prefixes": ("info@x",)}, "role_prefixes"),
    ({"placeholder_values": (("fax", "1"),)}, "placeholder_values"),
])
def test_identity_knobs_are_validated(bad: dict, message: str) -> None:
    with pytest.raises(SendflowrError, match=message):
        WorldConfig(**bad)


def test_manifest_parameters_carry_the_knobs() -> None:
    params = HARD.to_dict()
    assert params["household_share"] == 0.3 and params["role_prefixes"] == ("studio", "orders")
    assert orjson.loads(orjson.dumps(params))["placeholder_values"][0] == list(HARD.placeholder_values[0])
    assert np.isclose(params["esp_merge_share"], 0.2)
