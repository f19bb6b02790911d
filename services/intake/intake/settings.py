"""Intake settings (environment variables of the same name, upper case)."""

from __future__ import annotations

from pydantic import Field

from complaints_shared.business_calendar import ConfiguredTimeZone
from complaints_shared.settings import ServiceSettings
from intake.suggestions import DEFAULT_SUGGESTION_RULES, SuggestionRule


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    reference_time_zone: ConfiguredTimeZone = Field(
        "Asia/Shanghai", description="Time zone whose calendar day numbers reference numbers."
    )
    resubmission_window_s: int = Field(
        600,
        ge=0,
        description="An identical complaint from the same customer within this window "
        "returns the earlier one (200) instead of creating another.",
    )
    repeat_window_days: int = Field(
        30,
        ge=0,
        description="A complaint finished less than this long ago still makes a new "
        "complaint of the same customer a repeat.",
    )
    idempotency_key_ttl_s: int = Field(
        86_400, ge=60, description="How long an Idempotency-Key is remembered."
    )
    idempotency_wait_s: float = Field(
        5.0,
        gt=0,
        description="How long a request waits for a concurrent one with the same "
        "Idempotency-Key or the same submission before answering 409 with Retry-After.",
    )
    creation_lease_s: float = Field(
        30.0,
        gt=0,
        description="How long a registration holds its Idempotency-Key and submission claims "
        "without renewing them; a running request renews every third of it, so only a "
        "request that died is taken over.",
    )
    suggestion_rules: list[SuggestionRule] = Field(
        default_factory=lambda: list(DEFAULT_SUGGESTION_RULES),
        description="Keyword rules suggesting severity and flags (JSON list).",
    )
    directory_names_fresh_s: float = Field(
        5.0,
        gt=0,
        description="How long a replica trusts its copy of the department and staff names "
        "routing announced before it checks for a new one (one read); each rename's complaints "
        "are looked over again this long (and directory_names_clock_skew_s) after it, for "
        "what other replicas wrote meanwhile with an older copy.",
    )
    directory_names_clock_skew_s: float = Field(
        30.0,
        ge=0,
        description="The most the replicas' clocks may differ: a rename's complaints are "
        "looked over again directory_names_fresh_s and this long after it.",
    )
    report_rollup_interval_s: float = Field(
        15.0,
        gt=0,
        description="How often the report rollup moves its tallies on by what changed "
        "(intake.rollup). A report reads the complaints changed since the last pass but 30 s, "
        "so a shorter interval makes reports cheaper; each pass reads those 30 s again.",
    )
