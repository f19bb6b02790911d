"""Directory, rule, SLA policy and assignment models owned by routing.

Each resource has a ``Base / Create / Update / Read`` family: request bodies
forbid unknown fields so a typo is a 422 naming it, not a silently ignored key.
"""

from __future__ import annotations

from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from complaints_shared.datetimes import UtcDatetime
from complaints_shared.events import (
    Category,
    Channel,
    Flag,
    ResponsibleParty,
    Severity,
    SlaClock,
)
from complaints_shared.models import Code, StrictModel, Weekday

Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Kind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
DepartmentId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}:[A-Z0-9][A-Z0-9_-]{0,31}$"),
]


# --------------------------------------------------------------- directory --


class StaffRole(StrEnum):
    AGENT = "agent"
    TEAM_LEAD = "team_lead"
    DEPARTMENT_HEAD = "department_head"
    BRANCH_HEAD = "branch_head"


# Escalation goes up this ladder, never back down.
ROLE_RANK = {
    StaffRole.AGENT: 0,
    StaffRole.TEAM_LEAD: 1,
    StaffRole.DEPARTMENT_HEAD: 2,
    StaffRole.BRANCH_HEAD: 3,
}


class StaffStatus(StrEnum):
    ACTIVE = "active"
    ON_LEAVE = "on_leave"
    INACTIVE = "inactive"


class OpeningRange(StrictModel):
    """A local opening range [start, end); an end of 00:00 means midnight (24:00)."""

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> OpeningRange:
        if self.end != time(0) and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start} (00:00 = midnight)")
        return self


def _weekdays_9_to_18() -> dict[Weekday, list[OpeningRange]]:
    day = [OpeningRange(start=time(9), end=time(18))]
    return {weekday: list(day) for weekday in list(Weekday)[:5]}


class HolidayCalendar(StrictModel):
    """Public holidays of a country (``holidays`` library) plus the organisation's own days."""

    country: str | None = Field("CN", description="ISO 3166 code; null: no public holidays")
    subdivision: str | None = None
    closed_days: list[date] = Field(default_factory=list, description="Extra closed days")
    working_days: list[date] = Field(
        default_factory=list, description="Make-up working days (调休) beyond the official ones"
    )


class BranchBase(StrictModel):
    name: Name
    time_zone: str = "Asia/Shanghai"
    hours: dict[Weekday, list[OpeningRange]] = Field(
        default_factory=_weekdays_9_to_18, description="Opening hours per weekday, local time"
    )
    holidays: HolidayCalendar = Field(default_factory=HolidayCalendar)
    duty_officer_id: Slug | None = Field(None, description="总值班: takes urgent work out of hours")


class BranchCreate(BranchBase):
    code: Code


class BranchUpdate(StrictModel):
    name: Name | None = None
    time_zone: str | None = None
    hours: dict[Weekday, list[OpeningRange]] | None = None
    holidays: HolidayCalendar | None = None
    duty_officer_id: Slug | None = None


class BranchRead(BranchBase):
    model_config = ConfigDict(extra="ignore")

    org: str
    code: str
    active: bool = True
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None


class EscalationStep(StrictModel):
    """One rung of an escalation chain: a named person or a role (resolved when escalating)."""

    staff_id: Slug | None = None
    role: StaffRole | None = None

    @model_validator(mode="after")
    def _one_target(self) -> EscalationStep:
        if (self.staff_id is None) == (self.role is None):
            raise ValueError("give exactly one of staff_id or role")
        if self.role is StaffRole.AGENT:
            raise ValueError("an escalation step must be team_lead, department_head or branch_head")
        return self


def _standard_chain() -> list[EscalationStep]:
    return [
        EscalationStep(role=StaffRole.TEAM_LEAD),
        EscalationStep(role=StaffRole.DEPARTMENT_HEAD),
        EscalationStep(role=StaffRole.BRANCH_HEAD),
    ]


class DepartmentBase(StrictModel):
    name: Name
    kind: Kind = Field(description="Lets rules say 'this branch's department of kind X'")
    categories: list[Category] = Field(default_factory=list)
    escalation_chain: list[EscalationStep] = Field(
        default_factory=_standard_chain, description="team lead → department head → branch head"
    )


class DepartmentCreate(DepartmentBase):
    branch: Code
    code: Code


class DepartmentUpdate(StrictModel):
    name: Name | None = None
    kind: Kind | None = None
    categories: list[Category] | None = None
    escalation_chain: list[EscalationStep] | None = None


class DepartmentRead(DepartmentBase):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="BRANCH:CODE")
    org: str
    branch: str
    code: str
    active: bool = True
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None


class StaffBase(StrictModel):
    name: Name
    department: Code = Field(description="Department code within the staff member's branch")
    role: StaffRole = StaffRole.AGENT
    skills: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="Categories or specialities, e.g. billing, vip"
    )
    languages: list[Annotated[str, StringConstraints(min_length=1, max_length=16)]] = Field(
        default_factory=lambda: ["zh"]
    )
    capacity: int = Field(20, ge=0, le=1000, description="Maximum open complaints")
    status: StaffStatus = StaffStatus.ACTIVE


class StaffCreate(StaffBase):
    id: Slug
    branch: Code


class StaffUpdate(StrictModel):
    name: Name | None = None
    department: Code | None = None
    role: StaffRole | None = None
    skills: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = None
    languages: list[Annotated[str, StringConstraints(min_length=1, max_length=16)]] | None = None
    capacity: int | None = Field(None, ge=0, le=1000)
    status: StaffStatus | None = None


class StaffRead(StaffBase):
    model_config = ConfigDict(extra="ignore")

    id: str
    org: str
    branch: str
    department_id: str
    open_load: int = 0
    last_assigned_at: datetime | None = None
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None


class OpenWork(BaseModel):
    complaint_id: str
    status: str
    department: str | None
    owner_id: str | None
    assigned_at: datetime | None = None


class DeactivationReport(BaseModel):
    """What was deactivated and the open work still sitting with it."""

    deactivated: str
    open_work: list[OpenWork]


# ------------------------------------------------------------------ rules --


class RuleFlag(StrEnum):
    """Complaint flags a rule can test; ``vip`` is the customer's VIP mark."""

    REPEAT = Flag.REPEAT.value
    MEDIA_RISK = Flag.MEDIA_RISK.value
    REGULATOR_INVOLVED = Flag.REGULATOR_INVOLVED.value
    LEGAL_THREAT = Flag.LEGAL_THREAT.value
    VULNERABLE_CUSTOMER = Flag.VULNERABLE_CUSTOMER.value
    SAFETY_RISK = Flag.SAFETY_RISK.value
    VIP = "vip"


Keyword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class RuleConditions(StrictModel):
    """All given groups must hold; within a group any value matches (``*_all``: every one)."""

    categories: list[Category] = Field(default_factory=list)
    min_severity: Severity | None = None
    channels: list[Channel] = Field(default_factory=list)
    flags_any: list[RuleFlag] = Field(default_factory=list)
    flags_all: list[RuleFlag] = Field(default_factory=list)
    vip: bool | None = Field(None, description="true: VIP customers only; false: non-VIP only")
    products: list[Keyword] = Field(
        default_factory=list, description="Substrings of the product or service, any matches"
    )
    keywords_any: list[Keyword] = Field(default_factory=list)
    keywords_all: list[Keyword] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return self == RuleConditions()


class RuleAction(StrictModel):
    """Where the complaint goes and how it is treated there."""

    department_kind: Kind | None = Field(None, description="This branch's department of a kind")
    department_id: DepartmentId | None = Field(None, description="BRANCH:CODE of one department")
    required_skill: str | None = None
    severity_override: Severity | None = None
    sla_policy: Slug | None = None
    notify_roles: list[StaffRole] = Field(default_factory=list)
    major_incident: bool = Field(
        False, description="Escalate to the branch head at once and start the report deadline"
    )

    @model_validator(mode="after")
    def _one_target(self) -> RuleAction:
        if (self.department_kind is None) == (self.department_id is None):
            raise ValueError("give exactly one of department_kind or department_id")
        return self


class RuleBase(StrictModel):
    name: Name
    branches: list[Code] = Field(default_factory=list, description="Empty: every branch")
    conditions: RuleConditions = Field(default_factory=RuleConditions)
    action: RuleAction
    is_default: bool = Field(False, description="The catch-all rule, matched last")


class RuleCreate(RuleBase):
    id: Slug
    position: int | None = Field(None, description="Order within the organisation; default: last")


class RuleUpdate(StrictModel):
    name: Name | None = None
    branches: list[Code] | None = None
    conditions: RuleConditions | None = None
    action: RuleAction | None = None
    position: int | None = None


class RoutingRule(RuleBase):
    """A stored rule; ``id`` is ``<org>:<slug>`` and is what assignments record."""

    model_config = ConfigDict(extra="ignore")

    id: str
    org: str
    position: int
    version: int = 1
    active: bool = True


class RuleRead(RoutingRule):
    created_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


class RuleVersionRead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rule_id: str
    version: int
    change: str
    changed_by: str
    changed_at: datetime
    rule: dict


# ------------------------------------------------------------ SLA policies --


class TimeBasis(StrEnum):
    CALENDAR = "calendar"
    BUSINESS = "business"


class DurationUnit(StrEnum):
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    END_OF_BUSINESS_DAY = "end_of_business_day"


class SlaDuration(StrictModel):
    """An allowed time: ``4 hours business``, ``3 days business``, ``24 hours calendar``."""

    amount: float = Field(1, ge=0, le=10_000)
    unit: DurationUnit
    basis: TimeBasis

    @model_validator(mode="after")
    def _same_day_is_business(self) -> SlaDuration:
        if self.unit is DurationUnit.END_OF_BUSINESS_DAY and self.basis is TimeBasis.CALENDAR:
            raise ValueError("end_of_business_day needs basis business")
        whole = self.amount == int(self.amount)
        if self.unit is DurationUnit.DAYS and self.basis is TimeBasis.BUSINESS and not whole:
            raise ValueError("business days must be a whole number; use hours for less")
        return self


class SeverityTargets(StrictModel):
    acknowledge: SlaDuration
    resolve: SlaDuration


class MajorIncidentCriteria(StrictModel):
    """Which complaints go to the branch head at once and carry a report deadline."""

    min_severity: Severity | None = Severity.CRITICAL
    categories: list[Category] = Field(default_factory=lambda: [Category.MEDICAL, Category.SAFETY])
    flags: list[RuleFlag] = Field(default_factory=lambda: [RuleFlag.SAFETY_RISK])


class SlaPolicyBase(StrictModel):
    name: Name
    is_default: bool = Field(False, description="The organisation's policy when nothing else fits")
    categories: list[Category] = Field(
        default_factory=list, description="Categories this policy overrides the default for"
    )
    targets: dict[Severity, SeverityTargets] = Field(
        default_factory=dict, description="Per severity; a missing one uses the built-in default"
    )
    warning_share: float = Field(0.8, gt=0, lt=1, description="Warn at this share of the time")
    regulatory_report_within: SlaDuration = Field(
        default_factory=lambda: SlaDuration(amount=6, unit="hours", basis="calendar")
    )
    major_incident: MajorIncidentCriteria = Field(default_factory=MajorIncidentCriteria)


class SlaPolicyWrite(SlaPolicyBase):
    """Body of ``PUT /v1/routing/sla-policies/{id}``."""


class SlaPolicy(SlaPolicyBase):
    model_config = ConfigDict(extra="ignore")

    id: str
    org: str
    version: int = 1
    updated_at: datetime | None = None
    updated_by: str | None = None
    retired_at: datetime | None = Field(
        None, description="Set when retired: kept for history, never chosen for new complaints"
    )
    retired_by: str | None = None

    @property
    def in_force(self) -> bool:
        return self.retired_at is None


# ------------------------------------------------------------ assignments --


class AssignmentStatus(StrEnum):
    # No rule leads to an active department yet: kept until one does, or a supervisor assigns.
    UNROUTABLE = "unroutable"
    QUEUED = "queued"
    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


ACTIVE_STATUSES = (AssignmentStatus.UNROUTABLE, AssignmentStatus.QUEUED, AssignmentStatus.OPEN)


class ClockState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class SlaClockRead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    basis: TimeBasis
    state: ClockState
    started_at: datetime
    due_at: datetime
    warn_at: datetime | None = None
    next_breach_at: datetime | None = None
    warned: bool = False
    breach_count: int = 0
    stopped_at: datetime | None = None


class EscalationRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    level: int
    escalated_to_id: str | None = None
    escalated_to_name: str | None = None
    escalated_to_role: str | None = None
    reason: str
    note: str | None = None
    escalated_by: str
    escalated_at: datetime


class NotifyTarget(BaseModel):
    role: StaffRole
    staff_id: str | None = None
    name: str | None = None


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: datetime
    action: str
    actor: str
    details: dict = Field(default_factory=dict)


class UnroutableRead(BaseModel):
    """Why no rule routes the complaint, since when."""

    model_config = ConfigDict(extra="ignore")

    reason: str
    passed_over_rules: list[str] = Field(default_factory=list)
    since: datetime


class AssignmentRead(BaseModel):
    """Who handles a complaint, by when, how far it has been escalated.

    An ``unroutable`` complaint has no department, owner or rule yet, only ``unroutable``.
    """

    model_config = ConfigDict(extra="ignore")

    complaint_id: str
    org: str
    branch: str
    status: AssignmentStatus
    unroutable: UnroutableRead | None = None
    department: str | None
    department_name: str | None
    owner_id: str | None
    owner_name: str | None
    rule_id: str | None
    rule_version: int | None
    severity: Severity
    category: Category
    sla_policy: str | None = None
    assigned_at: datetime | None = None
    queued_at: datetime | None = None
    clock_starts_at: datetime | None = None
    acknowledge_due_at: datetime | None = None
    resolve_due_at: datetime | None = None
    regulatory_report_due_at: datetime | None = None
    duty_officer: bool = False
    major_incident: bool = False
    paused: bool = False
    escalation_level: int = 0
    escalations: list[EscalationRecord] = Field(default_factory=list)
    clocks: dict[SlaClock, SlaClockRead] = Field(default_factory=dict)
    notify: list[NotifyTarget] = Field(default_factory=list)
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    history: list[HistoryEntry] = Field(default_factory=list)


class ReassignRequest(StrictModel):
    """Move a complaint to another owner, or to another department (owner chosen there)."""

    reason: Reason
    owner_id: Slug | None = None
    department: DepartmentId | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> ReassignRequest:
        if self.owner_id is None and self.department is None:
            raise ValueError("give owner_id, department or both")
        return self


class EscalateRequest(StrictModel):
    reason: Reason


class ResponsibilityRequest(StrictModel):
    """责任部门: the department at fault, which need not be the one handling the complaint."""

    responsible_department: DepartmentId
    responsible_party: ResponsibleParty | None = None


class RegulatoryReportRequest(StrictModel):
    reference: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="The authority's reference for the filed report"
    )


# ---------------------------------------------------------------- simulate --


class SimulatedCustomer(StrictModel):
    vip: bool = False
    language: str = "zh"


class SimulateRequest(StrictModel):
    """A complaint as ``complaint.received`` would carry it; nothing is stored."""

    branch: Code
    channel: Channel = Channel.PHONE
    category: Category = Category.OTHER
    severity: Severity = Severity.NORMAL
    flags: list[Flag] = Field(default_factory=list)
    subject: Annotated[str, StringConstraints(max_length=200)] = ""
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""
    product: str | None = None
    customer: SimulatedCustomer = Field(default_factory=SimulatedCustomer)
    received_at: UtcDatetime | None = Field(None, description="Default: now")


class CandidateRead(BaseModel):
    id: str
    name: str
    role: StaffRole
    open_load: int
    capacity: int
    last_assigned_at: datetime | None = None
    eligible: bool
    why_not: str | None = None


class MatchedRuleRead(BaseModel):
    id: str
    version: int
    name: str


class SimulationRead(BaseModel):
    matched_rule: MatchedRuleRead
    skipped_rules: list[str] = Field(
        default_factory=list, description="Rules that matched but whose department is missing"
    )
    department: str
    department_name: str
    candidates: list[CandidateRead]
    chosen_owner_id: str | None
    chosen_owner_name: str | None
    queued: bool
    duty_officer: bool
    in_business_hours: bool
    severity: Severity
    sla_policy: str
    clock_starts_at: datetime
    acknowledge_due_at: datetime
    resolve_due_at: datetime
    regulatory_report_due_at: datetime | None = None
    major_incident: bool
    escalation_level: int
    escalated_to_id: str | None = None
    notify: list[NotifyTarget] = Field(default_factory=list)


# ---------------------------------------------------------------- workload --


class OwnerWorkload(BaseModel):
    id: str
    name: str
    role: StaffRole
    status: StaffStatus
    capacity: int
    open_load: int
    spare: int
    last_assigned_at: datetime | None = None


class DepartmentWorkload(BaseModel):
    department: str
    department_name: str
    branch: str
    open: int
    queued: int
    paused: int
    breached: int
    escalated: int
    responsible_for: int = Field(description="Complaints this department was found responsible for")
    owners: list[OwnerWorkload]


class WorkloadRead(BaseModel):
    departments: list[DepartmentWorkload]
    unroutable: int = Field(
        0, description="Complaints no rule routes yet (no department); see ?status=unroutable"
    )
