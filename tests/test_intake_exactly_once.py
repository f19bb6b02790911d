"""Exactly one complaint per submission: concurrent duplicates, keys, slow first requests.

Identical submissions racing each other, with or without an ``Idempotency-Key``,
store one complaint. With a key, a retry arriving while the first request is still
running waits or gets a 409 with ``Retry-After`` (never a 500, never a second
complaint), however long the first request takes; without one, the first stored wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from complaints_shared.auth import Principal, Role
from complaints_shared.problems import ProblemError
from intake import idempotency, postings, store
from tests.support.faults import FailsFirst
from tests.support.http import complaint_body, complaint_count, token
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

LEASE_S = 1.5  # renewed every 0.5 s; generous, so a loaded machine still renews in time


async def test_twenty_concurrent_identical_submissions_without_a_key_store_one_complaint(
    system: System,
) -> None:
    headers = token(system.intake_settings)
    responses = await asyncio.gather(
        *(
            system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
            for _ in range(20)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.json()["resubmission"] for response in responses) == 19
    assert await complaint_count(system) == 1


async def test_twenty_concurrent_submissions_with_one_key_store_one_complaint(
    system: System,
) -> None:
    headers = {**token(system.intake_settings), "Idempotency-Key": "call-2026-0117"}
    responses = await asyncio.gather(
        *(
            system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
            for _ in range(20)
        )
    )
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await complaint_count(system) == 1


@dataclass
class Gate:
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def slow_first_request(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gate]:
    """Holds the first registration inside its database work until ``release`` is set."""
    gate = Gate()
    original = store.find_earlier_complaints

    async def held_open(**kwargs):
        if not gate.entered.is_set():
            gate.entered.set()
            await asyncio.wait_for(gate.release.wait(), timeout=30)
        return await original(**kwargs)

    monkeypatch.setattr(store, "find_earlier_complaints", held_open)
    yield gate
    gate.release.set()


async def _retries_while_first_runs(
    system: System, headers: dict[str, str], gate: Gate
) -> tuple[httpx.Response, list[httpx.Response]]:
    """The first request's response, once let through, and those of the retries sent while
    it was held."""
    # Should anything here fail, the group cancels the first request and awaits it (and should
    # the first request fail, the wait for it to enter ends). Done before the test's asserts:
    # an assert failing on a retry left the first request running, never awaited.
    async with asyncio.TaskGroup() as requests:
        first = requests.create_task(
            system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
        )
        await asyncio.wait_for(gate.entered.wait(), timeout=10)
        retries = [
            await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
        ]
        # The first request outlives its lease twice over: it renews the lease, so
        # the retry still must not take its complaint over.
        await asyncio.sleep(2 * LEASE_S)
        retries.append(
            await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
        )
        gate.release.set()
    return first.result(), retries


SLOW = {"creation_lease_s": LEASE_S, "idempotency_wait_s": 0.3}


async def test_a_retry_with_the_key_during_a_slow_first_request_gets_409_then_the_replay(
    system_factory: SystemFactory, slow_first_request: Gate
) -> None:
    system = await system_factory(intake=SLOW)
    headers = {**token(system.intake_settings), "Idempotency-Key": "slow-line-42"}
    first, retries = await _retries_while_first_runs(system, headers, slow_first_request)
    for retry in retries:
        assert retry.status_code == 409, retry.text
        assert retry.headers["Retry-After"] == "1"
        assert retry.json()["type"].endswith("/request-in-progress")
    created = first
    assert created.status_code == 201, created.text
    replay = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == created.json()["id"]
    assert await complaint_count(system) == 1


async def test_an_identical_submission_during_a_slow_first_one_is_stored_once(
    system_factory: SystemFactory, slow_first_request: Gate
) -> None:
    """Without a key the insert is the claim: the first stored wins, whichever request
    that is, and the slow first request returns that complaint as a resubmission."""
    system = await system_factory(intake=SLOW)
    headers = token(system.intake_settings)
    first, retries = await _retries_while_first_runs(system, headers, slow_first_request)
    stored, again = retries
    assert stored.status_code == 201, stored.text
    assert again.status_code == 200 and again.json()["resubmission"] is True
    assert again.json()["id"] == stored.json()["id"]
    late = first
    assert late.status_code == 200, late.text
    assert late.json()["resubmission"] is True
    assert late.json()["id"] == stored.json()["id"]
    assert await complaint_count(system) == 1


async def test_a_failed_holder_never_releases_a_key_taken_over_by_a_retry(system: System) -> None:
    db = system.mongo[system.intake_settings.database_name()]
    settings = system.intake_settings.model_copy(update={"idempotency_wait_s": 0.2})
    principal = _principal()
    reserve = {
        "db": db,
        "settings": settings,
        "principal": principal,
        "key": "k-takeover",
        "body_hash": "h",
    }
    first = await idempotency.reserve(**reserve, complaint_id="c-1")
    # The first holder stops renewing (it hangs, or its process died): its lease runs out.
    await db.idempotency_keys.update_one(
        {"_id": first.key_id}, {"$set": {"lease_until": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    retry = await idempotency.reserve(**reserve, complaint_id="c-2")
    assert retry.complaint_id == "c-1"  # the retry continues the same complaint
    assert retry.holder != first.holder
    await idempotency.release(db=db, reservation=first)  # the first one fails late
    stored = await db.idempotency_keys.find_one({"_id": first.key_id})
    assert stored["holder"] == retry.holder
    assert stored["lease_until"] > datetime.now(UTC)
    with pytest.raises(ProblemError) as busy:
        await idempotency.reserve(**reserve, complaint_id="c-3")
    assert busy.value.status == 409 and busy.value.headers["Retry-After"] == "1"


def _principal() -> Principal:
    return Principal(subject="tester", org="demo", branches="*", roles=[Role.AGENT])


async def test_a_keyed_retry_leaves_the_stored_complaints_search_posting_alone(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request stores the complaint, then recording its answer fails: a 503, and
    the key is given up. The retry used to prepare a new draft first (another reference),
    whose search posting replaced the stored complaint's, and only put it back after its
    insert met the stored complaint: a retry failing in between left the complaint posted
    under another reference's grams and another time (searches sort and page by it), and
    no repair pass rewrites it. Now a retry looks for its complaint first."""
    admin = token(system.intake_settings)
    keyed = {"Idempotency-Key": "posting-retry-1", **admin}
    body = complaint_body(
        subject="营业厅多收费用", description="营业厅办理业务时多收了五十元手续费"
    )
    monkeypatch.setattr(idempotency, "complete", FailsFirst(idempotency.complete))
    first = await system.intake.post("/v1/complaints", json=body, headers=keyed)
    assert first.status_code == 503, first.text
    [stored] = (
        await system.mongo[system.intake_settings.database_name()]
        .complaints.find({"subject": "营业厅多收费用"})
        .to_list()
    )
    # The retry meets a dropped connection where it reads the stored complaint.
    monkeypatch.setattr(store, "find", FailsFirst(store.find))
    failed_retry = await system.intake.post("/v1/complaints", json=body, headers=keyed)
    assert failed_retry.status_code == 503, failed_retry.text
    # Its posting still says what the stored complaint does (its reference's grams, its
    # time, by which searches sort and page), not what the retry's draft said.
    database = system.mongo[system.intake_settings.database_name()]
    posted = await database[postings.POSTINGS].find_one({"_id": stored["_id"]})
    assert posted == postings.posting(stored)
    retried = await system.intake.post("/v1/complaints", json=body, headers=keyed)
    assert (retried.status_code, retried.json()["id"]) == (201, stored["_id"]), retried.text
    assert await complaint_count(system) == 1


async def test_a_keyed_retry_finds_its_complaint_stored_under_another_fingerprint(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request stores the complaint, then recording its answer fails. Its
    fingerprint was computed by an older release (or before there was one): the retry
    compared it with its own and failed with a 500, every time, though the complaint
    under its key's id can only be its own."""
    keyed = {"Idempotency-Key": "upgrade-retry-1", **token(system.intake_settings)}
    body = complaint_body(subject="升级前登记的投诉", description="客服电话一直占线")
    monkeypatch.setattr(idempotency, "complete", FailsFirst(idempotency.complete))
    first = await system.intake.post("/v1/complaints", json=body, headers=keyed)
    assert first.status_code == 503, first.text
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    [stored] = await complaints.find({"subject": "升级前登记的投诉"}).to_list()
    await complaints.update_one(
        {"_id": stored["_id"]}, {"$set": {"submission_fingerprint": "an-older-release"}}
    )
    retried = await system.intake.post("/v1/complaints", json=body, headers=keyed)
    assert (retried.status_code, retried.json()["id"]) == (201, stored["_id"]), retried.text
    assert retried.json()["reference"] == stored["reference"]
    assert await complaint_count(system) == 1
