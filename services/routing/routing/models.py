"""Directory, rule and assignment models owned by routing."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from complaints_shared.events import Category, Channel, Severity
from pydantic import BaseModel, ConfigDict, Field, model_validator


class StaffRole(StrEnum):
    AGENT = "agent"
    TEAM_LEAD = "team_lead"
    DEPARTMENT_HEAD = "department_head"
    BRANCH_HEAD = "branch_head"


class StaffStatus(StrEnum):
    ACTIVE = "active"
    ON_LEAVE = "on_leave"
    INACTIVE = "inactive"


class Branch(BaseModel):
    org: str
    code: str
    name: str
    time_zone: str = "Asia/Shanghai"


class Department(BaseModel):
    """A department of one branch; ``kind`` lets rules say "this branch's billing desk"."""

    org: str
    branch: str
    code: str
    name: str
    kind: str
    categories: list[Category] = Field(default_factory=list)

    @property
    def department_id(self) -> str:
        return f"{self.branch}:{self.code}"


class Staff(BaseModel):
    id: str
    org: str
    branch: str
    department: str
    name: str
    role: StaffRole = StaffRole.AGENT
    skills: list[str] = Field(default_factory=list)
    capacity: int = Field(20, ge=0)
    status: StaffStatus = StaffStatus.ACTIVE


class RuleConditions(BaseModel):
    """All given groups must hold; within a group any value matches (keywords_all: every one)."""

    model_config = ConfigDict(extra="forbid")

    categories: list[Category] = Field(default_factory=list)
    min_severity: Severity | None = None
    channels: list[Channel] = Field(default_factory=list)
    flags_any: list[str] = Field(default_factory=list)
    products: list[str] = Field(default_factory=list)
    keywords_any: list[str] = Field(default_factory=list)
    keywords_all: list[str] = Field(default_factory=list)


class RuleAction(BaseModel):
    """Target: a department kind in the complaint's branch, or one explicit department."""

    model_config = ConfigDict(extra="forbid")

    department_kind: str | None = None
    department_id: str | None = Field(None, description="BRANCH:CODE of one department")

    @model_validator(mode="after")
    def _one_target(self) -> RuleAction:
        if (self.department_kind is None) == (self.department_id is None):
            raise ValueError("give exactly one of department_kind or department_id")
        return self


class RoutingRule(BaseModel):
    id: str
    org: str
    name: str
    version: int = 1
    position: int
    branches: list[str] = Field(default_factory=list, description="Empty: every branch")
    conditions: RuleConditions = Field(default_factory=RuleConditions)
    action: RuleAction
    is_default: bool = False


class AssignmentStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"


class AssignmentRead(BaseModel):
    complaint_id: str
    org: str
    branch: str
    department: str
    department_name: str
    owner_id: str | None
    owner_name: str | None
    rule_id: str
    rule_version: int
    status: AssignmentStatus
    assigned_at: datetime
    acknowledge_due_at: datetime | None
    resolve_due_at: datetime | None
