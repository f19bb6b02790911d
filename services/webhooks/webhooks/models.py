"""API models and stored shapes of webhooks: subscriptions and their deliveries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from complaints_shared.datetimes import UtcDatetime
from complaints_shared.events import EVENT_TYPE_PREFIX, EventType
from complaints_shared.models import Code, StrictModel

TargetUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048)]
# The test ping is delivered like an event but is not one of the catalogue's.
PING_EVENT_TYPE = f"{EVENT_TYPE_PREFIX}webhook.ping.v1"
ALL_EVENTS = "*"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # by an admin, or automatically after repeated failures
    DISABLED = "disabled"  # the receiver answered 410 Gone


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # recorded, not yet accepted by the receiver
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the retry schedule ran out


def event_type_matches(pattern: str, event_type: str) -> bool:
    """``*`` matches all, ``prefix*`` a family, anything else exactly one type."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def validate_event_type_pattern(pattern: str) -> str:
    if not any(event_type_matches(pattern, known.value) for known in EventType):
        raise ValueError(
            f"{pattern!r} matches no event type of the catalogue (docs/asyncapi.json; "
            "a prefix ends with '*')"
        )
    return pattern


# Validated one by one, so a problem names the entry (``event_types.2``).
EventTypePattern = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(validate_event_type_pattern),
]


class SubscriptionBase(StrictModel):
    description: str = Field("", max_length=500)


class SubscriptionCreate(SubscriptionBase):
    target_url: TargetUrl = Field(description="Where deliveries are POSTed (https).")
    event_types: list[EventTypePattern] = Field(
        min_length=1,
        max_length=50,
        description="Exact types, prefixes ending in '*' (org.complaintdesk.complaint.*), "
        "or '*' for all.",
    )
    branch: Code | None = Field(
        None,
        description="Only events of this branch; none means every branch of the organisation "
        "(needs a token for all branches).",
    )
    status: SubscriptionStatus = Field(
        SubscriptionStatus.ACTIVE, description="active or paused (created paused: no delivery)."
    )

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return sorted(set(value))

    @field_validator("status")
    @classmethod
    def _not_disabled(cls, value: SubscriptionStatus) -> SubscriptionStatus:
        if value is SubscriptionStatus.DISABLED:
            raise ValueError("a subscription is created active or paused")
        return value


class SubscriptionUpdate(StrictModel):
    """Fields to change; re-activating a paused or disabled subscription replays its backlog."""

    target_url: TargetUrl | None = None
    event_types: list[EventTypePattern] | None = Field(None, min_length=1, max_length=50)
    description: str | None = Field(None, max_length=500)
    status: SubscriptionStatus | None = None

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))

    @field_validator("status")
    @classmethod
    def _not_disabled(cls, value: SubscriptionStatus | None) -> SubscriptionStatus | None:
        if value is SubscriptionStatus.DISABLED:
            raise ValueError("only a 410 answer disables a subscription; pause it instead")
        return value


class SubscriptionRead(SubscriptionBase):
    """A subscription as the API shows it: never with its signing secrets."""

    model_config = ConfigDict(extra="ignore")

    id: str
    org: str
    branch: str | None
    target_url: str
    event_types: list[str]
    status: SubscriptionStatus
    status_reason: str | None = None
    failure_streak: int = 0
    failing_since: datetime | None = None
    secret_rotated_at: datetime | None = None
    previous_secret_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    version: int = Field(
        0,
        description="Counts changes of its settings and status (0: stored before versions); "
        "its ETag, which a PATCH or DELETE may name in If-Match",
    )


class SubscriptionCreated(SubscriptionRead):
    secret: str = Field(
        description="The signing secret (whsec_...). Shown only in this response: store it."
    )


class SecretRotated(BaseModel):
    secret: str = Field(description="The new signing secret, shown only in this response.")
    previous_secret_expires_at: datetime = Field(
        description="Until then deliveries carry a signature with the previous secret as well."
    )


class AttemptRead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: datetime
    response_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_excerpt: str | None = None


class DeliveryRead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Also the webhook-id header: the same on every attempt.")
    subscription_id: str
    event_id: str
    event_type: str
    complaint_id: str | None
    status: DeliveryStatus
    attempts: int
    last_response_code: int | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = Field(
        None, description="None when delivered, failed, or held while the subscription is off."
    )
    created_at: datetime
    delivered_at: datetime | None = None
    finished_at: datetime | None = Field(
        None,
        description="When it was delivered or failed; removed DELIVERY_RETENTION_DAYS after.",
    )
    attempt_log: list[AttemptRead] = Field(default_factory=list)


class DeliveryFilters(StrictModel):
    status: DeliveryStatus | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


class RedeliverRange(StrictModel):
    created_from: UtcDatetime = Field(alias="from")
    created_to: UtcDatetime = Field(alias="to")
    statuses: list[DeliveryStatus] = Field(
        default_factory=lambda: [DeliveryStatus.FAILED],
        min_length=1,
        description="Which deliveries of the range to send again (default: failed ones).",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("created_to")
    @classmethod
    def _ordered(cls, value: datetime, info) -> datetime:
        start = info.data.get("created_from")
        if start is not None and value <= start:
            raise ValueError("'to' must be after 'from'")
        return value


class RedeliveryAccepted(BaseModel):
    queued: int = Field(description="Deliveries queued to be sent again.")
