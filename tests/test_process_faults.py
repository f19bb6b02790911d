"""Intake, routing and follow-up as real processes, killed (SIGKILL) or stopped (SIGTERM)
mid-work: after a restart nothing is lost and nothing is applied twice.

The service under test runs as a uvicorn child process (``support.processes``) on the test's
topics and database; the other services run in-process. Every promise is checked on what
the services stored and published: one assignment decision per complaint on intake's
timeline and one distinct routing event id per decision, each due SLA breach fired once,
each resolution's follow-up checks scheduled once, no dead letters.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from complaints_shared.dlq import read_dead_letters, service_dead_letter_topics
from complaints_shared.events import EventType
from complaints_shared.outbox import LEASES, PENDING_SINCE_FIELD
from tests.support.http import command, complaint_body, token
from tests.support.kafka import of_type, service_events
from tests.support.processes import ServiceProcess
from tests.support.system import System, SystemFactory
from tests.support.waits import NotYet, eventually

pytestmark = pytest.mark.integration

# Leases of a killed process run out within seconds (defaults: 15 s outbox, 30 s timers,
# 30 s registrations), so recovery fits the test; nothing else differs from production.
SHORT_LEASES = {"outbox_lease_s": 5}
ROUTING_PROCESS = {**SHORT_LEASES, "scheduler_lease_s": 5, "scheduler_poll_interval_s": 0.2}
INTAKE_PROCESS = {**SHORT_LEASES, "creation_lease_s": 5}
# docs/operations.md, Shutdown: 20 s of uvicorn's drain, 15 s of the loops' grace, 5 s for a
# cancelled consumer and 5 s for the producer.
SHUTDOWN_BUDGET_S = 45
# The acknowledge target of a high-severity complaint here: warned at 80 % (4.8 s), breached
# at 6 s. The resolve target stays a day away, so each complaint has exactly one breach.
ACKNOWLEDGE_MINUTES = 0.1
DECISIONS = ("assigned", "queued")


def _db(system: System, service: str):
    return system.mongo[getattr(system, f"{service}_settings").database_name()]


def _body(number: int, **overrides) -> dict:
    """A complaint of its own customer (no resubmission of another)."""
    return complaint_body(
        customer={"name": "马先生", "phone": f"+86 138 0931 {number:04d}"},
        description=f"第{number}号投诉：十月份账单多扣了三十元增值业务费，我从未订购。",
        **overrides,
    )


async def _dead_letters(system: System) -> list:
    letters = []
    for topic in service_dead_letter_topics(system.intake_settings):
        letters.extend(await read_dead_letters(settings=system.intake_settings, dlq_topic=topic))
    return letters


async def _outbox_drained(system: System, service: str, collection: str) -> bool:
    return (
        await _db(system, service)[collection].count_documents(
            {PENDING_SINCE_FIELD: {"$exists": True}}
        )
        == 0
    )


def _distinct_ids(events: list, event_type: EventType) -> Counter:
    """Per subject, how many distinct event ids of ``event_type`` (a republication keeps its id)."""
    return Counter(
        subject for subject, _ in {(e.subject, e.id) for e in of_type(events, event_type)}
    )


async def _timeline_actions(system: System, complaint_ids: list[str]) -> dict[str, Counter]:
    found = _db(system, "intake").complaints.find(
        {"_id": {"$in": complaint_ids}}, projection={"timeline.action": 1}
    )
    return {doc["_id"]: Counter(e["action"] for e in doc["timeline"]) async for doc in found}


async def _assert_routed_once(system: System, complaint_ids: list[str]) -> list:
    """Each complaint has one routing decision, on intake's record and on routing's topic."""
    timelines = await eventually(
        lambda: _all_decided(system, complaint_ids), timeout_s=60, what="every decision on record"
    )
    twice = {cid: t for cid, t in timelines.items() if sum(t[d] for d in DECISIONS) != 1}
    assert not twice, twice
    events = await service_events(
        system,
        "routing",
        until=lambda events: _decided(events) >= set(complaint_ids),
        timeout_s=30,
    )
    decisions = _distinct_ids(events, EventType.COMPLAINT_ASSIGNED) + _distinct_ids(
        events, EventType.COMPLAINT_QUEUED
    )
    assert {cid: decisions[cid] for cid in complaint_ids} == dict.fromkeys(complaint_ids, 1)
    return events


def _decided(events: list) -> set[str]:
    return {
        e.subject
        for kind in (EventType.COMPLAINT_ASSIGNED, EventType.COMPLAINT_QUEUED)
        for e in of_type(events, kind)
    }


async def _all_decided(system: System, complaint_ids: list[str]) -> dict[str, Counter] | NotYet:
    timelines = await _timeline_actions(system, complaint_ids)
    waiting = [c for c in complaint_ids if not any(timelines.get(c, {}).get(d) for d in DECISIONS)]
    return NotYet(f"{len(waiting)} undecided") if waiting else timelines


# -- routing ------------------------------------------------------------------------------


async def _fast_acknowledge_target(routing: ServiceProcess, headers: dict) -> None:
    """The organisation's default SLA policy, with a 6-second acknowledge target for high."""
    async with routing.client() as client:
        current = await client.get("/v1/routing/sla-policies/standard", headers=headers)
        assert current.status_code == 200, current.text
        policy = current.json()
        policy["targets"]["high"] = {
            "acknowledge": {"amount": ACKNOWLEDGE_MINUTES, "unit": "minutes", "basis": "calendar"},
            "resolve": {"amount": 1, "unit": "days", "basis": "calendar"},
        }
        body = {
            field: policy[field]
            for field in (
                "name",
                "is_default",
                "categories",
                "targets",
                "warning_share",
                "regulatory_report_within",
                "major_incident",
            )
        }
        saved = await client.put(
            "/v1/routing/sla-policies/standard",
            json=body,
            headers={**headers, "If-Match": current.headers["ETag"]},
        )
        assert saved.status_code == 200, saved.text


async def _post(system: System, headers: dict, numbers: range, *, concurrency: int) -> list[str]:
    """Complaints registered through in-process intake; their ids."""
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int) -> str:
        async with gate:
            response = await system.intake.post(
                "/v1/complaints", json=_body(number, severity="high"), headers=headers
            )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    return list(await asyncio.gather(*(one(number) for number in numbers)))


async def _routing_interrupted(
    system_factory: SystemFactory,
    tmp_path: Path,
    interrupt: Callable[[System, ServiceProcess], Awaitable[dict]],
) -> tuple[System, list[str], dict]:
    """Routing as a process, interrupted while it assigns complaints and fires SLA timers,
    then started again; the system, the complaint ids and what the interrupt saw, once
    every complaint is routed and breached."""
    system = await system_factory(out_of_process={"routing"})
    admin = token(system.intake_settings)
    routing = ServiceProcess.of(system, "routing", log_dir=tmp_path, **ROUTING_PROCESS)
    assignments = _db(system, "routing").assignments
    async with routing.running_until_done():
        await _fast_acknowledge_target(routing, admin)
        complaint_ids = await _post(system, admin, range(20), concurrency=1)

        async def warned() -> int:
            return await assignments.count_documents({"clocks.acknowledge.warned": True})

        await eventually(warned, timeout_s=30, what="the first SLA warnings fired")
        # More complaints arrive while the timer pass runs; the interrupt lands among both.
        complaint_ids += await _post(system, admin, range(20, 30), concurrency=5)
        interrupted = await interrupt(system, routing)
        warned_then = await warned()
        breached_then = await assignments.count_documents(
            {"clocks.acknowledge.breach_count": {"$gte": 1}}
        )
        assert warned_then >= 1 and breached_then < len(complaint_ids), (warned_then, breached_then)
        # And some while it is away.
        complaint_ids += await _post(system, admin, range(30, 35), concurrency=5)
        await routing.start()

        async def all_breached() -> bool | NotYet:
            breached = await assignments.count_documents(
                {"clocks.acknowledge.breach_count": {"$gte": 1}}
            )
            return breached == len(complaint_ids) or NotYet(f"{breached} breached")

        await eventually(all_breached, timeout_s=60, interval_s=0.2, what="every breach fired")
        await eventually(
            lambda: _outbox_drained(system, "routing", "assignments"),
            timeout_s=30,
            what="routing's outbox published",
        )
        return system, complaint_ids, interrupted


async def _assert_each_breach_fired_once(system: System, complaint_ids: list[str]) -> None:
    events = await _assert_routed_once(system, complaint_ids)
    events = await service_events(
        system,
        "routing",
        until=lambda events: (
            {e.subject for e in of_type(events, EventType.COMPLAINT_ESCALATED)}
            >= set(complaint_ids)
        ),
        timeout_s=30,
    )
    every_one = dict.fromkeys(complaint_ids, 1)
    assert dict(_distinct_ids(events, EventType.COMPLAINT_SLA_BREACHED)) == every_one
    assert dict(_distinct_ids(events, EventType.COMPLAINT_ESCALATED)) == every_one
    # A complaint routed after its warning time may be breached without a warning first.
    assert set(_distinct_ids(events, EventType.COMPLAINT_SLA_WARNING).values()) == {1}
    documents = _db(system, "routing").assignments.find({"_id": {"$in": complaint_ids}})
    async for document in documents:
        assert document["clocks"]["acknowledge"]["breach_count"] == 1, document["_id"]
        assert document["escalation_level"] == 1, document["_id"]
        assert len(document["escalations"]) == 1, document["escalations"]
    timelines = await eventually(
        lambda: _escalations_on_record(system, complaint_ids), what="escalations on record"
    )
    assert {cid: t["escalated"] for cid, t in timelines.items()} == every_one
    assert await _dead_letters(system) == []


async def _escalations_on_record(system: System, complaint_ids: list[str]):
    timelines = await _timeline_actions(system, complaint_ids)
    waiting = [cid for cid in complaint_ids if not timelines[cid]["escalated"]]
    return NotYet(f"{len(waiting)} not escalated on record") if waiting else timelines


async def test_routing_killed_while_assigning_and_firing_timers_routes_and_breaches_each_once(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    async def kill(system: System, routing: ServiceProcess) -> dict:
        await routing.kill()
        return {}

    system, complaint_ids, _ = await _routing_interrupted(system_factory, tmp_path, kill)
    await _assert_each_breach_fired_once(system, complaint_ids)


async def test_routing_stopped_mid_work_exits_in_budget_and_releases_what_it_held(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    async def terminate(system: System, routing: ServiceProcess) -> dict:
        exit_s = await routing.terminate()
        db = _db(system, "routing")
        return {
            "exit_s": exit_s,
            "returncode": routing.returncode,
            "stopped_cleanly": routing.log_tail(2000).count('"event": "service_stopped"'),
            "outbox_leases": await db[LEASES].count_documents({}),
            "timer_leases": await db.assignments.count_documents(
                {"timer_lease_owner": {"$exists": True}}
            ),
        }

    system, complaint_ids, stopped = await _routing_interrupted(system_factory, tmp_path, terminate)
    assert stopped["exit_s"] < SHUTDOWN_BUDGET_S, stopped
    # uvicorn re-raises the signal once its shutdown has run to the end.
    assert stopped["returncode"] in (0, -signal.SIGTERM), stopped
    assert stopped["stopped_cleanly"] == 1, stopped
    # The relay gave its lease up and the scheduler ended its pass, releasing its claims: a
    # replica (here the restart) takes over at once, not after the leases run out.
    assert (stopped["outbox_leases"], stopped["timer_leases"]) == (0, 0), stopped
    await _assert_each_breach_fired_once(system, complaint_ids)


# -- intake -------------------------------------------------------------------------------


async def test_intake_killed_mid_burst_stores_every_answered_complaint_and_routes_it_once(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    system = await system_factory(out_of_process={"intake"})
    admin = token(system.intake_settings)
    intake = ServiceProcess.of(system, "intake", log_dir=tmp_path, **INTAKE_PROCESS)
    sent: dict[str, dict] = {}  # Idempotency-Key → request body
    answered: dict[str, str] = {}  # Idempotency-Key → complaint id of a 201
    cut: dict[str, dict] = {}  # Idempotency-Key → body of a request without an answer
    statuses: Counter = Counter()
    killed = asyncio.Event()

    async def worker(client: httpx.AsyncClient, number: int) -> None:
        for sequence in range(1000):
            if killed.is_set():
                return
            key, body = uuid.uuid4().hex, _body(number * 1000 + sequence)
            sent[key] = body
            try:
                response = await client.post(
                    "/v1/complaints", json=body, headers={**admin, "Idempotency-Key": key}
                )
            except httpx.HTTPError:
                cut[key] = body
                return
            statuses[response.status_code] += 1
            if response.status_code == 201:
                answered[key] = response.json()["id"]

    async with intake.running_until_done():
        async with intake.client(timeout=30) as client:
            workers = [asyncio.create_task(worker(client, n)) for n in range(1, 9)]
            try:
                await eventually(lambda: len(answered) >= 20, timeout_s=30, what="20 × 201")
                await intake.kill()
                killed.set()
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
        assert set(statuses) == {201}, statuses
        assert cut, "the kill must cut requests off"
        await intake.start()

        async with intake.client(timeout=30) as client:

            async def retried(key: str, body: dict) -> str:
                async def answer() -> str | None:
                    response = await client.post(
                        "/v1/complaints", json=body, headers={**admin, "Idempotency-Key": key}
                    )
                    # 409: the dead request's claim on the key has not run out yet.
                    assert response.status_code in (200, 201, 409), response.text
                    return response.json()["id"] if response.status_code != 409 else None

                return await eventually(answer, timeout_s=30, interval_s=0.5, what=f"retry {key}")

            retried_ids = {key: await retried(key, body) for key, body in cut.items()}
            # A retry of a request that was answered replays its answer.
            for key in list(answered)[:3]:
                response = await client.post(
                    "/v1/complaints", json=sent[key], headers={**admin, "Idempotency-Key": key}
                )
                assert response.status_code in (200, 201), response.text
                assert response.headers.get("Idempotent-Replayed") == "true", response.headers
                assert response.json()["id"] == answered[key], response.text

        complaint_ids = sorted({*answered.values(), *retried_ids.values()})
        # One complaint per key, and none stored that no answer names.
        assert len(complaint_ids) == len(answered) + len(cut)
        stored = await _db(system, "intake").complaints.distinct("_id")
        assert sorted(stored) == complaint_ids
        await _assert_routed_once(system, complaint_ids)
        await eventually(
            lambda: _outbox_drained(system, "intake", "complaints"), what="intake's outbox sent"
        )
    events = await service_events(
        system, "intake", until=lambda events: len(events) >= len(complaint_ids)
    )
    received = _distinct_ids(events, EventType.COMPLAINT_RECEIVED)
    assert dict(received) == dict.fromkeys(complaint_ids, 1)
    routed = await _db(system, "routing").assignments.distinct("_id")
    assert sorted(routed) == complaint_ids
    assert await _dead_letters(system) == []


# -- follow-up ----------------------------------------------------------------------------


async def test_followup_killed_while_scheduling_checks_schedules_each_once(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    system = await system_factory(out_of_process={"followup"})
    admin = token(system.intake_settings)
    followup = ServiceProcess.of(system, "followup", log_dir=tmp_path, **SHORT_LEASES)
    checks = _db(system, "followup").satisfaction_checks
    # High severity gets a second check (FollowupSettings.second_check_severities).
    severities = {}
    for number in range(30):
        severity = "high" if number % 2 else "normal"
        response = await system.intake.post(
            "/v1/complaints", json=_body(number, severity=severity), headers=admin
        )
        assert response.status_code == 201, response.text
        severities[response.json()["id"]] = severity
    complaint_ids = list(severities)
    expected = {cid: [1, 2] if severity == "high" else [1] for cid, severity in severities.items()}
    total = sum(len(sequences) for sequences in expected.values())
    await _assert_routed_once(system, complaint_ids)

    async with followup.running_until_done():
        gate = asyncio.Semaphore(2)

        async def resolve(complaint_id: str) -> None:
            async with gate:
                await command(
                    system,
                    f"/v1/complaints/{complaint_id}/resolve",
                    {"summary": "已退还多扣费用并致歉", "customer_accepted": True},
                    admin,
                )

        resolving = asyncio.gather(*(resolve(cid) for cid in complaint_ids))
        await eventually(
            lambda: _count_at_least(checks, total // 4),
            timeout_s=30,
            interval_s=0.02,
            what="checks being scheduled",
        )
        await followup.kill()
        scheduled_at_kill = await checks.count_documents({})
        assert 0 < scheduled_at_kill < total, scheduled_at_kill
        await resolving
        await followup.start()
        await eventually(
            lambda: _count_at_least(checks, total), timeout_s=60, what="every check scheduled"
        )
        await eventually(
            lambda: _outbox_drained(system, "followup", "satisfaction_checks"),
            timeout_s=30,
            what="follow-up's outbox published",
        )

    stored: dict[str, list[int]] = {}
    async for check in checks.find({}).sort([("complaint_id", 1), ("sequence", 1)]):
        assert check["resolution_number"] == 1, check["_id"]
        assert [h["action"] for h in check["history"]] == ["schedule"], check["history"]
        stored.setdefault(check["complaint_id"], []).append(check["sequence"])
    assert stored == expected
    events = await service_events(
        system,
        "followup",
        until=lambda events: len(of_type(events, EventType.FOLLOWUP_SCHEDULED)) >= total,
        timeout_s=30,
    )
    scheduled = of_type(events, EventType.FOLLOWUP_SCHEDULED)
    ids_per_check = Counter(
        followup_id for followup_id, _ in {(e.data["followup_id"], e.id) for e in scheduled}
    )
    assert len(ids_per_check) == total
    assert set(ids_per_check.values()) == {1}, ids_per_check.most_common(3)
    assert await _dead_letters(system) == []


async def _count_at_least(collection, count: int) -> int | NotYet:
    found = await collection.count_documents({})
    return found if found >= count else NotYet(f"{found} of {count}")
