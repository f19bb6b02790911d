"""Intake lifecycle commands over HTTP: each is one event and one timeline entry."""

from __future__ import annotations

import pytest

from complaints_shared.envelope import from_kafka_record
from complaints_shared.events import Topic
from tests.support.http import command, complaint_body, token
from tests.support.kafka import read_topic, short_type
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

    acked = await command(
        system,
        f"{base}/acknowledge",
        {"promised_response_at": "2026-11-24T10:00:00Z", "message_to_customer": "今天内回复您"},
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
    again = await command(system, f"{base}/resolve", {"summary": "关闭增值业务"}, agent)
    assert again["resolution"]["number"] == 2
    closed = await command(system, f"{base}/close", {"reason": "客户电话确认满意"}, supervisor)
    assert closed["status"] == "closed" and closed["closed_at"]

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

    async def intake_events() -> list[str] | None:
        records = await read_topic(
            bootstrap_servers=system.infra.kafka_bootstrap_servers,
            topic=system.topic(Topic.INTAKE),
            until=lambda rs: len(rs) >= len(expected) + 1,
        )
        events = [from_kafka_record(record.value, record.headers) for record in records]
        types = [short_type(event.type) for event in events if event.subject == cid]
        return types if len(types) >= len(expected) + 1 else None

    types = await eventually(intake_events, timeout_s=15, what="all lifecycle events")
    # One partition per complaint (key = complaint id), so the order is the command order.
    assert types == ["complaint.received", *expected]

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
