"""Follow-up settings (environment variables of the same name, upper case)."""

from __future__ import annotations

from complaints_shared.settings import ServiceSettings
from pydantic import Field


class FollowupSettings(ServiceSettings):
    service_name: str = "followup"
    first_check_after_hours: float = Field(
        24.0, gt=0, description="Satisfaction check this long after resolution."
    )
