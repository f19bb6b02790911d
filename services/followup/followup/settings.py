"""Follow-up settings (environment variables of the same name, upper case).

The policy values here are the defaults an organisation gets until an admin
stores its own policy through ``PUT /v1/followups/policy``; the contact-hour
values are the defaults of every branch without its own entry.
"""

from __future__ import annotations

from datetime import time

from pydantic import Field, ValidationError, field_validator, model_validator

from complaints_shared.business_calendar import ConfiguredTimeZone
from complaints_shared.events import Severity
from complaints_shared.models import Weekday
from complaints_shared.settings import ServiceSettings


class FollowupSettings(ServiceSettings):
    service_name: str = "followup"

    # -- default policy ------------------------------------------------------------
    first_check_after_hours: float = Field(
        24.0, gt=0, description="Satisfaction check this long after resolution."
    )
    second_check_after_hours: float = Field(
        168.0, gt=0, description="Second check after resolution for the severities below."
    )
    second_check_severities: list[Severity] = Field(
        default_factory=lambda: [Severity.HIGH, Severity.CRITICAL],
        description="Severities that get the second check (JSON list in the environment).",
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Unreached calls before a check ends with no_response."
    )
    attempt_spacing_hours: float = Field(
        4.0,
        ge=0,
        le=168,
        description="Next call after an unreached one (then moved into contact hours); "
        "0 = no minimum spacing.",
    )
    satisfied_score_threshold: int = Field(
        4, ge=1, le=5, description="Lowest score (with the problem solved) counted as satisfied."
    )

    @model_validator(mode="after")
    def _default_policy_is_valid(self) -> FollowupSettings:
        """The policy these settings make is checked now, not at each resolution: bounds
        only the policy knows (a check at most 90 days after) made every organisation
        without its own policy dead-letter its resolutions and its policy's GET a 500."""
        from followup.policy import default_policy

        try:
            default_policy(self)
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise ValueError(
                "FIRST_CHECK_AFTER_HOURS, SECOND_CHECK_AFTER_HOURS, SECOND_CHECK_SEVERITIES: "
                f"the default follow-up policy they make is invalid: {problems}"
            ) from None
        return self

    # -- default contact hours -----------------------------------------------------
    contact_time_zone: ConfiguredTimeZone = Field(
        "Asia/Shanghai", description="Branch time zone by default."
    )
    contact_hours_start: time = Field(time(9), description="Local time calls may start.")
    contact_hours_end: time = Field(
        time(20), description="Local time calls must end (00:00 means midnight)."
    )
    contact_weekdays: list[Weekday] = Field(
        default_factory=lambda: list(Weekday),
        min_length=1,
        description="Days customers may be called (mon..sun; JSON list in the environment).",
    )
    contact_holiday_country: str | None = Field(
        "CN",
        description="Public holidays (and 调休 working days) of this country are respected; "
        "empty or `none`: no public holidays.",
    )

    @field_validator("contact_holiday_country", mode="before")
    @classmethod
    def _no_holiday_country(cls, value: object) -> object:
        """Empty or ``none`` in the environment: no country's holidays (the environment
        cannot give None; until 6 December follow-up refused to start on either)."""
        if isinstance(value, str) and value.strip().lower() in {"", "none"}:
            return None
        return value

    # -- working the checks -------------------------------------------------------
    claim_lease_s: float = Field(
        900.0, gt=0, description="How long an agent's claim on a check lasts if abandoned."
    )
    scheduler_poll_interval_s: float = Field(
        5.0, gt=0, description="How often the scheduler looks for due checks and expired claims."
    )
    scheduler_lease_s: float = Field(
        30.0, gt=0, description="How long one replica owns a due check while it fires it."
    )
    scheduler_batch_size: int = Field(
        100, ge=1, description="Due checks fired per scheduler pass before it looks again."
    )
