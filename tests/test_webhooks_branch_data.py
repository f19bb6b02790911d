"""A branch's webhook subscription never receives another branch's data.

Repeat detection is organisation-wide, so ``complaint.received`` may name a customer's
earlier complaints of other branches (``repeat_of``, ``repeat_links``). A subscription of
every branch receives the event as published; one of a branch receives only the links to
its own branch's complaints, and of an event that does not say which branch its links are
of (published before ``repeat_links``), none.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from standardwebhooks import Webhook

from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import ComplaintReceived, EventType, RepeatLink, Topic
from tests.support.events import received
from tests.support.http import complaint_body, create_complaint, token
from tests.support.system import SystemFactory
from tests.support.waits import eventually
from tests.support.webhooks import Isolation, Receiver, receiver, serve_webhooks, subscribe
from webhooks.signing import structured_body
from webhooks.visibility import DeliveredBodies

BRANCH_A, BRANCH_B = "LZ", "HOSP"
RECEIVED = [EventType.COMPLAINT_RECEIVED.value]
CUSTOMER = {"name": "刘女士", "phone": "13909310001"}


async def _arrived(hooks: Receiver, count: int, *, what: str) -> list[dict]:
    await eventually(
        lambda: asyncio.sleep(0, len(hooks.requests) >= count), timeout_s=30, what=what
    )
    return hooks.bodies()


def _verified(hooks: Receiver, secret: str) -> None:
    for request in hooks.requests:
        Webhook(secret).verify(request.body, request.headers)


@pytest.mark.integration
async def test_a_branch_subscription_receives_only_its_own_branchs_earlier_complaints(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        everywhere = await stack.enter_async_context(receiver())
        at_a = await stack.enter_async_context(receiver())
        at_b = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        organisation = await subscribe(webhooks, admin, url=everywhere.url, event_types=RECEIVED)
        of_a = await subscribe(webhooks, admin, url=at_a.url, event_types=RECEIVED, branch=BRANCH_A)
        of_b = await subscribe(webhooks, admin, url=at_b.url, event_types=RECEIVED, branch=BRANCH_B)
        # One customer complains at branch A, then at branch B, then at A again.
        complaints = []
        for branch, subject in [
            (BRANCH_A, "话费多扣"),
            (BRANCH_B, "挂号态度差"),
            (BRANCH_A, "仍未退费"),
        ]:
            body = complaint_body(
                branch=branch,
                customer=CUSTOMER,
                subject=subject,
                description=f"{subject}，要求处理。",
            )
            complaints.append((await create_complaint(system, admin, **body))["id"])
        first_a, at_b_id, second_a = complaints
        published = await _arrived(everywhere, 3, what="three complaints, organisation-wide")
        of_b_bodies = await _arrived(at_b, 1, what="branch B's complaint")
        of_a_bodies = await _arrived(at_a, 2, what="branch A's two complaints")

    by_subject = {body["subject"]: body["data"] for body in published}
    assert by_subject[second_a]["repeat_of"] == [at_b_id, first_a]
    assert by_subject[second_a]["repeat_links"] == [
        {"complaint_id": at_b_id, "branch": BRANCH_B},
        {"complaint_id": first_a, "branch": BRANCH_A},
    ]
    [b_event] = of_b_bodies
    assert b_event["subject"] == at_b_id
    assert (b_event["data"]["repeat_of"], b_event["data"]["repeat_links"]) == ([], [])
    assert b_event["data"]["repeat_count"] == 1, "the count stays the organisation's"
    assert first_a not in at_b.requests[0].body.decode()
    a_later = next(body for body in of_a_bodies if body["subject"] == second_a)
    assert a_later["data"]["repeat_of"] == [first_a]
    assert a_later["data"]["repeat_links"] == [{"complaint_id": first_a, "branch": BRANCH_A}]
    assert a_later["data"]["repeat_count"] == 2
    assert all(at_b_id not in request.body.decode() for request in at_a.requests)
    # Each body is signed as sent, and the event is the same one whoever receives it.
    _verified(everywhere, organisation["secret"])
    _verified(at_a, of_a["secret"])
    _verified(at_b, of_b["secret"])
    event_ids = {body["subject"]: body["id"] for body in published}
    assert a_later["id"] == event_ids[second_a] and b_event["id"] == event_ids[at_b_id]


@pytest.mark.integration
async def test_an_event_that_does_not_say_its_links_branches_reaches_a_branch_without_them(
    alone: Isolation,
) -> None:
    earlier_elsewhere, earlier_here = str(uuid.uuid4()), str(uuid.uuid4())
    complaint = received(
        branch=BRANCH_B,
        repeat_count=2,
        repeat_of=[earlier_elsewhere, earlier_here],
    )
    # As published before repeat_links existed: the field is absent, not null.
    data = complaint.model_dump(mode="json", exclude={"repeat_links"})
    old = CloudEvent(
        id=str(uuid.uuid4()),
        source="intake",
        type=EventType.COMPLAINT_RECEIVED.value,
        subject=complaint.complaint_id,
        time=datetime.now(UTC),
        data=data,
    )
    async with AsyncExitStack() as stack:
        everywhere = await stack.enter_async_context(receiver())
        at_b = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone)
        admin = token(webhooks.settings)
        await subscribe(webhooks, admin, url=everywhere.url, event_types=RECEIVED)
        of_b = await subscribe(webhooks, admin, url=at_b.url, event_types=RECEIVED, branch=BRANCH_B)
        producer = AIOKafkaProducer(bootstrap_servers=webhooks.settings.kafka_bootstrap_servers)
        stack.push_async_callback(producer.stop)  # even when its start fails half-way
        await producer.start()
        key, value, headers = to_kafka_record(old)
        topic = webhooks.settings.topic(Topic.INTAKE.value)
        await producer.send_and_wait(topic, value, key=key, headers=headers)
        [as_published] = await _arrived(everywhere, 1, what="the event, organisation-wide")
        [to_b] = await _arrived(at_b, 1, what="the event, to branch B")

    assert as_published["data"] == data
    assert to_b["id"] == old.id
    assert to_b["data"]["repeat_of"] == []
    assert "repeat_links" not in to_b["data"]
    assert to_b["data"]["repeat_count"] == 2
    assert to_b["data"] == {**data, "repeat_of": []}
    text = at_b.requests[0].body.decode()
    assert earlier_elsewhere not in text and earlier_here not in text
    _verified(at_b, of_b["secret"])


def _repeat(*links: tuple[str, str]) -> tuple[CloudEvent, ComplaintReceived]:
    """A ``complaint.received`` of branch B repeating ``(complaint id, branch)`` links."""
    complaint = received(
        branch=BRANCH_B,
        repeat_count=len(links),
        repeat_of=[complaint_id for complaint_id, _ in links],
        repeat_links=[RepeatLink(complaint_id=cid, branch=branch) for cid, branch in links],
    )
    return CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=complaint
    ), complaint


def test_each_set_of_branches_gets_one_body_and_the_organisation_the_published_one() -> None:
    event, data = _repeat(("cmp-a", BRANCH_A), ("cmp-b", BRANCH_B))
    bodies = DeliveredBodies(event, data)
    published = bodies.for_subscription({"_id": "whs_org", "branch": None})
    assert published == structured_body(event)
    of_b = bodies.for_subscription({"_id": "whs_b1", "branch": BRANCH_B})
    assert bodies.for_subscription({"_id": "whs_b2", "branch": BRANCH_B}) is of_b
    assert orjson.loads(of_b)["data"]["repeat_of"] == ["cmp-b"]
    assert orjson.loads(of_b)["data"]["repeat_links"] == [
        {"complaint_id": "cmp-b", "branch": BRANCH_B}
    ]
    # Branches that see every link share the published body (nothing rendered again).
    assert bodies.for_branches(frozenset({BRANCH_A, BRANCH_B})) is published


def test_an_event_naming_only_the_branchs_own_complaints_is_delivered_as_published() -> None:
    event, data = _repeat(("cmp-b", BRANCH_B))
    bodies = DeliveredBodies(event, data)
    published = bodies.for_subscription({"_id": "whs_org", "branch": None})
    assert bodies.for_subscription({"_id": "whs_b", "branch": BRANCH_B}) is published
