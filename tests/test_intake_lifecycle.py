"""Intake lifecycle commands over HTTP: each is one event and one timeline entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.envelope import from_kafka_record
from complaints_shared.events import Topic
from tests.support.http import command, complaint_body, complaint_when, create_complaint, token
from tests.support.kafka import read_topic, short_type
from tests.support.routing import assignment_when
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_every_command_in_a_full_lifecycle_emits_one_event_and_one_entry(
    system: System,
) -> None:
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    created = await system.intake.post("/v1/complaints", json=complaint_body(), headers=agent)
    cid = created.json()["id"]
    base = f"/v1/complaints/{cid}"

    # A promise already past when made is refused, naming it (it was stored until 5 December).
    broken = await system.intake.post(
        f"{base}/acknowledge", json={"promised_response_at": "2020-01-01T00:00:00Z"}, headers=agent
    )
    assert broken.status_code == 422, broken.text
    assert [error["field"] for error in broken.json()["errors"]] == ["promised_response_at"]
    promised = (datetime.now(UTC) + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    acked = await command(
        system,
        f"{base}/acknowledge",
        {"promised_response_at": promised, "message_to_customer": "今天内回复您"},
        agent,
    )
    assert acked["status"] == "open" and acked["acknowledged_at"]
    assert acked["acknowledgement"]["message_to_customer"] == "今天内回复您"
    noted = await command(system, f"{base}/notes", {"text": "已调取账单明细"}, agent)
    assert noted["status"] == "open" and noted["work_started_at"]
    assert noted["notes"][0]["visibility"] == "internal"
    waiting = await command(
        system, f"{base}/pending-customer", {"reason": "等客户提供缴费凭证"}, agent
    )
    assert waiting["status"] == "pending_customer"
    resumed = await command(system, f"{base}/resume", {"comment": "凭证已收到"}, agent)
    assert resumed["status"] == "open"
    resolved = await command(
        system,
        f"{base}/resolve",
        {
            "summary": "退还多扣费用并致歉",
            "root_cause": "billing_system_error",
            "responsible_department": "LZ:BILLING",
            "responsible_party": "company",
            "remedies": [
                {"type": "refund", "amount": "30.00", "currency": "CNY"},
                {"type": "apology"},
            ],
            "customer_accepted": True,
        },
        agent,
    )
    assert resolved["status"] == "resolved"
    assert resolved["resolution"]["remedies"][0]["amount"] == "30.00"
    assert resolved["responsible_department"] == "LZ:BILLING"
    reopened = await command(system, f"{base}/reopen", {"reason": "客户来电称仍被扣费"}, supervisor)
    assert reopened["status"] == "reopened" and reopened["reopen_count"] == 1
    # The facts docs/intake.md lists on the record are in the answer, not only stored.
    assert reopened["last_reopen_reason"] == "客户来电称仍被扣费"
    assert reopened["sla_breached"] is False
    again = await command(system, f"{base}/resolve", {"summary": "关闭增值业务"}, agent)
    assert again["resolution"]["number"] == 2
    closed = await command(system, f"{base}/close", {"reason": "客户电话确认满意"}, supervisor)
    assert closed["status"] == "closed" and closed["closed_at"]
    assert closed["closed_via"] == "admin"

    expected = [
        "complaint.acknowledged",
        "complaint.note_added",
        "complaint.pending_customer",
        "complaint.resumed",
        "complaint.resolved",
        "complaint.reopened",
        "complaint.resolved",
        "complaint.closed",
    ]

    async def intake_events() -> list | None:
        records = await read_topic(
            bootstrap_servers=system.infra.kafka_bootstrap_servers,
            topic=system.topic(Topic.INTAKE),
            until=lambda rs: len(rs) >= len(expected) + 1,
        )
        events = [from_kafka_record(record.value, record.headers) for record in records]
        mine = [event for event in events if event.subject == cid]
        return mine if len(mine) >= len(expected) + 1 else None

    events = await eventually(intake_events, timeout_s=15, what="all lifecycle events")
    # One partition per complaint (key = complaint id), so the order is the command order.
    assert [short_type(event.type) for event in events] == ["complaint.received", *expected]
    # The reopen says which resolutions it undid: follow-up's checks of those are moot.
    [reopen] = [event for event in events if short_type(event.type) == "complaint.reopened"]
    assert (reopen.data["reopen_count"], reopen.data["resolution_count"]) == (1, 1)

    timeline = (await system.intake.get(f"{base}/timeline", headers=agent)).json()["entries"]
    actions = [entry["action"] for entry in timeline]
    for action in [
        "received",
        "acknowledged",
        "note_added",
        "paused_for_customer",
        "resumed",
        "reopened",
        "closed",
    ]:
        assert action in actions, action
    assert actions.count("resolved") == 2
    commands = [entry for entry in timeline if entry["actor"] == "tester"]
    assert all(entry["cause"] == "command" and entry["event_id"] is None for entry in commands)
    assert all(entry["event_id"] for entry in timeline if entry["cause"] != "command")
    (closing,) = [entry for entry in timeline if entry["action"] == "closed"]
    assert (closing["status_from"], closing["status_to"]) == ("resolved", "closed")
    assert all(entry["actor"] for entry in timeline)


async def test_illegal_transitions_are_409_problems_naming_state_and_command(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    cid = (await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)).json()[
        "id"
    ]
    close_early = await system.intake.post(
        f"/v1/complaints/{cid}/close", json={"reason": "x"}, headers=admin
    )
    assert close_early.status_code == 409
    problem = close_early.json()
    assert problem["current_status"] in {"received", "open"}
    assert problem["command"] == "close"
    assert problem["type"].endswith("/invalid-transition")

    await command(
        system,
        f"/v1/complaints/{cid}/reject",
        {"reason_code": "out_of_scope", "explanation": "不属于本公司业务范围"},
        admin,
    )
    for path, body in [
        ("resolve", {"summary": "x"}),
        ("acknowledge", {}),
        ("reopen", {"reason": "x"}),
        ("withdraw", {}),
    ]:
        response = await system.intake.post(
            f"/v1/complaints/{cid}/{path}", json=body, headers=admin
        )
        assert response.status_code == 409, path
        assert response.json()["current_status"] == "rejected"


async def test_roles_decide_who_may_reopen_and_close(system: System) -> None:
    agent = token(system.intake_settings, roles=("agent",))
    cid = (await system.intake.post("/v1/complaints", json=complaint_body(), headers=agent)).json()[
        "id"
    ]
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已处理"}, agent)
    for path in ("reopen", "close"):
        response = await system.intake.post(
            f"/v1/complaints/{cid}/{path}", json={"reason": "x"}, headers=agent
        )
        assert response.status_code == 403, path
        assert "supervisor" in response.json()["detail"]
    document = await system.mongo[system.intake_settings.database_name()].complaints.find_one(
        {"_id": cid}
    )
    assert document["status"] == "resolved"


async def test_a_reopened_complaint_says_nobody_closed_it(system: System) -> None:
    """A reopen cleared ``closed_at`` but left ``closed_via``: a complaint closed and
    reopened answered ``status: reopened, closed_via: admin``."""
    supervisor = token(system.intake_settings, roles=("supervisor",))
    cid = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=supervisor)
    ).json()["id"]
    base = f"/v1/complaints/{cid}"
    await command(system, f"{base}/resolve", {"summary": "已处理"}, supervisor)
    closed = await command(system, f"{base}/close", {"reason": "客户确认"}, supervisor)
    assert (closed["status"], closed["closed_via"]) == ("closed", "admin")
    reopened = await command(system, f"{base}/reopen", {"reason": "客户再次来电"}, supervisor)
    assert (reopened["status"], reopened["closed_at"], reopened["closed_via"]) == (
        "reopened",
        None,
        None,
    )
    assert "closed_via" not in await _stored(system, cid)


async def _stored(system: System, cid: str) -> dict:
    return await system.mongo[system.intake_settings.database_name()].complaints.find_one(
        {"_id": cid}
    )


async def test_a_complaint_waiting_on_the_customer_is_rejected_and_routing_stops_its_clocks(
    system: System,
) -> None:
    """不予受理 once the evidence asked for never came: refused (409) while waiting."""
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = (await create_complaint(system, agent))["id"]
    await complaint_when(system, cid, agent, lambda c: c["status"] == "open", what="routed")
    waiting = await command(
        system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等缴费凭证"}, agent
    )
    assert waiting["pending_customer_since"] is not None
    await assignment_when(system, cid, lambda doc: doc.get("paused"), what="clocks paused")
    rejected = await command(
        system,
        f"/v1/complaints/{cid}/reject",
        {"reason_code": "insufficient_information", "explanation": "客户未提供凭证"},
        agent,
    )
    assert rejected["status"] == "rejected"
    assert rejected["pending_customer_since"] is None
    assert "pending_customer_since" not in await _stored(system, cid)
    stopped = await assignment_when(
        system, cid, lambda doc: doc["status"] == "rejected", what="assignment rejected"
    )
    assert {clock["state"] for clock in stopped["clocks"].values()} == {"stopped"}
    assert stopped["next_timer_at"] is None


async def test_resolving_or_withdrawing_while_waiting_ends_the_wait(system: System) -> None:
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    withdrawal = {"reason": "客户已自行解决"}
    for path, body in (("resolve", {"summary": "客户来电已解决"}), ("withdraw", withdrawal)):
        cid = (await create_complaint(system, agent, subject=f"等客户回复后{path}"))["id"]
        await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
        await command(system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等"}, agent)
        finished = await command(system, f"/v1/complaints/{cid}/{path}", body, agent)
        assert finished["pending_customer_since"] is None, path
        assert "pending_customer_since" not in await _stored(system, cid), path
    assert finished["withdrawal_reason"] == "客户已自行解决"


async def test_resuming_a_reopened_complaint_returns_it_to_reopened(system: System) -> None:
    """It went back to open, so a status=reopened list lost it."""
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    cid = (await create_complaint(system, agent))["id"]
    base = f"/v1/complaints/{cid}"
    await command(system, f"{base}/resolve", {"summary": "已退费"}, agent)
    await command(system, f"{base}/reopen", {"reason": "仍被扣费"}, supervisor)
    await command(system, f"{base}/pending-customer", {"reason": "等账单截图"}, agent)
    resumed = await command(system, f"{base}/resume", {"comment": "截图已收到"}, agent)
    assert resumed["status"] == "reopened"
    timeline = (await system.intake.get(f"{base}/timeline", headers=agent)).json()["entries"]
    (entry,) = [e for e in timeline if e["action"] == "resumed"]
    assert (entry["status_from"], entry["status_to"]) == ("pending_customer", "reopened")
    listed = await system.intake.get("/v1/complaints", params={"status": "reopened"}, headers=agent)
    assert cid in [item["id"] for item in listed.json()["items"]]
    # A first wait (never reopened) still resumes to open.
    other = (await create_complaint(system, agent, subject="首次等待"))["id"]
    await command(system, f"/v1/complaints/{other}/acknowledge", {}, agent)
    await command(system, f"/v1/complaints/{other}/pending-customer", {"reason": "等"}, agent)
    first = await command(system, f"/v1/complaints/{other}/resume", {}, agent)
    assert first["status"] == "open"


async def test_a_remedy_paid_after_closure_is_recorded_without_reopening(system: System) -> None:
    """A goodwill payment made after the closure: before, only a reopen could record it,
    which escalated the complaint and scheduled new follow-up calls."""
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    cid = (await create_complaint(system, agent))["id"]
    base = f"/v1/complaints/{cid}"
    early = await system.intake.post(
        f"{base}/remedies", json={"type": "refund", "amount": "30.00"}, headers=agent
    )
    assert early.status_code == 409, early.text
    assert early.json()["command"] == "record_remedy"
    await command(
        system,
        f"{base}/resolve",
        {"summary": "退还多扣费用", "remedies": [{"type": "refund", "amount": "30.00"}]},
        agent,
    )
    await command(system, f"{base}/close", {"reason": "客户确认"}, supervisor)
    goodwill = {"type": "compensation", "amount": "50.00", "description": "补偿话费"}
    recorded = await command(system, f"{base}/remedies", goodwill, agent)
    assert recorded["status"] == "closed" and recorded["reopen_count"] == 0
    later = recorded["resolution"]["remedies"][-1]
    assert (later["type"], later["amount"], later["currency"]) == ("compensation", "50.00", "CNY")
    assert later["recorded_by"] == "tester" and later["recorded_at"]
    assert [r["type"] for r in recorded["resolutions"][0]["remedies"]] == ["refund", "compensation"]

    def of_complaint(records: list) -> list:
        events = [from_kafka_record(record.value, record.headers) for record in records]
        return [event for event in events if event.subject == cid]

    def remedy_published(records: list) -> bool:
        events = of_complaint(records)
        return bool(events) and short_type(events[-1].type) == "complaint.remedy_recorded"

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.INTAKE),
        until=remedy_published,
    )
    events = of_complaint(records)
    types = [short_type(event.type) for event in events]
    assert types[-1] == "complaint.remedy_recorded" and "complaint.reopened" not in types
    assert types.count("complaint.resolved") == 1  # nothing for follow-up to call about again
    assert events[-1].data["resolution_number"] == 1
    assert events[-1].data["remedy"]["amount"] == "50.00"
    timeline = (await system.intake.get(f"{base}/timeline", headers=agent)).json()["entries"]
    (entry,) = [entry for entry in timeline if entry["action"] == "remedy_recorded"]
    assert entry["status_to"] is None and entry["details"]["type"] == "compensation"

    # A resolution holds ten remedies at the most, given with it or recorded after it.
    for _ in range(8):
        await command(system, f"{base}/remedies", {"type": "apology"}, agent)
    eleventh = await system.intake.post(f"{base}/remedies", json={"type": "apology"}, headers=agent)
    assert eleventh.status_code == 409, eleventh.text
    assert "holds 10 remedies" in eleventh.json()["detail"]


async def test_a_complaint_holds_a_bounded_number_of_notes(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notes stay on the complaint's document: past ``MAX_NOTES`` a note is a 409 naming the
    limit, and the complaint stays as it was (the document may not grow without end)."""
    from intake import commands

    monkeypatch.setattr(commands, "MAX_NOTES", 3)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    created = await create_complaint(system, agent)
    base = f"/v1/complaints/{created['id']}"
    for n in range(3):
        await command(system, f"{base}/notes", {"text": f"第{n + 1}次回电记录"}, agent)
    fourth = await system.intake.post(f"{base}/notes", json={"text": "第4次"}, headers=agent)
    assert fourth.status_code == 409, fourth.text
    assert fourth.headers["content-type"].startswith("application/problem+json")
    assert f"{created['reference']} holds 3 notes" in fourth.json()["detail"]
    record = (await system.intake.get(base, headers=agent)).json()
    assert [note["text"] for note in record["notes"]] == [f"第{n + 1}次回电记录" for n in range(3)]
