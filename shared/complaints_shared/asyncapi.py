"""Generates the AsyncAPI 3.0 document of our events from the pydantic contracts.

``python -m complaints_shared.asyncapi > docs/asyncapi.json`` rewrites the committed
document; a test fails when the contracts and the document drift apart.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from complaints_shared.envelope import REQUIRED_HEADERS, SPEC_VERSION
from complaints_shared.events import (
    EVENT_CONTRACTS,
    EventData,
    EventType,
    Topic,
    dead_letter_topic,
)

PRODUCERS = {Topic.INTAKE: "intake", Topic.ROUTING: "routing", Topic.FOLLOWUP: "followup"}
# The contracts' version: the minor part counts additive changes (1.1.0: repeat_links of
# complaint.received; 1.2.0: complaint.sla_stopped, due times on complaint.queued, the cycle
# of sla_warning / sla_breached, complaint.remedy_recorded, assignment_sequence on assigned /
# queued / reassigned, sequence on followup.completed; 1.3.0: complaint.sla_breach_withdrawn;
# 1.4.0: complaint.regulatory_report_filed, and complaint.sla_stopped of the regulatory report
# deadline a filing made while unroutable stopped; 1.5.0: complaint.sla_stopped of the
# acknowledge clock a finish stopped before any acknowledgement; 1.6.0:
# complaint.reclassified; 1.7.0: followup.rescheduled; 1.8.0: department.updated and
# staff.updated; 1.9.0: responsibility_set_at on complaint.resolved, routed_by and
# routed_reason on complaint.assigned / queued, the note of a manual escalation, and
# complaint.sla_stopped of a report filed while unroutable when a reclassification makes the
# complaint major); a breaking change is a new event type (a `.v2` suffix).
CONTRACT_VERSION = "1.9.0"


def _message_name(event_type: EventType) -> str:
    return event_type.name.lower()


def _key(event_type: EventType) -> str:
    """What a message's key holds: its subject, which keeps the order of its events."""
    _, model = EVENT_CONTRACTS[event_type]
    if issubclass(model, EventData):
        return "complaint id"
    return (
        "the event's subject (`branch:<org>:<code>` for a branch, `department:<org>:<id>` "
        "for a department, `staff:<org>:<id>` for a staff member)"
    )


def _headers_schema(event_type: EventType) -> dict[str, Any]:
    properties: dict[str, Any] = {name: {"type": "string"} for name in REQUIRED_HEADERS}
    properties["ce_type"] = {"type": "string", "const": event_type.value}
    properties["ce_specversion"] = {"type": "string", "const": SPEC_VERSION}
    properties["ce_subject"] = {
        "type": "string",
        "description": "The complaint id (branch:<org>:<code> for branch.updated, "
        "department:<org>:<id> for department.updated, staff:<org>:<id> for staff.updated)",
    }
    properties["ce_time"] = {"type": "string", "format": "date-time"}
    properties["content-type"] = {"type": "string", "const": "application/json"}
    return {
        "type": "object",
        "required": list(REQUIRED_HEADERS),
        "properties": properties,
    }


def build_document() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in Topic:
        channel_messages = {}
        for event_type, (event_topic, model) in EVENT_CONTRACTS.items():
            if event_topic is not topic:
                continue
            name = _message_name(event_type)
            # As producers send it (``model_dump(mode="json")``): a decimal is a string, a
            # field with a default is always there. Until 5 December the document described
            # what consumers accept (an amount as a number or a string, defaults optional).
            schema = model.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="serialization"
            )
            definitions = schema.pop("$defs", {})
            messages[name] = {
                "name": event_type.value,
                "title": event_type.value.removeprefix("org.complaintdesk."),
                "summary": (model.__doc__ or "").strip().splitlines()[0],
                "contentType": "application/json",
                "headers": _headers_schema(event_type),
                "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
                "bindings": {"kafka": {"key": {"type": "string", "description": _key(event_type)}}},
            }
            messages[name]["_schemas"] = {model.__name__: schema, **definitions}
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        channels[topic.name.lower()] = {
            "address": topic.value,
            "description": f"Events produced by {PRODUCERS[topic]}; dead letters go to "
            f"{dead_letter_topic(topic.value)}.",
            "messages": channel_messages,
        }
        operations[f"{PRODUCERS[topic]}_publishes"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.name.lower()}"},
        }
    schemas: dict[str, Any] = {}
    for message in messages.values():
        schemas.update(message.pop("_schemas"))
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "complaint-desk events",
            "version": CONTRACT_VERSION,
            "description": "CloudEvents 1.0 in Kafka binary mode: attributes in ce_* headers, "
            "JSON data, message key = the event's subject (the complaint id; "
            "`branch:<org>:<code>`, `department:<org>:<id>`, `staff:<org>:<id>` for the "
            "directory's events). Additive changes only within a version.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
