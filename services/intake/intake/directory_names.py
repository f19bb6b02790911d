"""The names of routing's departments and people on the complaints, kept current.

Routing's directory owns departments and staff. Its complaint events carry their names as
they were when it published them (``complaint.assigned``, ``queued``, ``reassigned``,
``escalated``), and it announces every change of a department or a person
(``department.updated``, ``staff.updated``). Intake keeps the newest announcement of each
(``DIRECTORY_NAMES``, one document per department or person, the highest ``version`` wins,
so a redelivered older one changes nothing) and makes the complaints show its name:

- a new name renames the complaints not finished for good: the handling department's
  (``assignment.department_name``), the owner's (``assignment.owner_name``) and the
  escalation target's (``escalation.escalated_to_name`` and the rungs it is derived from).
  A closed, rejected or withdrawn complaint keeps the names it ended with, the record of
  that time; lists, search and reports select and group by the ids, the same either way.
- an event that writes names onto a complaint is corrected after its write (``correct``)
  when an announcement says otherwise: it may have been published before a rename intake
  applied first (a department's events and a complaint's ride different partitions).

Each side writes first and reads the other's after (the announcement, then the complaints;
the complaint, then the announcements), so whichever comes second sees the first. A
rename is a write beside the kernel that moves the complaint's version, since decisions
read these fields (a reassignment keeps the rest of the assignment, a climb the rungs), and
puts nothing on the timeline. One complaint per statement: a rename of a busy department
never holds the complaints' write lock for long (docs/mongodb-compatibility.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.events import DepartmentUpdated, StaffUpdated
from complaints_shared.problems import ConcurrentUpdate
from intake import store
from intake.filter_keys import FIELD as FILTER_KEYS
from intake.lifecycle import TERMINAL_STATUSES, Status

DIRECTORY_NAMES = "directory_names"
DEPARTMENT = "department"
STAFF = "staff"
# The statuses whose complaints show the directory's current names (the others keep theirs).
RENAMED_STATUSES = tuple(status.value for status in Status if status not in TERMINAL_STATUSES)
# What a rename reads of a complaint.
NAME_FIELDS = {"status": 1, "version": 1, "assignment": 1, "escalation": 1, "escalation_steps": 1}
RENAME_ATTEMPTS = store.MAX_WRITE_ATTEMPTS


def entry_key(kind: str, org: str, entry_id: str) -> str:
    """The announcement's ``_id``: its event's subject (``department:<org>:<id>``)."""
    return f"{kind}:{org}:{entry_id}"


@dataclass
class Names:
    """Announced names by id: of departments and of people."""

    departments: dict[str, str] = field(default_factory=dict)
    staff: dict[str, str] = field(default_factory=dict)


async def _keep_newest(
    *, db: AsyncDatabase, kind: str, org: str, entry_id: str, fields: dict[str, Any], version: int
) -> None:
    """Keep the newest version announced; an older or repeated one is a no-op (the upsert
    only matches an older version, and the unique ``_id`` refuses its insert otherwise)."""
    with suppress(DuplicateKeyError):
        await db[DIRECTORY_NAMES].update_one(
            {"_id": entry_key(kind, org, entry_id), "version": {"$lt": version}},
            {"$set": {"kind": kind, "org": org, "id": entry_id, **fields, "version": version}},
            upsert=True,
        )


async def record_department(
    *, db: AsyncDatabase, department: DepartmentUpdated, now: datetime
) -> None:
    """Keep the department's newest announcement and show its name on the complaints."""
    await _keep_newest(
        db=db,
        kind=DEPARTMENT,
        org=department.org,
        entry_id=department.department,
        fields={"name": department.name, "updated_at": department.updated_at},
        version=department.version,
    )
    await _apply_newest(
        db=db, kind=DEPARTMENT, org=department.org, entry_id=department.department, now=now
    )


async def record_staff(*, db: AsyncDatabase, person: StaffUpdated, now: datetime) -> None:
    """Keep the person's newest announcement and show their name on the complaints."""
    await _keep_newest(
        db=db,
        kind=STAFF,
        org=person.org,
        entry_id=person.staff_id,
        fields={"name": person.name, "updated_at": person.updated_at},
        version=person.version,
    )
    await _apply_newest(db=db, kind=STAFF, org=person.org, entry_id=person.staff_id, now=now)


async def _apply_newest(
    *, db: AsyncDatabase, kind: str, org: str, entry_id: str, now: datetime
) -> None:
    """Rename the complaints to the newest name kept (whichever announcement this was), then
    mark it applied. A redelivery after a crash half way renames the rest; a change that
    kept the name (an escalation chain, a capacity) reads no complaint."""
    key = entry_key(kind, org, entry_id)
    kept = await db[DIRECTORY_NAMES].find_one({"_id": key})
    if kept is None or kept.get("applied_name") == kept["name"]:
        return
    name = kept["name"]
    names = (
        Names(departments={entry_id: name}) if kind == DEPARTMENT else Names(staff={entry_id: name})
    )
    for complaint in await _showing(db=db, kind=kind, org=org, entry_id=entry_id):
        await _rename(db=db, complaint=complaint, names=names, now=now)
    await db[DIRECTORY_NAMES].update_one(
        {"_id": key, "name": name}, {"$set": {"applied_name": name}}
    )


async def _showing(
    *, db: AsyncDatabase, kind: str, org: str, entry_id: str
) -> list[dict[str, Any]]:
    """The complaints not finished for good that may show the entry's name, each read by
    an equality on the filter keys' index: a department's or an owner's by its key per
    status (``ds:<department>|<status>``, ``os:<owner>|<status>``); an escalation target's
    among the escalated complaints (no key names the target), checked here."""
    complaints = db[store.COMPLAINTS]
    prefix = "ds" if kind == DEPARTMENT else "os"
    found: dict[str, dict[str, Any]] = {}
    for status in RENAMED_STATUSES:
        query = {"org": org, FILTER_KEYS: f"{prefix}:{entry_id}|{status}"}
        async for complaint in complaints.find(query, projection=NAME_FIELDS):
            found[complaint["_id"]] = complaint
    if kind == STAFF:
        escalated = {"org": org, FILTER_KEYS: "e:escalated"}
        async for complaint in complaints.find(escalated, projection=NAME_FIELDS):
            if complaint["status"] in RENAMED_STATUSES and entry_id in _escalated_to(complaint):
                found[complaint["_id"]] = complaint
    return list(found.values())


def _escalated_to(complaint: dict[str, Any]) -> set[str]:
    steps = [complaint.get("escalation") or {}, *(complaint.get("escalation_steps") or [])]
    return {step["escalated_to_id"] for step in steps if step.get("escalated_to_id")}


def renamed_fields(complaint: dict[str, Any], names: Names) -> dict[str, str]:
    """The name fields of ``complaint`` that ``names`` changes (none once it is finished for
    good), as ``$set`` paths."""
    if complaint["status"] not in RENAMED_STATUSES:
        return {}
    fields: dict[str, str] = {}
    assignment = complaint.get("assignment") or {}
    department = names.departments.get(assignment.get("department") or "")
    if department is not None and assignment.get("department_name") != department:
        fields["assignment.department_name"] = department
    owner = names.staff.get(assignment.get("owner_id") or "")
    if owner is not None and assignment.get("owner_name") != owner:
        fields["assignment.owner_name"] = owner
    target = names.staff.get((complaint.get("escalation") or {}).get("escalated_to_id") or "")
    if target is not None and complaint["escalation"].get("escalated_to_name") != target:
        fields["escalation.escalated_to_name"] = target
    for index, step in enumerate(complaint.get("escalation_steps") or []):
        target = names.staff.get(step.get("escalated_to_id") or "")
        if target is not None and step.get("escalated_to_name") != target:
            fields[f"escalation_steps.{index}.escalated_to_name"] = target
    return fields


async def _rename(
    *, db: AsyncDatabase, complaint: dict[str, Any], names: Names, now: datetime
) -> None:
    """Show ``names`` on the complaint (as read, ``NAME_FIELDS``), conditional on its version
    and moving it; read again after a lost race."""
    complaints = db[store.COMPLAINTS]
    for _ in range(RENAME_ATTEMPTS):
        fields = renamed_fields(complaint, names)
        if not fields:
            return
        result = await complaints.update_one(
            {"_id": complaint["_id"], "version": complaint.get("version")},
            {"$set": {**fields, "updated_at": now}, "$inc": {"version": 1}},
        )
        if result.matched_count:
            return
        again = await complaints.find_one({"_id": complaint["_id"]}, projection=NAME_FIELDS)
        if again is None:
            return
        complaint = again
    raise ConcurrentUpdate(
        detail=f"complaint {complaint['_id']} kept changing while the directory's names were "
        "shown on it; retry"
    )


async def announced(
    *, db: AsyncDatabase, org: str, department_ids: list[str], staff_ids: list[str]
) -> Names:
    """The names routing last announced of these departments and people (those it did)."""
    keys = [entry_key(DEPARTMENT, org, entry_id) for entry_id in department_ids] + [
        entry_key(STAFF, org, entry_id) for entry_id in staff_ids
    ]
    names = Names()
    if not keys:
        return names
    query = {"_id": {"$in": keys}}
    async for entry in db[DIRECTORY_NAMES].find(query, projection={"kind": 1, "id": 1, "name": 1}):
        kept = names.departments if entry["kind"] == DEPARTMENT else names.staff
        kept[entry["id"]] = entry["name"]
    return names


async def correct(
    *,
    db: AsyncDatabase,
    org: str,
    complaint_id: str,
    departments: Mapping[str | None, str | None],
    staff: Mapping[str | None, str | None],
    now: datetime,
) -> None:
    """After an event wrote names onto a complaint (``departments`` and ``staff``: id -> the
    name it wrote), show the announced ones instead where they differ. Reads the complaint
    only then: mostly the announcement is the name the event carried, or there is none."""
    written_departments = {key: name for key, name in departments.items() if key}
    written_staff = {key: name for key, name in staff.items() if key}
    names = await announced(
        db=db, org=org, department_ids=list(written_departments), staff_ids=list(written_staff)
    )
    stale = any(
        names.departments.get(key, name) != name for key, name in written_departments.items()
    ) or any(names.staff.get(key, name) != name for key, name in written_staff.items())
    if not stale:
        return
    complaint = await db[store.COMPLAINTS].find_one(
        {"_id": complaint_id, "org": org}, projection=NAME_FIELDS
    )
    if complaint is not None:
        await _rename(db=db, complaint=complaint, names=names, now=now)
