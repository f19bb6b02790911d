"""API and stored-document models of the complaint of record."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from complaints_shared.events import (
    Category,
    Channel,
    ContactChannel,
    Flag,
    FollowupOutcome,
    Severity,
)
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from intake.lifecycle import Status

MAX_SUBJECT_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_SUMMARY_CHARS = 4_000

BranchCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class DesiredOutcome(StrEnum):
    REFUND = "refund"
    REPLACEMENT = "replacement"
    REPAIR = "repair"
    APOLOGY = "apology"
    COMPENSATION = "compensation"
    EXPLANATION = "explanation"
    OTHER = "other"


class StrictModel(BaseModel):
    """Request bodies reject unknown fields so typos are caught, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Customer(StrictModel):
    name: Annotated[Text, StringConstraints(max_length=100)]
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{5,20}$")] | None = None
    email: EmailStr | None = None
    external_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    preferred_contact_channel: ContactChannel = ContactChannel.PHONE
    language: Annotated[str, StringConstraints(max_length=16)] = "zh"
    vip: bool = False


class Money(StrictModel):
    amount: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "CNY"


class ComplaintCreate(StrictModel):
    """What an integrator sends to register a complaint."""

    branch: BranchCode
    channel: Channel
    customer: Customer
    subject: Annotated[Text, StringConstraints(max_length=MAX_SUBJECT_CHARS)]
    description: Annotated[Text, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)]
    category: Category = Category.OTHER
    subcategory: Annotated[str, StringConstraints(max_length=64)] | None = None
    severity: Severity = Severity.NORMAL
    flags: list[Flag] = Field(default_factory=list, max_length=len(Flag))
    occurred_at: datetime | None = None
    location: Annotated[str, StringConstraints(max_length=200)] | None = None
    product: Annotated[str, StringConstraints(max_length=200)] | None = None
    account_number: Annotated[str, StringConstraints(max_length=64)] | None = None
    disputed_amount: Money | None = None
    desired_outcomes: list[DesiredOutcome] = Field(default_factory=list, max_length=7)


class ResolveRequest(StrictModel):
    summary: Annotated[Text, StringConstraints(max_length=MAX_SUMMARY_CHARS)]
    customer_accepted: bool | None = None


class Assignment(BaseModel):
    department: str
    department_name: str
    owner_id: str | None
    owner_name: str | None
    rule_id: str
    rule_version: int
    assigned_at: datetime


class Resolution(BaseModel):
    number: int
    summary: str
    customer_accepted: bool | None = None
    resolved_by: str
    resolved_at: datetime


class Satisfaction(BaseModel):
    followup_id: str
    resolution_number: int
    outcome: FollowupOutcome
    score: int | None = None
    comment: str | None = None
    completed_at: datetime


class TimelineEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    details: dict = Field(default_factory=dict)


class ComplaintRead(BaseModel):
    """The complaint of record as integrators see it."""

    id: str
    reference: str
    org: str
    branch: str
    status: Status
    channel: Channel
    category: Category
    subcategory: str | None = None
    severity: Severity
    flags: list[Flag]
    customer: Customer
    subject: str
    description: str
    occurred_at: datetime | None = None
    location: str | None = None
    product: str | None = None
    account_number: str | None = None
    disputed_amount: Money | None = None
    desired_outcomes: list[DesiredOutcome] = Field(default_factory=list)
    assignment: Assignment | None = None
    acknowledge_due_at: datetime | None = None
    resolve_due_at: datetime | None = None
    resolution: Resolution | None = None
    satisfaction: Satisfaction | None = None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
