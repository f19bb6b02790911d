"""A client retrying a command after a lost or failed answer does it once.

A command's write can commit and its answer still fail: the connection drops before
the read after the write (a 503 the client is told to retry), or the answer is lost on
the way back. Commands whose repeat is a second effect (a note, a remedy, an escalation
rung, a move to the next owner) take an ``Idempotency-Key``: the kernel remembers it on
the document in the write that makes the change, so the retry changes nothing and answers
the document as it is, marked ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ServerSelectionTimeoutError

from complaints_shared import aggregate
from tests.support.faults import FailsAfter
from tests.support.http import BROADBAND_COMPLAINT, assigned, token
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def _assigned_complaint(system: System, admin: dict) -> str:
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    await eventually(lambda: assigned(system, complaint_id, admin), what="assignment on record")
    return complaint_id


async def test_a_note_retried_after_a_503_that_had_committed_is_added_once(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = token(system.intake_settings)
    complaint_id = await _assigned_complaint(system, admin)
    path = f"/v1/complaints/{complaint_id}/notes"
    note = {"text": "已电话联系客户，约定明早上门"}
    keyed = {**admin, "Idempotency-Key": "crm-note-7781"}

    # The write commits, then the connection drops before the answer is read.
    monkeypatch.setattr(aggregate, "update_and_read", FailsAfter(aggregate.update_and_read))
    failed = await system.intake.post(path, json=note, headers=keyed)
    assert failed.status_code == 503, failed.text
    assert failed.headers["Retry-After"]

    retried = await system.intake.post(path, json=note, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert [n["text"] for n in retried.json()["notes"]] == [note["text"]]
    assert retried.headers["Idempotent-Replayed"] == "true"
    again = await system.intake.post(path, json=note, headers=keyed)
    assert again.headers["Idempotent-Replayed"] == "true"

    timeline = await system.intake.get(f"/v1/complaints/{complaint_id}/timeline", headers=admin)
    actions = [entry["action"] for entry in timeline.json()["entries"]]
    assert actions.count("note_added") == 1

    # The same key for another body is the client's mistake: a 422 naming the header.
    other = await system.intake.post(path, json={"text": "另一条备注"}, headers=keyed)
    assert other.status_code == 422, other.text
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    # Another caller's key of the same text is theirs: applied.
    theirs = {
        **token(system.intake_settings, subject="agent-2"),
        "Idempotency-Key": "crm-note-7781",
    }
    by_other = await system.intake.post(path, json=note, headers=theirs)
    assert by_other.status_code == 200 and "Idempotent-Replayed" not in by_other.headers
    assert len(by_other.json()["notes"]) == 2
    # Without a key a command is applied each time, as before.
    unkeyed = await system.intake.post(path, json=note, headers=admin)
    assert len(unkeyed.json()["notes"]) == 3


async def test_a_remedy_retried_under_its_key_is_recorded_once(system: System) -> None:
    admin = token(system.intake_settings)
    complaint_id = await _assigned_complaint(system, admin)
    resolved = await system.intake.post(
        f"/v1/complaints/{complaint_id}/resolve",
        json={"summary": "已恢复宽带并致歉"},
        headers=admin,
    )
    assert resolved.status_code == 200, resolved.text
    remedy = {"type": "compensation", "amount": "50.00", "description": "补偿一个月费用"}
    keyed = {**admin, "Idempotency-Key": "refund-2026-12-04-001"}
    path = f"/v1/complaints/{complaint_id}/remedies"
    first = await system.intake.post(path, json=remedy, headers=keyed)
    assert first.status_code == 200, first.text
    retried = await system.intake.post(path, json=remedy, headers=keyed)
    assert retried.status_code == 200, retried.text
    remedies = retried.json()["resolution"]["remedies"]
    assert len(remedies) == len(first.json()["resolution"]["remedies"])
    assert retried.headers["Idempotent-Replayed"] == "true"


async def test_an_escalation_retried_after_a_503_that_had_committed_climbs_one_rung(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = token(system.intake_settings)
    complaint_id = await _assigned_complaint(system, admin)
    supervisor = {
        **token(system.routing_settings, roles=("supervisor",)),
        "Idempotency-Key": "esc-0931",
    }
    path = f"/v1/assignments/{complaint_id}/escalate"
    monkeypatch.setattr(aggregate, "update_and_read", FailsAfter(aggregate.update_and_read))
    failed = await system.routing.post(path, json={"reason": "客户情绪激动"}, headers=supervisor)
    assert failed.status_code == 503, failed.text

    retried = await system.routing.post(path, json={"reason": "客户情绪激动"}, headers=supervisor)
    assert retried.status_code == 200, retried.text
    assert retried.json()["escalation_level"] == 1
    assert [step["level"] for step in retried.json()["escalations"]] == [1]
    assert retried.headers["Idempotent-Replayed"] == "true"

    # A reassignment to the department under a key moves the complaint once, not on to
    # the next owner in turn.
    moving = {**supervisor, "Idempotency-Key": "move-0931"}
    move = {"department": "LZ:NETWORK", "reason": "转网络组复核"}
    moved = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign", json=move, headers=moving
    )
    assert moved.status_code == 200, moved.text
    again = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign", json=move, headers=moving
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["owner_id"] == moved.json()["owner_id"]


async def test_a_move_retried_after_its_target_went_on_leave_is_replayed_not_refused(
    system: System,
) -> None:
    """The move to a named person commits; its answer is lost; she goes on leave; the
    retry is checked against the directory as it is now and refused (422 'on_leave'),
    though the move was made. A retry under the key is answered before those checks."""
    admin = token(system.intake_settings)
    complaint_id = await _assigned_complaint(system, admin)
    supervisor = {
        **token(system.routing_settings, roles=("supervisor",)),
        "Idempotency-Key": "move-to-yang",
    }
    path = f"/v1/assignments/{complaint_id}/reassign"
    move = {"owner_id": "lz-yang", "reason": "转网络组杨磊"}
    moved = await system.routing.post(path, json=move, headers=supervisor)
    assert moved.status_code == 200, moved.text
    on_leave = await system.routing.patch(
        "/v1/directory/staff/lz-yang",
        json={"status": "on_leave"},
        headers=token(system.routing_settings),
    )
    assert on_leave.status_code == 200, on_leave.text
    retried = await system.routing.post(path, json=move, headers=supervisor)
    assert retried.status_code == 200, retried.text
    assert retried.json()["owner_id"] == "lz-yang"
    assert retried.headers["Idempotent-Replayed"] == "true"


async def test_a_note_whose_read_back_meets_a_failover_is_answered_once_stored(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note's write committed; the read of the complaint after it found no server for
    a while (a primary stepping down). It gave up at the first server selection timeout: a
    503, and a client without an Idempotency-Key that retried added the note twice. The read
    now waits out the failover and the command is answered as it stands."""
    admin = token(system.intake_settings)
    complaint_id = await _assigned_complaint(system, admin)
    find_one = AsyncCollection.find_one
    failed: list[str] = []

    async def no_server_twice(self: AsyncCollection, *arguments: Any, **keywords: Any) -> Any:
        pinned = arguments[0] if arguments else {}
        if pinned == {"_id": complaint_id} and len(failed) < 2:
            failed.append("no primary")
            raise ServerSelectionTimeoutError("no primary available (injected)")
        return await find_one(self, *arguments, **keywords)

    monkeypatch.setattr(AsyncCollection, "find_one", no_server_twice)
    note = {"text": "已电话联系客户"}
    answered = await system.intake.post(
        f"/v1/complaints/{complaint_id}/notes", json=note, headers=admin
    )
    assert answered.status_code == 200, answered.text
    assert failed == ["no primary", "no primary"]
    assert [n["text"] for n in answered.json()["notes"]] == [note["text"]]
