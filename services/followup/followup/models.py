"""API and stored-document models of follow-up: checks, attempts, policies, contact hours."""

from __future__ import annotations

from datetime import datetime, time
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from complaints_shared import text
from complaints_shared.business_calendar import (
    HolidayCountry,
    LocalTime,
    TimeZoneName,
    supported_subdivision,
)
from complaints_shared.datetimes import CalendarDay, UtcDatetime, window_end
from complaints_shared.events import (
    Category,
    ContactChannel,
    CustomerContact,
    FollowupOutcome,
    Remedy,
    ResponsibleParty,
    Severity,
)
from complaints_shared.models import Code, StrictModel, Weekday
from complaints_shared.stored import is_stored, request_only

Item = TypeVar("Item")

MAX_TEXT_CHARS = 2000
MAX_CHECKS_PER_RESOLUTION = 5
MAX_CHECK_AFTER_HOURS = 90 * 24
MAX_CALENDAR_DAYS = 1000

Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS),
    request_only(text.visible),
]


class CheckStatus(StrEnum):
    SCHEDULED = "scheduled"
    DUE = "due"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN_CHECK_STATUSES = [CheckStatus.SCHEDULED, CheckStatus.DUE, CheckStatus.IN_PROGRESS]


# ------------------------------------------------------------------ policy --


class CheckRule(StrictModel):
    """One satisfaction check, this long after the resolution (then moved into contact hours)."""

    after_hours: float = Field(gt=0, le=MAX_CHECK_AFTER_HOURS)


def _strictly_increasing(rules: list[CheckRule]) -> list[CheckRule]:
    offsets = [rule.after_hours for rule in rules]
    if any(later <= earlier for earlier, later in pairwise(offsets)):
        raise ValueError(f"after_hours must increase from one check to the next, got {offsets}")
    return rules


CheckRules = Annotated[
    list[CheckRule],
    Field(min_length=1, max_length=MAX_CHECKS_PER_RESOLUTION),
    AfterValidator(_strictly_increasing),
]


class PolicyOverride(StrictModel):
    """Checks for complaints of a category, a severity, or both (the most specific wins)."""

    category: Category | None = None
    severity: Severity | None = None
    checks: CheckRules

    @model_validator(mode="after")
    def _names_what_it_overrides(self) -> PolicyOverride:
        if self.category is None and self.severity is None:
            raise ValueError("an override needs a category, a severity or both")
        return self


def _distinct_overrides(overrides: list[PolicyOverride]) -> list[PolicyOverride]:
    keys = [(override.category, override.severity) for override in overrides]
    duplicates = sorted({f"{c}/{s}" for c, s in keys if keys.count((c, s)) > 1})
    if duplicates:
        raise ValueError(f"more than one override for {duplicates}")
    return overrides


class FollowupPolicy(StrictModel):
    """An organisation's follow-up policy; a PUT replaces it as a whole."""

    checks: CheckRules
    overrides: Annotated[
        list[PolicyOverride], Field(max_length=100), AfterValidator(_distinct_overrides)
    ] = Field(default_factory=list)
    max_attempts: int = Field(ge=1, le=10)
    attempt_spacing_hours: float = Field(
        ge=0, le=168, description="hours between unreached calls; 0 = no minimum spacing"
    )
    satisfied_score_threshold: int = Field(ge=1, le=5)


class PolicyRead(BaseModel):
    """A stored policy version; version 0 is the built-in default (never stored)."""

    org: str
    branch: str | None = Field(
        None, description="The branch this version belongs to; null: the organisation's default"
    )
    version: int
    changed_by: str | None = None
    changed_at: datetime | None = None
    policy: FollowupPolicy | None = Field(
        description="null only in a branch's history: from then on it followed the organisation"
    )


class BranchPolicyRead(BaseModel):
    """The policy a branch's resolutions get now, as anyone working the branch may read it.

    A branch without a policy of its own inherits the organisation's: its rules are shown,
    marked ``inherited``, but not the organisation's version, author or time of change, which
    are the organisation's configuration (``GET /v1/followups/policy`` and its history).
    """

    org: str
    branch: str
    inherited: bool = Field(
        description="true: the branch has no policy of its own and follows the organisation's"
    )
    version: int | None = Field(None, description="The branch's own version; null when inherited")
    changed_by: str | None = Field(None, description="Who set the branch's own policy")
    changed_at: datetime | None = None
    policy: FollowupPolicy

    @classmethod
    def in_force(cls, stored: PolicyRead, *, branch: str) -> BranchPolicyRead:
        """The branch's view of ``stored``, the policy its resolutions are scheduled under."""
        if stored.branch is None:
            return cls(org=stored.org, branch=branch, inherited=True, policy=stored.policy)
        return cls(
            org=stored.org,
            branch=branch,
            inherited=False,
            version=stored.version,
            changed_by=stored.changed_by,
            changed_at=stored.changed_at,
            policy=stored.policy,
        )


# ----------------------------------------------------------- contact hours --


class ContactHours(StrictModel):
    """When a branch's customers may be called, in the branch's own time zone."""

    time_zone: TimeZoneName = Field(examples=["Asia/Shanghai"])
    start: LocalTime = Field(examples=["09:00"])
    end: LocalTime = Field(examples=["20:00"], description="00:00 means midnight")
    weekdays: list[Weekday] = Field(min_length=1, max_length=7)
    holiday_country: HolidayCountry | None = Field(
        None, description="ISO country whose public holidays (and 调休 days) are respected"
    )
    holiday_subdivision: str | None = None
    closed_days: list[CalendarDay] = Field(default_factory=list, max_length=MAX_CALENDAR_DAYS)
    working_days: list[CalendarDay] = Field(
        default_factory=list,
        max_length=MAX_CALENDAR_DAYS,
        description="Extra days calls are allowed (e.g. a branch's own make-up day)",
    )

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and value != time(0) and value <= start:
            raise ValueError(f"end {value} must be after start {start} (00:00 means midnight)")
        return value

    @field_validator("weekdays")
    @classmethod
    def _distinct_days(cls, value: list[Weekday]) -> list[Weekday]:
        if len(set(value)) != len(value):
            raise ValueError("each weekday may appear once")
        return value

    @field_validator("holiday_subdivision")
    @classmethod
    def _supported_subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or is_stored(info) or "holiday_country" not in info.data:
            return value  # a stored one is read as stored; an unknown country is named already
        return supported_subdivision(info.data["holiday_country"], value)


class ContactHoursRead(BaseModel):
    """A branch's contact hours; version 0 means the service defaults apply."""

    org: str
    branch: str
    version: int
    changed_by: str | None = None
    changed_at: datetime | None = None
    contact_hours: ContactHours


class History(BaseModel, Generic[Item]):
    """Stored versions, newest first: the audit trail of a configuration."""

    items: list[Item]


# ------------------------------------------------------------------ checks --


class AttemptCreate(StrictModel):
    """One call (or message) to the customer; when reached, what they said."""

    reached: bool
    channel: ContactChannel | None = Field(
        None, description="Defaults to the customer's preferred channel"
    )
    score: int | None = Field(None, ge=1, le=5, description="Satisfaction 1 (poor) to 5 (good)")
    problem_solved: bool | None = None
    comment: Text | None = None
    note: Text | None = Field(None, description="For the next agent, e.g. 'busy, call after 18:00'")
    attempted_at: UtcDatetime | None = Field(
        None,
        description="When the call was made, if not now: within the caller's claim (a call "
        "under a claim that lapsed since is recorded with it while nobody claimed the check)",
    )

    def field_errors(self) -> list[dict[str, str]]:
        """What a reached (or unreached) attempt must (or must not) carry."""
        if self.reached:
            return [
                {"field": name, "message": "required when the customer was reached"}
                for name in ("score", "problem_solved")
                if getattr(self, name) is None
            ]
        return [
            {"field": name, "message": "only for an attempt that reached the customer"}
            for name in ("score", "problem_solved", "comment")
            if getattr(self, name) is not None
        ]


class OutcomeRequest(StrictModel):
    """Shortcut: the agent reached the customer and records the verdict directly."""

    satisfied: bool
    score: int = Field(ge=1, le=5, description="Satisfaction 1 (very poor) to 5 (very good)")
    problem_solved: bool | None = None
    comment: Text | None = None


class AttemptRead(BaseModel):
    number: int
    reached: bool
    channel: ContactChannel
    attempted_by: str
    attempted_at: datetime
    note: str | None = None
    score: int | None = None
    problem_solved: bool | None = None
    comment: str | None = None
    next_attempt_at: datetime | None = None


class CheckHistoryEntry(BaseModel):
    """One change of a check: the transition table's command, the status after it, who, when."""

    at: datetime
    action: str
    status: CheckStatus
    actor: str


class SatisfactionCheckRead(BaseModel):
    """A satisfaction check with what the caller needs, all taken from events."""

    id: str
    complaint_id: str
    reference: str
    subject: str | None = None
    org: str
    branch: str
    category: Category | None = None
    severity: Severity | None = None
    resolution_number: int
    sequence: int
    status: CheckStatus
    due_at: datetime
    channel: ContactChannel = ContactChannel.PHONE
    customer: CustomerContact
    resolution_summary: str
    root_cause: str | None = None
    remedies: list[Remedy] = Field(default_factory=list)
    customer_accepted: bool | None = None
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    department: str | None = None
    owner_id: str | None = None
    resolved_at: datetime | None = None
    max_attempts: int = 1
    attempt_count: int = 0
    attempts: list[AttemptRead] = Field(default_factory=list)
    history: list[CheckHistoryEntry] = Field(default_factory=list)
    claimed_by: str | None = None
    claim_lease_until: datetime | None = None
    outcome: FollowupOutcome | None = None
    score: int | None = None
    problem_solved: bool | None = None
    comment: str | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    created_at: datetime


class CheckFilters(StrictModel):
    """Query parameters of ``GET /v1/followups``; unknown ones are rejected."""

    branch: Code | None = None
    status: CheckStatus | None = None
    due_before: UtcDatetime | None = None
    owner: Annotated[str, StringConstraints(max_length=128)] | None = None
    claimed_by: Annotated[str, StringConstraints(max_length=128)] | None = None
    complaint_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    limit: int = Field(50, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None


# ------------------------------------------------------------------- stats --


class StatsFilters(StrictModel):
    """Query parameters of ``GET /v1/followups/stats`` (resolution time window)."""

    branch: Code | None = None
    category: Category | None = None
    resolved_from: UtcDatetime | None = None
    resolved_to: UtcDatetime | None = None

    @field_validator("resolved_to")
    @classmethod
    def _after_resolved_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return window_end(value, info.data.get("resolved_from"), start_name="resolved_from")


class StatsGroup(BaseModel):
    """Counts and satisfaction of the (non-cancelled) checks of one group."""

    key: str | None = None
    checks: int
    completed: int
    reached: int
    no_response: int
    satisfied: int
    unsatisfied: int
    response_rate: float | None = Field(None, description="reached / completed")
    satisfaction_average: float | None = Field(None, description="mean score of reached checks")
    score_distribution: dict[str, int]


class ComplaintSatisfaction(BaseModel):
    """Each complaint counted once, with the outcome intake records as its satisfaction: its
    latest resolution's last reached check, or no response when none of them reached the
    customer (docs/followup.md). Intake's report ``satisfaction_average`` over the same
    complaints is this ``satisfaction_average``."""

    complaints: int
    satisfied: int
    unsatisfied: int
    no_response: int
    satisfaction_average: float | None = Field(None, description="mean score of the complaints")
    score_distribution: dict[str, int]


class FirstContactStats(BaseModel):
    """Hours from a resolution to the first call that reached the customer."""

    resolutions: int
    average_hours: float | None = None
    median_hours: float | None = None
    p90_hours: float | None = None


class FollowupStats(BaseModel):
    overall: StatsGroup
    by_branch: list[StatsGroup]
    by_department: list[StatsGroup]
    by_owner: list[StatsGroup]
    by_category: list[StatsGroup]
    resolution_to_first_contact: FirstContactStats
    complaint_satisfaction: ComplaintSatisfaction
