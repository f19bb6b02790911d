"""Routing rule models (versioned, with their conditions and action) and the simulation's."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from complaints_shared.datetimes import UtcDatetime
from complaints_shared.events import Category, Channel, Flag, Severity
from complaints_shared.models import Code, Keyword, StrictModel
from routing.directory.models import StaffRole
from routing.models import DepartmentId, Kind, Name, Skill, Slug


class RuleFlag(StrEnum):
    """Complaint flags a rule can test; ``vip`` is the customer's VIP mark."""

    REPEAT = Flag.REPEAT.value
    MEDIA_RISK = Flag.MEDIA_RISK.value
    REGULATOR_INVOLVED = Flag.REGULATOR_INVOLVED.value
    LEGAL_THREAT = Flag.LEGAL_THREAT.value
    VULNERABLE_CUSTOMER = Flag.VULNERABLE_CUSTOMER.value
    SAFETY_RISK = Flag.SAFETY_RISK.value
    VIP = "vip"


# A rule's position is stored as a BSON integer, which holds at most 64 bits (2**63 is an
# OverflowError in the driver). Positions an administrator gives stay within a billion
# either way, so the ones given after the last (``POSITION_STEP`` further) keep room too.
MAX_POSITION = 1_000_000_000
Position = Annotated[int, Field(ge=-MAX_POSITION, le=MAX_POSITION)]


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
        """No condition given (``vip: false`` is one)."""
        return self == RuleConditions()


class RuleAction(StrictModel):
    """Where the complaint goes and how it is treated there."""

    department_kind: Kind | None = Field(None, description="This branch's department of a kind")
    department_id: DepartmentId | None = Field(None, description="BRANCH:CODE of one department")
    required_skill: Skill | None = Field(
        None, description="Owners must list it in skills or languages (case and width folded)"
    )
    severity_override: Severity | None = Field(
        None, description="Raise the severity to at least this (never lowers the registered one)"
    )
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
    position: Position | None = Field(
        None, description="Order within the organisation (±1,000,000,000); default: last"
    )


class RuleUpdate(StrictModel):
    name: Name | None = None
    branches: list[Code] | None = None
    conditions: RuleConditions | None = None
    action: RuleAction | None = None
    position: Position | None = None


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


class NotifyTarget(BaseModel):
    role: StaffRole
    staff_id: str | None = None
    name: str | None = None


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
    chosen_owner_hidden: bool = Field(
        False,
        description="An owner would be chosen among people the token may not see (another "
        "branch's department): not queued, though no chosen owner is shown",
    )
    candidates_hidden: int = Field(
        0, description="Candidates left out of `candidates`: people the token may not see"
    )
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
