"""SLA policy models: targets per severity in business or calendar time, major incidents."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from complaints_shared.events import Category, Severity
from complaints_shared.models import StrictModel
from routing.models import Name
from routing.rules.models import RuleFlag


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
