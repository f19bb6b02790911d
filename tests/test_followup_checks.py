"""Integration: satisfaction checks over real Kafka and MongoDB, from resolution to outcome."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ClosedVia,
    ComplaintClosed,
    ComplaintWithdrawn,
    CustomerContact,
    EventType,
    Remedy,
    Topic,
)
from followup import lifecycle
from followup import projections as followup_projections
from followup import store as followup_store
from followup.contact_hours import check_due_times, next_attempt_at
from followup.models import CheckRule
from tests.support.clock import at, start_clock, utc
from tests.support.events import received, reopened, resolved
from tests.support.followup import (
    DEFAULT_HOURS,
    FAST_SCHEDULER,
    checks_of,
    make_due,
    resolve_through_intake,
    wait_status,
)
from tests.support.http import BROADBAND_COMPLAINT, agent, complaint_of, complaint_when, token
from tests.support.kafka import (
    events_of,
    followup_events,
    handled_count,
    outbox_sent,
    publish,
    read_topic,
    republish,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

# -------------------------------------------------------------- scheduling --


async def test_resolved_event_delivered_twice_schedules_checks_once(
    system_factory: SystemFactory,
) -> None:
    # The clock stands before the due time, so the checks stay scheduled.
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    resolved_tuesday_21_local = datetime(2026, 11, 24, 13, tzinfo=UTC)
    complaint = received(
        subject="宽带年费多扣",
        description="预交年费后仍被扣月租",
        customer=CustomerContact(name="李女士", phone="13900000000", preferred_channel="phone"),
        received_at=resolved_tuesday_21_local - timedelta(days=2),
    )
    event = resolved(
        complaint,
        resolved_at=resolved_tuesday_21_local,
        root_cause="营业员漏打第二张欠费单",
        remedies=[Remedy(type="refund", amount="30.00", currency="CNY"), Remedy(type="apology")],
    )
    handled_before = handled_count("followup", EventType.COMPLAINT_RESOLVED)
    _, resolved_event = await publish(
        system,
        (EventType.COMPLAINT_RECEIVED, complaint),
        (EventType.COMPLAINT_RESOLVED, event),
    )
    await republish(system, resolved_event)

    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_RESOLVED) >= handled_before + 2,
        what="both deliveries handled",
    )
    (check,) = await checks_of(system, event.complaint_id, admin)
    # 21:00 local is after contact hours: the next day's 21:00 moves to 09:00 the day after.
    assert at(check["due_at"]) == datetime(2026, 11, 26, 1, tzinfo=UTC)
    assert check["status"] == "scheduled"
    assert check["subject"] == "宽带年费多扣"  # from the resolution, as intake sends it
    assert check["reference"] == event.reference
    assert check["customer"]["phone"] == "13900000000"
    assert check["channel"] == "phone"
    assert check["root_cause"] == "营业员漏打第二张欠费单"
    assert [remedy["type"] for remedy in check["remedies"]] == ["refund", "apology"]
    assert check["resolution_summary"].startswith("已退还")

    scheduled = await followup_events(
        system, event_type=EventType.FOLLOWUP_SCHEDULED, subject=event.complaint_id, count=1
    )
    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.FOLLOWUP),
        until=lambda records: False,
        timeout_s=1.0,
    )
    assert len(events_of(records, event_type=EventType.FOLLOWUP_SCHEDULED)) == 1
    assert scheduled[0].data["followup_id"] == check["id"]
    db = system.mongo[system.followup_settings.database_name()]
    assert await db.satisfaction_checks.count_documents({"complaint_id": event.complaint_id}) == 1


async def test_high_severity_resolution_gets_a_second_check_a_week_later(system: System) -> None:
    admin = token(system.intake_settings)
    complaint_id = await resolve_through_intake(system, admin, severity="high")

    first, second = await checks_of(system, complaint_id, admin, count=2)
    resolved_at = at(first["resolved_at"])
    assert (first["sequence"], second["sequence"]) == (1, 2)
    a_day_then_a_week = [CheckRule(after_hours=24), CheckRule(after_hours=168)]
    expected = check_due_times(
        resolved_at=resolved_at, checks=a_day_then_a_week, hours=DEFAULT_HOURS
    )
    assert [at(first["due_at"]), at(second["due_at"])] == expected
    assert at(second["due_at"]) - resolved_at >= timedelta(days=7)
    for check in (first, second):
        assert check["severity"] == "high"
        assert check["subject"] == BROADBAND_COMPLAINT["subject"]
        assert check["department"] == "LZ:BILLING"
        assert check["owner_id"] in {"lz-chen", "lz-liu"}
    scheduled = await followup_events(
        system, event_type=EventType.FOLLOWUP_SCHEDULED, subject=complaint_id, count=2
    )
    assert sorted(event.data["sequence"] for event in scheduled) == [1, 2]


# ---------------------------------------------------------------- working --


async def test_two_agents_claiming_the_same_check_one_wins_until_the_lease_expires(
    system_factory: SystemFactory,
) -> None:
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    event = resolved(resolved_at=clock.now() - timedelta(hours=30))
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    a, b = agent(system, "agent-a"), agent(system, "agent-b")
    (check,) = await checks_of(system, event.complaint_id, a)
    await make_due(system, clock, check, a)

    url = f"/v1/followups/{check['id']}"
    first, second = await asyncio.gather(
        system.followup.post(f"{url}/claim", headers=a),
        system.followup.post(f"{url}/claim", headers=b),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    winner, loser = (a, b) if first.status_code == 200 else (b, a)
    winner_name = "agent-a" if winner is a else "agent-b"
    refused = second if first.status_code == 200 else first
    problem = refused.json()
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert problem["type"].endswith("/claim-held")
    assert problem["claimed_by"] == winner_name
    assert at(problem["lease_until"]) > clock.now()

    for path, body in ((f"{url}/attempts", {"reached": False}), (f"{url}/outcome", None)):
        body = body or {"satisfied": True, "score": 5}
        blocked = await system.followup.post(path, json=body, headers=loser)
        assert blocked.status_code == 409, blocked.text
        assert blocked.json()["claimed_by"] == winner_name

    clock.advance(timedelta(seconds=system.followup_settings.claim_lease_s + 1))
    await wait_status(system, check["id"], "due", loser)  # the scheduler expired the lease
    taken_over = await system.followup.post(f"{url}/claim", headers=loser)
    assert taken_over.status_code == 200, taken_over.text
    too_late = await system.followup.post(
        f"{url}/attempts", json={"reached": False}, headers=winner
    )
    assert too_late.status_code == 409
    released = await system.followup.delete(f"{url}/claim", headers=loser)
    assert released.status_code == 200
    assert released.json()["status"] == "due"
    assert released.json()["claimed_by"] is None


async def test_a_call_made_under_a_claim_that_lapsed_after_contact_hours_is_still_recorded(
    system_factory: SystemFactory,
) -> None:
    """Claimed at 19:50, the customer called at 19:55 without answer, the claim lapsed at
    20:05 and the scheduler put the check back in the queue. Recording the call at 20:06 was
    a 409 claim-required, and claiming again a 409 outside-contact-hours until morning: the
    call never counted and the customer was called once more than the policy says. Now the
    holder of the lapsed claim records a call made under it (``attempted_at``) while nobody
    has claimed the check since; nobody else does, and a call counts once."""
    clock = ManualClock(utc(2026, 11, 23, 2))  # Monday 10:00 in Shanghai
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    holder, other = agent(system, "agent-a"), agent(system, "agent-b")
    event = resolved(resolved_at=clock.now())
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    (check,) = await checks_of(system, event.complaint_id, holder)
    url = f"/v1/followups/{check['id']}"
    clock.set(utc(2026, 11, 24, 11, 50))  # Tuesday 19:50
    await wait_status(system, check["id"], "due", holder)
    assert (await system.followup.post(f"{url}/claim", headers=holder)).status_code == 200
    called_at = utc(2026, 11, 24, 11, 55)
    clock.set(utc(2026, 11, 24, 12, 5, 1))  # the lease ran out at 20:05

    async def put_back() -> dict | None:
        body = (await system.followup.get(url, headers=holder)).json()
        return body if body["history"][-1]["action"] == "expire_claim" else None

    await eventually(put_back, what="the lapsed claim expired")
    clock.set(utc(2026, 11, 24, 12, 6))
    again = await system.followup.post(f"{url}/claim", headers=holder)
    assert again.json()["type"].endswith("/outside-contact-hours"), again.text

    unreached = {"reached": False, "note": "19:55 拨打无人接听"}
    call = {**unreached, "attempted_at": called_at.isoformat()}
    refused = [
        await system.followup.post(f"{url}/attempts", json=body, headers=headers)
        for body, headers in (
            (unreached, holder),  # now, 20:06, is after the claim
            (call, other),  # never held the claim
            ({**unreached, "attempted_at": "2026-11-24T11:45:00Z"}, holder),  # before the claim
        )
    ]
    for answer in refused:
        assert answer.status_code == 409, answer.text
        assert answer.json()["type"].endswith("/claim-required"), answer.text
    assert "lapsed" in refused[0].json()["detail"]
    future = {**unreached, "attempted_at": "2026-11-24T12:30:00Z"}
    ahead = await system.followup.post(f"{url}/attempts", json=future, headers=holder)
    assert ahead.status_code == 422 and ahead.json()["errors"][0]["field"] == "attempted_at"

    keyed = {**holder, "Idempotency-Key": "call-1955"}
    recorded = await system.followup.post(f"{url}/attempts", json=call, headers=keyed)
    assert recorded.status_code == 200, recorded.text
    body = recorded.json()
    assert (body["status"], body["attempt_count"]) == ("scheduled", 1)
    (attempt,) = body["attempts"]
    assert (attempt["attempted_by"], at(attempt["attempted_at"])) == ("agent-a", called_at)
    spaced = next_attempt_at(attempted_at=called_at, spacing_hours=4, hours=DEFAULT_HOURS)
    assert at(body["due_at"]) == spaced
    replayed = await system.followup.post(f"{url}/attempts", json=call, headers=keyed)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json()["attempt_count"] == 1
    twice = await system.followup.post(f"{url}/attempts", json=call, headers=holder)
    assert twice.status_code == 409, twice.text
    (announced,) = await followup_events(
        system, event_type=EventType.FOLLOWUP_ATTEMPTED, subject=event.complaint_id, count=1
    )
    assert at(announced.data["attempted_at"]) == called_at


async def test_claims_taken_and_given_back_without_end_stop_short_of_an_unwritable_check(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every claim and release added to the check's history without a bound, so a client
    looping on them (about 160,000 times) took the document past the server's 16 MB, and
    every write to the check failed from then on: the scheduler's, the reopen's
    cancellation, the outcome. Renewing one's own claim is no move and adds nothing; past
    ``MAX_HISTORY_FOR_CLAIMS`` entries (lowered here) claims and releases are a 409, and
    the outcome is still taken."""
    monkeypatch.setattr(lifecycle, "MAX_HISTORY_FOR_CLAIMS", 12)
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    event = resolved(resolved_at=clock.now() - timedelta(hours=30))
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    a = agent(system, "agent-a")
    (check,) = await checks_of(system, event.complaint_id, a)
    await make_due(system, clock, check, a)
    url = f"/v1/followups/{check['id']}"

    claimed = await system.followup.post(f"{url}/claim", headers=a)
    assert claimed.status_code == 200, claimed.text
    length = len(claimed.json()["history"])
    clock.advance(timedelta(minutes=5))
    renewed = await system.followup.post(f"{url}/claim", headers=a)
    assert renewed.status_code == 200, renewed.text
    assert at(renewed.json()["claim_lease_until"]) > at(claimed.json()["claim_lease_until"])
    assert len(renewed.json()["history"]) == length, "a renewal moves nothing"

    answers: list[int] = []
    for _ in range(12):
        given_back = await system.followup.delete(f"{url}/claim", headers=a)
        answers.append(given_back.status_code)
        if given_back.status_code != 200:
            refused = given_back
            break
        taken = await system.followup.post(f"{url}/claim", headers=a)
        answers.append(taken.status_code)
        if taken.status_code != 200:
            refused = taken
            break
    assert answers == [200] * (12 - length) + [409], answers
    assert refused.json()["type"].endswith("/invalid-transition"), refused.text
    assert "outcome may still be recorded" in refused.json()["detail"]
    shown = (await system.followup.get(url, headers=a)).json()
    assert len(shown["history"]) == 12
    # Its holder still renews (no entry), and the outcome ends the check.
    if shown["status"] == "in_progress":
        assert (await system.followup.post(f"{url}/claim", headers=a)).status_code == 200
    outcome = await system.followup.post(
        f"{url}/outcome", json={"satisfied": True, "score": 5}, headers=a
    )
    assert (outcome.status_code, outcome.json()["status"]) == (200, "completed"), outcome.text


async def test_three_unreachable_attempts_end_in_no_response_and_close_the_complaint(
    system_factory: SystemFactory,
) -> None:
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    complaint_id = await resolve_through_intake(system, admin, severity="normal")
    (check,) = await checks_of(system, complaint_id, caller)
    url = f"/v1/followups/{check['id']}"

    for number, channel in ((1, None), (2, "sms"), (3, None)):
        await make_due(system, clock, check, caller)
        assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
        call = {"reached": False, "note": "无人接听", **({"channel": channel} if channel else {})}
        key = {"Idempotency-Key": f"call-{number}"}
        response = await system.followup.post(
            f"{url}/attempts", json=call, headers={**caller, **key}
        )
        assert response.status_code == 200, response.text
        check = response.json()
        repeated = await system.followup.post(
            f"{url}/attempts", json=call, headers={**caller, **key}
        )
        assert repeated.json()["attempt_count"] == number  # a retried request counts once
        if number < 3:
            assert check["status"] == "scheduled"
            expected = next_attempt_at(
                attempted_at=clock.now(), spacing_hours=4, hours=DEFAULT_HOURS
            )
            assert at(check["due_at"]) == expected >= clock.now() + timedelta(hours=4)
            assert at(check["attempts"][-1]["next_attempt_at"]) == expected

    assert check["status"] == "completed"
    assert check["outcome"] == "no_response"
    assert [attempt["channel"] for attempt in check["attempts"]] == ["phone", "sms", "phone"]

    async def closed() -> dict | None:
        body = await complaint_of(system, complaint_id, admin)
        return body if body["status"] == "closed" else None

    final = await eventually(closed, what="complaint closed after no response")
    assert final["satisfaction"]["outcome"] == "no_response"
    attempted = await followup_events(
        system, event_type=EventType.FOLLOWUP_ATTEMPTED, subject=complaint_id, count=3
    )
    assert [event.data["reached"] for event in attempted] == [False, False, False]
    (completed,) = await followup_events(
        system, event_type=EventType.FOLLOWUP_COMPLETED, subject=complaint_id, count=1
    )
    assert completed.data["outcome"] == "no_response"
    assert completed.data["attempts"] == 3


async def test_unsatisfied_customer_reopens_the_complaint_and_cancels_the_pending_check(
    system_factory: SystemFactory,
) -> None:
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    complaint_id = await resolve_through_intake(system, admin, severity="high")
    first, second = await checks_of(system, complaint_id, caller, count=2)

    await make_due(system, clock, first, caller)
    url = f"/v1/followups/{first['id']}"
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    answer = {"reached": True, "score": 4, "problem_solved": False, "comment": "宽带又断了"}
    response = await system.followup.post(f"{url}/attempts", json=answer, headers=caller)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "unsatisfied"  # a good score, but not solved

    async def reopened() -> dict | None:
        body = await complaint_of(system, complaint_id, admin)
        return body if body["status"] == "reopened" else None

    complaint = await eventually(reopened, what="complaint reopened")
    assert complaint["satisfaction"]["outcome"] == "unsatisfied"
    cancelled = await wait_status(system, second["id"], "cancelled", caller)
    assert cancelled["cancel_reason"] == "complaint reopened"
    (event,) = await followup_events(
        system, event_type=EventType.FOLLOWUP_CANCELLED, subject=complaint_id, count=1
    )
    assert event.data["followup_id"] == second["id"]

    # Intake stamps its outbox with the business clock and its relay polls with the wall
    # clock: an intake command issued with the clock a day ahead would wait a day to publish.
    clock.set(datetime.now(UTC))
    again = await system.intake.post(
        f"/v1/complaints/{complaint_id}/resolve",
        json={"summary": "更换光猫后网络稳定"},
        headers=admin,
    )
    assert again.status_code == 200, again.text
    fresh = await checks_of(system, complaint_id, caller, count=2, status="scheduled")
    assert [check["resolution_number"] for check in fresh] == [2, 2]
    assert fresh[0]["resolution_summary"] == "更换光猫后网络稳定"


async def test_a_check_past_its_due_time_is_claimed_before_the_scheduler_fires_it(
    system_factory: SystemFactory,
) -> None:
    """The scheduler fires due checks in passes (and behind a backlog, or after a failure,
    later); a claim in between was a 409 "not due until" a time already past, and so was
    the next call after an unreached one with no spacing. Now the claim makes it due."""
    clock = start_clock()
    system = await system_factory(clock=clock, followup={"scheduler_poll_interval_s": 3600})
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    complaint_id = await resolve_through_intake(system, admin, severity="low")
    (check,) = await checks_of(system, complaint_id, caller)
    url = f"/v1/followups/{check['id']}/claim"
    assert (await system.followup.post(url, headers=caller)).status_code == 409  # not due yet
    clock.set(at(check["due_at"]) + timedelta(minutes=1))
    claimed = await system.followup.post(url, headers=caller)
    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert (body["status"], body["claimed_by"]) == ("in_progress", "agent-a")
    assert [entry["action"] for entry in body["history"]][-2:] == ["become_due", "claim"]


async def test_a_reopen_from_before_resolution_counts_replayed_late_spares_a_later_resolution(
    system: System,
) -> None:
    """A reopen from a producer before 4 December carries no ``resolution_count``; it was read
    as "every open check", so replayed after the next resolution (from the dead-letter topic,
    say) it cancelled that resolution's call-backs, and nobody called the customer. A reopen
    ends as many resolutions as its ``reopen_count``."""
    admin = token(system.intake_settings)
    first = resolved()
    reopen = reopened(first, reopened_at=first.resolved_at + timedelta(hours=1))
    assert reopen.resolution_count is None
    _, reopen_event = await publish(
        system, (EventType.COMPLAINT_RESOLVED, first), (EventType.COMPLAINT_REOPENED, reopen)
    )
    (check,) = await checks_of(system, first.complaint_id, admin)
    await wait_status(system, check["id"], "cancelled", admin)
    second = first.model_copy(
        update={"resolution_number": 2, "resolved_at": first.resolved_at + timedelta(hours=3)}
    )
    await publish(system, (EventType.COMPLAINT_RESOLVED, second))
    _, again = await checks_of(system, first.complaint_id, admin, count=2)
    assert (again["resolution_number"], again["status"]) == (2, "scheduled")
    handled = handled_count("followup", EventType.COMPLAINT_REOPENED)
    await republish(system, reopen_event)
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_REOPENED) > handled,
        what="the replayed reopen handled",
    )
    shown = (await system.followup.get(f"/v1/followups/{again['id']}", headers=admin)).json()
    assert shown["status"] == "scheduled", shown


async def test_a_check_is_neither_fired_nor_claimed_outside_contact_hours(
    system_factory: SystemFactory,
) -> None:
    """Due times are put in contact hours when scheduled, but until 5 December nothing held
    a check to them afterwards: one fired late (follow-up down overnight, the scheduler
    behind) became due at 23:00, and one due at 19:59 could be claimed all night. Now the
    scheduler leaves it for the next moment customers may be called, and a claim outside
    contact hours is a 409 naming that moment."""
    clock = ManualClock(utc(2026, 11, 23, 2))  # Monday 10:00 in Shanghai
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    caller = agent(system, "agent-a")
    event = resolved(resolved_at=clock.now())
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    (check,) = await checks_of(system, event.complaint_id, caller)
    assert at(check["due_at"]) == utc(2026, 11, 24, 2)  # Tuesday 10:00
    url = f"/v1/followups/{check['id']}"

    clock.set(utc(2026, 11, 24, 15))  # Tuesday 23:00: the scheduler fires it only now

    async def waiting() -> dict | None:
        body = (await system.followup.get(url, headers=caller)).json()
        return body if body["history"][-1]["action"] == "wait_for_contact_hours" else None

    waited = await eventually(waiting, what="the check left for the morning")
    assert (waited["status"], at(waited["due_at"])) == ("scheduled", utc(2026, 11, 25, 1))
    early = await system.followup.post(f"{url}/claim", headers=caller)
    assert (early.status_code, early.json()["type"].rsplit("/", 1)[1]) == (409, "not-due")

    clock.set(utc(2026, 11, 25, 1, 0, 1))  # Wednesday 09:00
    await wait_status(system, check["id"], "due", caller)
    claimed = await system.followup.post(f"{url}/claim", headers=caller)
    assert claimed.status_code == 200, claimed.text
    assert (await system.followup.delete(f"{url}/claim", headers=caller)).status_code == 200

    clock.set(utc(2026, 11, 25, 12, 30))  # Wednesday 20:30
    late = await system.followup.post(f"{url}/claim", headers=caller)
    assert late.status_code == 409, late.text
    assert late.json()["type"].endswith("/outside-contact-hours")
    assert at(late.json()["next_contact_at"]) == utc(2026, 11, 26, 1)  # Thursday 09:00


async def test_a_due_time_moved_into_contact_hours_is_announced_and_on_intakes_timeline(
    system_factory: SystemFactory,
) -> None:
    """An administrator narrowed the branch's contact hours to 14:00-20:00 after a check was
    scheduled for 10:00: the scheduler moved it to 14:00 and announced nothing, so intake's
    timeline (and webhook subscribers) kept 10:00. Now ``followup.rescheduled`` says when and
    why; intake puts it on the timeline, once however often it is delivered."""
    clock = ManualClock(utc(2026, 11, 23, 2))  # Monday 10:00 in Shanghai
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    supervisor = token(system.followup_settings)
    complaint_id = await resolve_through_intake(system, admin, severity="normal")
    (check,) = await checks_of(system, complaint_id, supervisor)
    scheduled_for, moved_to = utc(2026, 11, 24, 2), utc(2026, 11, 24, 6)  # 10:00, 14:00
    assert at(check["due_at"]) == scheduled_for
    afternoons = {**DEFAULT_HOURS.model_dump(mode="json"), "start": "14:00", "end": "20:00"}
    changed = await system.followup.put(
        "/v1/followups/contact-hours/LZ", json=afternoons, headers=supervisor
    )
    assert changed.status_code == 200, changed.text
    clock.set(scheduled_for + timedelta(seconds=1))

    async def rescheduled_entries() -> list[dict] | None:
        timeline = await system.intake.get(f"/v1/complaints/{complaint_id}/timeline", headers=admin)
        entries = timeline.json()["entries"]
        return [entry for entry in entries if entry["action"] == "followup_rescheduled"] or None

    (entry,) = await eventually(rescheduled_entries, what="the move on intake's timeline")
    assert at(entry["details"]["due_at"]) == moved_to
    assert at(entry["details"]["previous_due_at"]) == scheduled_for
    (announced,) = await followup_events(
        system, event_type=EventType.FOLLOWUP_RESCHEDULED, subject=complaint_id, count=1
    )
    assert announced.data["followup_id"] == check["id"]
    assert announced.data["reason"] == "outside_contact_hours"
    assert at(announced.data["due_at"]) == moved_to

    handled = handled_count("intake", EventType.FOLLOWUP_RESCHEDULED)
    await republish(system, announced, service="followup")
    await eventually(
        lambda: handled_count("intake", EventType.FOLLOWUP_RESCHEDULED) > handled,
        what="the redelivered move handled",
    )
    assert len(await rescheduled_entries() or []) == 1


async def _second_check_past_due(
    system_factory: SystemFactory,
) -> tuple[System, dict, str, dict, dict]:
    """A serious complaint resolved, its day's check due and its week's past its due time,
    waiting for the first (a resolution's checks call one at a time): the system, an agent's
    headers, the complaint id and the two checks."""
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    complaint_id = await resolve_through_intake(system, admin, severity="high")
    first, second = await checks_of(system, complaint_id, caller, count=2)
    clock.set(at(second["due_at"]) + timedelta(seconds=1))
    await wait_status(system, first["id"], "due", caller)
    await _waits_for_the_earlier_check(system, second, caller)
    return system, caller, complaint_id, first, second


async def _waits_for_the_earlier_check(system: System, check: dict, headers: dict) -> dict:
    async def waiting() -> dict | None:
        body = (await system.followup.get(f"/v1/followups/{check['id']}", headers=headers)).json()
        actions = [entry["action"] for entry in body["history"]]
        return body if lifecycle.Command.WAIT_FOR_EARLIER_CHECK.value in actions else None

    return await eventually(waiting, what=f"check {check['id']} waiting for the earlier one")


async def test_a_resolutions_checks_call_the_customer_one_at_a_time(
    system_factory: SystemFactory,
) -> None:
    """Each check fell due on its own: the week's check of a serious complaint came due while
    the day's was still unclaimed, or waiting to be tried again, and two agents called the
    customer at once, or one a minute after the other. Now the later check waits while an
    earlier one is open, and after the earlier one's last call by the attempt spacing."""
    system, caller, _, first, second = await _second_check_past_due(system_factory)
    clock: ManualClock = system.clock
    spacing = timedelta(hours=4)  # the default policy's attempt spacing
    waiting = (await system.followup.get(f"/v1/followups/{second['id']}", headers=caller)).json()
    assert waiting["status"] == "scheduled"
    assert at(waiting["due_at"]) >= clock.now() + spacing
    other = agent(system, "agent-b")
    refused = await system.followup.post(f"/v1/followups/{second['id']}/claim", headers=other)
    assert refused.status_code == 409 and refused.json()["type"].endswith("/not-due"), refused.text
    # One that fell due before 5 December is not claimed while the first is open either.
    checks = system.mongo[system.followup_settings.database_name()][followup_store.CHECKS]

    async def claimed_while_due() -> dict:
        await checks.update_one({"_id": second["id"]}, {"$set": {"status": "due"}})
        answer = await system.followup.post(f"/v1/followups/{second['id']}/claim", headers=other)
        await checks.update_one({"_id": second["id"]}, {"$set": {"status": "scheduled"}})
        assert answer.status_code == 409, answer.text
        return answer.json()

    refused = await claimed_while_due()
    assert (
        refused["type"].endswith("/earlier-check-open") and refused["earlier_check"] == first["id"]
    )

    # The first check reaches the customer; the second may call a spacing after that call.
    url = f"/v1/followups/{first['id']}"
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    clock.advance(timedelta(minutes=30))
    reached = {"reached": True, "score": 5, "problem_solved": True, "note": "已满意"}
    answered = await system.followup.post(f"{url}/attempts", json=reached, headers=caller)
    assert answered.status_code == 200, answered.text
    last_call = at(answered.json()["completed_at"])
    # Right after that call a claim of the second is too soon, whatever the time of day.
    too_soon = await claimed_while_due()
    assert too_soon["type"].endswith("/called-recently")
    assert at(too_soon["callable_from"]) == last_call + spacing
    # At the second's time the scheduler has it wait out what is left of the spacing (in
    # contact hours). Nothing is left when a night came between: the contact hours had
    # moved its time past the spacing already.
    expected = next_attempt_at(attempted_at=last_call, spacing_hours=4, hours=DEFAULT_HOURS)
    clock.set(at(waiting["due_at"]) + timedelta(seconds=1))
    if expected > clock.now():

        async def waited_out_the_spacing() -> dict | None:
            body = (
                await system.followup.get(f"/v1/followups/{second['id']}", headers=caller)
            ).json()
            return body if at(body["due_at"]) == expected else None

        await eventually(waited_out_the_spacing, what="the second check a spacing after the call")
        clock.set(expected + timedelta(seconds=1))
    await wait_status(system, second["id"], "due", caller)
    claimed = await system.followup.post(f"/v1/followups/{second['id']}/claim", headers=other)
    assert claimed.status_code == 200, claimed.text


async def test_a_later_checks_answer_cancels_the_earlier_check_still_open(
    system_factory: SystemFactory,
) -> None:
    """The first check of a serious complaint was still being tried when the week's check
    reached the customer (satisfied, closed). Then the first check reached them too:
    "unsatisfied" on an earlier check counts for nothing beside a later one's answer, so the
    complaint stayed closed and the customer had been called twice about one resolution.
    Now the later answer cancels the earlier check."""
    system, caller, complaint_id, first, second = await _second_check_past_due(system_factory)

    answered = await system.followup.post(
        f"/v1/followups/{second['id']}/outcome",
        json={"satisfied": True, "score": 5},
        headers=caller,
    )
    assert answered.status_code == 200, answered.text
    cancelled = await wait_status(system, first["id"], "cancelled", caller)
    assert cancelled["cancel_reason"] == "superseded by a later check's answer"
    late = await system.followup.post(
        f"/v1/followups/{first['id']}/outcome",
        json={"satisfied": False, "score": 1},
        headers=caller,
    )
    assert late.status_code == 409, late.text
    (event,) = await followup_events(
        system, event_type=EventType.FOLLOWUP_CANCELLED, subject=complaint_id, count=1
    )
    assert event.data["followup_id"] == first["id"]


async def _answered_while_its_cancellation_fails(
    system: System, caller: dict, later: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer's answer recorded on the ``later`` check, its cancellation of the
    earlier checks failing once (the database away after the answer was stored)."""
    cancel = followup_projections.cancel_open_checks
    failures: list[str] = []

    async def fails_once(**kwargs: object) -> int:
        if not failures:
            failures.append("the database went away")
            raise AutoReconnect("connection refused (injected)")
        return await cancel(**kwargs)

    monkeypatch.setattr(followup_projections, "cancel_open_checks", fails_once)
    answered = await system.followup.post(
        f"/v1/followups/{later['id']}/outcome",
        json={"satisfied": True, "score": 5},
        headers=caller,
    )
    assert answered.status_code == 200 and failures, answered.text


async def test_an_earlier_check_left_open_by_a_failed_cancellation_is_refused_when_worked(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later answer's cancellation of the earlier check runs after the answer is stored;
    should it fail (the database away, a crash in between), the earlier check stayed open
    for good and could still be answered, for nothing. Working it now cancels it instead."""
    system, caller, _, first, second = await _second_check_past_due(system_factory)
    await _answered_while_its_cancellation_fails(system, caller, second, monkeypatch)
    assert await wait_status(system, first["id"], "due", caller)
    claimed = await system.followup.post(f"/v1/followups/{first['id']}/claim", headers=caller)
    assert claimed.status_code == 409, claimed.text
    assert claimed.json()["type"].endswith("/superseded")
    cancelled = await wait_status(system, first["id"], "cancelled", caller)
    assert cancelled["cancel_reason"] == "superseded by a later check's answer"


async def test_a_check_waiting_on_and_on_for_an_earlier_one_tells_its_history_once(
    system_factory: SystemFactory,
) -> None:
    """Asked again while the first check stays open, the second waits on without a history
    entry each time: one per wait (every 15 minutes with no spacing) filled its history until
    it took no more claims (``lifecycle.MAX_HISTORY_FOR_CLAIMS``). It announces the wait
    (``followup.rescheduled``) once as well, so intake's timeline is not flooded either."""
    system, caller, complaint_id, first, second = await _second_check_past_due(system_factory)
    clock: ManualClock = system.clock
    url = f"/v1/followups/{second['id']}"
    waiting = (await system.followup.get(url, headers=caller)).json()
    for _ in range(3):
        clock.set(max(clock.now(), at(waiting["due_at"])) + timedelta(seconds=1))
        before = at(waiting["due_at"])

        async def asked_again(before: datetime = before) -> dict | None:
            body = (await system.followup.get(url, headers=caller)).json()
            return body if at(body["due_at"]) > before else None

        waiting = await eventually(asked_again, what="the second check asked again")
    actions = [entry["action"] for entry in waiting["history"]]
    assert waiting["status"] == "scheduled"
    assert actions.count("wait_for_earlier_check") == 1, actions
    # The timeline is told of the wait once too: every move published, the first check's
    # answer comes after them on the complaint's partition.
    checks = system.mongo[system.followup_settings.database_name()][followup_store.CHECKS]
    await eventually(lambda: outbox_sent(checks), what="the moves published")
    answered = await system.followup.post(
        f"/v1/followups/{first['id']}/outcome", json={"satisfied": True, "score": 5}, headers=caller
    )
    assert answered.status_code == 200, answered.text
    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.FOLLOWUP),
        until=lambda records: any(
            e.subject == complaint_id
            for e in events_of(records, event_type=EventType.FOLLOWUP_COMPLETED)
        ),
    )
    moves = [
        e.data
        for e in events_of(records, event_type=EventType.FOLLOWUP_RESCHEDULED)
        if e.data["followup_id"] == second["id"]
    ]
    assert [move["reason"] for move in moves] == ["earlier_check_open"], moves


async def test_a_retried_call_on_a_check_superseded_since_is_answered_as_recorded(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreached call recorded under an Idempotency-Key, its answer lost; the later check
    answered meanwhile, its cancellation of this one failed. The retry was a 409
    ``superseded`` instead of the call as recorded: the superseded check came before the
    replay's."""
    system, caller, _, first, second = await _second_check_past_due(system_factory)
    url = f"/v1/followups/{first['id']}"
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    call = {"reached": False, "note": "无人接听"}
    keyed = {**caller, "Idempotency-Key": "call-1"}
    recorded = await system.followup.post(f"{url}/attempts", json=call, headers=keyed)
    assert recorded.status_code == 200 and recorded.json()["status"] == "scheduled"
    await _answered_while_its_cancellation_fails(system, caller, second, monkeypatch)
    retried = await system.followup.post(f"{url}/attempts", json=call, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["attempt_count"] == 1
    # Worked anew, it is refused and cancelled.
    claimed = await system.followup.post(f"{url}/claim", headers=caller)
    assert claimed.status_code == 409 and claimed.json()["type"].endswith("/superseded")
    await wait_status(system, first["id"], "cancelled", caller)


async def test_a_reached_score_is_the_satisfaction_intake_and_followup_stats_agree_on(
    system_factory: SystemFactory,
) -> None:
    """Two serious complaints, each checked twice. A: satisfied (5) and closed, then nobody
    answers the call a week later; the no_response replaced the 5 with nothing, so intake's
    average left A out while follow-up's showed it. B: 5, then 4 a week later: the later
    answer is B's satisfaction. Intake's report and follow-up's per-complaint figure agree."""
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    a = await resolve_through_intake(system, admin, severity="high")
    b = await resolve_through_intake(system, admin, severity="high", description="光猫故障断网")
    (a1, a2), (b1, b2) = [await checks_of(system, cid, caller, count=2) for cid in (a, b)]

    async def verdict(check: dict, score: int) -> None:
        body = {"satisfied": True, "score": score, "problem_solved": True}
        response = await system.followup.post(
            f"/v1/followups/{check['id']}/outcome", json=body, headers=caller
        )
        assert response.status_code == 200, response.text

    for check, score in ((a1, 5), (b1, 5), (b2, 4)):
        await verdict(check, score)
    await complaint_when(system, a, admin, lambda c: c["status"] == "closed", what="A closed")
    url = f"/v1/followups/{a2['id']}"
    for _ in range(3):  # the week-later call: nobody answers, three times
        await make_due(system, clock, a2, caller)
        assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
        call = await system.followup.post(
            f"{url}/attempts", json={"reached": False}, headers=caller
        )
        assert call.status_code == 200, call.text
        a2 = call.json()  # back to scheduled at the next attempt's time, until the third
    assert a2["outcome"] == "no_response"

    for cid in (a, b):  # both of each complaint's outcomes applied
        await eventually(
            lambda cid=cid: _outcomes_on_timeline(system, cid, admin, 2), what="outcomes applied"
        )
    record_a, record_b = [await complaint_of(system, cid, admin) for cid in (a, b)]
    assert record_a["status"] == record_b["status"] == "closed"
    assert record_a["satisfaction"]["outcome"] == "satisfied"
    assert (record_a["satisfaction"]["score"], record_a["satisfaction"]["sequence"]) == (5, 1)
    assert (record_b["satisfaction"]["score"], record_b["satisfaction"]["sequence"]) == (4, 2)

    report = await system.intake.get("/v1/reports/summary", headers=admin)
    assert report.status_code == 200, report.text
    (lz,) = report.json()["groups"]
    assert lz["satisfaction_average"] == 4.5
    assert lz["satisfaction_distribution"] == {"4": 1, "5": 1}
    stats = (await system.followup.get("/v1/followups/stats", headers=admin)).json()
    per_complaint = stats["complaint_satisfaction"]
    assert (per_complaint["complaints"], per_complaint["satisfied"]) == (2, 2)
    assert per_complaint["no_response"] == 0
    assert per_complaint["satisfaction_average"] == lz["satisfaction_average"]
    assert per_complaint["score_distribution"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1}
    # The calls themselves: four made, three answered (5, 5, 4), one not.
    calls = stats["overall"]
    assert (calls["completed"], calls["satisfied"], calls["no_response"]) == (4, 3, 1)
    assert calls["satisfaction_average"] == 4.67


async def _outcomes_on_timeline(system: System, cid: str, headers: dict, count: int) -> bool:
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=headers)).json()
    actions = [entry["action"] for entry in timeline["entries"]]
    return actions.count("followup_completed") >= count


async def test_withdrawal_and_admin_closure_cancel_checks_but_closure_after_followup_does_not(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings)
    resolved_at = datetime(2026, 11, 24, 2, tzinfo=UTC)
    withdrawn, by_admin, after_followup = (
        resolved(resolved_at=resolved_at, severity=severity) for severity in ("high", "low", "low")
    )
    await publish(system, *((EventType.COMPLAINT_RESOLVED, e) for e in (withdrawn, by_admin)))
    await publish(system, (EventType.COMPLAINT_RESOLVED, after_followup))
    for event, count in ((withdrawn, 2), (by_admin, 1), (after_followup, 1)):
        await checks_of(system, event.complaint_id, admin, count=count)

    later = resolved_at + timedelta(hours=1)
    base = {"org": "demo", "branch": "LZ"}
    closed_before = handled_count("followup", EventType.COMPLAINT_CLOSED)
    withdrawal, *_ = await publish(
        system,
        (
            EventType.COMPLAINT_WITHDRAWN,
            ComplaintWithdrawn(
                **base, complaint_id=withdrawn.complaint_id, withdrawn_by="cust", withdrawn_at=later
            ),
        ),
        *(
            (
                EventType.COMPLAINT_CLOSED,
                ComplaintClosed(
                    **base,
                    complaint_id=event.complaint_id,
                    reason="closed",
                    closed_by="someone",
                    closed_via=via,
                    closed_at=later,
                ),
            )
            for event, via in ((by_admin, ClosedVia.ADMIN), (after_followup, ClosedVia.FOLLOWUP))
        ),
    )
    await republish(system, withdrawal)

    for event, count in ((withdrawn, 2), (by_admin, 1)):
        cancelled = await checks_of(
            system, event.complaint_id, admin, count=count, status="cancelled"
        )
        assert {check["cancel_reason"] for check in cancelled} <= {
            "complaint withdrawn",
            "complaint closed by an administrator",
        }
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_CLOSED) >= closed_before + 2,
        what="closures handled",
    )
    (kept,) = await checks_of(system, after_followup.complaint_id, admin)
    assert kept["status"] == "scheduled"
    announced = await followup_events(
        system, event_type=EventType.FOLLOWUP_CANCELLED, subject=withdrawn.complaint_id, count=2
    )
    assert len({event.data["followup_id"] for event in announced}) == 2


# ---------------------------------------------------------------- access --


async def test_branch_isolation_and_listing_by_due_time(system_factory: SystemFactory) -> None:
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    monday_10_local = datetime(2026, 11, 23, 2, tzinfo=UTC)
    lz = [
        resolved(resolved_at=monday_10_local + timedelta(hours=offset), owner_id=owner)
        for offset, owner in ((2, "lz-chen"), (0, "lz-liu"), (1, "lz-chen"))
    ]
    hosp = resolved(resolved_at=monday_10_local, branch="HOSP", owner_id="hosp-wang")
    await publish(system, *((EventType.COMPLAINT_RESOLVED, event) for event in [*lz, hosp]))
    admin = token(system.intake_settings)
    for event in [*lz, hosp]:
        await checks_of(system, event.complaint_id, admin)
    lz_agent = agent(system, "agent-a")

    first_page = (
        await system.followup.get("/v1/followups", params={"limit": 2}, headers=lz_agent)
    ).json()
    second_page = (
        await system.followup.get(
            "/v1/followups",
            params={"limit": 2, "cursor": first_page["next_cursor"]},
            headers=lz_agent,
        )
    ).json()
    listed = first_page["items"] + second_page["items"]
    assert second_page["next_cursor"] is None
    assert [item["complaint_id"] for item in listed] == [
        lz[1].complaint_id,
        lz[2].complaint_id,
        lz[0].complaint_id,
    ]
    assert all(item["branch"] == "LZ" for item in listed)

    async def ids(params: dict, headers: dict = lz_agent) -> set[str]:
        response = await system.followup.get("/v1/followups", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return {item["complaint_id"] for item in response.json()["items"]}

    other_branch = await system.followup.get(
        "/v1/followups", params={"branch": "HOSP"}, headers=lz_agent
    )
    assert (other_branch.status_code, other_branch.json()["field"]) == (404, "branch")
    assert await ids({"owner": "lz-chen"}) == {lz[0].complaint_id, lz[2].complaint_id}
    assert await ids({"due_before": "2026-11-24T03:30:00Z"}) == {
        lz[1].complaint_id,
        lz[2].complaint_id,
    }
    assert await ids({"status": "due"}) == set()
    assert await ids({}, admin) == {event.complaint_id for event in [*lz, hosp]}
    other_org = token(system.intake_settings, org="other")
    assert await ids({}, other_org) == set()

    (foreign,) = await checks_of(system, hosp.complaint_id, admin)
    url = f"/v1/followups/{foreign['id']}"
    for headers in (lz_agent, other_org):
        for method, path, body in (
            ("GET", url, None),
            ("POST", f"{url}/claim", None),
            ("DELETE", f"{url}/claim", None),
            ("POST", f"{url}/attempts", {"reached": False}),
            ("POST", f"{url}/outcome", {"satisfied": True, "score": 5}),
        ):
            response = await system.followup.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["type"].endswith("/not-found")
    hours = await system.followup.get("/v1/followups/contact-hours/HOSP", headers=lz_agent)
    assert hours.status_code == 404


async def test_invalid_requests_are_problems_naming_the_field(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    event = resolved(resolved_at=datetime(2026, 11, 24, 2, tzinfo=UTC))
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    caller = agent(system, "agent-a")
    (check,) = await checks_of(system, event.complaint_id, caller)
    url = f"/v1/followups/{check['id']}"

    async def problem(method: str, path: str, status: int, **kwargs) -> dict:
        response = await system.followup.request(method, path, headers=caller, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        return response.json()

    def fields(body: dict) -> set[str]:
        return {error["field"] for error in body["errors"]}

    reached = await problem("POST", f"{url}/attempts", 422, json={"reached": True})
    assert fields(reached) == {"score", "problem_solved"}
    unreached = await problem(
        "POST", f"{url}/attempts", 422, json={"reached": False, "score": 3, "mood": "angry"}
    )
    assert "mood" in fields(unreached)
    bad_score = {"reached": True, "score": 9, "problem_solved": True}
    assert fields(await problem("POST", f"{url}/attempts", 422, json=bad_score)) == {"score"}
    # ``true`` read as 1 was the lowest score: an unsatisfied customer, the complaint reopened.
    truth_score = {"reached": True, "score": True, "problem_solved": True}
    assert fields(await problem("POST", f"{url}/attempts", 422, json=truth_score)) == {"score"}
    truth_outcome = {"satisfied": False, "score": False}
    assert fields(await problem("POST", f"{url}/outcome", 422, json=truth_outcome)) == {"score"}
    assert "channel" in fields(
        await problem("POST", f"{url}/attempts", 422, json={"reached": False, "channel": "fax"})
    )
    assert fields(await problem("GET", "/v1/followups", 422, params={"status": "lost"})) == {
        "status"
    }
    assert "colour" in fields(await problem("GET", "/v1/followups", 422, params={"colour": "red"}))
    assert fields(await problem("GET", "/v1/followups", 422, params={"cursor": "!!"})) == {"cursor"}
    assert "due_before" in fields(
        await problem("GET", "/v1/followups", 422, params={"due_before": "soon"})
    )
    not_due = await problem("POST", f"{url}/claim", 409)
    assert not_due["type"].endswith("/not-due")
    assert not_due["current_status"] == "scheduled"
    await problem("PUT", "/v1/followups/policy", 403, json={})
    await problem("GET", "/v1/followups/stats", 403)
    await problem("GET", "/v1/followups/no-such-check", 404)
    await problem("GET", "/v1/followups/contact-hours/lz", 422)
    done = await system.followup.post(
        f"{url}/outcome", json={"satisfied": True, "score": 5}, headers=caller
    )
    assert done.status_code == 200
    again = await problem("POST", f"{url}/outcome", 409, json={"satisfied": True, "score": 5})
    assert again["current_status"] == "completed"
