"""Request and response models: the seed's contract, field by field, with the validation rules the docs show.

Unknown fields are REJECTED (422 "Extra inputs are not permitted"): a misspelt `send_befor` must not be
silently ignored. Timestamps are RFC 3339 strings with an offset or `Z` (naive ones are rejected) and are
converted to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sendflowr.contract import IDENTIFIER_TYPES

MAX_LATENCY_SECONDS = 86_400.0  # an ESP that needs more than a day to deliver is a misconfiguration
UID_PATTERN = r"^sf_[0-9a-f]{16}$"
IDENTIFIER_FIELDS = IDENTIFIER_TYPES  # each a field of Identifiers below


def _timestamp_string(value: object) -> object:
    # Numbers would be read as Unix times; the contract is a string with an explicit offset.
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp_type", "must be an RFC 3339 timestamp string with an offset or Z, "
                                  "e.g. 2026-01-10T00:00:00Z")
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise PydanticCustomError("timestamp_range", "timestamp is out of range once converted to UTC") from exc


UtcTimestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_string), AfterValidator(_to_utc)]


def _valid_text(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"): not text, and nothing downstream could encode them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError("invalid_text", "must be valid Unicode text (no lone surrogates)") from exc
    return value


Text = Annotated[str, AfterValidator(_valid_text)]


def _identifier(description: str, example: str, max_length: int = 320):
    return Field(default=None, min_length=1, max_length=max_length, description=description, examples=[example])


# Optional labels the decision log records with each decision (the event contract's limits, 256 characters).
CAMPAIGN_ID = Field(
    default=None, min_length=1, max_length=256, examples=["cmp_2026_spring_sale"],
    description="Your campaign's id. Recorded in the decision log; with the universal_id it decides the arm (the "
    "same person and campaign always get the same arm). Without it a person's arm is the same for every request.")
MESSAGE_ID = Field(
    default=None, min_length=1, max_length=256, examples=["msg_8c1f2e"],
    description="The id your ESP will report on this message's events (the events' message_id). Recorded in the "
    "decision log so that the uplift asset joins the decision to its delivery exactly; without it, to the "
    "person's delivery nearest the chosen moment.")


class IdentifierFields(BaseModel):
    """Who: any subset of identifiers."""

    model_config = ConfigDict(extra="forbid")

    email: Text | None = _identifier("E-mail address as the ESP knows it (normalized the way stitching does: "
                                    "case, Gmail dots, plus-tags of known providers).", "user@example.com")
    klaviyo_id: Text | None = _identifier("ESP profile id (e.g. a Klaviyo profile id); case-sensitive.", "k_abc123")
    phone: Text | None = _identifier("Phone number, ideally E.164 (`+14155552671`); numbers without a country code "
                                    "are read as US.", "+14155552671", 64)
    external_id: Text | None = _identifier("Your own customer id; case-sensitive.", "cust-0042")
    universal_id: str | None = Field(
        default=None, pattern=UID_PATTERN, description="SendFlowr id (`sf_` + 16 hex). Wins over the other "
        "identifiers; an id merged into another person resolves to the survivor.", examples=["sf_b8783dbfc0024695"])

    def identifiers(self) -> dict[str, str | None]:
        return {f: getattr(self, f) for f in IDENTIFIER_FIELDS}


class Identifiers(IdentifierFields):
    """Who: any subset of identifiers, at least one."""

    @model_validator(mode="after")
    def _at_least_one(self):
        if all(getattr(self, f) is None for f in (*IDENTIFIER_FIELDS, "universal_id")):
            raise PydanticCustomError(
                "missing_identifier",
                "at least one identifier is required: " + ", ".join(IDENTIFIER_FIELDS) + " or universal_id")
        return self


class Recipient(IdentifierFields):
    """One recipient of a batch. Only Rust-side constraints (no Python validator): 10,000 of them validate in
    milliseconds. A recipient without any identifier gets a per-recipient error, like any other that cannot be
    decided."""

    message_id: Text | None = MESSAGE_ID


class Window(BaseModel):
    """When: the delivery window and how long the ESP takes to deliver."""

    model_config = ConfigDict(extra="forbid")

    send_after: UtcTimestamp = Field(description="Earliest delivery moment (RFC 3339 with offset or Z).",
                                     examples=["2026-01-10T00:00:00Z"])
    send_before: UtcTimestamp = Field(description="Delivery must happen before this moment; must be after "
                                      "send_after and in the future.", examples=["2026-01-17T00:00:00Z"])
    latency_estimate_seconds: float = Field(
        default=0.0, ge=0, le=MAX_LATENCY_SECONDS, allow_inf_nan=False, strict=True,
        description=f"Seconds between triggering the send and delivery (0 to {MAX_LATENCY_SECONDS:.0f}); the "
        "trigger is the best delivery moment minus this.", examples=[300])

    @field_validator("send_before")
    @classmethod
    def _ordered(cls, value: datetime, info: ValidationInfo) -> datetime:
        after = info.data.get("send_after")  # absent when send_after itself is invalid (reported there)
        if after is not None and value <= after:
            raise PydanticCustomError("window_order", "send_before must be later than send_after")
        return value


class TimingDecisionRequest(Identifiers, Window):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "email": "user@example.com", "klaviyo_id": "k_abc123", "send_after": "2026-01-10T00:00:00Z",
        "send_before": "2026-01-17T00:00:00Z", "latency_estimate_seconds": 300}]})

    campaign_id: Text | None = CAMPAIGN_ID
    message_id: Text | None = MESSAGE_ID


FallbackLevel = Literal["person", "cohort", "global"]
Arm = Literal["treatment", "control"]
ARM_DESCRIPTION = ("`treatment`: the model's best moment; `control`: a uniformly random moment in the window, for "
                   "the randomized control arm (SENDFLOWR_API_CONTROL_SHARE of decisions, by universal_id and "
                   "campaign_id) that measures SendFlowr's uplift on your list (docs/EVALUATION.md). A control "
                   "decision keeps the confidence and fallback level of the model's choice, so acting on them "
                   "treats both arms alike.")


class TimingDecision(BaseModel):
    """The seed's three fields first, in this order; the rest are optional extras."""

    universal_id: str = Field(description="The person's SendFlowr id (the one stitching assigned or will "
                              "assign).", examples=["sf_b8783dbfc0024695"])
    trigger_timestamp_utc: str = Field(description="When to hand the message to the ESP: best delivery moment "
                                       "minus latency, UTC, `Z` suffix, whole seconds.",
                                       examples=["2026-01-16T23:55:00Z"])
    confidence_score: float = Field(ge=0, le=1, description="Probability (calibrated when an evaluation ran) that "
                                    "the chosen hour is within one hour of the person's true best hour in the "
                                    "window. Low for cohort/global fallbacks.", examples=[0.72])
    delivery_timestamp_utc: str = Field(description="The chosen delivery moment.", examples=["2026-01-17T00:00:00Z"])
    fallback_level: FallbackLevel = Field(description="Which curve decided: the person's own, their cohort's "
                                          "(email domain / phone country) or the global one.")
    expected_engagement: float = Field(description="The curve's expected genuine engagement at the chosen hour.")
    known_person: bool = Field(description="True when the person exists in the materialized identity graph.")
    explanation: str = Field(description="Human-readable reason: curve used, evidence, margin.")
    snapshot_version: str = Field(description="Version of the materialized data that decided.")
    arm: Arm = Field(description=ARM_DESCRIPTION)


class FieldError(BaseModel):
    field: str = Field(description="Request field to blame.")
    message: str


class BatchDecisionRequest(Window):
    """A campaign: one window and latency for every recipient."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "send_after": "2026-01-10T00:00:00Z", "send_before": "2026-01-17T00:00:00Z",
        "latency_estimate_seconds": 300,
        "recipients": [{"email": "user@example.com"}, {"klaviyo_id": "k_abc123", "phone": "+14155552671"}]}]})

    recipients: list[Recipient] = Field(min_length=1, description="Recipients, each with at least one "
                                        "identifier. At most SENDFLOWR_API_BATCH_MAX_SIZE per request.")
    campaign_id: Text | None = CAMPAIGN_ID


class BatchDecisionItem(BaseModel):
    index: int = Field(description="Position of the recipient in the request.")
    universal_id: str | None = None
    trigger_timestamp_utc: str | None = None
    confidence_score: float | None = None
    delivery_timestamp_utc: str | None = None
    fallback_level: FallbackLevel | None = None
    known_person: bool | None = None
    error: FieldError | None = Field(default=None, description="Why this recipient got no decision (the other "
                                     "recipients are unaffected).")
    arm: Arm | None = Field(default=None, description=ARM_DESCRIPTION)


class BatchDecisionResponse(BaseModel):
    snapshot_version: str
    decided: int = Field(description="Recipients with a decision.")
    failed: int = Field(description="Recipients with an error.")
    decisions: list[BatchDecisionItem]


class HourValue(BaseModel):
    hour_of_week: int = Field(description="0 = Monday 00:00-00:59 UTC.")
    slot: str = Field(examples=["Tue 14:00 UTC"])
    value: float


class CurveSummary(BaseModel):
    fallback_level: FallbackLevel
    cohort: str = Field(description="Cohort of the person ('' when none).")
    evidence: float = Field(description="Weighted genuine engagements behind the curve.")
    engagements: int | None = Field(default=None, description="Messages genuinely engaged with (person curves).")
    best_hour_of_week: int
    best_slot: str
    top_hours: list[HourValue]
    curve: list[float] = Field(description="168 expected engagement values, hour of week 0..167 (UTC).")


class PersonIdentifier(BaseModel):
    value: str = Field(description="Normalized identifier.")
    first_seen: str
    last_seen: str
    shared: bool = Field(description="Blocked from stitching as a shared identifier.")


class Person(BaseModel):
    universal_id: str
    known_person: bool
    redirected_from: str | None = Field(default=None, description="The requested universal_id, when it was merged "
                                        "into this person.")
    merged_ids: list[str] = Field(description="Universal ids that were merged into this person.")
    identifiers: dict[str, list[PersonIdentifier]] = Field(description="Identifiers by type, as materialized.")
    timing: CurveSummary
    timing_version: int
    materialized_at: str = Field(description="When the timing run serving this person was materialized.")
    snapshot_version: str


class Health(BaseModel):
    status: str = Field(description="`ok` while the process serves requests.")
    version: str = Field(description="SendFlowr version.")


class Readiness(BaseModel):
    ready: bool = Field(description="True once a decision snapshot is loaded.")
    snapshot_version: str | None = None
    timing_version: int | None = None
    materialized_at: str | None = Field(default=None, description="When the served timing run was materialized.")
    age_seconds: float | None = Field(default=None, description="Seconds since that materialization.")
    loaded_at: str | None = Field(default=None, description="When this process loaded the snapshot.")
    people_with_curves: int | None = None
    identifiers: int | None = Field(default=None, description="Identifiers in the identity map.")
    last_check_at: str | None = Field(default=None, description="Last poll for a newer materialization.")
    refresh_failures: int = 0
    detail: str = Field(default="", description="Why the service is not ready, or the last refresh error.")


class ErrorDetail(BaseModel):
    detail: str


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationErrorItem]
