"""Integration: a redelivered event is applied once, in every service that consumes events.

Each service changes its aggregates through the shared kernel with the consumed
event's id; these tests redeliver the very same CloudEvent over real Kafka and
check that the record, the history and the announced events show one effect.
(Intake's side: ``tests/test_delivery.py::test_redelivered_assignment_event_is_applied_once``.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ClosedVia,
    ComplaintClosed,
    ComplaintPendingCustomer,
    ComplaintResumed,
    ComplaintWithdrawn,
    EventType,
    Topic,
)
from tests.support.events import base, received, reopened, resolved
from tests.support.followup import checks_of, resolve_through_intake
from tests.support.http import complaint_of, token
from tests.support.kafka import (
    followup_events,
    handled_count,
    intake_producer,
    publish,
    read_topic,
    redeliver,
    republish,
)
from tests.support.routing import assignment_when
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_routing_redelivered_pending_customer_after_resume_does_not_pause_again(
    system: System,
) -> None:
    complaint = received()
    now = datetime.now(UTC)
    async with intake_producer(system) as publish_intake:
        await publish_intake(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, complaint.complaint_id, what="routed")
        paused = await publish_intake(
            EventType.COMPLAINT_PENDING_CUSTOMER,
            ComplaintPendingCustomer(
                **base(complaint), reason="等客户提供账单", paused_by="agent-1", paused_at=now
            ),
        )
        await assignment_when(system, complaint.complaint_id, lambda doc: doc["paused"])
        await publish_intake(
            EventType.COMPLAINT_RESUMED,
            ComplaintResumed(**base(complaint), resumed_by="agent-1", resumed_at=now),
        )
        await assignment_when(system, complaint.complaint_id, lambda doc: not doc["paused"])
        handled_before = handled_count("routing", EventType.COMPLAINT_PENDING_CUSTOMER)
        await publish_intake.replay(paused)  # the pause, delivered again after the resume
        await eventually(
            lambda: (
                handled_count("routing", EventType.COMPLAINT_PENDING_CUSTOMER) >= handled_before + 1
            ),
            what="redelivered pause consumed",
        )

    assignment = await assignment_when(system, complaint.complaint_id)
    assert assignment["paused"] is False
    actions = [entry["action"] for entry in assignment["history"]]
    assert actions.count("paused") == 1
    assert actions.count("resumed") == 1
    assert assignment["applied_events"].count(paused.id) == 1
    clock = assignment["clocks"]["resolve"]
    assert clock["state"] == "running"


async def test_followup_redelivered_reopen_cancels_each_check_once(
    system_factory: SystemFactory,
) -> None:
    # The clock stands before the due times, so the checks stay scheduled until cancelled.
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    resolution = resolved(resolved_at=datetime(2026, 11, 24, 2, tzinfo=UTC), severity="high")
    await publish(system, (EventType.COMPLAINT_RESOLVED, resolution))
    first, second = await checks_of(system, resolution.complaint_id, admin, count=2)

    handled_before = handled_count("followup", EventType.COMPLAINT_REOPENED)
    (reopen,) = await publish(
        system,
        (
            EventType.COMPLAINT_REOPENED,
            reopened(resolution, reopened_at=resolution.resolved_at + timedelta(days=1)),
        ),
    )
    await republish(system, reopen)
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_REOPENED) >= handled_before + 2,
        what="both deliveries of the reopen consumed",
    )

    cancelled = await followup_events(
        system,
        event_type=EventType.FOLLOWUP_CANCELLED,
        subject=resolution.complaint_id,
        count=2,
    )
    assert sorted(event.data["followup_id"] for event in cancelled) == [first["id"], second["id"]]
    for check in (first, second):
        body = (await system.followup.get(f"/v1/followups/{check['id']}", headers=admin)).json()
        assert body["status"] == "cancelled"
        assert [entry["action"] for entry in body["history"]] == ["schedule", "cancel"]
    db = system.mongo[system.followup_settings.database_name()]
    stored = await db.satisfaction_checks.find_one({"_id": first["id"]})
    assert stored["applied_events"] == [reopen.id]


async def test_a_reopen_replayed_after_a_later_resolution_leaves_that_resolutions_checks(
    system_factory: SystemFactory,
) -> None:
    """A reopen is dead-lettered in follow-up, the complaint is resolved again (checks of
    resolution 2), then the operator replays the reopen. It cancelled every open check of
    the complaint, those of resolution 2 too: nobody called the customer back and the
    record stayed resolved for good. The reopen says how many resolutions it undid; only
    their checks are moot."""
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    first = resolved(resolved_at=datetime(2026, 11, 24, 2, tzinfo=UTC), severity="high")
    await publish(system, (EventType.COMPLAINT_RESOLVED, first))
    await checks_of(system, first.complaint_id, admin, count=2)
    second = first.model_copy(
        update={"resolution_number": 2, "resolved_at": first.resolved_at + timedelta(days=2)}
    )
    await publish(system, (EventType.COMPLAINT_RESOLVED, second))
    later = await checks_of(system, first.complaint_id, admin, count=4)
    assert {(c["resolution_number"], c["status"]) for c in later} == {
        (1, "cancelled"),
        (2, "scheduled"),
    }
    handled_before = handled_count("followup", EventType.COMPLAINT_REOPENED)
    late_reopen = reopened(
        first, reopened_at=first.resolved_at + timedelta(days=1), resolution_count=1
    )
    await publish(system, (EventType.COMPLAINT_REOPENED, late_reopen))
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_REOPENED) > handled_before,
        what="the late reopen consumed",
    )
    after = await checks_of(system, first.complaint_id, admin, count=4)
    assert [c["status"] for c in after if c["resolution_number"] == 2] == ["scheduled"] * 2


@pytest.mark.parametrize("with_count", [True, False], ids=["counted", "from-before-the-count"])
async def test_an_admin_close_redelivered_after_a_reopen_and_resolution_leaves_their_checks(
    system_factory: SystemFactory, with_count: bool
) -> None:
    """Closed by an administrator, reopened, resolved again (checks of resolution 2), and
    then the close comes again: a consumer that crashed before committing its offsets, or a
    dead letter replayed. It cancelled every open check, resolution 2's too, so nobody
    called the customer back and the record stayed resolved for good. The close says how
    many resolutions it ended (a close from before it did: those resolved by then)."""
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    first = resolved(resolved_at=datetime(2026, 11, 24, 2, tzinfo=UTC), severity="high")
    await publish(system, (EventType.COMPLAINT_RESOLVED, first))
    await checks_of(system, first.complaint_id, admin, count=2)
    closed_at = first.resolved_at + timedelta(hours=2)
    close = ComplaintClosed(
        **base(first),
        reason="客户电话确认已解决",
        closed_by="admin",
        closed_via=ClosedVia.ADMIN,
        closed_at=closed_at,
        resolution_count=1 if with_count else None,
    )
    [sent_close] = await publish(system, (EventType.COMPLAINT_CLOSED, close))
    second = first.model_copy(
        update={"resolution_number": 2, "resolved_at": closed_at + timedelta(days=1)}
    )
    await publish(
        system,
        (EventType.COMPLAINT_REOPENED, reopened(first, reopened_at=closed_at, resolution_count=1)),
        (EventType.COMPLAINT_RESOLVED, second),
    )
    later = await checks_of(system, first.complaint_id, admin, count=4)
    assert {(c["resolution_number"], c["status"]) for c in later} == {
        (1, "cancelled"),
        (2, "scheduled"),
    }
    handled_before = handled_count("followup", EventType.COMPLAINT_CLOSED)
    await republish(system, sent_close)
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_CLOSED) > handled_before,
        what="the close delivered again",
    )
    after = await checks_of(system, first.complaint_id, admin, count=4)
    assert [c["status"] for c in after if c["resolution_number"] == 2] == ["scheduled"] * 2


async def test_a_resolution_replayed_after_its_reopen_or_withdrawal_schedules_no_call_backs(
    system_factory: SystemFactory,
) -> None:
    """A complaint's resolved event was dead-lettered in follow-up; the reopen that undid the
    resolution, and later a withdrawal, came through. Replayed after them, the resolution
    scheduled call-backs: agents would call a customer whose complaint was back in progress,
    or withdrawn, and the outcome would count in the satisfaction figures. Now the reopen and
    the withdrawal are kept, and a resolution they ended schedules nothing."""
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    first = resolved(resolved_at=datetime(2026, 11, 24, 2, tzinfo=UTC), severity="high")
    second = first.model_copy(
        update={"resolution_number": 2, "resolved_at": first.resolved_at + timedelta(days=2)}
    )
    withdrawal = ComplaintWithdrawn(
        **base(first),
        reason="客户撤诉",
        withdrawn_by="agent",
        withdrawn_at=second.resolved_at + timedelta(days=1),
    )
    undone = reopened(first, reopened_at=first.resolved_at + timedelta(hours=1), resolution_count=1)
    before = handled_count("followup", EventType.COMPLAINT_RESOLVED)
    await publish(
        system,
        (EventType.COMPLAINT_REOPENED, undone),
        (EventType.COMPLAINT_RESOLVED, first),  # replayed after its reopen
        (EventType.COMPLAINT_RESOLVED, second),
    )
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_RESOLVED) >= before + 2,
        what="both resolutions consumed",
    )
    checks = await checks_of(system, first.complaint_id, admin, count=2)
    assert {(c["resolution_number"], c["status"]) for c in checks} == {(2, "scheduled")}

    await publish(system, (EventType.COMPLAINT_WITHDRAWN, withdrawal))
    await eventually(
        lambda: _all_cancelled(system, first.complaint_id, admin), what="checks cancelled"
    )
    before = handled_count("followup", EventType.COMPLAINT_RESOLVED)
    replayed = second.model_copy(update={"resolution_number": 3})
    await publish(system, (EventType.COMPLAINT_RESOLVED, replayed))
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_RESOLVED) > before,
        what="the late resolution consumed",
    )
    checks = await checks_of(system, first.complaint_id, admin, count=2)
    assert {c["status"] for c in checks} == {"cancelled"}


async def _all_cancelled(system: System, complaint_id: str, admin: dict) -> bool:
    checks = await checks_of(system, complaint_id, admin, count=1)
    return {check["status"] for check in checks} == {"cancelled"}


async def test_intake_redelivered_followup_outcome_reopens_the_complaint_once(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    complaint_id = await resolve_through_intake(system, admin, severity="normal")
    (check,) = await checks_of(system, complaint_id, admin)
    verdict = {"satisfied": False, "score": 2, "comment": "宽带还是断"}
    outcome = await system.followup.post(
        f"/v1/followups/{check['id']}/outcome", json=verdict, headers=admin
    )
    assert outcome.status_code == 200, outcome.text

    async def reopened() -> dict | None:
        body = await complaint_of(system, complaint_id, admin)
        return body if body["status"] == "reopened" else None

    await eventually(reopened, what="complaint reopened by the follow-up")
    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.FOLLOWUP),
        until=lambda rs: any(
            dict(r.headers).get("ce_type", b"").endswith(b"completed.v1") for r in rs
        ),
    )
    (completed,) = [
        record
        for record in records
        if dict(record.headers).get("ce_type", b"").endswith(b"completed.v1")
    ]
    handled_before = handled_count("intake", EventType.FOLLOWUP_COMPLETED)
    await redeliver(system, completed, service="followup")  # the very same record, again
    await eventually(
        lambda: handled_count("intake", EventType.FOLLOWUP_COMPLETED) >= handled_before + 1,
        what="redelivered outcome consumed",
    )

    complaint = await complaint_of(system, complaint_id, admin)
    assert complaint["status"] == "reopened"
    assert complaint["reopen_count"] == 1
    timeline = (
        await system.intake.get(f"/v1/complaints/{complaint_id}/timeline", headers=admin)
    ).json()
    actions = [entry["action"] for entry in timeline["entries"]]
    assert actions.count("followup_completed") == 1
    assert actions.count("reopened") == 1


async def _handled_late(publish, event_type: EventType, data, *, what: str) -> None:
    """Publish an event onto intake's topic and wait until routing has handled it."""
    handled = handled_count("routing", event_type)
    await publish(event_type, data)
    await eventually(lambda: handled_count("routing", event_type) > handled, what=what)


async def test_routing_leaves_a_wait_or_a_cycle_that_later_events_ended_when_replayed_late(
    system: System,
) -> None:
    """Events routing dead-lettered, replayed after later ones of the complaint. Until
    5 December a wait replayed after its resume froze the clocks for good (no warning, breach
    or escalation while intake showed the complaint overdue); a first resolution replayed
    after the second resolution's reopen finished the new cycle; its reopen, replayed after
    the second resolution, reopened the complaint resolved again."""
    now = datetime.now(UTC)
    waited, cycled = received(), received()
    async with intake_producer(system) as publish_intake:
        for complaint in (waited, cycled):
            await publish_intake(EventType.COMPLAINT_RECEIVED, complaint)
            await assignment_when(system, complaint.complaint_id, what="routed")
        # The wait's start dead-lettered; its end applied; the start replayed.
        await publish_intake(
            EventType.COMPLAINT_RESUMED,
            ComplaintResumed(**base(waited), resumed_by="agent-1", resumed_at=now),
        )
        await assignment_when(
            system,
            waited.complaint_id,
            lambda doc: any(entry["action"] == "resumed" for entry in doc["history"]),
        )
        await _handled_late(
            publish_intake,
            EventType.COMPLAINT_PENDING_CUSTOMER,
            ComplaintPendingCustomer(
                **base(waited),
                reason="等客户提供账单",
                paused_by="agent-1",
                paused_at=now - timedelta(minutes=5),
            ),
            what="the late wait handled",
        )
        document = await assignment_when(system, waited.complaint_id)
        assert not document["paused"] and document["next_timer_at"] is not None

        # Resolution 1 and its reopen dead-lettered; resolution 2 and its reopen applied.
        first = resolved(cycled, resolved_at=now)
        reopen_first = reopened(
            first, reopened_at=now + timedelta(minutes=1), reopen_count=1, resolution_count=1
        )
        second = resolved(cycled, resolution_number=2, resolved_at=now + timedelta(minutes=2))
        await publish_intake(EventType.COMPLAINT_RESOLVED, second)
        await assignment_when(system, cycled.complaint_id, lambda doc: doc["status"] == "resolved")
        await _handled_late(
            publish_intake,
            EventType.COMPLAINT_REOPENED,
            reopen_first,
            what="the late reopen handled",
        )
        assert (await assignment_when(system, cycled.complaint_id))["status"] == "resolved"
        reopen_second = reopened(
            second, reopened_at=now + timedelta(minutes=3), reopen_count=2, resolution_count=2
        )
        await publish_intake(EventType.COMPLAINT_REOPENED, reopen_second)
        await assignment_when(system, cycled.complaint_id, lambda doc: doc["status"] == "open")
        await _handled_late(
            publish_intake, EventType.COMPLAINT_RESOLVED, first, what="the late resolution handled"
        )
        document = await assignment_when(system, cycled.complaint_id)
        assert (document["status"], document["reopen_count"]) == ("open", 2)


async def test_a_reopen_replayed_after_a_resolution_routing_took_while_resolved_changes_nothing(
    system: System,
) -> None:
    """The reopen alone dead-lettered: routing, still resolved, took the second resolution
    for nothing to do and dropped it, and the reopen's replay then reopened for good (owner,
    fresh clock, a rung up) a complaint intake had resolved again. Now the resolution's
    number is noted, and the replay finds its cycle ended."""
    now = datetime.now(UTC)
    complaint = received()
    cid = complaint.complaint_id
    first = resolved(complaint, resolved_at=now)
    lost = reopened(first, reopened_at=now + timedelta(minutes=1), resolution_count=1)
    second = resolved(complaint, resolution_number=2, resolved_at=now + timedelta(minutes=2))
    async with intake_producer(system) as publish_intake:
        await publish_intake(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, cid, lambda doc: doc["status"] == "open")
        await publish_intake(EventType.COMPLAINT_RESOLVED, first)
        resolved_once = await assignment_when(system, cid, lambda doc: doc["status"] == "resolved")
        await _handled_late(
            publish_intake, EventType.COMPLAINT_RESOLVED, second, what="resolution 2 handled"
        )
        await _handled_late(
            publish_intake, EventType.COMPLAINT_REOPENED, lost, what="the late reopen handled"
        )
    document = await assignment_when(system, cid)
    assert (document["status"], document.get("reopen_count", 0)) == ("resolved", 0)
    assert document["resolution_number"] == 2
    assert document["escalations"] == resolved_once["escalations"] == []
    assert document["clocks"] == resolved_once["clocks"]
    assert [entry["action"] for entry in document["history"]].count("reopened") == 0
