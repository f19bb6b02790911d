"""Directory models: branches with their hours and holidays, departments with escalation
chains, staff.

Each resource has a ``Base / Create / Update / Read`` family: request bodies
forbid unknown fields so a typo is a 422 naming it, not a silently ignored key.
"""

from __future__ import annotations

from datetime import datetime, time
from enum import StrEnum

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from complaints_shared.business_calendar import (
    HolidayCountry,
    LocalTime,
    TimeZoneName,
    supported_subdivision,
)
from complaints_shared.datetimes import CalendarDay
from complaints_shared.events import Category
from complaints_shared.models import Code, StrictModel, Weekday
from complaints_shared.stored import is_stored
from routing.models import Kind, Language, Name, Skill, Slug


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

    start: LocalTime
    end: LocalTime

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

    country: HolidayCountry | None = Field(
        "CN", description="ISO 3166 code; null: no public holidays"
    )
    subdivision: str | None = None
    closed_days: list[CalendarDay] = Field(
        default_factory=list, description="Extra closed days (years 1970 to 2200)"
    )
    working_days: list[CalendarDay] = Field(
        default_factory=list, description="Make-up working days (调休) beyond the official ones"
    )

    @field_validator("subdivision")
    @classmethod
    def _supported_subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or is_stored(info) or "country" not in info.data:
            return value  # a stored one is read as stored; an unknown country is named already
        return supported_subdivision(info.data["country"], value)


class BranchBase(StrictModel):
    name: Name
    time_zone: TimeZoneName = "Asia/Shanghai"
    hours: dict[Weekday, list[OpeningRange]] = Field(
        default_factory=_weekdays_9_to_18, description="Opening hours per weekday, local time"
    )
    holidays: HolidayCalendar = Field(default_factory=HolidayCalendar)
    duty_officer_id: Slug | None = Field(None, description="总值班: takes urgent work out of hours")


class BranchCreate(BranchBase):
    code: Code


class BranchUpdate(StrictModel):
    name: Name | None = None
    time_zone: TimeZoneName | None = None
    hours: dict[Weekday, list[OpeningRange]] | None = None
    holidays: HolidayCalendar | None = None
    duty_officer_id: Slug | None = None


class BranchRead(BranchBase):
    model_config = ConfigDict(extra="ignore")

    org: str
    code: str
    active: bool = True
    version: int = 1
    calendar_version: int = Field(
        0, description="Counts the changes of the time zone, hours and holidays (0: none yet)"
    )
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
    skills: list[Skill] = Field(
        default_factory=list, description="Categories or specialities, e.g. billing, vip"
    )
    languages: list[Language] = Field(default_factory=lambda: ["zh"])
    capacity: int = Field(20, ge=0, le=1000, description="Maximum open complaints")
    status: StaffStatus = StaffStatus.ACTIVE


class StaffCreate(StaffBase):
    id: Slug
    branch: Code


class StaffUpdate(StrictModel):
    name: Name | None = None
    department: Code | None = None
    role: StaffRole | None = None
    skills: list[Skill] | None = None
    languages: list[Language] | None = None
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


class UncoveredSkill(BaseModel):
    """A skill the deactivated person had that nobody active in their department has now,
    while work of the department needs it: complaints queued for it wait for nobody."""

    skill: str
    department: str
    queued: int = Field(description="Complaints waiting in the department's queue for it")
    rules: list[str] = Field(
        description="Active rules sending the branch's complaints to the department with it"
    )


class DeactivationReport(BaseModel):
    """What was deactivated and the open work still sitting with it: the complaints of the
    caller's branches listed, those of other branches (an organisation rule sent them) only
    counted. A person's deactivation also names the skills it leaves uncovered."""

    deactivated: str
    version: int = Field(description="The entry's version now (also its ETag)")
    open_work: list[OpenWork]
    open_work_of_other_branches: int = 0
    skills_uncovered: list[UncoveredSkill] = Field(
        default_factory=list,
        description="Staff only: skills the person had that nobody active in their department "
        "has now, needed by its queued work or its rules",
    )
