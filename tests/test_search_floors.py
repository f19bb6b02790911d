"""Integration: the floors ascending lists start from (``intake.floors``) against the real
database.

Every write of a complaint covers itself first: a complaint in a branch not seen before or
with a date below a floor lowers the stored floors before it is stored, and one the
floors already bound costs no write (this process remembers what it last read or wrote).
The floors only ever go down and branches only grow, whoever else writes them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import CommandListener, CommandStartedEvent

from intake import floors, store
from intake.settings import IntakeSettings
from tests.support.infrastructure import Infrastructure
from tests.support.system import settings_for_test

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
H = timedelta(hours=1)


class FloorCommands(CommandListener):
    """The commands sent to the floors' collection, by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == floors.FLOORS:
            self.names.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
async def floors_db(infrastructure: Infrastructure) -> AsyncIterator[tuple[AsyncDatabase, list]]:
    listener = FloorCommands()
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True, event_listeners=[listener])
    db = client[f"t_floors_{uuid.uuid4().hex[:10]}"]
    try:
        yield db, listener.names
    finally:
        floors._known.clear()
        await client.drop_database(db.name)
        await client.close()


def complaint(branch: str = "LZ", **dates: datetime) -> dict[str, Any]:
    return {"org": "demo", "branch": branch, "created_at": T0, **dates}


async def test_a_complaint_the_floors_bound_costs_no_write(floors_db) -> None:
    db, commands = floors_db
    await floors.cover(db=db, complaint=complaint(acknowledge_due_at=T0 + H))
    assert commands == ["find", "update"]  # what is stored, then the first complaint
    assert await floors.stored(db=db, org="demo") == {
        "branches": ["LZ"],
        "created_at": T0,
        "acknowledge_due_at": T0 + H,
        "resolve_due_at": None,
    }
    commands.clear()
    # Later, due later, in a branch seen: bound already, by what this process remembers.
    for hours in range(1, 20):
        later = T0 + hours * H
        await floors.cover(db=db, complaint=complaint(acknowledge_due_at=later + H))
    assert commands == []


async def test_a_new_branch_or_a_lower_date_lowers_the_floors_before_the_write(floors_db) -> None:
    db, commands = floors_db
    await floors.cover(db=db, complaint=complaint(resolve_due_at=T0 + 24 * H))
    await floors.cover(db=db, complaint=complaint("HOSP"))
    await floors.cover(db=db, complaint=complaint(resolve_due_at=T0 + 2 * H))
    await floors.cover(db=db, complaint={**complaint(), "created_at": T0 - 30 * H})
    assert await floors.stored(db=db, org="demo") == {
        "branches": ["HOSP", "LZ"],
        "created_at": T0 - 30 * H,
        "acknowledge_due_at": None,
        "resolve_due_at": T0 + 2 * H,
    }
    assert commands.count("update") == 4
    # Another organisation's floors are its own.
    await floors.cover(db=db, complaint={**complaint("SH"), "org": "other"})
    assert (await floors.stored(db=db, org="demo"))["branches"] == ["HOSP", "LZ"]
    assert (await floors.stored(db=db, org="other"))["branches"] == ["SH"]


async def test_floors_lowered_by_another_writer_stay_lowered(floors_db) -> None:
    """A process remembering higher floors than stored (another replica lowered them since)
    writes a $min, which never raises them: what it covers is still covered."""
    db, commands = floors_db
    await floors.cover(db=db, complaint=complaint(acknowledge_due_at=T0 + 5 * H))
    # Another replica lowers them meanwhile; this process still remembers T0 + 5h.
    await db[floors.FLOORS].update_one(
        {"_id": "demo"},
        {"$min": {"acknowledge_due_at": T0}, "$addToSet": {"branches": {"$each": ["XJ"]}}},
    )
    commands.clear()
    await floors.cover(db=db, complaint=complaint(acknowledge_due_at=T0 + 5 * H))
    assert commands == []
    await floors.cover(db=db, complaint=complaint(acknowledge_due_at=T0 + 3 * H))
    assert commands == ["update"]
    assert await floors.stored(db=db, org="demo") == {
        "branches": ["LZ", "XJ"],
        "created_at": T0,
        "acknowledge_due_at": T0,
        "resolve_due_at": None,
    }


async def test_complaints_written_through_the_store_cover_themselves(
    floors_db, infrastructure: Infrastructure
) -> None:
    """``store.insert`` and ``store.change`` cover the complaint before they write it."""
    db, _ = floors_db
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id="floors")
    document = {
        "_id": str(uuid.uuid4()),
        **complaint("HOSP", resolve_due_at=T0 + 48 * H),
        "status": "open",
        "version": 1,
        "timeline": [],
        "updated_at": T0,
    }
    await store.insert(db=db, document=document, entered=time.monotonic())
    assert (await floors.stored(db=db, org="demo"))["branches"] == ["HOSP"]
    changed = await store.change(
        db=db,
        settings=settings,
        complaint_id=document["_id"],
        scope={"org": "demo"},
        actor="test",
        action="note",
        decide=lambda current: store.Decision({"$set": {"resolve_due_at": T0 + H}}),
        now=T0,
    )
    assert changed["resolve_due_at"] == T0 + H
    assert (await floors.stored(db=db, org="demo"))["resolve_due_at"] == T0 + H


def test_what_a_change_writes_is_read_from_its_set_and_min() -> None:
    current = {"_id": "c1", "org": "demo", "branch": "LZ", "created_at": T0, "status": "open"}
    update = {
        "$set": {"acknowledge_due_at": T0 + H, "status": "open", "assignment.department": "d"},
        "$min": {"resolve_due_at": T0 + 2 * H},
        "$unset": {"closed_at": ""},
    }
    assert floors.values_written(current, update) == {
        "org": "demo",
        "branch": "LZ",
        "acknowledge_due_at": T0 + H,
        "resolve_due_at": T0 + 2 * H,
    }
    assert floors.values_written(current, {"$push": {"timeline": {}}}) == {
        "org": "demo",
        "branch": "LZ",
    }
