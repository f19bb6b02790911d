"""Model building blocks every service's API uses: strict bodies, codes, weekdays.

The calendar field types (time zones, local times, holiday countries) are in
``complaints_shared.business_calendar``, with the arithmetic they feed.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from complaints_shared import text
from complaints_shared.stored import is_stored, request_only

CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,31}$"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
"""A branch or department code: upper-case letters and digits, ``_`` and ``-`` (``LZ``)."""

Keyword = Annotated[
    str,
    StringConstraints(max_length=100),
    AfterValidator(text.keyword),
    request_only(text.visible),
]
"""A keyword of a rule (``complaints_shared.text.contains``): one ending with a space matches
whole words only, so that space is kept and any other white space around it dropped."""


def _unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """Where in ``value`` a string holds an unpaired surrogate (``""``: the value itself).

    JSON may spell one (``"\\ud800"``) and Python keeps it in a ``str``, but it is no
    Unicode text: encoding it to UTF-8 (a hash, orjson, BSON) raises a UnicodeEncodeError.
    """
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _unpaired_surrogate(key) is not None:
                return where
            found = _unpaired_surrogate(item, where)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def _types_in(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None``: int and NoneType)."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is None or not arguments:
        return {annotation}
    if typing.get_origin(annotation) is Annotated:
        return _types_in(arguments[0])
    return set().union(*(_types_in(argument) for argument in arguments))


class StrictModel(BaseModel):
    """Request bodies reject unknown fields so typos are caught, not ignored, text that is
    not Unicode (an unpaired surrogate) so it never reaches an encoder as a 500, and
    ``true``/``false`` for a number: pydantic reads them as 1 and 0, so a follow-up answer
    ``"score": true`` was stored as score 1 and reopened the complaint.

    The text check is one of requests: stored text was encoded once, so a model read with
    ``stored.from_stored`` does not walk it again.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_value_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool) or info.field_name is None:
            return value
        admitted = _types_in(cls.model_fields[info.field_name].annotation)
        if bool not in admitted and admitted & {int, float}:
            raise ValueError("a number, not true or false")
        return value

    @field_validator("*")
    @classmethod
    def _unicode_text(cls, value: Any, info: ValidationInfo) -> Any:
        if is_stored(info):
            return value
        where = _unpaired_surrogate(value)
        if where is None:
            return value
        inside = f" (at {where})" if where else ""
        raise ValueError(
            f"text holds an unpaired UTF-16 surrogate{inside}, which is not Unicode text"
        )


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
