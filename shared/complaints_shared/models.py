"""Model building blocks every service's API uses: strict bodies, codes, weekdays."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,31}$"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
"""A branch or department code: upper-case letters and digits, ``_`` and ``-`` (``LZ``)."""


class StrictModel(BaseModel):
    """Request bodies reject unknown fields so typos are caught, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def index(self) -> int:
        """0 = Monday, as ``date.weekday()`` counts."""
        return list(Weekday).index(self)
