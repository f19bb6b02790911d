"""Routing's record stays true when intake's news comes late, early or out of the usual order.

- A manual escalation climbs the chain of the department handling the complaint now.
"""

from __future__ import annotations

from typing import Any

import pytest

from complaints_shared.events import EventType
from routing.assignments import routing_context
from tests.support.events import received
from tests.support.http import token
from tests.support.kafka import intake_producer
from tests.support.routing import assignment_when
from tests.support.system import System

integration = pytest.mark.integration


# ------------------------------------------------ a manual escalation racing a move --


@integration
async def test_a_manual_escalation_racing_a_reassignment_climbs_the_new_departments_chain(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    complaint = received()  # LZ billing: team lead lz-gao
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    await assignment_when(system, cid, lambda d: d["department"] == "LZ:BILLING")
    supervisor = token(system.routing_settings, roles=("supervisor",))
    escalation_targets = routing_context.escalation_targets
    moved: list[bool] = []

    async def reassigned_meanwhile(**arguments: Any) -> Any:
        targets = await escalation_targets(**arguments)
        if not moved:  # the reassignment lands while the escalation is being decided
            moved.append(True)
            answer = await system.routing.post(
                f"/v1/assignments/{cid}/reassign",
                json={"department": "LZ:CS", "reason": "转客户服务部"},
                headers=supervisor,
            )
            assert answer.status_code == 200, answer.text
        return targets

    monkeypatch.setattr(routing_context, "escalation_targets", reassigned_meanwhile)
    escalated = await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": "客户投诉升级"}, headers=supervisor
    )
    assert escalated.status_code == 200, escalated.text
    body = escalated.json()
    assert body["department"] == "LZ:CS"
    assert body["escalations"][-1]["escalated_to_id"] == "lz-hu"  # CS's team lead
