"""Routing's record stays true when intake's news comes late, early or out of the usual order.

- A major incident's regulatory report deadline runs until the report is filed.
- An event for an assignment routing does not hold is dead-lettered, to be replayed after
  its ``complaint.received``.
- A manual escalation climbs the chain of the department handling the complaint now.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.dlq import read_dead_letters, run_command
from complaints_shared.events import (
    ComplaintAcknowledged,
    EventType,
    Topic,
    dead_letter_topic,
)
from routing.assignments import placement, routing_context
from tests.support.events import base, received, resolved
from tests.support.http import token
from tests.support.kafka import intake_producer
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, assignment_when, routing_db
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

MINUTE = timedelta(minutes=1)
integration = pytest.mark.integration


def _clock_of(document: dict, name: str) -> dict:
    return document["clocks"][name]


# ------------------------------------------------ the regulatory report deadline --


@integration
async def test_the_regulatory_report_deadline_outlives_the_resolution_until_it_is_filed(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(category="medical", severity="critical", received_at=clock.now())
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, cid)
        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=clock.now()))
        document = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    report = _clock_of(document, "regulatory_report")
    assert report["state"] == "running"
    assert {_clock_of(document, name)["state"] for name in ("acknowledge", "resolve")} == {
        "stopped"
    }
    assert document["next_timer_at"] == report["warn_at"]
    clock.set(report["warn_at"] + MINUTE)  # the authority's deadline nears: still warned
    await assignment_when(system, cid, lambda d: _clock_of(d, "regulatory_report")["warned"])

    supervisor = token(system.routing_settings, roles=("supervisor",))
    path = f"/v1/assignments/{cid}/regulatory-report"
    filed = await system.routing.post(
        path, json={"reference": "卫健委-2026-001"}, headers=supervisor
    )
    assert filed.status_code == 200, filed.text
    assert filed.json()["regulatory_report_reference"] == "卫健委-2026-001"
    stored = await routing_db(system).assignments.find_one({"_id": cid})
    assert stored["regulatory_report_filed_at"] == clock.now()
    assert _clock_of(stored, "regulatory_report")["stopped_at"] == clock.now()
    assert stored["next_timer_at"] is None

    again = await system.routing.post(
        path, json={"reference": "卫健委-2026-001"}, headers=supervisor
    )
    assert again.status_code == 200  # a retried request: on record already
    other = await system.routing.post(
        path, json={"reference": "卫健委-2026-002"}, headers=supervisor
    )
    assert other.status_code == 409
    assert "卫健委-2026-001" in other.json()["detail"]


# ------------------------------------------------ an event before its assignment --


@integration
async def test_an_event_for_an_assignment_not_held_is_dead_lettered_and_applies_once_replayed(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    route_received = placement.route_received
    failures: list[str] = []

    async def broken_until_fixed(**arguments: Any) -> bool:
        if len(failures) < system.routing_settings.consumer_max_attempts:
            failures.append(arguments["complaint"].complaint_id)
            raise RuntimeError("a bug in routing (injected)")
        return await route_received(**arguments)

    monkeypatch.setattr(placement, "route_received", broken_until_fixed)
    complaint = received(received_at=clock.now())
    cid = complaint.complaint_id
    acknowledged_at = clock.now() + 10 * MINUTE
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish(
            EventType.COMPLAINT_ACKNOWLEDGED,
            ComplaintAcknowledged(
                **base(complaint), acknowledged_by="lz-chen", acknowledged_at=acknowledged_at
            ),
        )
    group = system.routing_settings.consumer_group()

    async def routing_dead_letters() -> list:
        letters = await read_dead_letters(
            settings=system.routing_settings,
            dlq_topic=dead_letter_topic(system.topic(Topic.INTAKE)),
        )
        return [letter for letter in letters if letter.header("dlq_consumer_group") == group]

    dead = await eventually(
        lambda: _when(routing_dead_letters(), lambda letters: len(letters) == 2),
        timeout_s=20,
        what="the received and the acknowledgement dead-lettered",
    )
    assert [(letter.event_type, letter.header("dlq_reason")) for letter in dead] == [
        (EventType.COMPLAINT_RECEIVED.value, "retries_exhausted"),
        (EventType.COMPLAINT_ACKNOWLEDGED.value, "rejected"),
    ]
    assert f"assignment {cid} does not exist here" in dead[1].header("dlq_error")

    # The bug fixed, the operator replays the complaint's dead letters: received first.
    capsys.readouterr()
    await run_command(
        ["replay", "--topic", Topic.INTAKE.value, "--complaint-id", cid],
        settings=system.routing_settings,
    )
    # The command's lines only (the services' log lines may share stdout).
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    replayed = [entry for entry in printed if entry.get("action") == "replayed"]
    assert [entry["event_type"] for entry in replayed] == [
        "complaint.received",
        "complaint.acknowledged",
    ]
    document = await assignment_when(
        system, cid, lambda d: _clock_of(d, "acknowledge")["state"] == "stopped"
    )
    assert _clock_of(document, "acknowledge")["stopped_at"] == acknowledged_at
    assert document["acknowledged_at"] == acknowledged_at
    assert len(await routing_dead_letters()) == 2  # nothing refused again


async def _when(read: Any, holds: Any) -> Any:
    value = await read
    return value if holds(value) else None


# ------------------------------------------------ a manual escalation racing a move --


@integration
async def test_a_manual_escalation_racing_a_reassignment_climbs_the_new_departments_chain(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    complaint = received()  # LZ billing: team lead lz-gao
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    await assignment_when(system, cid, lambda d: d["department"] == "LZ:BILLING")
    supervisor = token(system.routing_settings, roles=("supervisor",))
    escalation_targets = routing_context.escalation_targets
    moved: list[bool] = []

    async def reassigned_meanwhile(**arguments: Any) -> Any:
        targets = await escalation_targets(**arguments)
        if not moved:  # the reassignment lands while the escalation is being decided
            moved.append(True)
            answer = await system.routing.post(
                f"/v1/assignments/{cid}/reassign",
                json={"department": "LZ:CS", "reason": "转客户服务部"},
                headers=supervisor,
            )
            assert answer.status_code == 200, answer.text
        return targets

    monkeypatch.setattr(routing_context, "escalation_targets", reassigned_meanwhile)
    escalated = await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": "客户投诉升级"}, headers=supervisor
    )
    assert escalated.status_code == 200, escalated.text
    body = escalated.json()
    assert body["department"] == "LZ:CS"
    assert body["escalations"][-1]["escalated_to_id"] == "lz-hu"  # CS's team lead
