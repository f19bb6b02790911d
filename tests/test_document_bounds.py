"""What a client can repeat without end stays bounded on the complaint's documents.

A complaint's timeline, resolutions and announcements all live on one document in intake
(and its assignment in routing), and a document may not pass the server's 16 MB: past it
every write to the complaint fails, each request with an error and each event about it as
a dead letter. So what a client can repeat is bounded, with a 409 naming the bound, and
what routing and follow-up did is recorded whatever the count.
"""

from __future__ import annotations

import pytest

from tests.support.http import command, create_complaint, token
from tests.support.routing import assignment_when, routing_db
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


def _intake_db(system: System):
    return system.mongo[system.intake_settings.database_name()]


async def _stored_timeline(system: System, cid: str) -> tuple[int, int]:
    """The counted length of the complaint's timeline and the entries it holds."""
    document = await _intake_db(system).complaints.find_one(
        {"_id": cid}, projection={"timeline_length": 1, "timeline": 1}
    )
    assert document is not None
    return document["timeline_length"], len(document["timeline"])


async def test_commands_stop_at_a_full_timeline_but_ending_it_and_events_go_on(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    from intake import commands

    monkeypatch.setattr(commands, "MAX_TIMELINE_FOR_COMMANDS", 12)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    created = await create_complaint(system, agent)
    cid, base = created["id"], f"/v1/complaints/{created['id']}"
    await assignment_when(system, cid)
    await command(system, f"{base}/acknowledge", {"message_to_customer": "已收到"}, agent)
    refused = None
    for n in range(20):  # wait and resume, as a client looping on them would
        path, body = (
            (f"{base}/pending-customer", {"reason": f"等客户回电 {n}"})
            if n % 2 == 0
            else (f"{base}/resume", {"comment": f"客户已回电 {n}"})
        )
        response = await system.intake.post(path, json=body, headers=agent)
        if response.status_code != 200:
            refused = response
            break
    assert refused is not None, "twenty commands on a timeline bounded at 12 entries"
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    detail = refused.json()["detail"]
    assert f"complaint {created['reference']}'s timeline holds" in detail
    assert "rejected, withdrawn or closed" in detail
    counted, held = await _stored_timeline(system, cid)
    assert counted == held >= 12
    status = (await system.intake.get(base, headers=agent)).json()["status"]

    # Ending it is still allowed, and what routing then does still reaches the timeline.
    withdrawn = await command(system, f"{base}/withdraw", {"reason": "客户撤回投诉"}, agent)
    assert withdrawn["status"] == "withdrawn" and status != "withdrawn"

    async def routing_recorded() -> list[str] | None:
        counted, held = await _stored_timeline(system, cid)
        response = await system.intake.get(f"{base}/timeline", headers=agent)
        actions = [entry["action"] for entry in response.json()["entries"]]
        after = actions[actions.index("withdrawn") + 1 :]
        return after if counted == held and "sla_stopped" in after else None

    # Routing's verdict on the resolve clock it stopped, recorded past the bound.
    await eventually(routing_recorded, timeout_s=20, what="routing's verdict on the timeline")


async def test_commands_stop_at_a_full_record_in_bytes_not_only_in_entries(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts (notes, timeline entries) bound entries, not bytes: long Chinese notes and
    reasons in four-byte characters would take a document past 16 MB well before the
    timeline's 2,000 entries, and every later write to it would fail (a 500, a dead letter
    per event). The record's estimated size now bounds commands too: past it a command is a
    409 naming the record, and the complaint may still be ended. The budget is scaled down
    here to 200 KB; the texts are real and counted twice (timeline and note)."""
    from intake import commands, store

    monkeypatch.setattr(commands, "MAX_RECORD_BYTES", 200_000)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    created = await create_complaint(system, agent)
    cid, base = created["id"], f"/v1/complaints/{created['id']}"

    async def estimated() -> int:
        document = await _intake_db(system).complaints.find_one({"_id": cid})
        assert document is not None
        return document[store.RECORD_BYTES]

    registered = await estimated()
    assert registered > 500  # the registered document, subject and description among it
    long_note = "𠀀客户反映宽带断网" * 400  # 4,000 characters, most of three or four bytes
    refused = None
    for _ in range(20):
        response = await system.intake.post(
            f"{base}/notes", json={"text": long_note, "visibility": "internal"}, headers=agent
        )
        if response.status_code != 200:
            refused = response
            break
    assert refused is not None, "twenty notes of 4,000 characters past a 200 KB record"
    assert refused.status_code == 409, refused.text
    assert f"complaint {created['reference']}'s record holds" in refused.json()["detail"]
    held = await estimated()
    notes = len((await system.intake.get(base, headers=agent)).json()["notes"])
    # Each note counted at least twice its UTF-8 text: in the timeline and as the note.
    assert held - registered >= notes * 2 * len(long_note.encode())
    assert 200_000 <= held < 200_000 + 2 * 2 * len(long_note.encode()) + 4_000
    withdrawn = await command(system, f"{base}/withdraw", {"reason": "客户撤回投诉"}, agent)
    assert withdrawn["status"] == "withdrawn"


async def test_a_complaint_is_resolved_a_bounded_number_of_times(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    from intake import commands

    monkeypatch.setattr(commands, "MAX_RESOLUTIONS", 2)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    created = await create_complaint(system, agent)
    base = f"/v1/complaints/{created['id']}"
    for n in (1, 2):
        resolved = await command(system, f"{base}/resolve", {"summary": f"第{n}次处理"}, agent)
        assert resolved["resolution"]["number"] == n
        await command(system, f"{base}/reopen", {"reason": f"客户第{n}次不满意"}, supervisor)
    third = await system.intake.post(f"{base}/resolve", json={"summary": "第3次"}, headers=agent)
    assert third.status_code == 409, third.text
    assert f"{created['reference']} was resolved 2 times" in third.json()["detail"]
    record = (await system.intake.get(base, headers=agent)).json()
    assert (record["status"], record["resolution"]["number"]) == ("reopened", 2)
    rejected = await command(
        system,
        f"{base}/reject",
        {"reason_code": "duplicate", "explanation": "已在另一投诉中处理"},
        supervisor,
    )
    assert rejected["status"] == "rejected"


async def test_supervisor_actions_on_an_assignment_are_bounded_but_the_filing_is_not(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    from routing.assignments import commands

    monkeypatch.setattr(commands, "MAX_SUPERVISOR_ACTIONS", 3)
    admin = token(system.intake_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    # A major incident: it carries a regulatory report deadline.
    created = await create_complaint(
        system, admin, category="medical", severity="critical", subject="输液后过敏性休克"
    )
    cid = created["id"]
    await assignment_when(system, cid)
    path = f"/v1/assignments/{cid}/responsibility"
    for department in ("LZ:NETWORK", "LZ:BILLING", "LZ:NETWORK"):
        body = {"responsible_department": department}
        response = await system.routing.post(path, json=body, headers=supervisor)
        assert response.status_code == 200, response.text
    fourth = await system.routing.post(
        path, json={"responsible_department": "LZ:BILLING"}, headers=supervisor
    )
    assert fourth.status_code == 409, fourth.text
    assert f"complaint {cid} has had 3 supervisor actions" in fourth.json()["detail"]
    stored = await routing_db(system).assignments.find_one({"_id": cid})
    assert stored is not None
    assert (stored["responsible_department"], stored["supervisor_actions"]) == ("LZ:NETWORK", 3)

    # The filing is a legal obligation's record, not one more action to bound.
    filed = await system.routing.post(
        f"/v1/assignments/{cid}/regulatory-report",
        json={"reference": "卫健委-2026-101"},
        headers=supervisor,
    )
    assert filed.status_code == 200, filed.text
    assert filed.json()["regulatory_report_reference"] == "卫健委-2026-101"
