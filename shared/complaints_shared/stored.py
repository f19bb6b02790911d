"""Input is checked at the door; what is stored is read back as stored.

The field types and validators that refuse bad input (``datetimes.UtcDatetime``'s years,
``business_calendar.TimeZoneName``, ``StrictModel``'s text check, ...) are shared by the
request bodies and by the models stored documents and consumed events are read with. A
check added or tightened by an upgrade must not make what an earlier version accepted
unreadable: a complaint whose ``occurred_at`` is in year 1 would be a 500 on every GET
and list, a branch with a closed day in 2500 would fail every complaint routed to it.

So those checks are declared with ``request_only`` and skip values read with
``from_stored``, which validates a document with the ``STORED`` context: types are still
converted (a date is a date, a datetime is in UTC), but nothing is refused for being
outside what a request may set now. Requests are validated without a context (FastAPI's
bodies and query models), so every check applies to them. A route's response is the model
instance read here, which FastAPI does not validate again.

Computations that consume such values degrade instead of failing, logging a warning
(``business_calendar``: a zone that no longer loads, a calendar without opening within
its horizon; ``routing.sla.clocks``: ``sla_deadline_at_horizon``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationInfo

Model = TypeVar("Model", bound=BaseModel)
Value = TypeVar("Value")

STORED: Mapping[str, bool] = {"stored": True}
"""The validation context of data read back from the database or consumed from Kafka."""


def from_stored(model: type[Model], document: Mapping[str, Any]) -> Model:
    """``document`` (a stored document, a consumed event's data) as ``model``, validated
    without the checks that apply to requests only."""
    return model.model_validate(document, context=STORED)


def is_stored(info: ValidationInfo) -> bool:
    """Whether the value being validated was read with ``from_stored``."""
    context = info.context
    return isinstance(context, Mapping) and context.get("stored") is True


def request_only(check: Callable[[Value], Value]) -> AfterValidator:
    """``check`` as a validator of requests: a value read with ``from_stored`` passes as is."""

    def validate(value: Value, info: ValidationInfo) -> Value:
        return value if is_stored(info) else check(value)

    return AfterValidator(validate)
