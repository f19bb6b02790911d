"""Unit: CloudEvents binary-mode encoding of our event contracts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from complaints_shared.envelope import CloudEvent, EnvelopeError, from_kafka_record, to_kafka_record
from complaints_shared.events import ComplaintClosed, EventType, parse_data


def _event() -> CloudEvent:
    data = ComplaintClosed(
        complaint_id="c-42",
        org="demo",
        branch="HOSP",
        reason="回访满意",
        closed_by="followup",
        closed_at=datetime(2026, 11, 23, 8, 30, tzinfo=UTC),
    )
    return CloudEvent.new(event_type=EventType.COMPLAINT_CLOSED, source="intake", data=data)


def test_round_trip_keeps_attributes_data_and_key() -> None:
    event = _event()
    key, value, headers = to_kafka_record(event)
    names = {name for name, _ in headers}
    assert {"ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_subject"} <= names
    assert ("content-type", b"application/json") in headers
    assert key == b"c-42"
    decoded = from_kafka_record(value, headers)
    assert decoded == event
    assert parse_data(decoded.type, decoded.data).reason == "回访满意"


def test_chinese_text_travels_as_utf8_json() -> None:
    _, value, _ = to_kafka_record(_event())
    assert "回访满意".encode() in value


@pytest.mark.parametrize(
    ("value", "drop", "message"),
    [
        (b"{}", "ce_type", "missing CloudEvents header"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b"\xff\xfe", None, "not JSON"),
    ],
)
def test_malformed_records_raise_envelope_error(value: bytes, drop: str | None, message: str):
    _, _, headers = to_kafka_record(_event())
    headers = [(name, raw) for name, raw in headers if name != drop]
    with pytest.raises(EnvelopeError, match=message):
        from_kafka_record(value, headers)
