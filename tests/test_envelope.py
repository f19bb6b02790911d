"""Unit: CloudEvents binary-mode encoding of our event contracts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

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


@pytest.mark.parametrize(
    ("header", "raw", "message"),
    [
        ("ce_time", b"2030-01-01T00:00:00", "time"),  # no offset
        ("ce_time", b"0001-01-01T00:00:00+05:00", "time"),  # crosses year 1 in UTC
        ("ce_time", b"2500-01-01T00:00:00Z", "time"),
        ("ce_specversion", b"0.3", "spec version"),
        ("ce_specversion", None, "ce_specversion"),
        ("content-type", b"application/avro", "content type"),
    ],
)
def test_a_record_of_another_encoding_or_a_time_without_offset_is_no_event_of_ours(
    header: str, raw: bytes | None, message: str
) -> None:
    """Until 5 December a time without an offset was taken as naive (consumers comparing it
    with aware times failed later, webhooks' dispatcher on every pass), and any spec version
    or content type was read as ours, though the AsyncAPI document requires 1.0 and JSON."""
    event = _event()
    _, value, headers = to_kafka_record(event)
    headers = [(name, raw if name == header else other) for name, other in headers]
    with pytest.raises(EnvelopeError, match=message):
        from_kafka_record(value, headers)


def test_a_time_with_an_offset_is_read_in_utc_and_json_with_parameters_is_json() -> None:
    event = _event()
    _, value, headers = to_kafka_record(event)
    headers = [
        (name, b"2026-11-23T16:30:00+08:00" if name == "ce_time" else raw)
        for name, raw in headers
        if name != "content-type"
    ] + [("content-type", b"application/json; charset=utf-8")]
    decoded = from_kafka_record(value, headers)
    assert decoded.time == datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
    assert decoded.time.utcoffset() is not None


def test_event_data_with_a_time_without_offset_breaks_the_contract() -> None:
    data = _event().data | {"closed_at": "2026-11-23T08:30:00"}
    with pytest.raises(ValidationError, match="closed_at"):
        parse_data(EventType.COMPLAINT_CLOSED.value, data)
    assert parse_data(EventType.COMPLAINT_CLOSED.value, _event().data).closed_at.tzinfo is not None
