"""Satisfaction-check models owned by follow-up."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from complaints_shared.events import CustomerContact, FollowupOutcome
from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class CheckStatus(StrEnum):
    SCHEDULED = "scheduled"
    DUE = "due"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN_CHECK_STATUSES = [CheckStatus.SCHEDULED, CheckStatus.DUE, CheckStatus.IN_PROGRESS]


class OutcomeRequest(BaseModel):
    """What the agent learned on the call-back."""

    model_config = ConfigDict(extra="forbid")

    satisfied: bool
    score: int = Field(ge=1, le=5, description="Satisfaction 1 (very poor) to 5 (very good)")
    comment: Annotated[str, StringConstraints(max_length=2000)] | None = None


class SatisfactionCheckRead(BaseModel):
    id: str
    complaint_id: str
    reference: str
    org: str
    branch: str
    resolution_number: int
    sequence: int
    status: CheckStatus
    due_at: datetime
    customer: CustomerContact
    resolution_summary: str
    department: str | None = None
    owner_id: str | None = None
    outcome: FollowupOutcome | None = None
    score: int | None = None
    comment: str | None = None
    completed_at: datetime | None = None
    created_at: datetime
