"""Fault tests against real processes: the database killed, the broker stopped.

The test starts a private Kafka broker and SecantusDB server (tests/private_infrastructure.py)
and overrides this module's ``infrastructure``, so the three services of each test run
against processes it may kill. Figures (recovery time, counts) are printed as one JSON line
per test (``pytest -s``) and quoted in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from complaints_shared import kafka, outbox
from complaints_shared.dlq import read_dead_letters, service_dead_letter_topics
from complaints_shared.events import EventType, Topic
from complaints_shared.timing import wait_event
from intake import rollup
from intake.settings import IntakeSettings
from tests.support.http import BROADBAND_COMPLAINT, complaint_when, token
from tests.support.infrastructure import Infrastructure
from tests.support.kafka import events_of, read_topic
from tests.support.private_infrastructure import (
    PrivateInfrastructure,
    start_private_infrastructure,
    stop_private_infrastructure,
)
from tests.support.processes import ServiceProcess
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("FAULT_OUTAGE_S", "60"))
COMPLAINTS_IN_FLIGHT = 200
# From the dependency's return until every complaint is assigned, at most.
RECOVERY_DEADLINE_S = 180.0
# POSTs go on this long after the dependency is back; recovery is measured from its return.
LOAD_AFTER_RECOVERY_S = 3.0
# After the database answers again, the client pools need a moment to notice.
RECONNECT_GRACE_S = 15.0
# How long the broker has been away when intake is stopped (the stop test), and what the
# stop may take beyond its bounded waits (uvicorn's own shutdown, the loops' passes).
BROKER_AWAY_BEFORE_STOP_S = 10.0
STOP_MARGIN_S = 4.0


@pytest.fixture(scope="module")
def private_infrastructure() -> Iterator[PrivateInfrastructure]:
    infra = start_private_infrastructure()
    try:
        yield infra
    finally:
        stop_private_infrastructure(infra)


@pytest.fixture(scope="module")
def infrastructure(private_infrastructure: PrivateInfrastructure) -> Infrastructure:
    """This module's services use the private processes, never the session's."""
    return Infrastructure(
        kafka_bootstrap_servers=private_infrastructure.kafka_bootstrap_servers,
        mongodb_uri=private_infrastructure.mongodb_uri,
        source="private",
        broker=None,
        closers=[],
    )


@dataclass
class PostLoad:
    """Complaints POSTed by a load generator: status codes with their times, ids created."""

    statuses: list[tuple[float, int]] = field(default_factory=list)
    created: set[str] = field(default_factory=set)

    def count(self) -> Counter:
        return Counter(status for _, status in self.statuses)


async def _post(system: System, load: PostLoad, headers: dict) -> None:
    # A distinct subject each: identical submissions would return the earlier complaint.
    body = {**BROADBAND_COMPLAINT, "subject": f"宽带停机投诉 {uuid.uuid4().hex[:8]}"}
    try:
        response = await system.intake.post("/v1/complaints", json=body, headers=headers)
    except httpx.HTTPError:  # in-process transport: only a crash of the app itself
        load.statuses.append((time.monotonic(), 599))
        return
    load.statuses.append((time.monotonic(), response.status_code))
    if response.status_code == 201:
        load.created.add(response.json()["id"])


async def _post_many(system: System, load: PostLoad, count: int, *, concurrency: int) -> None:
    headers = token(system.intake_settings)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await _post(system, load, headers)

    await asyncio.gather(*(one() for _ in range(count)))


async def _post_steadily(
    system: System, load: PostLoad, stop: asyncio.Event, *, every_s: float
) -> None:
    """A POST every ``every_s`` (not waiting for earlier ones) until ``stop`` is set."""
    headers = token(system.intake_settings)
    in_flight: set[asyncio.Task] = set()
    while not stop.is_set():
        task = asyncio.create_task(_post(system, load, headers))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        # Not asyncio.wait on a fresh stop.wait() each time: those were left pending, one
        # more every pause, until the load stopped (and for good if it never did).
        await wait_event(stop, timeout_s=every_s)
    await asyncio.gather(*in_flight)


@asynccontextmanager
async def _posting_steadily(
    system: System, load: PostLoad, *, every_s: float
) -> AsyncIterator[None]:
    """A POST every ``every_s`` while the block runs. However it ends (a failed assert
    too), the load stops and the POSTs in flight are awaited: none outlives the test."""
    stop = asyncio.Event()
    steady = asyncio.create_task(_post_steadily(system, load, stop, every_s=every_s))
    try:
        yield
    finally:
        stop.set()
        await steady


async def _unassigned(system: System) -> int:
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    return await complaints.count_documents({"assignment": None})


async def _assert_each_assigned_exactly_once(system: System, load: PostLoad) -> tuple[int, int]:
    """Every stored complaint (at least every 201) routed once: one assignment in routing,
    one routing decision event, one ``assigned`` (or ``queued``) entry on the record.

    Returns the complaints stored and the routing events published more than once.
    """
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    stored = {
        document["_id"]: document
        async for document in complaints.find({}, projection={"timeline": 1, "assignment": 1})
    }
    lost = load.created - set(stored)
    assert not lost, f"answered 201 but not stored: {sorted(lost)[:5]}"
    for complaint_id, document in stored.items():
        assert document["assignment"], complaint_id
        actions = [entry["action"] for entry in document["timeline"]]
        assert actions.count("assigned") + actions.count("queued") == 1, (complaint_id, actions)
    assignments = system.mongo[system.routing_settings.database_name()].assignments
    assert await assignments.count_documents({}) == len(stored)

    # Routing assigns an owner, or queues the complaint in its department when every owner
    # is at capacity (200 billing complaints fill the demo branch): one decision each.
    decisions = (EventType.COMPLAINT_ASSIGNED, EventType.COMPLAINT_QUEUED)

    def routed(records: list) -> list:
        return [event for kind in decisions for event in events_of(records, event_type=kind)]

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=lambda records: len(routed(records)) >= len(stored),
        timeout_s=60,
    )
    # The relay publishes at least once: an event whose "sent" mark the outage swallowed is
    # published again with the same id, which consumers recognise. Distinct ids count.
    for kind in decisions:
        distinct = {(event.subject, event.id) for event in events_of(records, event_type=kind)}
        per_complaint = Counter(subject for subject, _ in distinct)
        assert set(per_complaint.values()) <= {1}, (kind, per_complaint.most_common(3))
    assert {event.subject for event in routed(records)} == set(stored)
    return len(stored), len(routed(records)) - len({event.id for event in routed(records)})


async def _dead_letters(system: System) -> list:
    letters = []
    for topic in service_dead_letter_topics(system.intake_settings):
        letters.extend(await read_dead_letters(settings=system.intake_settings, dlq_topic=topic))
    return letters


async def _warm(system: System) -> str:
    """The pipeline is live end to end before the fault, so the test measures recovery; the
    complaint it routed."""
    load = PostLoad()
    await _post_many(system, load, 1, concurrency=1)
    assert len(load.created) == 1, load.statuses
    await eventually(
        lambda: _none_unassigned(system), timeout_s=60, interval_s=0.2, what="warm-up routed"
    )
    (complaint_id,) = load.created
    return complaint_id


async def _reassign_elsewhere(system: System, complaint_id: str) -> str:
    """A supervisor moves the complaint to another department through routing's API; the
    department it went to."""
    assignments = system.mongo[system.routing_settings.database_name()].assignments
    current = (await assignments.find_one({"_id": complaint_id}))["department"]
    department = "LZ:CS" if current != "LZ:CS" else "LZ:BILLING"
    supervisor = token(system.routing_settings, roles=("supervisor",))
    response = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign",
        json={"department": department, "reason": "转客服部处理"},
        headers=supervisor,
    )
    assert response.status_code == 200, response.text
    return department


async def _assert_reports_count_what_the_records_say(system: System) -> None:
    """Once a rollup pass has read every change, the report by owner and by department
    counts each complaint where its record says it is (the tallies themselves, not only the
    report's corrections for what changed after the pass)."""
    db = system.mongo[system.intake_settings.database_name()]
    latest = await db.complaints.find_one(sort=[("updated_at", -1)])

    async def read_by_a_pass() -> bool:
        state = await db[rollup.STATE].find_one({"_id": rollup.WATERMARK_ID})
        return state is not None and state["until"] > latest["updated_at"]

    await eventually(read_by_a_pass, timeout_s=120, interval_s=0.5, what="a rollup pass after")
    admin = token(system.intake_settings)
    for group_by, field_name in (("owner", "owner_id"), ("department", "department")):
        counted = Counter()
        async for complaint in db.complaints.find({}, projection={"assignment": 1}):
            counted[complaint["assignment"][field_name]] += 1
        response = await system.intake.get(
            "/v1/reports/summary", params={"group_by": group_by}, headers=admin
        )
        assert response.status_code == 200, response.text
        reported = {group["group"]: group["received"] for group in response.json()["groups"]}
        assert reported == dict(counted), group_by


async def _none_unassigned(system: System) -> bool:
    return await _unassigned(system) == 0


async def test_database_killed_for_a_minute_while_complaints_are_routed(
    system_factory: SystemFactory, private_infrastructure: PrivateInfrastructure
) -> None:
    system = await system_factory()
    await _warm(system)
    load = PostLoad()
    await _post_many(system, load, COMPLAINTS_IN_FLIGHT, concurrency=20)
    assert load.count() == {201: COMPLAINTS_IN_FLIGHT}

    unrouted_at_kill = await _unassigned(system)
    killed_at = time.monotonic()
    await asyncio.to_thread(private_infrastructure.kill_database)
    async with _posting_steadily(system, load, every_s=0.5):
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(private_infrastructure.up)  # the same data directory
        back_at = time.monotonic()
        # The load goes on a little (intake takes complaints again), then stops, so "every
        # complaint assigned" is a state the pipeline can reach.
        await asyncio.sleep(LOAD_AFTER_RECOVERY_S)

    await eventually(
        lambda: _none_unassigned(system),
        timeout_s=RECOVERY_DEADLINE_S,
        interval_s=0.5,
        what="every complaint assigned after the database came back",
    )
    all_assigned_at = time.monotonic()

    counts = load.count()
    assert set(counts) <= {201, 503}, counts
    assert any(status == 201 and at > back_at for at, status in load.statuses)
    late_503 = [at for at, status in load.statuses if status == 503 and at > back_at]
    assert all(at < back_at + RECONNECT_GRACE_S for at in late_503)
    assert all(killed_at <= at for at, status in load.statuses if status == 503)
    complaints, republished = await _assert_each_assigned_exactly_once(system, load)
    assert await _dead_letters(system) == []
    _report(
        "database_killed",
        outage_s=OUTAGE_S,
        complaints=complaints,
        posted_before_kill=COMPLAINTS_IN_FLIGHT,
        unrouted_at_kill=unrouted_at_kill,
        posts_201=counts[201],
        posts_503=counts[503],
        last_503_after_back_s=round(max(late_503, default=back_at) - back_at, 1),
        recovery_s=round(all_assigned_at - back_at, 1),
        routing_events_republished=republished,
        dead_letters=0,
    )


async def test_broker_stopped_for_a_minute_under_post_load(
    system_factory: SystemFactory, private_infrastructure: PrivateInfrastructure
) -> None:
    # The report rollup keeps passing while the broker is away (it needs only the database).
    system = await system_factory(intake={"report_rollup_interval_s": 1.0})
    warm = await _warm(system)
    load = PostLoad()
    async with _posting_steadily(system, load, every_s=0.2):
        await asyncio.sleep(2)
        await asyncio.to_thread(private_infrastructure.stop_broker)
        stopped_at = time.monotonic()
        # Routing's change waits in its outbox and reaches intake after the broker is back,
        # long after the rollup's watermark passed the time it was made.
        await asyncio.sleep(2)
        moved_to = await _reassign_elsewhere(system, warm)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        await asyncio.to_thread(private_infrastructure.start_broker)
        back_at = time.monotonic()
        await asyncio.sleep(LOAD_AFTER_RECOVERY_S)
    posted_during_outage = sum(1 for at, _ in load.statuses if stopped_at <= at <= back_at)

    await eventually(
        lambda: _none_unassigned(system),
        timeout_s=RECOVERY_DEADLINE_S,
        interval_s=0.5,
        what="every complaint assigned after the broker came back",
    )
    all_assigned_at = time.monotonic()
    assert load.count() == {201: len(load.statuses)}
    complaints, republished = await _assert_each_assigned_exactly_once(system, load)
    assert await _dead_letters(system) == []
    await complaint_when(
        system,
        warm,
        token(system.intake_settings),
        lambda complaint: complaint["assignment"]["department"] == moved_to,
        what="the reassignment made while the broker was away on the record",
        timeout_s=60,
    )
    await _assert_reports_count_what_the_records_say(system)
    _report(
        "broker_stopped",
        outage_s=round(back_at - stopped_at, 1),
        complaints=complaints,
        posts_201=len(load.created),
        posted_during_outage=posted_during_outage,
        recovery_s=round(all_assigned_at - back_at, 1),
        routing_events_republished=republished,
        dead_letters=0,
    )


def _report(name: str, **figures: object) -> None:
    print(json.dumps({"fault_test": name, **figures}))


async def test_intake_stopped_ten_seconds_into_a_broker_outage_exits_within_its_budget(
    system_factory: SystemFactory,
    private_infrastructure: PrivateInfrastructure,
    tmp_path: Path,
) -> None:
    """Intake as a real process, taking complaints and routing's decisions, is stopped
    (SIGTERM) ten seconds into a broker outage, as an orchestrator's stop during one finds
    it. Its consumer's last commit and its leaving the group waited for a group coordinator
    until the loops' grace ran out and the close was cut short: it exited after 25 s, where
    docs/operations.md said 7. Each wait on the broker is now bounded once stopping; what
    the producer could not deliver stays in the outbox and is published after the broker is
    back (by the restart)."""
    system = await system_factory(out_of_process={"intake"})
    admin = token(system.intake_settings)
    intake = ServiceProcess.of(
        system,
        "intake",
        log_dir=tmp_path,
        kafka_request_timeout_s=IntakeSettings.model_fields["kafka_request_timeout_s"].default,
    )
    created: list[str] = []
    async with intake.running_until_done():
        async with intake.client(timeout=30) as client:

            async def post(number: int) -> None:
                body = {**BROADBAND_COMPLAINT, "description": f"第{number}号：宽带停机"}
                response = await client.post("/v1/complaints", json=body, headers=admin)
                assert response.status_code == 201, response.text
                created.append(response.json()["id"])

            for number in range(5):
                await post(number)
            await eventually(
                lambda: _assigned_on_record(system, created),
                timeout_s=30,
                what="routing's decisions consumed by intake",
            )
            await asyncio.to_thread(private_infrastructure.stop_broker)
            try:
                for number in range(5, 10):
                    await post(number)
                # Ten seconds into the outage in all (the clients have given the
                # coordinator up by then).
                await asyncio.sleep(BROKER_AWAY_BEFORE_STOP_S)
                exit_s = await intake.terminate()
            finally:
                await asyncio.to_thread(private_infrastructure.start_broker)
        budget_s = (
            2 * kafka.STOPPING_BROKER_WAIT_S
            + outbox.STOP_ACK_WAIT_S
            + kafka.PRODUCER_STOP_S
            + STOP_MARGIN_S
        )
        assert exit_s < budget_s, (exit_s, intake.log_tail(3000))
        await intake.start()
        await eventually(
            lambda: _assigned_on_record(system, created),
            timeout_s=RECOVERY_DEADLINE_S,
            interval_s=0.5,
            what="every complaint routed after the broker came back",
        )


async def _assigned_on_record(system: System, complaint_ids: list[str]) -> bool:
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    routed = await complaints.count_documents(
        {"_id": {"$in": complaint_ids}, "assignment": {"$ne": None}}
    )
    return routed == len(complaint_ids)
