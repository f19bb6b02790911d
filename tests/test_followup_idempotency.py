"""Integration: a follow-up call's Idempotency-Key, bound to the agent and the call that used it.

Over real Kafka and MongoDB with a manual clock: the check is made due and claimed as an
agent would find it, then the key is retried, reused for another call, reused by another
agent, or malformed.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from complaints_shared import aggregate
from complaints_shared.events import EventType
from tests.support.clock import start_clock
from tests.support.events import resolved
from tests.support.faults import FailsAfter
from tests.support.followup import FAST_SCHEDULER, checks_of, make_due
from tests.support.http import agent
from tests.support.kafka import publish
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

NO_ANSWER = {"reached": False, "note": "无人接听"}
VERY_UNSATISFIED = {"reached": True, "score": 1, "problem_solved": False, "comment": "很不满意"}


async def _claimed_check(system_factory: SystemFactory) -> tuple[System, dict, str]:
    """A system whose agent-a holds the claim on a due check: the system, agent-a, its URL."""
    clock = start_clock()
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    caller = agent(system, "agent-a")
    event = resolved(resolved_at=clock.now() - timedelta(hours=30))
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    (check,) = await checks_of(system, event.complaint_id, caller)
    await make_due(system, clock, check, caller)
    url = f"/v1/followups/{check['id']}"
    claimed = await system.followup.post(f"{url}/claim", headers=caller)
    assert claimed.status_code == 200, claimed.text
    return system, caller, url


async def _call(
    system: System, url: str, caller: dict, body: dict, *, key: str = "call-1"
) -> httpx.Response:
    headers = {**caller, "Idempotency-Key": key}
    return await system.followup.post(f"{url}/attempts", json=body, headers=headers)


async def _called_once(system_factory: SystemFactory) -> tuple[System, dict, str]:
    """As ``_claimed_check``, after agent-a recorded an unanswered call under key call-1."""
    system, caller, url = await _claimed_check(system_factory)
    first = await _call(system, url, caller, NO_ANSWER)
    assert first.status_code == 200, first.text
    assert first.json()["attempt_count"] == 1
    assert "Idempotent-Replayed" not in first.headers
    return system, caller, url


def _assert_key_conflict(response: httpx.Response, *, detail: str) -> None:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/idempotency-key-conflict")
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert detail in problem["detail"]


async def test_a_call_key_reused_for_another_result_is_a_422_not_a_silent_200(
    system_factory: SystemFactory,
) -> None:
    system, caller, url = await _called_once(system_factory)
    retried = await _call(system, url, caller, NO_ANSWER)
    assert retried.status_code == 200, retried.text
    assert retried.json()["attempt_count"] == 1  # the genuine retry still counts once
    assert retried.headers["Idempotent-Replayed"] == "true"

    reused = await _call(system, url, caller, VERY_UNSATISFIED)
    _assert_key_conflict(reused, detail="different request body")
    check = (await system.followup.get(url, headers=caller)).json()
    assert (check["status"], check["attempt_count"], check["outcome"]) == ("scheduled", 1, None)


async def test_a_call_key_reused_by_another_agent_is_a_422(
    system_factory: SystemFactory,
) -> None:
    system, _, url = await _called_once(system_factory)
    # The same call, word for word, from someone else is not a retry of agent-a's request.
    other = await _call(system, url, agent(system, "agent-b"), NO_ANSWER)
    _assert_key_conflict(other, detail="another caller")


async def test_a_malformed_call_key_is_a_422_naming_the_header_and_records_nothing(
    system_factory: SystemFactory,
) -> None:
    system, caller, url = await _claimed_check(system_factory)
    for malformed in ("", "call 1", "x" * 201):
        response = await _call(system, url, caller, NO_ANSWER, key=malformed)
        assert response.status_code == 422, (malformed, response.text)
        assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    check = (await system.followup.get(url, headers=caller)).json()
    assert (check["status"], check["attempt_count"]) == ("in_progress", 0)


async def test_a_key_of_an_attempt_stored_before_fingerprints_replays_only_the_same_call(
    system_factory: SystemFactory,
) -> None:
    system, caller, url = await _called_once(system_factory)
    db = system.mongo[system.followup_settings.database_name()]
    unfingerprinted = {"$unset": {"attempts.0.request_fingerprint": ""}}
    await db.satisfaction_checks.update_one(
        {"_id": url.removeprefix("/v1/followups/")}, unfingerprinted
    )

    retried = await _call(system, url, caller, NO_ANSWER)
    assert retried.status_code == 200, retried.text
    assert retried.json()["attempt_count"] == 1
    reused = await _call(system, url, caller, VERY_UNSATISFIED)
    _assert_key_conflict(reused, detail="different request body")


async def test_an_outcome_retried_after_a_503_that_had_committed_is_replayed_not_a_409(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome's write commits and its answer fails (the read after it loses the
    connection): 503. The retry found the check completed and answered 409, which the
    client cannot tell from another agent's verdict. Under its key it is the same outcome,
    answered with the check as it is."""
    system, caller, url = await _claimed_check(system_factory)
    verdict = {"satisfied": True, "score": 5, "comment": "已解决，很满意"}
    keyed = {**caller, "Idempotency-Key": "verdict-1"}
    monkeypatch.setattr(aggregate, "update_and_read", FailsAfter(aggregate.update_and_read))
    failed = await system.followup.post(f"{url}/outcome", json=verdict, headers=keyed)
    assert failed.status_code == 503, failed.text
    retried = await system.followup.post(f"{url}/outcome", json=verdict, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "completed"
    assert retried.json()["attempt_count"] == 1
    assert retried.headers["Idempotent-Replayed"] == "true"
    other = {"satisfied": False, "score": 1, "comment": "不满意"}
    refused = await system.followup.post(f"{url}/outcome", json=other, headers=keyed)
    _assert_key_conflict(refused, detail="for another request on this resource")
