"""Unit: the committed AsyncAPI document is generated from the current event contracts."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from complaints_shared.asyncapi import build_document, render
from complaints_shared.events import EVENT_CONTRACTS, EventPayload, EventType, parse_data
from tests.support.events import received

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"


def test_committed_asyncapi_document_matches_the_contracts() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.json is stale: run "
        "`.venv/bin/python -m complaints_shared.asyncapi > docs/asyncapi.json`"
    )


def test_every_event_type_has_a_message_with_its_payload_schema() -> None:
    document = build_document()
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert names == {event_type.value for event_type in EVENT_CONTRACTS}
    schemas = document["components"]["schemas"]
    for _, model in EVENT_CONTRACTS.values():
        assert set(model.model_fields) <= set(schemas[model.__name__]["properties"])
    json.dumps(document)  # serialisable as is


def test_an_event_type_must_say_what_its_order_is_kept_per() -> None:
    with pytest.raises(TypeError, match="cloudevent_subject"):
        EventPayload()
    for _, model in EVENT_CONTRACTS.values():
        assert not inspect.isabstract(model), f"{model.__name__} names no subject"


def test_a_complaint_received_without_repeat_links_is_read_with_their_branches_unknown() -> None:
    published = received(repeat_count=1, repeat_of=["cmp-earlier"]).model_dump(mode="json")
    del published["repeat_links"]
    read = parse_data(EventType.COMPLAINT_RECEIVED.value, published)
    assert read.repeat_of == ["cmp-earlier"]
    assert read.repeat_links is None, "absent means unknown, not 'no links'"
