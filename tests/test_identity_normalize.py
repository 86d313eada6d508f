"""Identifier normalization: each rule both ways, and agreement with the synthetic world's ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sendflowr.identity.normalize import (
    BUSINESS_LINE,
    DEFAULT_RULES,
    NormalizationRules,
    _phones,
    describe_rules,
    load_role_accounts,
    normalize,
    normalize_many,
)
from sendflowr.synth import WorldConfig, build_world, write_ground_truth

GMAIL_OFF = NormalizationRules(email_gmail_dots=False)


def one(identifier_type: str, raw: str | None, rules: NormalizationRules = DEFAULT_RULES) -> tuple:
    col = normalize(identifier_type, [raw], rules)
    return col.value[0].as_py(), col.reason[0].as_py()


# --- emails ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Jane@Hooli.org", "jane@hooli.org"),
    ("  jane@acme-corp.com\t", "jane@acme-corp.com"),
    ("JANE@ACME-CORP.COM\n", "jane@acme-corp.com"),
    ("j.doe@yahoo.com", "j.doe@yahoo.com"),  # dots only matter at Gmail
])
def test_email_trim_and_lowercase(raw: str, expected: str) -> None:
    assert one("email", raw) == (expected, None)


@pytest.mark.parametrize("raw", ["jane", "jane@", "@acme.com", "jane@acme", "ja ne@acme.com", "a@b@acme.com",
                                 "jane@.com", "jane@acme.", "x" * 250 + "@acme.com"])
def test_email_invalid_is_rejected_with_reason(raw: str) -> None:
    value, reason = one("email", raw)
    assert value is None
    assert reason in ("email: not an address", "email: too long")


def test_email_missing_and_empty() -> None:
    assert one("email", None) == (None, "email: missing")
    assert one("email", "   ") == (None, "email: empty")


@pytest.mark.parametrize("mode, raw, expected", [
    ("keep", "jane+news@gmail.com", "jane+news@gmail.com"),
    ("known_providers", "jane+news@gmail.com", "jane@gmail.com"),
    ("known_providers", "jane+news@outlook.com", "jane@outlook.com"),
    ("known_providers", "jane+news@proton.me", "jane@proton.me"),
    ("known_providers", "jane+news@acme-corp.com", "jane+news@acme-corp.com"),  # unknown server: keep
    ("all", "jane+news@acme-corp.com", "jane@acme-corp.com"),
    ("all", "jane+a+b@acme-corp.com", "jane@acme-corp.com"),
    ("all", "+news@acme-corp.com", "+news@acme-corp.com"),  # nothing before the +: not stripped
])
def test_plus_addressing_modes(mode: str, raw: str, expected: str) -> None:
    assert one("email", raw, NormalizationRules(email_plus_addressing=mode)) == (expected, None)


def test_plus_addressing_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="email_plus_addressing"):
        NormalizationRules(email_plus_addressing="sometimes")


def test_gmail_dots_and_googlemail() -> None:
    assert one("email", "Jane.Doe@gmail.com") == ("janedoe@gmail.com", None)
    assert one("email", "jane.doe+x@googlemail.com") == ("janedoe@gmail.com", None)
    assert one("email", "jane.doe@outlook.com") == ("jane.doe@outlook.com", None)
    assert one("email", "jane.doe@gmail.com", GMAIL_OFF) == ("jane.doe@gmail.com", None)
    assert one("email", "jane.doe@googlemail.com", GMAIL_OFF) == ("jane.doe@googlemail.com", None)
    assert one("email", "...@gmail.com") == (None, "email: not an address")


@pytest.mark.parametrize("raw, reason", [
    ("test@test.com", "email: blocked value"),
    ("Test@Example.com", "email: blocked value"),
    ("NULL", "email: blocked value"),
    ("n/a", "email: blocked value"),
    ("-1", "email: blocked value"),
    ("noreply@shop.com", "email: blocked pattern noreply"),
    ("no-reply@shop.com", "email: blocked pattern noreply"),
    ("DoNotReply@shop.com", "email: blocked pattern noreply"),
    ("mailer-daemon@shop.com", "email: blocked pattern noreply"),
    ("jane@example.net", "email: blocked pattern placeholder domain"),
    ("jane@shop.example", "email: blocked pattern placeholder domain"),
    ("none@gmail.com", "email: blocked pattern placeholder local"),
    ("a@a.com", "email: blocked pattern local equals domain"),
    ("Info@Acme-Corp.com", "generic: role account"),
    ("sales+leads@gmail.com", "generic: role account"),  # tag stripped first
    ("orders@bakery.com", "generic: role account"),
    ("Front.Desk2@dental-clinic.com", "generic: role account"),  # separators and a trailing number dropped
    ("reception@hotel.io", "generic: role account"),
    ("customer@store.com", "generic: role account"),
])
def test_email_guards(raw: str, reason: str) -> None:
    assert one("email", raw) == (None, reason)


@pytest.mark.parametrize("raw", ["noreplyjane@shop.com", "jane@examples.com", "information@acme-corp.com",
                                 "ann@anna.com", "tester@gmail.com"])
def test_email_guards_do_not_fire_on_lookalikes(raw: str) -> None:
    assert one("email", raw)[1] is None


def test_role_account_toggle_and_custom_lists() -> None:
    assert one("email", "info@acme-corp.com", NormalizationRules(block_role_accounts=False)) == \
        ("info@acme-corp.com", None)
    assert one("email", "a@a.com", NormalizationRules(block_local_equals_domain=False)) == ("a@a.com", None)
    custom = NormalizationRules(blocked_values={"email": frozenset({"Boss@Acme-Corp.com"})},
                                blocked_patterns={"email": (("bots", r"^bot\d+@"),)})
    assert one("email", "boss@acme-corp.com", custom) == (None, "email: blocked value")
    assert one("email", "bot7@acme-corp.com", custom) == (None, "email: blocked pattern bots")
    assert one("email", "noreply@acme-corp.com", custom) == ("noreply@acme-corp.com", None)  # defaults replaced
    with pytest.raises(ValueError, match="unknown identifier types"):
        NormalizationRules(blocked_values={"fax": frozenset()})
    # the role list is data: the file's entries, or any list given (matched in the same bare form)
    assert {"info", "orders", "frontdesk", "reception"} <= load_role_accounts()
    studio = NormalizationRules(role_accounts=frozenset({"Studio-Team"}))
    assert one("email", "studioteam7@gallery.com", studio) == (None, "generic: role account")
    assert one("email", "info@gallery.com", studio) == ("info@gallery.com", None)


def test_role_account_file_format(tmp_path) -> None:
    path = tmp_path / "roles.txt"
    path.write_text("# shared desks\nFront.Desk  # with a comment\n\nBOOKINGS\n")
    assert load_role_accounts(path) == frozenset({"frontdesk", "bookings"})


# --- phones ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["(415) 555-2671", "415.555.2671", "415-555-2671", "4155552671", "1-415-555-2671",
                                 "+1 415 555 2671", "+1 (415) 555-2671", "+14155552671", " 415 555 2671 "])
def test_phone_us_formats(raw: str) -> None:
    assert one("phone", raw) == ("+14155552671", None)


def test_phone_international_and_region() -> None:
    assert one("phone", "+44 20 7946 0958") == ("+442079460958", None)
    assert one("phone", "020 7946 0958") == (None, "phone: not a valid number for region US")
    assert one("phone", "020 7946 0958", NormalizationRules(phone_default_region="GB")) == ("+442079460958", None)
    assert one("phone", "+33 6 12 34 56 78") == ("+33612345678", None)
    with pytest.raises(ValueError, match="region"):
        NormalizationRules(phone_default_region="XX")


@pytest.mark.parametrize("raw, reason", [
    (None, "phone: missing"),
    ("", "phone: empty"),
    ("call me", "phone: not a number"),
    ("12", "phone: not a valid number for region US"),
    ("+44 1234", "phone: not a valid number"),
    ("(123) 456-7891", "phone: not a valid number for region US"),  # area codes never start with 1
    ("0000000000", "phone: blocked value"),
    ("000-000-0000", "phone: blocked value"),
    ("null", "phone: blocked value"),
    ("9999999999", "phone: blocked pattern same digit"),
    ("+1 (555) 555-5555", "phone: blocked pattern same digit"),
    ("+44 1234567890", "phone: blocked pattern sequential"),  # valid per libphonenumber, still filler
    ("(415) 555-0142", "phone: blocked pattern fictional 555"),
    ("1-800-555-2671", BUSINESS_LINE),  # a store's toll-free line, typed into thousands of profiles
    ("+1 (888) 240-1234", BUSINESS_LINE),
    ("+1 900 240 1234", BUSINESS_LINE),  # premium rate
    ("+44 800 123 4567", BUSINESS_LINE),  # UK freephone, through phonenumbers
])
def test_phone_rejections(raw: str | None, reason: str) -> None:
    assert one("phone", raw) == (None, reason)


def test_phone_repeated_values_parse_once_and_map_back() -> None:
    raws = ["(415) 555-2671", "bad", "(415) 555-2671", None, "+44 20 7946 0958", "bad"] * 1000
    col = normalize("phone", pa.array(raws))
    assert col.value.to_pylist()[:6] == ["+14155552671", None, "+14155552671", None, "+442079460958", None]
    assert col.value.to_pylist() == col.value.to_pylist()[:6] * 1000
    assert col.reason.to_pylist()[:6] == [None, "phone: not a number", None, "phone: missing", None,
                                          "phone: not a number"]


@pytest.mark.parametrize("region", ["US", "CA", "JM", "GB"])
def test_phone_fast_path_agrees_with_phonenumbers(region: str) -> None:
    """The column-wise NANP path must give exactly phonenumbers' verdict: every area code 000-999 (valid, unassigned,
    toll-free, premium, other NANP countries, N11), random exchanges/lines, in every shape the fast path takes
    and some it leaves to phonenumbers."""
    rng = np.random.default_rng(5)
    npa = np.repeat(np.arange(1000), 12)
    nxx, line = rng.integers(0, 1000, len(npa)), rng.integers(0, 10_000, len(npa))
    shapes = ("+1{a}{b}{c}", "+1 ({a}) {b}-{c}", "{a}.{b}.{c}", "({a}) {b}-{c}", "{a}-{b}-{c}", "+1-{a}-{b}-{c}",
              "{a}{b}{c}", "1{a}{b}{c}", "+1 {a} {b} {c} ext 9", " +1.{a}.{b}.{c} ")
    raws = [shapes[i % len(shapes)].format(a=f"{a:03d}", b=f"{b:03d}", c=f"{c:04d}")
            for i, (a, b, c) in enumerate(zip(npa, nxx, line, strict=True))]
    rules = NormalizationRules(phone_default_region=region)
    fast = normalize("phone", pa.array(raws), rules)
    slow = _phones(pa.array(raws), rules, fast_path=False)
    assert fast.value.to_pylist() == slow.value.to_pylist()
    assert fast.reason.to_pylist() == slow.reason.to_pylist()
    accepted = pc.sum(fast.accepted).as_py()
    assert 0.2 * len(raws) < accepted < 0.9 * len(raws)  # both verdicts are well represented
    assert BUSINESS_LINE in fast.reason.to_pylist()
    kept = normalize("phone", pa.array(raws), NormalizationRules(phone_default_region=region,
                                                                 block_business_lines=False))
    assert kept.reason.to_pylist() == _phones(pa.array(raws), NormalizationRules(
        phone_default_region=region, block_business_lines=False), fast_path=False).reason.to_pylist()
    assert BUSINESS_LINE not in kept.reason.to_pylist() and pc.sum(kept.accepted).as_py() > accepted


# --- ids ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("identifier_type", ["klaviyo_id", "external_id"])
def test_ids(identifier_type: str) -> None:
    assert one(identifier_type, " 01HZX3ABcd ") == ("01HZX3ABcd", None)  # case kept
    assert one(identifier_type, "cust_0001234") == ("cust_0001234", None)
    assert one(identifier_type, "\t") == (None, "id: empty")
    assert one(identifier_type, None) == (None, "id: missing")
    for junk in ("0", "-1", "NULL", "None", "undefined", "nan", "test", "guest"):
        assert one(identifier_type, junk) == (None, "id: blocked value"), junk
    assert one(identifier_type, "00000000-0000-0000-0000-000000000000") == (None, "id: blocked pattern zeros")
    assert one(identifier_type, "1000003")[1] is None  # numbers with zeros are fine


def test_unknown_type_raises() -> None:
    with pytest.raises(ValueError, match="unknown identifier type"):
        normalize("fax", ["x"])


# --- mixed columns --------------------------------------------------------------------------------------------

def test_normalize_many_keeps_input_order() -> None:
    types = ["phone", "email", None, "klaviyo_id", "email", "fax", "external_id", "phone"]
    raws = ["415.555.2671", " A@B.com ", "x", "01HAbc", None, "y", "0", "+44 20 7946 0958"]
    col = normalize_many(pa.array(types), pa.array(raws))
    assert col.value.to_pylist() == ["+14155552671", "a@b.com", None, "01HAbc", None, None, None, "+442079460958"]
    assert col.reason.to_pylist() == [None, None, "type: unknown identifier type", None, "email: missing",
                                      "type: unknown identifier type", "id: blocked value", None]
    assert col.accepted.to_pylist() == [True, True, False, True, False, False, False, True]


def test_normalize_many_accepts_chunked_and_dictionary_and_empty() -> None:
    types = pa.chunked_array([pa.array(["email"]).dictionary_encode(), pa.array(["phone"]).dictionary_encode()])
    col = normalize_many(types, pa.chunked_array([["X@Y.com"], ["4155552671"]]))
    assert col.value.to_pylist() == ["x@y.com", "+14155552671"]
    empty = normalize_many(pa.array([], pa.string()), pa.array([], pa.string()))
    assert len(empty) == 0 and empty.value.type == pa.string()
    with pytest.raises(ValueError, match="length"):
        normalize_many(["email"], [])


def test_describe_rules_mentions_what_is_in_force() -> None:
    text = describe_rules()
    assert "gmail.com" in text and "`info@`" in text and "US" in text and "same digit" in text
    assert "kept (never stripped)" in describe_rules(NormalizationRules(email_plus_addressing="keep"))
    assert "role accounts (off)" in describe_rules(NormalizationRules(block_role_accounts=False))


# --- synthetic world ground truth -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    out = tmp_path_factory.mktemp("world")
    write_ground_truth(build_world(WorldConfig(people=4000, weeks=1, seed=11)), out)
    return pq.read_table(out / "identifiers.parquet")


def normalized(truth: pa.Table, rules: NormalizationRules) -> pa.Table:
    col = normalize_many(truth["identifier_type"], truth["raw_value"], rules)
    return truth.append_column("value", col.value).append_column("reason", col.reason)


def collisions(table: pa.Table) -> pa.Table:
    """Accepted, non-generic normalized values that belong to more than one true person."""
    ok = table.filter(pc.and_(pc.invert(table["is_generic"]), pc.is_valid(table["value"])))
    groups = ok.group_by(["identifier_type", "value"]).aggregate([("person_id", "count_distinct"),
                                                                 ("normalized", "distinct")])
    return groups.filter(pc.greater(groups["person_id_count_distinct"], 1))


def test_ground_truth_acceptance_and_junk(truth: pa.Table) -> None:
    table = normalized(truth, DEFAULT_RULES)
    personal = table.filter(pc.invert(table["is_generic"]))
    assert personal.num_rows > 5000
    assert pc.all(pc.is_null(personal["reason"])).as_py(), personal.filter(pc.is_valid(personal["reason"]))
    shared = table.filter(pc.equal(table["generic_kind"], "shared"))
    assert shared.num_rows > 0 and pc.all(pc.is_null(shared["reason"])).as_py()  # valid, just never a join key
    junk = table.filter(pc.equal(table["generic_kind"], "junk"))
    assert junk.num_rows >= 15
    assert pc.all(pc.is_valid(junk["reason"])).as_py(), junk.filter(pc.is_null(junk["reason"]))


def test_ground_truth_same_person_same_value(truth: pa.Table) -> None:
    table = normalized(truth, DEFAULT_RULES)
    people = table.filter(pc.is_valid(table["person_id"]))
    k = people.group_by(["person_id", "identifier_type"]).aggregate([([], "count_all")])["count_all"].to_numpy()
    kv = people.group_by(["person_id", "identifier_type", "value"]).aggregate([([], "count_all")])
    kv = kv.filter(pc.is_valid(kv["value"]))["count_all"].to_numpy()
    pairs, agreeing = int((k * (k - 1) // 2).sum()), int((kv * (kv - 1) // 2).sum())
    print(f"same person, same type: {agreeing}/{pairs} raw-value pairs agree = {agreeing / pairs:.4f}")
    assert pairs > 500
    assert agreeing / pairs >= 0.99


def test_ground_truth_no_cross_person_values(truth: pa.Table) -> None:
    # The synth treats jane.doe@gmail.com and janedoe@gmail.com as two people; Gmail delivers both to one
    # mailbox, so with the dots rule on such pairs collide. Without it there must be no collision at all.
    assert collisions(normalized(truth, GMAIL_OFF)).num_rows == 0
    clashes = collisions(normalized(truth, DEFAULT_RULES))
    print(f"gmail dot-equivalent addresses the synth gives to different people: {clashes.num_rows}")
    for row in clashes.to_pylist():
        assert row["identifier_type"] == "email" and row["value"].endswith("@gmail.com"), row
        assert {v.replace(".", "").replace("@gmailcom", "@gmail.com") for v in row["normalized_distinct"]} == \
            {row["value"]}, row


def test_ground_truth_normalized_column_matches_except_gmail_dots(truth: pa.Table) -> None:
    for rules in (GMAIL_OFF, DEFAULT_RULES):
        table = normalized(truth, rules)
        accepted = table.filter(pc.is_valid(table["value"]))
        differ = accepted.filter(pc.not_equal(accepted["value"], accepted["normalized"]))
        if rules is GMAIL_OFF:
            assert differ.num_rows == 0, differ.slice(0, 5).to_pylist()
        else:
            print(f"truth keeps gmail dots: {differ.num_rows} of {accepted.num_rows} accepted rows differ")
            assert set(differ["identifier_type"].to_pylist()) == {"email"}
            assert pc.all(pc.match_substring_regex(differ["normalized"], r"\.[^@]*@(gmail|googlemail)\.com$")).as_py()
