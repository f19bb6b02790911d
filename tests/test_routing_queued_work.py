"""Integration: queued and reopened work finds who can take it (Kafka, Mongo).

A deactivated department's queue moves to its successor; urgent work waiting while its
branch is closed goes to the duty officer, as on arrival; the record's ``duty_officer``
says whether that rule chose the owner it has now.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import ComplaintReceived, ComplaintResumed, EventType
from tests.support.events import base, received, reopened, resolved
from tests.support.http import BROADBAND_COMPLAINT, complaint_body, complaint_when, token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    TUESDAY_22_SHANGHAI,
    assignment_when,
)
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

# The sweep also looks for queues at every pass, so a queue it learnt of meanwhile counts.
SWEEPING = {**FAST_TIMERS, "queue_census_interval_s": 0.2}
# Tuesday 17:00 in Shanghai: the HOSP patient-relations office closes at 17:30.
TUESDAY_17_SHANGHAI = TUESDAY_22_SHANGHAI - timedelta(hours=5)


def _hospital_complaint(severity: str, description: str, **overrides: Any) -> ComplaintReceived:
    return received(
        branch="HOSP",
        category="service_attitude",
        severity=severity,
        subject="护士态度",
        description=description,
        **overrides,
    )


async def _critical_queued_behind_a_normal_one(
    system: System, clock: ManualClock, publish
) -> tuple[ComplaintReceived, ComplaintReceived]:
    """孙丽 has room for one: a normal complaint takes it, a critical one waits queued."""
    admin = token(system.routing_settings)
    one = await system.routing.patch(
        "/v1/directory/staff/hosp-sun", json={"capacity": 1}, headers=admin
    )
    assert one.status_code == 200, one.text
    normal = _hospital_complaint("normal", "挂号排队两个小时", received_at=clock.now())
    critical = _hospital_complaint("critical", "病房护士辱骂家属", received_at=clock.now())
    await publish(EventType.COMPLAINT_RECEIVED, normal)
    await assignment_when(system, normal.complaint_id, lambda d: d["owner_id"] == "hosp-sun")
    await publish(EventType.COMPLAINT_RECEIVED, critical)
    await assignment_when(system, critical.complaint_id, lambda d: d["status"] == "queued")
    return normal, critical


async def _workload(system: System, branch: str) -> dict[str, dict]:
    response = await system.routing.get(
        "/v1/assignments/workload",
        params={"branch": branch},
        headers=token(system.routing_settings, roles=("supervisor",)),
    )
    assert response.status_code == 200, response.text
    return {row["department"]: row for row in response.json()["departments"]}


async def test_the_queue_of_a_deactivated_department_moves_to_its_successor(
    system_factory: SystemFactory,
) -> None:
    """A billing complaint waits in LZ:BILLING's queue (nobody has room), then the desk is
    deactivated and a successor of the same kind opened, its people moved there. Until
    5 December the complaint waited in the old queue for good, and the workload left the
    inactive desk out, hiding it. Now the workload shows the desk while it holds the
    complaint, and the sweep moves it to the successor (once there is one), announced as a
    move of department, so intake's record names the new desk."""
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI), routing=SWEEPING)
    admin = token(system.routing_settings)
    for person in ("lz-chen", "lz-liu"):
        full = await system.routing.patch(
            f"/v1/directory/staff/{person}", json={"capacity": 0}, headers=admin
        )
        assert full.status_code == 200, full.text
    intake_admin = token(system.intake_settings)
    created = await system.intake.post(
        "/v1/complaints", json=BROADBAND_COMPLAINT, headers=intake_admin
    )
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    waiting = await assignment_when(system, complaint_id, lambda d: d["status"] == "queued")
    assert waiting["department"] == "LZ:BILLING"

    closed = await system.routing.post(
        "/v1/directory/departments/LZ:BILLING/deactivate", headers=admin
    )
    assert closed.status_code == 200, closed.text
    shown = (await _workload(system, "LZ"))["LZ:BILLING"]
    assert (shown["active"], shown["queued"]) == (False, 1)

    successor = {"branch": "LZ", "code": "BILL2", "name": "账务中心", "kind": "billing"}
    made = await system.routing.post("/v1/directory/departments", json=successor, headers=admin)
    assert made.status_code == 201, made.text
    for person in ("lz-chen", "lz-liu"):
        moved = await system.routing.patch(
            f"/v1/directory/staff/{person}",
            json={"department": "BILL2", "capacity": 5},
            headers=admin,
        )
        assert moved.status_code == 200, moved.text

    taken = await assignment_when(
        system, complaint_id, lambda d: d["status"] == "open", what="moved and assigned"
    )
    assert taken["department"] == "LZ:BILL2"
    assert taken["owner_id"] in {"lz-chen", "lz-liu"}
    moves = [entry for entry in taken["history"] if entry["action"] == "reassigned"]
    assert moves[0]["details"]["moved_from"] == "LZ:BILLING"
    assert "LZ:BILLING" not in await _workload(system, "LZ")  # nothing left there

    events = await routing_events(
        system,
        until=lambda events: bool(of_type(events, EventType.COMPLAINT_ASSIGNED, complaint_id)),
    )
    (move,) = of_type(events, EventType.COMPLAINT_REASSIGNED, complaint_id)
    assert (move.data["from_department"], move.data["department"]) == ("LZ:BILLING", "LZ:BILL2")
    record = await complaint_when(
        system,
        complaint_id,
        intake_admin,
        lambda body: (body.get("assignment") or {}).get("owner_id"),
        what="intake's record assigned",
    )
    assert record["assignment"]["department"] == "LZ:BILL2"


async def test_urgent_work_queued_before_closing_goes_to_the_duty_officer_once_closed(
    system_factory: SystemFactory,
) -> None:
    """Tuesday 17:00 at the hospital: 孙丽 has room for one, a normal complaint takes it and a
    critical one waits in the queue. Until 5 December it waited all evening (the office
    closes at 17:30) and went to 孙丽, off shift, when her slot freed at night. Now the
    sweep gives it to the duty officer once the office is closed."""
    clock = ManualClock(TUESDAY_17_SHANGHAI)
    system = await system_factory(clock=clock, routing=SWEEPING)
    async with intake_producer(system) as publish:
        _, critical = await _critical_queued_behind_a_normal_one(system, clock, publish)

    clock.advance(timedelta(minutes=31))  # 17:31: closed
    taken = await assignment_when(
        system, critical.complaint_id, lambda d: d["status"] == "open", what="offered at night"
    )
    assert (taken["owner_id"], taken["duty_officer"]) == ("hosp-duty", True)
    events = await routing_events(
        system,
        until=lambda e: bool(of_type(e, EventType.COMPLAINT_ASSIGNED, critical.complaint_id)),
    )
    (announced,) = of_type(events, EventType.COMPLAINT_ASSIGNED, critical.complaint_id)
    assert announced.data["duty_officer"] is True


async def test_a_slot_freed_at_night_gives_urgent_queued_work_to_the_duty_officer(
    system_factory: SystemFactory,
) -> None:
    """As above, without the sweep (a full department's queue is offered when a slot
    frees): at 22:00 the normal complaint is resolved and its slot freed. Until 5 December
    the queue gave the critical one to 孙丽; owner choice from the queue now asks the same
    out-of-hours rule as on arrival."""
    clock = ManualClock(TUESDAY_17_SHANGHAI)
    system = await system_factory(clock=clock, routing={"queue_sweep_interval_s": 3600})
    async with intake_producer(system) as publish:
        normal, critical = await _critical_queued_behind_a_normal_one(system, clock, publish)
        clock.advance(timedelta(hours=5))  # 22:00
        await publish(
            EventType.COMPLAINT_RESOLVED,
            resolved(normal, owner_id="hosp-sun", department="HOSP:PRO", resolved_at=clock.now()),
        )
        taken = await assignment_when(
            system, critical.complaint_id, lambda d: d["status"] == "open", what="drained"
        )
    assert (taken["owner_id"], taken["duty_officer"]) == ("hosp-duty", True)


async def test_an_urgent_complaint_reopened_at_night_goes_to_the_duty_officer(
    system_factory: SystemFactory,
) -> None:
    """A high complaint handled by 孙丽 in the day is reopened at 22:00. Until 5 December it
    went back to her, off shift; now the out-of-hours rule gives it to the duty officer."""
    clock = ManualClock(TUESDAY_22_SHANGHAI - timedelta(hours=12))  # Tuesday 10:00
    system = await system_factory(clock=clock)
    complaint = _hospital_complaint("high", "护士态度恶劣", received_at=clock.now())
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "open")
        await publish(
            EventType.COMPLAINT_RESOLVED,
            resolved(
                complaint, owner_id="hosp-sun", department="HOSP:PRO", resolved_at=clock.now()
            ),
        )
        await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "resolved")
        clock.advance(timedelta(hours=12))
        await publish(EventType.COMPLAINT_REOPENED, reopened(complaint, reopened_at=clock.now()))
        document = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] == "open", what="reopened"
        )
    assert (document["owner_id"], document["duty_officer"]) == ("hosp-duty", True)


async def test_duty_officer_is_true_only_while_the_out_of_hours_rule_chose_the_owner(
    system_factory: SystemFactory,
) -> None:
    """An urgent complaint of the night goes to the duty officer (``duty_officer: true``); a
    supervisor moves it to 孙丽 in the morning, and the re-announcement after a resume says
    false; resolved and reopened by day, back with the duty officer as its previous owner,
    it says false too. Until 5 December the flag stayed true through every change of owner
    and was announced again in ``complaint.assigned``."""
    clock = ManualClock(TUESDAY_22_SHANGHAI)
    system = await system_factory(clock=clock)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    complaint = _hospital_complaint("high", "夜间病房护士态度恶劣", received_at=clock.now())
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, complaint.complaint_id)
        assert (document["owner_id"], document["duty_officer"]) == ("hosp-duty", True)

        clock.advance(timedelta(hours=12))  # Wednesday 10:00: open
        moved = await system.routing.post(
            f"/v1/assignments/{complaint.complaint_id}/reassign",
            json={"owner_id": "hosp-sun", "reason": "早班接手"},
            headers=supervisor,
        )
        assert moved.status_code == 200, moved.text
        assert (moved.json()["owner_id"], moved.json()["duty_officer"]) == ("hosp-sun", False)
        await publish(
            EventType.COMPLAINT_RESUMED,
            ComplaintResumed(**base(complaint), resumed_by="agent", resumed_at=clock.now()),
        )
        events = await routing_events(
            system,
            until=lambda e: (
                len(of_type(e, EventType.COMPLAINT_ASSIGNED, complaint.complaint_id)) >= 2
            ),
        )
        announced = of_type(events, EventType.COMPLAINT_ASSIGNED, complaint.complaint_id)
        assert [event.data["duty_officer"] for event in announced] == [True, False]

    clock.advance(timedelta(hours=12))  # Wednesday 22:00
    night = _hospital_complaint("high", "夜间陪护被拒", received_at=clock.now())
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, night)
        await assignment_when(system, night.complaint_id, lambda d: d["duty_officer"])
        await publish(
            EventType.COMPLAINT_RESOLVED,
            resolved(night, owner_id="hosp-duty", department="HOSP:PRO", resolved_at=clock.now()),
        )
        await assignment_when(system, night.complaint_id, lambda d: d["status"] == "resolved")
        clock.advance(timedelta(hours=12))  # Thursday 10:00
        await publish(EventType.COMPLAINT_REOPENED, reopened(night, reopened_at=clock.now()))
        document = await assignment_when(
            system, night.complaint_id, lambda d: d["status"] == "open", what="reopened"
        )
    assert (document["owner_id"], document["duty_officer"]) == ("hosp-duty", False)


async def test_intakes_record_drops_the_duty_officer_mark_when_the_complaint_is_reassigned(
    system_factory: SystemFactory,
) -> None:
    """Intake kept ``duty_officer`` from the assignment before when it applied
    ``complaint.reassigned`` (which carries no such mark): until 5 December the record said
    the duty officer's rule chose 孙丽 after a supervisor gave her the complaint."""
    clock = ManualClock(TUESDAY_22_SHANGHAI)
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    body = complaint_body(
        branch="HOSP",
        category="service_attitude",
        severity="high",
        subject="护士态度",
        description="夜间病房护士态度恶劣",
    )
    created = await system.intake.post("/v1/complaints", json=body, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    night = await complaint_when(
        system,
        complaint_id,
        admin,
        lambda c: (c["assignment"] or {}).get("owner_id") == "hosp-duty",
        what="with the duty officer",
    )
    assert night["assignment"]["duty_officer"] is True
    clock.advance(timedelta(hours=12))  # Wednesday 10:00: open
    moved = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign",
        json={"owner_id": "hosp-sun", "reason": "早班接手"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text
    morning = await complaint_when(
        system,
        complaint_id,
        admin,
        lambda c: c["assignment"]["owner_id"] == "hosp-sun",
        what="reassigned on intake's record",
    )
    assert morning["assignment"]["duty_officer"] is False
