"""Assignment models: the stored aggregate as read, supervisor requests, workload."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from complaints_shared.events import Category, ResponsibleParty, Severity, SlaClock
from complaints_shared.models import StrictModel
from routing.directory.models import StaffRole, StaffStatus
from routing.models import DepartmentId, Reason, Slug
from routing.rules.models import NotifyTarget
from routing.sla.models import TimeBasis


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
    """One rung climbed; one a withdrawn breach caused stays, marked withdrawn."""

    model_config = ConfigDict(extra="ignore")

    level: int
    escalated_to_id: str | None = None
    escalated_to_name: str | None = None
    escalated_to_role: str | None = None
    reason: str
    note: str | None = None
    escalated_by: str
    escalated_at: datetime
    clock: SlaClock | None = Field(None, description="The clock whose breach caused it")
    breach_due_at: datetime | None = Field(None, description="That clock's due time")
    withdrawn_at: datetime | None = None
    withdrawn_reason: str | None = Field(
        None, description="Why the breach was withdrawn, e.g. acknowledged_on_time"
    )


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
    awaiting_branch_head: bool = Field(
        False,
        description="A major incident its branch had no active head for: escalated to the most "
        "senior person its chain found, and to the head once there is one.",
    )
    paused: bool = False
    breached: bool = False
    escalation_level: int = 0
    escalations: list[EscalationRecord] = Field(default_factory=list)
    clocks: dict[SlaClock, SlaClockRead] = Field(default_factory=dict)
    notify: list[NotifyTarget] = Field(default_factory=list)
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    regulatory_report_filed_at: datetime | None = None
    regulatory_report_reference: str | None = None
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
    active: bool = Field(
        True, description="False: deactivated, shown while it still holds open or queued work"
    )
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
