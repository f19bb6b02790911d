"""Integration: configuration an organisation manages over time, over real Kafka and MongoDB.

A branch can call back differently from the rest of the organisation (per-branch
follow-up policy over the organisation's default); an SLA policy can be retired
(kept for history and for the assignments that have it, never given anew) and is
never deleted while anything refers to it; a satisfaction check shows its history.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from routing import audit, context_cache
from routing.sla import store as sla_store
from routing.sla.clocks import HORIZON
from tests.support.clock import at
from tests.support.events import received, resolved
from tests.support.faults import FailsFirst, HeldFirst
from tests.support.followup import FAST_SCHEDULER, checks_of, make_due, wait_status
from tests.support.http import agent, token
from tests.support.kafka import intake_producer, publish
from tests.support.routing import FAST_TIMERS, assignment_when, routing_db
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

# A hospital calls back within two hours and keeps trying, without waiting between calls.
HOSPITAL_POLICY = {
    "checks": [{"after_hours": 2}],
    "max_attempts": 5,
    "attempt_spacing_hours": 0,
    "satisfied_score_threshold": 5,
}
# Monday 23 November 2026, 10:00 in Shanghai: inside the default contact hours.
MONDAY_10_SHANGHAI = datetime(2026, 11, 23, 2, tzinfo=UTC)


async def test_a_branch_policy_schedules_its_complaints_while_another_branch_keeps_the_default(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 20, tzinfo=UTC)))
    admin = token(system.intake_settings, subject="admin-zhao")
    lanzhou_agent = agent(system, "agent-lz")

    saved = await system.followup.put(
        "/v1/followups/policy/branches/HOSP", json=HOSPITAL_POLICY, headers=admin
    )
    assert saved.status_code == 200, saved.text
    assert (saved.json()["branch"], saved.json()["version"]) == ("HOSP", 1)
    invalid = await system.followup.put(
        "/v1/followups/policy/branches/HOSP",
        json={**HOSPITAL_POLICY, "attempt_spacing_hours": -1},
        headers=admin,
    )
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["field"] == "attempt_spacing_hours"
    hospital = (
        await system.followup.get("/v1/followups/policy/branches/HOSP", headers=admin)
    ).json()
    assert hospital["policy"]["max_attempts"] == 5
    lanzhou = (await system.followup.get("/v1/followups/policy/branches/LZ", headers=admin)).json()
    # The organisation's default, inherited: its rules, not its audit data.
    assert (lanzhou["branch"], lanzhou["inherited"], lanzhou["version"]) == ("LZ", True, None)
    organisation = (await system.followup.get("/v1/followups/policy", headers=admin)).json()
    assert organisation["policy"] == lanzhou["policy"]
    foreign = await system.followup.get("/v1/followups/policy/branches/HOSP", headers=lanzhou_agent)
    assert foreign.status_code == 404

    at_hospital = resolved(resolved_at=MONDAY_10_SHANGHAI, branch="HOSP", category="network")
    at_lanzhou = resolved(resolved_at=MONDAY_10_SHANGHAI, branch="LZ")
    await publish(
        system,
        (EventType.COMPLAINT_RESOLVED, at_hospital),
        (EventType.COMPLAINT_RESOLVED, at_lanzhou),
    )
    (hospital_check,) = await checks_of(system, at_hospital.complaint_id, admin)
    (lanzhou_check,) = await checks_of(system, at_lanzhou.complaint_id, admin)
    assert at(hospital_check["due_at"]) == MONDAY_10_SHANGHAI + timedelta(hours=2)
    assert hospital_check["max_attempts"] == 5
    assert at(lanzhou_check["due_at"]) == MONDAY_10_SHANGHAI + timedelta(hours=24)
    assert lanzhou_check["max_attempts"] == 3

    back = await system.followup.delete("/v1/followups/policy/branches/HOSP", headers=admin)
    assert back.status_code == 200, back.text
    assert (back.json()["branch"], back.json()["inherited"]) == ("HOSP", True)
    history = (
        await system.followup.get("/v1/followups/policy/branches/HOSP/history", headers=admin)
    ).json()["items"]
    assert [(item["version"], item["policy"] is None) for item in history] == [
        (2, True),
        (1, False),
    ]
    later = resolved(resolved_at=MONDAY_10_SHANGHAI, branch="HOSP", category="network")
    await publish(system, (EventType.COMPLAINT_RESOLVED, later))
    (later_check,) = await checks_of(system, later.complaint_id, admin)
    assert at(later_check["due_at"]) == MONDAY_10_SHANGHAI + timedelta(hours=24)


async def test_attempt_spacing_zero_calls_again_without_waiting(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI - timedelta(hours=1))
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    caller = agent(system, "agent-hosp", branches=("HOSP",))
    saved = await system.followup.put("/v1/followups/policy", json=HOSPITAL_POLICY, headers=admin)
    assert saved.status_code == 200, saved.text
    event = resolved(resolved_at=MONDAY_10_SHANGHAI, branch="HOSP", category="network")
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    (check,) = await checks_of(system, event.complaint_id, admin)

    await make_due(system, clock, check, caller)
    url = f"/v1/followups/{check['id']}"
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    unreached = await system.followup.post(
        f"{url}/attempts", json={"reached": False}, headers=caller
    )
    assert unreached.status_code == 200, unreached.text
    body = unreached.json()
    assert body["status"] == "scheduled"
    (attempt,) = body["attempts"]
    # Inside contact hours, no minimum spacing: the next call may be made at once.
    assert at(attempt["next_attempt_at"]) == at(attempt["attempted_at"])
    assert at(body["due_at"]) == at(attempt["attempted_at"])


async def test_a_check_shows_every_change_in_its_history(system_factory: SystemFactory) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    caller = agent(system, "agent-a")
    event = resolved(resolved_at=MONDAY_10_SHANGHAI - timedelta(days=1))
    await publish(system, (EventType.COMPLAINT_RESOLVED, event))
    (check,) = await checks_of(system, event.complaint_id, caller)
    url = f"/v1/followups/{check['id']}"

    await make_due(system, clock, check, caller)
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    unreached = await system.followup.post(
        f"{url}/attempts", json={"reached": False}, headers=caller
    )
    assert unreached.status_code == 200, unreached.text
    await make_due(system, clock, unreached.json(), caller)
    assert (await system.followup.post(f"{url}/claim", headers=caller)).status_code == 200
    answer = {"reached": True, "score": 5, "problem_solved": True}
    assert (await system.followup.post(f"{url}/attempts", json=answer, headers=caller)).is_success

    body = await wait_status(system, check["id"], "completed", caller)
    steps = [(entry["action"], entry["status"], entry["actor"]) for entry in body["history"]]
    assert steps == [
        ("schedule", "scheduled", "followup"),
        ("become_due", "due", "followup"),
        ("claim", "in_progress", "agent-a"),
        ("retry_later", "scheduled", "agent-a"),
        ("become_due", "due", "followup"),
        ("claim", "in_progress", "agent-a"),
        ("record_reached", "completed", "agent-a"),
    ]
    times = [at(entry["at"]) for entry in body["history"]]
    assert times == sorted(times)


# ------------------------------------------------------------- SLA policies --

BILLING_FAST = {
    "name": "账务快速时限",
    "categories": ["billing"],
    "targets": {
        "normal": {
            "acknowledge": {"amount": 30, "unit": "minutes", "basis": "calendar"},
            "resolve": {"amount": 2, "unit": "days", "basis": "calendar"},
        }
    },
}


async def _routed(system: System, publish_intake, **overrides) -> dict:
    complaint = received(**overrides)
    await publish_intake(EventType.COMPLAINT_RECEIVED, complaint)
    return await assignment_when(system, complaint.complaint_id, what="routed")


async def test_a_retired_sla_policy_is_kept_for_its_assignments_but_never_given_anew(
    system: System,
) -> None:
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    created = await api.put(
        "/v1/routing/sla-policies/billing-fast", json=BILLING_FAST, headers=admin
    )
    assert created.status_code == 200, created.text

    async with intake_producer(system) as publish_intake:
        before = await _routed(system, publish_intake, received_at=MONDAY_10_SHANGHAI)
        assert before["sla_policy"] == "billing-fast"
        assert before["acknowledge_due_at"] == MONDAY_10_SHANGHAI + timedelta(minutes=30)

        retired = await api.post("/v1/routing/sla-policies/billing-fast/retire", headers=admin)
        assert retired.status_code == 200, retired.text
        assert retired.json()["retired_by"] == "admin-zhao"
        assert retired.json()["retired_at"] is not None
        listed = (await api.get("/v1/routing/sla-policies", headers=admin)).json()
        assert "billing-fast" in {policy["id"] for policy in listed}  # kept for history

        after = await _routed(system, publish_intake, received_at=MONDAY_10_SHANGHAI)
        assert after["sla_policy"] == "standard"
    kept = await assignment_when(system, before["_id"])
    assert kept["sla_policy"] == "billing-fast"
    assert kept["acknowledge_due_at"] == before["acknowledge_due_at"]

    in_use = await api.delete("/v1/routing/sla-policies/billing-fast", headers=admin)
    assert in_use.status_code == 409
    assert in_use.json()["type"].endswith("/policy-in-use")
    assert "1 assignment(s)" in in_use.json()["detail"]
    assert (
        await api.get("/v1/routing/sla-policies/billing-fast", headers=admin)
    ).status_code == 200
    rule = {
        "id": "billing-fast",
        "name": "账务快速",
        "conditions": {"categories": ["billing"]},
        "action": {"department_kind": "billing", "sla_policy": "billing-fast"},
    }
    naming = await api.post("/v1/routing/rules", json=rule, headers=admin)
    assert naming.status_code == 422
    assert naming.json()["errors"][0]["field"] == "action.sla_policy"

    unused = await api.put("/v1/routing/sla-policies/unused", json=BILLING_FAST, headers=admin)
    assert unused.status_code == 200
    in_force = await api.delete("/v1/routing/sla-policies/unused", headers=admin)
    assert in_force.status_code == 409
    assert in_force.json()["type"].endswith("/policy-in-force")
    assert (await api.post("/v1/routing/sla-policies/unused/retire", headers=admin)).is_success
    assert (await api.delete("/v1/routing/sla-policies/unused", headers=admin)).status_code == 204
    assert (await api.get("/v1/routing/sla-policies/unused", headers=admin)).status_code == 404
    trail = await api.get(
        "/v1/directory/audit",
        params={"entity": "sla_policy", "entity_id": "unused"},
        headers=admin,
    )
    assert [entry["action"] for entry in trail.json()][:3] == ["deleted", "retired", "saved"]


async def test_a_retirement_whose_bump_failed_is_recorded_once_and_bumps_when_retried(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retiring stores the change and its audit record, then the directory bump meets a
    dropped connection: a 503. The retry finds the policy retired already: it changes
    nothing, records nothing twice and bumps (before: no bump, and the replicas' routing
    contexts kept offering the policy). Deleted and created again under its id, the policy
    counts its versions from 1 again; its new records are kept beside the old ones."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    path = "/v1/routing/sla-policies/unused"
    assert (await api.put(path, json=BILLING_FAST, headers=admin)).status_code == 200

    async def trail() -> list[str]:
        found = await api.get(
            "/v1/directory/audit",
            params={"entity": "sla_policy", "entity_id": "unused"},
            headers=admin,
        )
        return [entry["action"] for entry in found.json()]

    bump = FailsFirst(context_cache.directory_changed)
    monkeypatch.setattr(context_cache, "directory_changed", bump)
    first = await api.post(f"{path}/retire", headers=admin)
    assert first.status_code == 503, first.text
    retried = await api.post(f"{path}/retire", headers=admin)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["version"], retried.json()["retired_by"]) == (2, "admin-zhao")
    assert len(bump.calls) == 2
    assert await trail() == ["retired", "saved"]

    assert (await api.delete(path, headers=admin)).status_code == 204
    again = await api.put(path, json=BILLING_FAST, headers=admin)
    assert (again.status_code, again.json()["version"]) == (200, 1)
    assert await trail() == ["saved", "deleted", "retired", "saved"]


async def test_a_deletion_broken_off_is_gone_for_readers_and_completed_with_its_record(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting marks the policy, records the deletion, then removes the policy. When the
    audit write meets a dropped connection (a 503) the policy is already gone for every
    reader, and the client's retry completes the deletion: 204, recorded once as the
    deletion of who decided it. Before, the policy was removed first: the retry answered 404
    and the deletion was never recorded. A save under the id of a deletion broken off
    completes that deletion before it creates the policy anew."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing

    async def trail(policy_id: str) -> list[tuple[str, str]]:
        found = await api.get(
            "/v1/directory/audit",
            params={"entity": "sla_policy", "entity_id": policy_id},
            headers=admin,
        )
        return [(entry["action"], entry["actor"]) for entry in found.json()]

    async def broken_off(policy_id: str) -> str:
        path = f"/v1/routing/sla-policies/{policy_id}"
        assert (await api.put(path, json=BILLING_FAST, headers=admin)).status_code == 200
        assert (await api.post(f"{path}/retire", headers=admin)).status_code == 200
        record = FailsFirst(audit.record)
        monkeypatch.setattr(audit, "record", record)
        first = await api.delete(path, headers=admin)
        assert first.status_code == 503, first.text
        monkeypatch.setattr(audit, "record", record.function)
        assert (await api.get(path, headers=admin)).status_code == 404
        listed = (await api.get("/v1/routing/sla-policies", headers=admin)).json()
        assert policy_id not in {policy["id"] for policy in listed}
        reinstated = await api.post(f"{path}/reinstate", headers=admin)
        assert reinstated.status_code == 404, reinstated.text
        return path

    path = await broken_off("unused")
    other_admin = token(system.routing_settings, subject="admin-qian")
    assert (await api.delete(path, headers=other_admin)).status_code == 204
    assert await trail("unused") == [
        ("deleted", "admin-zhao"),
        ("retired", "admin-zhao"),
        ("saved", "admin-zhao"),
    ]
    assert await routing_db(system).sla_policies.find_one({"id": "unused"}) is None
    # Asked again once it is gone (the 204 lost): the same answer, nothing recorded again.
    assert (await api.delete(path, headers=admin)).status_code == 204
    assert len(await trail("unused")) == 3

    path = await broken_off("again")
    created = await api.put(path, json=BILLING_FAST, headers=other_admin)
    assert (created.status_code, created.json()["version"]) == (200, 1), created.text
    assert created.json()["retired_at"] is None
    assert await trail("again") == [
        ("saved", "admin-qian"),
        ("deleted", "admin-zhao"),
        ("retired", "admin-zhao"),
        ("saved", "admin-zhao"),
    ]


async def test_changes_cut_short_after_their_write_are_recorded_and_finished_without_a_retry(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person deactivated and a policy deleted, each request cut short after its write
    (the audit write meets a dropped connection; the process could as well have died), and
    nobody asks again: until 6 December only the entity's next change (or the DELETE
    repeated) wrote the record, so the deactivation was never in the audit trail, and the
    policy stayed marked, hidden from every reader, its deletion never recorded. The queue
    sweep now finishes both, each as its administrator's."""
    system = await system_factory(routing=FAST_TIMERS)
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    path = "/v1/routing/sla-policies/unused"
    assert (await api.put(path, json=BILLING_FAST, headers=admin)).status_code == 200
    assert (await api.post(f"{path}/retire", headers=admin)).status_code == 200
    # Each change's first record fails: the request's own.
    record = audit.record
    failed: set[str] = set()

    async def fails_first_of_each(**arguments: Any) -> None:
        if arguments["entity_id"] not in failed:
            failed.add(arguments["entity_id"])
            raise AutoReconnect("connection closed (injected)")
        await record(**arguments)

    monkeypatch.setattr(audit, "record", fails_first_of_each)
    left = await api.post("/v1/directory/staff/lz-wang/deactivate", headers=admin)
    assert left.status_code == 503, left.text
    deleted = await api.delete(path, headers=admin)
    assert deleted.status_code == 503, deleted.text

    async def trail(entity: str, entity_id: str) -> list[tuple[str, str]]:
        found = await api.get(
            "/v1/directory/audit", params={"entity": entity, "entity_id": entity_id}, headers=admin
        )
        return [(entry["action"], entry["actor"]) for entry in found.json()]

    async def finished() -> bool:
        staff = await trail("staff", "lz-wang")
        policy = await trail("sla_policy", "unused")
        return (
            bool(staff)
            and staff[0] == ("deactivated", "admin-zhao")
            and bool(policy)
            and (policy[0] == ("deleted", "admin-zhao"))
        )

    await eventually(finished, what="both changes recorded by the sweep")
    db = routing_db(system)
    assert await db.sla_policies.find_one({"id": "unused"}) is None
    person = await db.staff.find_one({"id": "lz-wang"})
    assert person["status"] == "inactive" and audit.UNRECORDED not in person


async def test_a_save_overtaken_by_a_deletion_is_refused_not_answered_and_lost(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT checks for a deletion under way, then saves. A DELETE deciding in between (the
    policy marked) used to have the save applied to the marked policy: answered 200 and
    recorded as saved, then removed with it when the deletion completed. Now the save
    leaves the marked policy alone and answers 409; retried, it creates the policy anew."""
    admin = token(system.routing_settings, subject="admin-zhao")
    other_admin = token(system.routing_settings, subject="admin-qian")
    api = system.routing
    path = "/v1/routing/sla-policies/contested"
    assert (await api.put(path, json=BILLING_FAST, headers=admin)).status_code == 200
    assert (await api.post(f"{path}/retire", headers=admin)).status_code == 200
    save_held = HeldFirst(sla_store._write_save)
    monkeypatch.setattr(sla_store, "_write_save", save_held)
    deletion_held = HeldFirst(audit.record)  # the policy is marked; its record waits
    monkeypatch.setattr(audit, "record", deletion_held)
    renamed = {**BILLING_FAST, "name": "改名的时限"}
    async with asyncio.TaskGroup() as requests:
        save = requests.create_task(api.put(path, json=renamed, headers=other_admin))
        await asyncio.wait_for(save_held.entered.wait(), timeout=10)
        deletion = requests.create_task(api.delete(path, headers=admin))
        await asyncio.wait_for(deletion_held.entered.wait(), timeout=10)
        save_held.release.set()
        await save
        deletion_held.release.set()
    assert save.result().status_code == 409, save.result().text
    assert deletion.result().status_code == 204, deletion.result().text
    assert (await api.get(path, headers=admin)).status_code == 404
    found = await api.get(
        "/v1/directory/audit",
        params={"entity": "sla_policy", "entity_id": "contested"},
        headers=admin,
    )
    assert [(entry["action"], entry["actor"]) for entry in found.json()] == [
        ("deleted", "admin-zhao"),
        ("retired", "admin-zhao"),
        ("saved", "admin-zhao"),
    ]
    again = await api.put(path, json=renamed, headers=other_admin)
    assert (again.status_code, again.json()["version"]) == (200, 1), again.text
    assert again.json()["name"] == "改名的时限"


async def test_a_policy_stored_with_a_target_beyond_the_limits_still_routes_complaints(
    system: System,
) -> None:
    """Saved before the limits: 10,000 business hours is over four years of Shanghai's hours,
    more than the business calendar searches. Simulating answered 500, and every complaint
    given the policy failed in the consumer until it was dead-lettered."""
    long_resolve = {"amount": 10_000, "unit": "hours", "basis": "business"}
    await routing_db(system).sla_policies.insert_one(
        {
            "_id": "demo:legacy-long",
            "id": "legacy-long",
            "org": "demo",
            "name": "旧的长时限",
            "categories": ["billing"],
            "targets": {
                "normal": {
                    "acknowledge": {"amount": 4, "unit": "hours", "basis": "business"},
                    "resolve": long_resolve,
                }
            },
            "version": 1,
        }
    )
    admin = token(system.routing_settings)
    simulated = await system.routing.post(
        "/v1/routing/simulate",
        json={"branch": "LZ", "category": "billing", "received_at": MONDAY_10_SHANGHAI.isoformat()},
        headers=admin,
    )
    assert simulated.status_code == 200, simulated.text
    plan = simulated.json()
    assert plan["sla_policy"] == "legacy-long"
    assert at(plan["resolve_due_at"]) == at(plan["clock_starts_at"]) + HORIZON

    async with intake_producer(system) as publish_intake:
        routed = await _routed(system, publish_intake, received_at=MONDAY_10_SHANGHAI)
    assert routed["sla_policy"] == "legacy-long"
    assert routed["resolve_due_at"] == routed["clock_starts_at"] + HORIZON
    resaved = await system.routing.put(
        "/v1/routing/sla-policies/legacy-long",
        json={
            "name": "旧的长时限",
            "targets": {"normal": {"acknowledge": long_resolve, "resolve": long_resolve}},
        },
        headers=admin,
    )
    assert resaved.status_code == 422
    assert {error["field"] for error in resaved.json()["errors"]} == {
        "targets.normal.acknowledge.amount",
        "targets.normal.resolve.amount",
    }
