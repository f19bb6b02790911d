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


# The longest target a policy may set per unit and basis. A business calendar open at least
# three days and fifteen hours a week lays these out within the three years it searches
# (``business_calendar.MAX_DAYS_SEARCHED``); calendar targets stay within a year. Checked when
# a policy is saved; a target stored before that is due three years after its start at most
# (``sla.clocks``).
MAX_AMOUNTS: dict[tuple[DurationUnit, TimeBasis], float] = {
    (DurationUnit.MINUTES, TimeBasis.BUSINESS): 10_000,
    (DurationUnit.HOURS, TimeBasis.BUSINESS): 2_000,
    (DurationUnit.DAYS, TimeBasis.BUSINESS): 365,
    (DurationUnit.MINUTES, TimeBasis.CALENDAR): 10_000,
    (DurationUnit.HOURS, TimeBasis.CALENDAR): 366 * 24,
    (DurationUnit.DAYS, TimeBasis.CALENDAR): 366,
    (DurationUnit.END_OF_BUSINESS_DAY, TimeBasis.BUSINESS): 365,
}


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

    def beyond_limit(self) -> str | None:
        """Why the amount is more than ``MAX_AMOUNTS`` allows, or no count of business days
        for ``end_of_business_day`` (None: it is fine)."""
        if self.unit is DurationUnit.END_OF_BUSINESS_DAY and (
            self.amount < 1 or self.amount != int(self.amount)
        ):
            return "end_of_business_day counts business days: 1 (the day the clock starts), 2, …"
        limit = MAX_AMOUNTS.get((self.unit, self.basis))
        if limit is None or self.amount <= limit:
            return None
        return f"at most {limit:g} {self.unit.value} in {self.basis.value} time"


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

    def field_errors(self) -> list[dict[str, str]]:
        """Each target longer than ``MAX_AMOUNTS`` allows (or ``end_of_business_day`` with
        no whole count of days), naming its ``amount``.

        Checked on the body only: a policy stored before the limits still loads.
        """
        durations = {
            f"targets.{severity.value}.{name}": getattr(targets, name)
            for severity, targets in self.targets.items()
            for name in ("acknowledge", "resolve")
        }
        durations["regulatory_report_within"] = self.regulatory_report_within
        return [
            {"field": f"{path}.amount", "message": problem}
            for path, duration in durations.items()
            if (problem := duration.beyond_limit()) is not None
        ]


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
