"""Integration: queued work follows its rule's required skill (Kafka, Mongo).

The skill a rule asks for is copied onto each assignment it places. A change of the rule
(its skill dropped or replaced, or the rule deactivated) reaches the queued and open work it
placed, and the queues where that work waits are offered it at once; a complaint a
supervisor moved to another department is no rule's any more and keeps what the move gave
it. A person's deactivation names the skills it leaves nobody active of the department with.
"""

from __future__ import annotations

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import Category, CustomerContact
from routing.assignments import placement, routing_context, rule_changes
from tests.support.events import received
from tests.support.faults import FailsFirst
from tests.support.http import create_complaint, token
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    CachedBeforeTheChange,
    assignment_when,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

VIP_RULE = "demo:vip-customers"


async def _vip_complaint(system: System, phone: str) -> str:
    """A VIP customer's service complaint in Lanzhou: the demo's VIP rule sends it to LZ:CS,
    for someone with the ``vip`` skill (only 王芳, lz-wang, has it)."""
    created = await create_complaint(
        system,
        token(system.intake_settings, roles=("supervisor",)),
        category="other",
        subject="营业员态度差",
        description="营业厅营业员态度恶劣，拒绝解释收费。",
        customer={"name": "王女士", "phone": phone, "vip": True},
    )
    return created["id"]


async def _vip_rule_action(system: System, admin: dict[str, str], **changes: object) -> dict:
    """The VIP rule's action with ``changes`` (a None removes the field)."""
    rule = await system.routing.get(f"/v1/routing/rules/{VIP_RULE}", headers=admin)
    assert rule.status_code == 200, rule.text
    action = {**rule.json()["action"], **changes}
    return {key: value for key, value in action.items() if value is not None}


def _skill_changes(document: dict) -> list[dict]:
    return [entry for entry in document["history"] if entry["action"] == "required_skill_changed"]


async def test_queued_vip_work_is_assigned_at_once_when_the_rule_drops_the_skill(
    system_factory: SystemFactory,
) -> None:
    """lz-wang, LZ:CS's only agent with the ``vip`` skill, leaves: the answer says the VIP
    rule now asks LZ:CS for a skill nobody active there has. A VIP complaint then waits in
    the queue for it; the administrator drops the skill from the rule. Until 5 December the
    waiting complaint kept the rule's old skill (copied at placement) and waited, sweep after
    sweep, while newer VIP complaints went straight to 李强, until its clocks breached. Now
    the change reaches it and the queue is offered it before the PATCH is answered; the
    same PATCH again changes nothing more."""
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.routing_settings)
    left = await system.routing.post("/v1/directory/staff/lz-wang/deactivate", headers=admin)
    assert left.status_code == 200, left.text
    assert left.json()["skills_uncovered"] == [
        {"skill": "vip", "department": "LZ:CS", "queued": 0, "rules": [VIP_RULE]}
    ]

    complaint_id = await _vip_complaint(system, "+86 139-0000-1111")
    waiting = await assignment_when(system, complaint_id, lambda d: d["status"] == "queued")
    assert (waiting["department"], waiting["required_skill"]) == ("LZ:CS", "vip")

    body = {"action": await _vip_rule_action(system, admin, required_skill=None)}
    changed = await system.routing.patch(f"/v1/routing/rules/{VIP_RULE}", json=body, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["action"].get("required_skill") is None

    # Offered within the request: no sweep has to come first.
    taken = await routing_db(system).assignments.find_one({"_id": complaint_id})
    assert (taken["status"], taken["owner_id"], taken["required_skill"]) == (
        "open",
        "lz-li",
        None,
    )
    assert taken["rule_version"] == waiting["rule_version"]  # still the version that matched
    [applied] = _skill_changes(taken)
    assert applied["details"]["previous"] == "vip"
    assert applied["details"]["rule_version"] == changed.json()["version"]

    again = await system.routing.patch(f"/v1/routing/rules/{VIP_RULE}", json=body, headers=admin)
    assert again.status_code == 200, again.text
    assert again.json()["version"] == changed.json()["version"]
    repeated = await routing_db(system).assignments.find_one({"_id": complaint_id})
    assert len(_skill_changes(repeated)) == 1


async def test_a_rules_new_skill_and_its_deactivation_reach_its_queue_not_work_moved_away(
    system_factory: SystemFactory,
) -> None:
    """Two VIP complaints wait for lz-wang, who has no room; a supervisor moves the second to
    LZ:SALES (full too), which clears its skill. lz-wang's deactivation then names the
    ``vip`` skill with the one complaint still waiting for it. The rule's skill is replaced:
    the complaint the rule placed takes the new one, the moved one keeps none (a rule's
    change never overrides the move). Deactivating the rule leaves its complaint needing no
    skill at all, and LZ:CS's queue gives it to 李强 at once."""
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.routing_settings)
    for person in ("lz-wang", "lz-zhang"):
        full = await system.routing.patch(
            f"/v1/directory/staff/{person}", json={"capacity": 0}, headers=admin
        )
        assert full.status_code == 200, full.text
    placed = await _vip_complaint(system, "+86 139-0000-2222")
    moved = await _vip_complaint(system, "+86 139-0000-3333")
    for complaint_id in (placed, moved):
        await assignment_when(system, complaint_id, lambda d: d["status"] == "queued")
    supervisor = token(system.routing_settings, roles=("supervisor",))
    reassigned = await system.routing.post(
        f"/v1/assignments/{moved}/reassign",
        json={"reason": "转市场营销部核实套餐", "department": "LZ:SALES"},
        headers=supervisor,
    )
    assert reassigned.status_code == 200, reassigned.text
    moved_away = await routing_db(system).assignments.find_one({"_id": moved})
    assert (moved_away["status"], moved_away["department"]) == ("queued", "LZ:SALES")
    assert moved_away["required_skill"] is None

    left = await system.routing.post("/v1/directory/staff/lz-wang/deactivate", headers=admin)
    assert left.status_code == 200, left.text
    assert left.json()["skills_uncovered"] == [
        {"skill": "vip", "department": "LZ:CS", "queued": 1, "rules": [VIP_RULE]}
    ]

    body = {"action": await _vip_rule_action(system, admin, required_skill="大客户")}
    changed = await system.routing.patch(f"/v1/routing/rules/{VIP_RULE}", json=body, headers=admin)
    assert changed.status_code == 200, changed.text
    still = await routing_db(system).assignments.find_one({"_id": placed})
    assert (still["status"], still["required_skill"]) == ("queued", "大客户")
    untouched = await routing_db(system).assignments.find_one({"_id": moved})
    assert (untouched["department"], untouched["required_skill"]) == ("LZ:SALES", None)
    assert _skill_changes(untouched) == []

    deactivated = await system.routing.delete(f"/v1/routing/rules/{VIP_RULE}", headers=admin)
    assert deactivated.status_code == 200, deactivated.text
    taken = await routing_db(system).assignments.find_one({"_id": placed})
    assert (taken["status"], taken["owner_id"], taken["required_skill"]) == (
        "open",
        "lz-li",
        None,
    )
    assert [entry["details"]["required_skill"] for entry in _skill_changes(taken)] == [
        "大客户",
        None,
    ]
    assert (await routing_db(system).assignments.find_one({"_id": moved}))["status"] == "queued"


async def test_work_a_replica_placed_with_its_older_copy_of_the_rule_follows_the_rule_later(
    system_factory: SystemFactory,
) -> None:
    """The administrator drops the VIP rule's skill, and nobody active has it any more; another
    replica, its cached rules older than the change, places a VIP complaint with the old
    skill just after. Until 5 December it waited in LZ:CS's queue for the skill for good (the
    rule's change had looked its work over before that complaint existed). The rule's work is
    now looked over again once every replica's copy is renewed, and 李强 takes it."""
    max_age_s, skew_s = 3.0, 0.5
    system = await system_factory(
        clock=ManualClock(MONDAY_10_SHANGHAI),
        routing={
            **FAST_TIMERS,
            "routing_context_max_age_s": max_age_s,
            "replica_clock_skew_s": skew_s,
        },
    )
    admin = token(system.routing_settings)
    left = await system.routing.post("/v1/directory/staff/lz-wang/deactivate", headers=admin)
    assert left.status_code == 200, left.text
    vip = received(
        category=Category.OTHER,
        subject="营业员态度差",
        description="营业厅营业员态度恶劣，拒绝解释收费。",
        customer=CustomerContact(name="王女士", phone="+86 139-0000-4444", vip=True),
        received_at=MONDAY_10_SHANGHAI,
    )
    db = routing_db(system)
    cached = await routing_context.load_context(db=db, complaint=vip)

    body = {"action": await _vip_rule_action(system, admin, required_skill=None)}
    changed = await system.routing.patch(f"/v1/routing/rules/{VIP_RULE}", json=body, headers=admin)
    assert changed.status_code == 200, changed.text

    # The other replica places the complaint with the rule as it had it.
    await placement.route_received(
        db=db,
        settings=system.routing_settings,
        complaint=vip,
        now=MONDAY_10_SHANGHAI,
        contexts=CachedBeforeTheChange(cached),  # type: ignore[arg-type]
    )
    placed = await db.assignments.find_one({"_id": vip.complaint_id})
    assert (placed["status"], placed["required_skill"]) == ("queued", "vip")
    assert placed["skill_rule_version"] < changed.json()["version"]

    taken = await assignment_when(
        system,
        vip.complaint_id,
        lambda d: d["status"] == "open",
        what="the complaint given to 李强 once the rule's work was looked over again",
        timeout_s=max_age_s + skew_s + 15,
    )
    assert (taken["owner_id"], taken["required_skill"]) == ("lz-li", None)
    [applied] = _skill_changes(taken)
    assert applied["actor"] == "routing"

    # The look-over is unset after its work (the drain that gave it to 李强): once, not again.
    async def looked_over() -> bool:
        return "look_over_at" not in await db.rules.find_one({"_id": VIP_RULE})

    await eventually(looked_over, what="the rule's look-over unset after its work")


async def test_a_rule_change_cut_short_after_its_save_still_reaches_the_queued_work(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The administrator drops the VIP rule's skill; the new version is saved, then the
    request's own pass over the rule's work meets the database away (a 503), and nobody
    repeats the request (its process was killed in the same way). Until 6 December the
    look-over was planned after that pass, so nothing planned it: the VIP complaint waited
    in LZ:CS's queue for a skill nobody active has, for good. The save plans it now."""
    max_age_s, skew_s = 2.0, 0.5
    system = await system_factory(
        clock=ManualClock(MONDAY_10_SHANGHAI),
        routing={
            **FAST_TIMERS,
            "routing_context_max_age_s": max_age_s,
            "replica_clock_skew_s": skew_s,
        },
    )
    admin = token(system.routing_settings)
    left = await system.routing.post("/v1/directory/staff/lz-wang/deactivate", headers=admin)
    assert left.status_code == 200, left.text
    complaint_id = await _vip_complaint(system, "+86 139-0000-5555")
    await assignment_when(system, complaint_id, lambda d: d["status"] == "queued")

    monkeypatch.setattr(rule_changes, "follow_rule", FailsFirst(rule_changes.follow_rule))
    body = {"action": await _vip_rule_action(system, admin, required_skill=None)}
    changed = await system.routing.patch(f"/v1/routing/rules/{VIP_RULE}", json=body, headers=admin)
    assert changed.status_code == 503, changed.text
    saved = await routing_db(system).rules.find_one({"_id": VIP_RULE})
    assert saved["action"]["required_skill"] is None

    taken = await assignment_when(
        system,
        complaint_id,
        lambda d: d["status"] == "open",
        what="the complaint given to 李强 by the look-over the saved change planned",
        timeout_s=max_age_s + skew_s + 15,
    )
    assert (taken["owner_id"], taken["required_skill"]) == ("lz-li", None)
    [applied] = _skill_changes(taken)
    assert (applied["actor"], applied["details"]["rule_version"]) == ("routing", saved["version"])
