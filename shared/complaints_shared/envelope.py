"""CloudEvents 1.0 in Kafka binary mode.

Attributes travel as ``ce_*`` headers, the body is the JSON event data, the
message key is the complaint id so every event of one complaint lands on the
same partition in order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError

from complaints_shared.datetimes import EventTime
from complaints_shared.events import EventPayload, EventType

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
REQUIRED_HEADERS = ("ce_id", "ce_source", "ce_type", "ce_specversion", "ce_subject", "ce_time")


class EnvelopeError(ValueError):
    """A Kafka record that is not a valid CloudEvent of ours."""


class CloudEvent(BaseModel):
    id: str
    source: str
    type: str
    subject: str = Field(description="The complaint id (``branch:<org>:<code>`` for a branch).")
    time: EventTime
    specversion: str = SPEC_VERSION
    data: dict[str, Any]

    @classmethod
    def new(cls, *, event_type: EventType, source: str, data: EventPayload) -> CloudEvent:
        return cls(
            id=str(uuid.uuid4()),
            source=source,
            type=event_type.value,
            subject=data.cloudevent_subject(),
            time=datetime.now(UTC),
            data=data.model_dump(mode="json"),
        )


def to_kafka_record(event: CloudEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Return (key, value, headers) for producing ``event``."""
    headers = [
        ("ce_id", event.id.encode()),
        ("ce_source", event.source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_specversion", event.specversion.encode()),
        ("ce_time", event.time.astimezone(UTC).isoformat().encode()),
        ("ce_subject", event.subject.encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    return event.subject.encode(), orjson.dumps(event.data), headers


def from_kafka_record(value: bytes | None, headers: list[tuple[str, bytes | None]]) -> CloudEvent:
    """Decode a binary-mode record; raises EnvelopeError when it is malformed. A header
    with a null value (Kafka allows it) is taken as absent."""
    attributes = {
        name: raw.decode("utf-8", "replace") for name, raw in headers or [] if raw is not None
    }
    missing = [name for name in REQUIRED_HEADERS if name not in attributes]
    if missing:
        raise EnvelopeError(f"missing CloudEvents header(s) {missing}")
    if attributes["ce_specversion"] != SPEC_VERSION:
        raise EnvelopeError(
            f"CloudEvents spec version {attributes['ce_specversion']!r}, not {SPEC_VERSION!r}"
        )
    content_type = attributes.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != CONTENT_TYPE:
        raise EnvelopeError(f"content type {content_type!r}, not {CONTENT_TYPE!r}")
    try:
        data = orjson.loads(value) if value else None
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"event data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnvelopeError("event data must be a JSON object")
    try:
        return CloudEvent(
            id=attributes["ce_id"],
            source=attributes["ce_source"],
            type=attributes["ce_type"],
            subject=attributes["ce_subject"],
            time=attributes["ce_time"],
            specversion=attributes["ce_specversion"],
            data=data,
        )
    except ValidationError as exc:
        fields = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
        raise EnvelopeError(f"malformed CloudEvents attribute(s) {fields}") from None
