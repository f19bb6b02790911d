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
the complaint, then the announcements), so whichever comes second sees the first. The
complaint side reads a copy of the announced names kept in the process (``Copies``), not
the collection: the copy is checked against the organisation's announcement counter
(``generation``) at most every ``directory_names_fresh_s``, so a complaint written by another
replica whose copy was that old may miss a rename applied meanwhile. The rename side
therefore looks its complaints over once more after that (``settle_at``, ``settle``). A
correction itself reads the collection: a copy older than the event's names never
renames a complaint back.

A rename is a write beside the kernel that moves the complaint's version, since decisions
read these fields (a reassignment keeps the rest of the assignment, a climb the rungs), and
puts nothing on the timeline. One complaint per statement: a rename of a busy department
never holds the complaints' write lock for long (docs/mongodb-compatibility.md).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.events import DepartmentUpdated, StaffUpdated
from complaints_shared.failures import redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import ensure_index
from complaints_shared.problems import ConcurrentUpdate
from complaints_shared.runtime import Runtime
from complaints_shared.timers import look_over_due
from complaints_shared.timing import wait_event
from intake import store
from intake.filter_keys import FIELD as FILTER_KEYS
from intake.lifecycle import TERMINAL_STATUSES, Status
from intake.settings import IntakeSettings

DIRECTORY_NAMES = "directory_names"
DEPARTMENT = "department"
STAFF = "staff"
# The statuses whose complaints show the directory's current names (the others keep theirs).
RENAMED_STATUSES = tuple(status.value for status in Status if status not in TERMINAL_STATUSES)
# What a rename reads of a complaint.
NAME_FIELDS = {"status": 1, "version": 1, "assignment": 1, "escalation": 1, "escalation_steps": 1}
RENAME_ATTEMPTS = store.MAX_WRITE_ATTEMPTS
# The organisation's announcement counter (``generation:<org>``, ``n``): moved by every new
# name before its complaints are read, so a copy that saw ``n`` holds every name moved by it.
GENERATION = "generation"
# When the complaints of a new name are looked over again (``settle``): after every copy
# that did not hold it has been checked again, give or take the replicas' clocks
# (``settle_delay``). Real time, as the copies' age is: not the business clock.
SETTLE_AT = "settle_at"
# The name a look-over last showed (an entry applied before there were look-overs has none).
SETTLED_NAME = "settled_name"
SETTLE_POLL_S = 5.0
SETTLE_BATCH = 100

log = get_logger(__name__)


def entry_key(kind: str, org: str, entry_id: str) -> str:
    """The announcement's ``_id``: its event's subject (``department:<org>:<id>``)."""
    return f"{kind}:{org}:{entry_id}"


@dataclass
class Names:
    """Announced names by id: of departments and of people."""

    departments: dict[str, str] = field(default_factory=dict)
    staff: dict[str, str] = field(default_factory=dict)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    # Neither partial nor sparse: a range on a partial index reads the whole collection on
    # the local server (docs/mongodb-compatibility.md); a missing ``settle_at`` is null.
    await ensure_index(db[DIRECTORY_NAMES], SETTLE_AT, name="settle_due")
    # A copy's load: the organisation's departments and people.
    await ensure_index(db[DIRECTORY_NAMES], [("org", 1), ("kind", 1)], name="org_kind")


def generation_key(org: str) -> str:
    return f"{GENERATION}:{org}"


@dataclass
class _Copy:
    generation: int
    names: Names
    checked_at: float  # time.monotonic() before the counter read it agrees with
    loaded_at: float  # ...and before the names were read


# A copy is read whole again this often whatever the counter says: a rename applied by a
# replica of the version before the counter (a rolling upgrade) moves none.
COPY_MAX_AGE_S = 60.0


@dataclass
class _ClientCopies:
    copies: dict[tuple[str, str], _Copy] = field(default_factory=dict)
    # One check at a time per organisation: the consumer's partitions share it.
    checks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)


class Copies:
    """The announced names of each organisation as this process last read them, per client
    (a replica's own; several share a process in tests)."""

    def __init__(self) -> None:
        # By the client's identity: two clients of one server compare equal.
        self._clients: dict[int, _ClientCopies] = {}

    def _of(self, client: AsyncMongoClient) -> _ClientCopies:
        key = id(client)
        if key not in self._clients:
            self._clients[key] = _ClientCopies()
            weakref.finalize(client, self._clients.pop, key, None)
        return self._clients[key]

    def forget(self, *, db: AsyncDatabase, org: str) -> None:
        self._of(db.client).copies.pop((db.name, org), None)

    async def names(self, *, db: AsyncDatabase, org: str, fresh_s: float) -> Names:
        """The organisation's announced names: the copy if checked within ``fresh_s``, else
        after a read of the counter (and of every name, when it moved)."""
        kept, key = self._of(db.client), (db.name, org)
        copy = kept.copies.get(key)
        if copy is not None and time.monotonic() - copy.checked_at < fresh_s:
            return copy.names
        async with kept.checks.setdefault(key, asyncio.Lock()):
            copy = kept.copies.get(key)  # checked by another caller meanwhile
            checked_at = time.monotonic()
            if copy is not None and checked_at - copy.checked_at < fresh_s:
                return copy.names
            counter = await db[DIRECTORY_NAMES].find_one({"_id": generation_key(org)}, {"n": 1})
            generation = counter["n"] if counter else 0
            if (
                copy is None
                or copy.generation != generation
                or checked_at - copy.loaded_at >= COPY_MAX_AGE_S
            ):
                query = {"org": org, "kind": {"$in": [DEPARTMENT, STAFF]}}
                names = await _names(db=db, query=query)
                copy = _Copy(generation=generation, names=names, checked_at=0, loaded_at=checked_at)
            copy.checked_at = checked_at
            kept.copies[key] = copy
            return copy.names


async def _names(*, db: AsyncDatabase, query: dict[str, Any]) -> Names:
    """The names of the announcements ``query`` selects."""
    names = Names()
    async for entry in db[DIRECTORY_NAMES].find(query, {"kind": 1, "id": 1, "name": 1}):
        kept = names.departments if entry["kind"] == DEPARTMENT else names.staff
        kept[entry["id"]] = entry["name"]
    return names


COPIES = Copies()


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


async def record(
    *,
    db: AsyncDatabase,
    announcement: DepartmentUpdated | StaffUpdated,
    now: datetime,
    settings: IntakeSettings,
) -> None:
    """Keep the department's or person's newest announcement and show its name on the
    complaints."""
    if isinstance(announcement, DepartmentUpdated):
        kind, entry_id = DEPARTMENT, announcement.department
    else:
        kind, entry_id = STAFF, announcement.staff_id
    await _keep_newest(
        db=db,
        kind=kind,
        org=announcement.org,
        entry_id=entry_id,
        fields={"name": announcement.name, "updated_at": announcement.updated_at},
        version=announcement.version,
    )
    await _apply_newest(
        db=db, kind=kind, org=announcement.org, entry_id=entry_id, now=now, settings=settings
    )


async def _apply_newest(
    *,
    db: AsyncDatabase,
    kind: str,
    org: str,
    entry_id: str,
    now: datetime,
    settings: IntakeSettings,
) -> None:
    """Rename the complaints to the newest name kept (whichever announcement this was), then
    mark it applied and due to be looked over again once every replica's copy holds it. A
    redelivery after a crash half way renames the rest; a change that kept the name (an
    escalation chain, a capacity) reads no complaint."""
    key = entry_key(kind, org, entry_id)
    kept = await db[DIRECTORY_NAMES].find_one({"_id": key})
    if kept is None or kept.get("applied_name") == kept["name"]:
        return
    # Before the complaints are read: a copy checked after this holds the name.
    await _count_new_name(db=db, org=org)
    name = await _show_newest(db=db, key=key, now=now)
    if name is not None:
        await db[DIRECTORY_NAMES].update_one(
            {"_id": key, "name": name},
            {"$set": {"applied_name": name, SETTLE_AT: datetime.now(UTC) + settle_delay(settings)}},
        )


async def _count_new_name(*, db: AsyncDatabase, org: str) -> None:
    """Move the organisation's announcement counter (created by the first new name; two
    creating it at once on a server that does not retry the upsert: the loser moves it)."""
    counter, move = {"_id": generation_key(org)}, {"$inc": {"n": 1}, "$set": {"kind": GENERATION}}
    try:
        await db[DIRECTORY_NAMES].update_one(counter, move, upsert=True)
    except DuplicateKeyError:
        await db[DIRECTORY_NAMES].update_one(counter, move)
    COPIES.forget(db=db, org=org)


def settle_delay(settings: IntakeSettings) -> timedelta:
    return timedelta(
        seconds=settings.directory_names_fresh_s + settings.directory_names_clock_skew_s
    )


async def _show_newest(*, db: AsyncDatabase, key: str, now: datetime) -> str | None:
    """Show the entry's kept name on the complaints showing it, then read it again: a newer
    name kept meanwhile, whose own look may have come before these writes, is shown too.
    The name shown last (None: the entry is gone)."""
    shown = None
    while (kept := await db[DIRECTORY_NAMES].find_one({"_id": key})) is not None:
        if kept["name"] == shown:
            return shown
        shown = kept["name"]
        kind, org, entry_id = kept["kind"], kept["org"], kept["id"]
        names = (
            Names(departments={entry_id: shown})
            if kind == DEPARTMENT
            else Names(staff={entry_id: shown})
        )
        for complaint in await _showing(db=db, kind=kind, org=org, entry_id=entry_id):
            await _rename(db=db, complaint=complaint, names=names, now=now)
    return None


async def settle(*, db: AsyncDatabase, now: datetime) -> int:
    """Look the complaints of the names due (``settle_at``) over again, as ``_apply_newest``
    did: what a replica with an older copy wrote since is renamed. How many names. One
    that keeps failing is dropped (its complaints keep what they show), not to hold the
    others up for good; a busy complaint or the database away defers it a poll."""

    async def look(entry: dict[str, Any]) -> dict[str, Any]:
        return {SETTLED_NAME: await _show_newest(db=db, key=entry["_id"], now=now)}

    return await look_over_due(
        db[DIRECTORY_NAMES],
        field=SETTLE_AT,
        look=look,
        what="directory_name",
        defer_s=SETTLE_POLL_S,
        limit=SETTLE_BATCH,
    )


async def at_start(*, db: AsyncDatabase, settings: IntakeSettings) -> int:
    """Names applied by a version before the settle pass (a rolling upgrade: applied with no
    counter moved, nor a look-over planned) are looked over once this start's copies
    elsewhere may have missed them; how many. One read of the collection."""
    query = {"kind": {"$in": [DEPARTMENT, STAFF]}, "applied_name": {"$exists": True}}
    fields = {"name": 1, "applied_name": 1, SETTLED_NAME: 1, SETTLE_AT: 1}
    unsettled = [
        entry["_id"]
        async for entry in db[DIRECTORY_NAMES].find(query, fields)
        if entry.get(SETTLE_AT) is None and entry.get(SETTLED_NAME) != entry["name"]
    ]
    if unsettled:
        await db[DIRECTORY_NAMES].update_many(
            {"_id": {"$in": unsettled}, SETTLE_AT: None},
            {"$set": {SETTLE_AT: datetime.now(UTC) + settle_delay(settings)}},
        )
    return len(unsettled)


async def run_settling(runtime: Runtime) -> None:
    """The background job: the names due looked over every ``SETTLE_POLL_S`` (any replica;
    a rename is conditional on the complaint's version, so two doing it are harmless)."""
    while not runtime.stopping.is_set():
        try:
            settled = await settle(db=runtime.db, now=runtime.clock.now())
            if settled:
                log.info("directory_names_settled", names=settled)
        except Exception as exc:  # the database away: the names stay due for the next poll
            log.warning("directory_names_settle_failed", error=redacted_error(exc))
        await wait_event(runtime.stopping, timeout_s=SETTLE_POLL_S)


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
    # One read for every status: a complaint moving from one status to another meanwhile is
    # not left between two reads.
    keys = [f"{prefix}:{entry_id}|{status}" for status in RENAMED_STATUSES]
    query = {"org": org, FILTER_KEYS: {"$in": keys}}
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
    and moving it; read again after a lost race. ``now`` (when the renaming work began)
    moves the change time only forward: until 6 December a change written meanwhile (a
    resolution) was stamped back to it, and the report's rollup, which reads what changed
    since its last pass, never counted that change."""
    complaints = db[store.COMPLAINTS]
    for _ in range(RENAME_ATTEMPTS):
        fields = renamed_fields(complaint, names)
        if not fields:
            return
        result = await complaints.update_one(
            {"_id": complaint["_id"], "version": complaint.get("version")},
            {"$set": fields, "$max": {"updated_at": now}, "$inc": {"version": 1}},
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
    return await _names(db=db, query={"_id": {"$in": keys}}) if keys else Names()


async def correct(
    *,
    db: AsyncDatabase,
    org: str,
    complaint_id: str,
    departments: Mapping[str | None, str | None],
    staff: Mapping[str | None, str | None],
    now: datetime,
    settings: IntakeSettings,
) -> None:
    """After an event wrote names onto a complaint (``departments`` and ``staff``: id -> the
    name it wrote), show the announced ones instead where they differ. Mostly the
    announcement is the name the event carried, or there is none: the process's copy says
    so without a read. Where it differs, the announcements are read (the copy may be older
    than the event), then the complaint."""
    written_departments = {key: name for key, name in departments.items() if key}
    written_staff = {key: name for key, name in staff.items() if key}
    copy = await COPIES.names(db=db, org=org, fresh_s=settings.directory_names_fresh_s)
    if not _differ(copy, written_departments, written_staff):
        return
    # Shown, then read again: a newer name kept meanwhile, whose look at the complaints may
    # have come before this write, is shown too.
    while _differ(
        names := await announced(
            db=db, org=org, department_ids=list(written_departments), staff_ids=list(written_staff)
        ),
        written_departments,
        written_staff,
    ):
        complaint = await db[store.COMPLAINTS].find_one(
            {"_id": complaint_id, "org": org}, projection=NAME_FIELDS
        )
        if complaint is None:
            return
        await _rename(db=db, complaint=complaint, names=names, now=now)
        written_departments = {
            key: names.departments.get(key, name) for key, name in written_departments.items()
        }
        written_staff = {key: names.staff.get(key, name) for key, name in written_staff.items()}


async def shown_again_by_id(
    *, db: AsyncDatabase, complaint_id: str, now: datetime, settings: IntakeSettings
) -> None:
    """``shown_again`` for a complaint reopened by an event (an unsatisfied follow-up)."""
    complaint = await db[store.COMPLAINTS].find_one(
        {"_id": complaint_id}, projection={**NAME_FIELDS, "org": 1}
    )
    if complaint is not None:
        await shown_again(db=db, complaint=complaint, now=now, settings=settings)


async def shown_again(
    *, db: AsyncDatabase, complaint: dict[str, Any], now: datetime, settings: IntakeSettings
) -> dict[str, Any] | None:
    """A complaint reopened after it was closed shows the newest names again (closed, it kept
    those it ended with): the department, the owner and every rung of its escalation. Until
    6 December a rung no later event re-announced kept a name renamed while it was closed.
    The complaint as renamed; None when the process's copy says nothing changed."""
    copy = await COPIES.names(db=db, org=complaint["org"], fresh_s=settings.directory_names_fresh_s)
    if not renamed_fields(complaint, copy):
        return None
    assignment = complaint.get("assignment") or {}
    department = assignment.get("department")
    names = await announced(
        db=db,
        org=complaint["org"],
        department_ids=[department] if department else [],
        staff_ids=sorted({*_escalated_to(complaint), assignment.get("owner_id")} - {None}),
    )
    shown = {field: complaint.get(field) for field in ("_id", *NAME_FIELDS)}
    await _rename(db=db, complaint=shown, names=names, now=now)
    return await db[store.COMPLAINTS].find_one({"_id": complaint["_id"]})


def _differ(
    names: Names, departments: Mapping[str, str | None], staff: Mapping[str, str | None]
) -> bool:
    """Whether ``names`` says otherwise of any of these departments and people."""
    return any(
        names.departments.get(key, name) != name for key, name in departments.items()
    ) or any(names.staff.get(key, name) != name for key, name in staff.items())
