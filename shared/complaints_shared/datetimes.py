"""The one datetime type every API accepts: offset-aware, normalised to UTC.

A timestamp without an offset is ambiguous (the caller's local time? UTC?), so
it is refused with a 422 naming the field instead of being guessed at; an aware
one is converted to UTC so stored values and comparisons never mix offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
