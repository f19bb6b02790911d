"""Intake settings (environment variables of the same name, upper case)."""

from __future__ import annotations

from complaints_shared.settings import ServiceSettings
from pydantic import Field


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    reference_time_zone: str = Field(
        "Asia/Shanghai", description="Time zone whose calendar day numbers reference numbers."
    )
