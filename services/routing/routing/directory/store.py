"""Persistence of the organisation directory: branches, departments, staff. No HTTP here.

The collections and their keys, the versioned write and the audit record every
administrator's change goes through, the scoped reads (ids outside the caller's
organisation or branches are simply not found), the lookups routing decides with, and
the owners' load hints. The administrator's validated writes per resource are
``branches``, ``departments`` and ``staff``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import BaseModel
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import preconditions
from complaints_shared.auth import Principal
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import as_stored, merge_updates
from complaints_shared.outbox import OUTBOX_FIELD, PENDING_SINCE_FIELD, record_stored
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import conflict, invalid
from complaints_shared.stored import from_stored
from routing import audit, context_cache, sole_roles
from routing.directory.models import BranchRead, DepartmentRead, StaffRead

log = get_logger(__name__)

BRANCHES = "branches"
DEPARTMENTS = "departments"
STAFF = "staff"
# Staff field: open slots as last counted by routing; a ranking hint, never the capacity check.
LOAD_HINT = "load_hint"
# Staff field: the lowest slot numbers freed lately, a hint as the load hint is. Work
# finishes out of order, so an owner's free slots are mostly gaps below the load hint,
# which the slots at the hint never find (``owners.likely_free_slot``).
FREED_SLOTS = "freed_slots"
FREED_SLOTS_KEPT = 16
# Branch fields: the version of its calendar (``calendar_version``, 0 until it first changes),
# the calendars it replaced (``directory.calendar_history``), the mark that open work may
# still run on one of those, and the lease of the replica re-laying that work.
CALENDAR_VERSION = "calendar_version"
CALENDAR_CHANGES = "calendar_changes"
CALENDAR_CHANGE_PENDING = "calendar_change_pending"
# When (wall clock) the mark may go, once a pass finds no work behind: every replica's cached
# copy of the branch renewed by then (``calendar_changes``).
CALENDAR_SETTLE_AT = "calendar_settle_at"
CALENDAR_LEASE_UNTIL = "calendar_lease_until"
CALENDAR_LEASE_OWNER = "calendar_lease_owner"
# Fields routing keeps on an entry beside what the administrator wrote: outside the audit
# trail, and no sign that a repeated creation asked for something else.
BOOKKEEPING = frozenset(
    {
        LOAD_HINT,
        FREED_SLOTS,
        OUTBOX_FIELD,
        PENDING_SINCE_FIELD,
        sole_roles.ROLE_FIELD,
        CALENDAR_CHANGES,
        CALENDAR_CHANGE_PENDING,
        CALENDAR_SETTLE_AT,
        CALENDAR_LEASE_UNTIL,
        CALENDAR_LEASE_OWNER,
    }
)
# What a creation stores beside the administrator's fields, not theirs to repeat: each
# attempt's own stamps, and the tie-break time assignments move.
NOT_ASKED = frozenset({"_id", "version", "created_at", "updated_at", "last_assigned_at"})


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[BRANCHES].create_index([("org", ASCENDING), ("code", ASCENDING)], name="org_code")
    await db[DEPARTMENTS].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("kind", ASCENDING)], name="org_branch_kind"
    )
    await sole_roles.ensure_role_index(
        db=db,
        collection=DEPARTMENTS,
        holders={"active": {"$ne": False}},
        role_of=_department_kind_role,
    )
    await db[STAFF].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("department", ASCENDING)],
        name="org_branch_department",
    )
    # The desk a routing decision reads per complaint (``desk``): without it the local
    # server reads every person of the organisation each time.
    await db[STAFF].create_index(
        [("org", ASCENDING), ("department_id", ASCENDING), ("_id", ASCENDING)],
        name="org_department_desk",
    )
    for entry in ENTRIES:
        await audit.ensure_unrecorded_index(db=db, collection=entry.collection)


def branch_key(org: str, code: str) -> str:
    return f"{org}:{code}"


def department_key(org: str, department_id: str) -> str:
    return f"{org}:{department_id}"


def staff_key(org: str, staff_id: str) -> str:
    return f"{org}:{staff_id}"


def split_department_id(department_id: str) -> tuple[str, str]:
    branch, _, code = department_id.partition(":")
    return branch, code


@dataclass(frozen=True)
class Entry:
    """A kind of directory entry: where it is stored, the field that names it, what the
    audit trail and a 409 call it."""

    collection: str
    id_field: str
    entity: str
    what: str
    # The role an entry of this kind holds alone in its scope, if any (``sole_roles``).
    sole_role: Callable[[dict[str, Any]], str | None] | None = None

    def claim(self, document: dict[str, Any]) -> str | None:
        return self.sole_role(document) if self.sole_role is not None else None


def _department_kind_role(department: dict[str, Any]) -> str | None:
    """A branch has one active department of each kind (rules name "the branch's billing")."""
    if department.get("active", True):
        return f"kind:{department['org']}:{department['branch']}:{department['kind']}"
    return None


BRANCH = Entry(collection=BRANCHES, id_field="code", entity="branch", what="branch")
DEPARTMENT = Entry(
    collection=DEPARTMENTS,
    id_field="id",
    entity="department",
    what="department",
    sole_role=_department_kind_role,
)
STAFF_MEMBER = Entry(collection=STAFF, id_field="id", entity="staff", what="staff member")
ENTRIES = (BRANCH, DEPARTMENT, STAFF_MEMBER)


def new_entry(*, key: str, fields: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A new entry as stored: its fields, version 1, created and last changed ``now``."""
    return {"_id": key, **fields, "version": 1, "created_at": now, "updated_at": now}


async def insert_entry(
    *,
    db: AsyncDatabase,
    principal: Principal,
    entry: Entry,
    document: dict[str, Any],
    at: datetime,
    validate: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Store a new entry and audit its creation; the entry as stored.

    The same creation again (a retry after a 503 or a lost answer) answers with the entry
    the first stored, and is recognised before ``validate`` runs: what the creation refers
    to (a department, a duty officer) may have changed since it was made. An id already in
    use otherwise is a 409. The creation carries its audit record until it is written
    (``audit.unrecorded``): here, by its repeat, or by the entry's next change.
    """
    stored = await db[entry.collection].find_one({"_id": document["_id"]})
    if stored is None:
        if validate is not None:
            await validate()
        recorded = audit.unrecorded(action="created", actor=principal.subject, at=at)
        claimed = sole_roles.claimed({**document, **recorded}, role=entry.claim(document))
        try:
            await db[entry.collection].insert_one(claimed)
        except DuplicateKeyError as exc:
            # The same creation, beside this one (its role clashes too: either index may
            # answer); otherwise another entry took the role.
            stored = await db[entry.collection].find_one({"_id": document["_id"]})
            if stored is None:
                _refuse_role_clash(entry, exc)
                raise
        else:
            record_stored(entry.collection, database=db.name, document=document)
            return await settle_audit(
                db=db,
                principal=principal,
                entry=entry,
                # As a later read has it (times in milliseconds), not this request's copy.
                document=as_stored({**document, **recorded}),
            )
    owner_branch = (stored or {}).get("branch") or (stored or {}).get("code")
    if stored is not None and not principal.can_see(org=stored["org"], branch=owner_branch):
        # Another branch's: ids are the organisation's, so it is taken, but the body is
        # judged first, as for a free id (a 409 for a body that is no creation told a probe
        # of the other branches' ids apart from a 422), and the clash names no branch.
        if validate is not None:
            await validate()
        raise conflict(f"{entry.what} id {document[entry.id_field]!r} is taken in the organisation")
    repeated = _repeat_of(entry=entry, document=document, stored=stored)
    if audit.UNRECORDED in repeated:
        return await settle_audit(db=db, principal=principal, entry=entry, document=repeated)
    # Recorded already (kept once), or created before creations carried their record.
    await _audit(
        db=db, principal=principal, entry=entry, action="created", at=at, document=repeated
    )
    return repeated


def _refuse_role_clash(entry: Entry, exc: DuplicateKeyError) -> None:
    """Another entry took the role meanwhile (the save's read check passed beside it)."""
    if sole_roles.is_role_clash(exc):
        raise conflict(f"another {entry.what} took its place meanwhile; retry") from None


def _repeat_of(
    *, entry: Entry, document: dict[str, Any], stored: dict[str, Any] | None
) -> dict[str, Any]:
    """The stored entry when ``document`` repeats its creation: unchanged since (version 1)
    and with the same fields. Created otherwise, or changed since, it is a 409."""
    asked = {
        key: value
        for key, value in document.items()
        if key not in BOOKKEEPING and key not in NOT_ASKED
    }
    if (
        stored is None
        or stored["version"] != 1
        or any(stored.get(key) != value for key, value in asked.items())
    ):
        raise conflict(f"{entry.what} {document[entry.id_field]!r} already exists")
    return stored


async def change_entry(
    *,
    db: AsyncDatabase,
    principal: Principal,
    entry: Entry,
    current: dict[str, Any],
    changes: dict[str, Any],
    action: str,
    at: datetime,
    if_match: IfMatch | None,
    validate: Callable[[], Awaitable[None]] | None = None,
    announce: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply ``changes`` only if nobody changed the entry since it was read, and audit it
    (the change before it first, if its writer could not: ``settle_audit``).

    A change the entry already shows writes nothing (a retry after a lost answer, a second
    deactivation), and is not checked again: what it refers to may have changed since it
    was made. Any other is held to ``if_match`` (a 412 when the entry moved on), then
    ``validate``d. ``announce`` is the update of what the change causes (the outbox entries
    of its events, a branch's record of the calendar it replaced), in the same write.
    """
    settled = await settle_audit(db=db, principal=principal, entry=entry, document=current)
    if not await preconditions.change_needed(
        if_match,
        current=current,
        changes=changes,
        what=f"{entry.what} {current[entry.id_field]!r}",
        validate=validate,
    ):
        return settled
    recorded = audit.unrecorded(action=action, actor=principal.subject, at=at)
    claim = {}
    if entry.sole_role is not None:
        claim = sole_roles.claim_update(role=entry.claim({**current, **changes}))
    try:
        updated = await db[entry.collection].find_one_and_update(
            {"_id": current["_id"], "version": current["version"]},
            merge_updates(
                {"$set": {**changes, "updated_at": at, **recorded}, "$inc": {"version": 1}},
                announce or {},
                claim,
            ),
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError as exc:
        _refuse_role_clash(entry, exc)
        raise
    if updated is None:
        what = f"{entry.what} {current[entry.id_field]!r}"
        now_stored = await db[entry.collection].find_one(
            {"_id": current["_id"]}, projection={"version": 1}
        )
        raise preconditions.lost_race(
            if_match,
            current=None if now_stored is None else now_stored["version"],
            what=what,
            otherwise=conflict(f"{what} changed while this request was validated; retry"),
        )
    record_stored(entry.collection, database=db.name, document=updated)
    return await settle_audit(db=db, principal=principal, entry=entry, document=updated)


async def settle_audit(
    *, db: AsyncDatabase, principal: Principal, entry: Entry, document: dict[str, Any]
) -> dict[str, Any]:
    """Record the change that left ``document`` at its version if its writer could not; the
    entry without the record it carried."""
    write = audit.as_recorded_by(partial(_audit, db=db, entry=entry), principal=principal)
    return await audit.settle(db=db, collection=entry.collection, document=document, write=write)


async def settle_left_unrecorded(*, db: AsyncDatabase) -> int:
    """Record the changes of branches, departments and people whose writers failed or died
    before recording them (the queue sweep's); how many. One entry's failure is logged and
    the others go on."""
    settled = 0
    for entry in ENTRIES:
        for document in await audit.left_unrecorded(db=db, collection=entry.collection):
            try:
                await settle_audit(
                    db=db, principal=audit.recorder(document), entry=entry, document=document
                )
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error(
                    "audit_record_not_settled", entity=entry.entity, error=redacted_error(exc)
                )
                continue
            settled += 1
    return settled


def patch_fields(body: BaseModel, *, nullable: set[str]) -> dict[str, Any]:
    """The fields a PATCH body sets, each whole as stored (a nested object with its
    defaults, so it compares with the stored one); ``null`` only where ``nullable``."""
    return without_nulls(
        body.model_dump(mode="json", include=body.model_fields_set), nullable=nullable
    )


def without_nulls(changes: dict[str, Any], *, nullable: set[str]) -> dict[str, Any]:
    """A PATCH may clear only the fields that are optional; ``null`` elsewhere is a 422."""
    for field, value in changes.items():
        if value is None and field not in nullable:
            raise invalid(field, "may not be null")
    return changes


async def _audit(
    *,
    db: AsyncDatabase,
    principal: Principal,
    entry: Entry,
    action: str,
    at: datetime,
    document: dict[str, Any],
) -> None:
    await audit.record_change(
        db=db,
        principal=principal,
        entity=entry.entity,
        entity_id=document[entry.id_field],
        action=action,
        at=at,
        snapshot={
            key: value for key, value in document.items() if key != "_id" and key not in BOOKKEEPING
        },
    )


# ---------------------------------------------------------------------- reads --


def branch_read(document: dict[str, Any]) -> BranchRead:
    return from_stored(BranchRead, document)


def department_read(document: dict[str, Any]) -> DepartmentRead:
    return from_stored(DepartmentRead, document)


def staff_read(document: dict[str, Any], *, open_load: int = 0) -> StaffRead:
    return from_stored(StaffRead, {**document, "open_load": open_load})


async def visible_staff(
    *, db: AsyncDatabase, principal: Principal, staff_id: str
) -> dict[str, Any] | None:
    """The staff member, if the caller's branches cover them; otherwise as if unknown.

    Every reference to a person in a write goes through here, so naming another branch's
    people answers exactly like naming nobody: the id's existence elsewhere never shows.
    """
    document = await db[STAFF].find_one({"_id": staff_key(principal.org, staff_id)})
    if document is None or not principal.can_see(org=principal.org, branch=document["branch"]):
        return None
    return document


async def visible_department(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> DepartmentRead | None:
    """The department, if the caller's branches cover it; otherwise as if unknown. Its
    ``active`` is whether it takes work (``in_service``)."""
    document = await db[DEPARTMENTS].find_one({"_id": department_key(principal.org, department_id)})
    if document is None or not principal.can_see(org=principal.org, branch=document["branch"]):
        return None
    return (await in_service(db=db, documents=[document]))[0]


async def visible_staff_ids(
    *, db: AsyncDatabase, principal: Principal, staff_ids: list[str]
) -> set[str]:
    """Those of ``staff_ids`` the caller's branches cover."""
    query = {**principal.scope_filter(), "id": {"$in": sorted(set(staff_ids))}}
    return {doc["id"] async for doc in db[STAFF].find(query, projection={"id": 1})}


async def require_active_branch(*, db: AsyncDatabase, org: str, code: str) -> None:
    """A new department or person needs an active branch to belong to (a 422 naming it)."""
    branch = await db[BRANCHES].find_one({"_id": branch_key(org, code)})
    if branch is None or not branch.get("active", True):
        raise invalid("branch", f"unknown or inactive branch {code!r}")


# ------------------------------------------------------- lookups for routing --


async def find_branch(*, db: AsyncDatabase, org: str, code: str) -> BranchRead | None:
    document = await db[BRANCHES].find_one({"_id": branch_key(org, code)})
    return branch_read(document) if document else None


async def branch_document(*, db: AsyncDatabase, org: str, code: str) -> dict[str, Any] | None:
    """The branch as stored, with the calendars it replaced (``calendar_history``)."""
    return await db[BRANCHES].find_one({"_id": branch_key(org, code)})


async def closed_branches(
    *, db: AsyncDatabase, org: str, codes: Iterable[str] | None = None
) -> set[str]:
    """The codes of ``org``'s deactivated branches (of ``codes`` only, when given)."""
    query: dict[str, Any] = {"org": org, "active": False}
    if codes is not None:
        query["_id"] = {"$in": sorted({branch_key(org, code) for code in codes})}
    cursor = db[BRANCHES].find(query, projection={"code": 1})
    return {document["code"] async for document in cursor}


async def in_service(*, db: AsyncDatabase, documents: list[dict[str, Any]]) -> list[DepartmentRead]:
    """Stored departments as routing sees them: ``active`` only while the department and its
    branch both are. A closed branch's departments keep their own flag (reopening the branch
    brings them back as they were) but take no work meanwhile: until 5 December its
    departments stayed rule targets, reassignment targets and queue successors."""
    closed: set[tuple[str, str]] = set()
    for org in {document["org"] for document in documents}:
        codes = {document["branch"] for document in documents if document["org"] == org}
        closed |= {(org, code) for code in await closed_branches(db=db, org=org, codes=codes)}
    departments = [department_read(document) for document in documents]
    return [
        department.model_copy(update={"active": False})
        if (department.org, department.branch) in closed
        else department
        for department in departments
    ]


async def find_department(
    *, db: AsyncDatabase, org: str, department_id: str
) -> DepartmentRead | None:
    """The department, ``active`` as routing sees it (``in_service``)."""
    document = await db[DEPARTMENTS].find_one({"_id": department_key(org, department_id)})
    return (await in_service(db=db, documents=[document]))[0] if document else None


async def inactive_departments(
    *, db: AsyncDatabase, departments: Iterable[tuple[str, str]]
) -> list[DepartmentRead]:
    """Those of the (org, department) pairs that take no work (deactivated, or of a closed
    branch: ``in_service``), in two reads."""
    keys = [department_key(org, department_id) for org, department_id in departments]
    if not keys:
        return []
    documents = await db[DEPARTMENTS].find({"_id": {"$in": keys}}).to_list(None)
    return [
        department
        for department in await in_service(db=db, documents=documents)
        if not department.active
    ]


async def active_department_of_kind(
    *, db: AsyncDatabase, org: str, branch: str, kind: str
) -> DepartmentRead | None:
    """The branch's active department of ``kind`` (there is at most one); none while the
    branch is closed."""
    document = await db[DEPARTMENTS].find_one(
        {"org": org, "branch": branch, "kind": kind, "active": True}
    )
    if document is None:
        return None
    department = (await in_service(db=db, documents=[document]))[0]
    return department if department.active else None


async def departments_for_routing(
    *, db: AsyncDatabase, org: str, branch: str, department_ids: list[str]
) -> list[DepartmentRead]:
    """Active departments a rule can reach from ``branch``: its own and explicit targets,
    none of a closed branch (``in_service``)."""
    query = {
        "org": org,
        "active": True,
        "$or": [{"branch": branch}, {"id": {"$in": department_ids}}],
    }
    documents = await db[DEPARTMENTS].find(query).to_list(None)
    return [
        department
        for department in await in_service(db=db, documents=documents)
        if department.active
    ]


async def staff_of_branches(*, db: AsyncDatabase, org: str, branches: list[str]) -> list[StaffRead]:
    query = {"org": org, "branch": {"$in": sorted(set(branches))}}
    return [staff_read(doc) async for doc in db[STAFF].find(query)]


async def find_staff(*, db: AsyncDatabase, org: str, staff_id: str) -> StaffRead | None:
    document = await db[STAFF].find_one({"_id": staff_key(org, staff_id)})
    return staff_read(document) if document else None


async def find_staff_with_load(*, db: AsyncDatabase, org: str, staff_id: str) -> StaffRead | None:
    """``find_staff`` with ``open_load`` set to the person's load hint as stored."""
    document = await db[STAFF].find_one({"_id": staff_key(org, staff_id)})
    return staff_read(document, open_load=document.get(LOAD_HINT, 0)) if document else None


# ---------------------------------------------------------------- load hints --


async def record_assignment(
    *, db: AsyncDatabase, org: str, staff_id: str, slot: int | None, at: datetime
) -> None:
    """Someone took the owner's slot ``slot``: tie-break time and load hints, in one write.

    ``load_hint`` and ``freed_slots`` only rank candidates and suggest slots cheaply; the
    slots themselves stay the truth (see ``routing.assignments.owners``), and
    ``owners.reconcile_load_hints`` corrects any drift of the load hint.
    """
    update: dict[str, Any] = {"$max": {"last_assigned_at": at}, "$inc": {LOAD_HINT: 1}}
    if slot is not None:
        update["$pull"] = {FREED_SLOTS: slot}
    await db[STAFF].update_one({"_id": staff_key(org, staff_id)}, update)
    _adjust_desks(db=db, org=org, staff_id=staff_id, load=1, slot=slot, assigned_at=at)


async def record_slot_taken(*, db: AsyncDatabase, org: str, staff_id: str, slot: int) -> None:
    """The owner's freed slot ``slot`` is held again by work already theirs (moved down from
    past their capacity): no longer offered as freed; the load stays as it is."""
    await db[STAFF].update_one({"_id": staff_key(org, staff_id)}, {"$pull": {FREED_SLOTS: slot}})
    for key, freed_of_desk in _desk_freed.items():
        freed = freed_of_desk.get(staff_id) if key[:2] == (db.name, org) else None
        if freed is not None and slot in freed:
            freed.remove(slot)


async def record_release(*, db: AsyncDatabase, org: str, staff_id: str, slot: int | None) -> None:
    """The owner's slot ``slot`` came free (finished or moved away): kept among the lowest
    ``FREED_SLOTS_KEPT`` freed, for the next assignment to try first."""
    update: dict[str, Any] = {"$inc": {LOAD_HINT: -1}}
    if slot is not None:
        update["$push"] = {FREED_SLOTS: {"$each": [slot], "$sort": 1, "$slice": FREED_SLOTS_KEPT}}
    await db[STAFF].update_one({"_id": staff_key(org, staff_id), LOAD_HINT: {"$gt": 0}}, update)
    _releases.note(database=db.name, org=org, staff_id=staff_id)
    _adjust_desks(db=db, org=org, staff_id=staff_id, load=-1, slot=slot)


# Desks this process read lately: (database, org, department) -> (read at, people by id).
# Routing ranks a department's people for every complaint. Their load hints and
# tie-break times change with every assignment, so this process applies its own changes
# to its copy (``record_assignment``, ``record_release``) and reads the desk again after
# ``DESK_MAX_AGE_S`` (other replicas' assignments, corrected hints), or at once after a
# directory change made here. Hints only rank candidates: the owner slots keep every
# capacity exact whatever a copy says (``routing.assignments.owners``).
DESK_MAX_AGE_S = 1.0
DESKS_KEPT = 1000
_desks: dict[tuple[str, str, str], tuple[float, dict[str, StaffRead]]] = {}
# The load hints of each kept desk as the database has them (read, then this process's own
# changes), whatever the desk's people show in their place (counted loads).
_desk_hints: dict[tuple[str, str, str], dict[str, int]] = {}
# The freed slots of each kept desk's people (``FREED_SLOTS``), followed as the hints are.
_desk_freed: dict[tuple[str, str, str], dict[str, list[int]]] = {}
# Loads counted from the assignments stand for this long in a department's desk, across its
# reads (``count_into_desk``): a full department is counted at most this often, as often as
# the queue sweep tries its queue again. Counting reads every open assignment of the
# department's people (up to their capacity each): counted once a second, a full department
# of one person at 1,000 was in 6 of 10 stack dumps of the local server under load
# (docs/performance.md).
COUNTED_LOADS_KEPT_S = 10.0


class _ReleaseLog:
    """This process's releases, numbered, so that a desk read or a count of loads that was
    in flight while one was recorded can tell: its answer may not hold the slot freed, and
    this process's change to its copies was made before the answer replaced them. Read as
    full, that answer stood in the desk as counted loads for ``COUNTED_LOADS_KEPT_S``: the
    drain of that very finish found nobody with room, settled, and the room stayed unused
    until the next census of queues (``queue_census_interval_s``)."""

    KEPT = 1000

    def __init__(self) -> None:
        self.latest = 0
        self._kept: deque[tuple[int, str, str, str]] = deque(maxlen=self.KEPT)

    def note(self, *, database: str, org: str, staff_id: str) -> None:
        self.latest += 1
        self._kept.append((self.latest, database, org, staff_id))

    def any_since(self, mark: int, *, database: str, org: str, staff_ids: Iterable[str]) -> bool:
        """Whether one of ``staff_ids`` freed a slot here since ``mark`` (``latest`` then);
        true as well when more releases came since than are kept."""
        if self.latest == mark:
            return False
        if self._kept[0][0] > mark + 1:
            return True
        people = set(staff_ids)
        return any(
            number > mark and (db_name, desk_org) == (database, org) and staff_id in people
            for number, db_name, desk_org, staff_id in self._kept
        )


_releases = _ReleaseLog()


def releases_mark() -> int:
    """Taken before a read of loads or hints, for ``count_into_desk``."""
    return _releases.latest


@dataclass
class _Counted:
    at: float  # monotonic
    hints: dict[str, int]  # the hints the count replaced
    loads: dict[str, int]


_counted: dict[tuple[str, str, str], _Counted] = {}


async def desk(
    *, db: AsyncDatabase, org: str, department_id: str, fresh: bool = False
) -> list[StaffRead]:
    """The department's people with ``open_load`` set to their load *hint* (not exact),
    as kept by this process for up to ``DESK_MAX_AGE_S`` (``fresh``: read now), or to the
    loads counted lately where those still stand (``count_into_desk``)."""
    key = (db.name, org, department_id)
    kept = _desks.get(key)
    now = time.monotonic()
    if (
        not fresh
        and kept is not None
        and now - kept[0] < DESK_MAX_AGE_S
        and not context_cache.changed_here_since(org=org, since=kept[0])
    ):
        return list(kept[1].values())
    mark = releases_mark()
    documents = await _staff_of_department(db=db, org=org, department_id=department_id)
    people = [staff_read(doc, open_load=doc.get(LOAD_HINT, 0)) for doc in documents]
    hints = {person.id: person.open_load for person in people}
    if _releases.any_since(mark, database=db.name, org=org, staff_ids=hints):
        # The read may not hold a slot freed here meanwhile: the hints may say full where
        # someone has room, so they are counted again when they find nobody.
        _counted.pop(key, None)
    people = _with_counted_loads(key, people, now=now)
    if len(_desks) >= DESKS_KEPT:  # stale ones first; they would be read again anyway
        for stale in [k for k, (read_at, _) in _desks.items() if now - read_at >= DESK_MAX_AGE_S]:
            del _desks[stale]
            _desk_hints.pop(stale, None)
            _desk_freed.pop(stale, None)
    _desks[key] = (now, {person.id: person for person in people})
    _desk_hints[key] = hints
    _desk_freed[key] = {doc["id"]: list(doc.get(FREED_SLOTS, [])) for doc in documents}
    return people


async def _staff_of_department(
    *, db: AsyncDatabase, org: str, department_id: str
) -> list[dict[str, Any]]:
    query = {"org": org, "department_id": department_id}
    return await db[STAFF].find(query).sort("_id", ASCENDING).to_list(None)


def freed_slots(*, db: AsyncDatabase, person: StaffRead) -> list[int]:
    """The lowest slot numbers ``person`` freed lately, as their kept desk has them."""
    key = (db.name, person.org, person.department_id)
    return list(_desk_freed.get(key, {}).get(person.id, []))


def _with_counted_loads(
    key: tuple[str, str, str], people: list[StaffRead], *, now: float
) -> list[StaffRead]:
    """``people`` as just read, with the loads counted lately in place of their hints while
    those stand. A hint that moved (a slot taken or freed anywhere) or a count too old ends
    the counts: hints again, counted anew when they find nobody. A hint gone up is not
    added to the count: the assignment it follows may have been committed before the count
    read the assignments, and counted twice it held a freed slot as taken (a queue left
    waiting beside an owner with room until the next census of queues)."""
    counted = _counted.get(key)
    if counted is None:
        return people
    hints = {person.id: person.open_load for person in people}
    if now - counted.at >= COUNTED_LOADS_KEPT_S or any(
        hints.get(staff_id, 0) != hint for staff_id, hint in counted.hints.items()
    ):
        del _counted[key]
        return people
    return [
        person.model_copy(update={"open_load": counted.loads[person.id]})
        if person.id in counted.loads
        else person
        for person in people
    ]


def count_into_desk(
    *, db: AsyncDatabase, org: str, department_id: str, loads: dict[str, int], since: int
) -> None:
    """Put loads just counted from the assignments into the kept desk in place of the
    hints, for up to ``COUNTED_LOADS_KEPT_S`` or until a load moves (this process's own
    change ends them at once, another's at the next read of the desk: ``_with_counted_
    loads``). Not when one of the people freed a slot here since the count began
    (``since``, a ``releases_mark``): the count may hold that slot as taken."""
    key = (db.name, org, department_id)
    kept = _desks.get(key)
    if kept is None or _releases.any_since(since, database=db.name, org=org, staff_ids=loads):
        return
    _, people = kept
    stored = _desk_hints.get(key, {})
    hints = {staff_id: stored.get(staff_id, 0) for staff_id in loads if staff_id in people}
    for staff_id, load in loads.items():
        if staff_id in people:
            people[staff_id] = people[staff_id].model_copy(update={"open_load": load})
    _counted[key] = _Counted(at=time.monotonic(), hints=hints, loads=dict(loads))


def end_counts(*, db: AsyncDatabase, org: str, department_id: str) -> None:
    """Drop the loads counted for the department's desk: a slot may have come free where
    this process neither saw nor made the move (a finish applied by a process that died)."""
    key = (db.name, org, department_id)
    if _counted.pop(key, None) is not None:  # the desk shows them: read it again
        _desks.pop(key, None)
        _desk_hints.pop(key, None)
        _desk_freed.pop(key, None)


def desk_counted(*, db: AsyncDatabase, org: str, department_id: str) -> bool:
    """Whether the department's desk holds loads counted lately (``count_into_desk``)."""
    counted = _counted.get((db.name, org, department_id))
    return counted is not None and time.monotonic() - counted.at < COUNTED_LOADS_KEPT_S


def _adjust_desks(
    *,
    db: AsyncDatabase,
    org: str,
    staff_id: str,
    load: int,
    slot: int | None,
    assigned_at: datetime | None = None,
) -> None:
    """Apply this process's own load change to the desks it keeps (as the write did): one
    slot more (``load`` 1, ``slot`` taken) or one less (``load`` -1, ``slot`` freed). It
    ends the loads counted for the person's desk: whether a count holds an assignment whose
    write it raced is unknown, and the hints say the load as this process moved it."""
    for key, (_, people) in _desks.items():
        database, desk_org, _ = key
        person = people.get(staff_id) if (database, desk_org) == (db.name, org) else None
        if person is None:
            continue
        hints = _desk_hints.get(key)
        if hints is not None and staff_id in hints:
            hints[staff_id] = max(0, hints[staff_id] + load)
        counted = _counted.get(key)
        if counted is not None and staff_id in counted.loads and hints is not None:
            del _counted[key]  # the desk's people show their hints again
            for other, hint in hints.items():
                if other in people:
                    people[other] = people[other].model_copy(update={"open_load": hint})
            person = people[staff_id]
        else:
            person = person.model_copy(update={"open_load": max(0, person.open_load + load)})
        freed = _desk_freed.get(key, {}).get(staff_id)
        if freed is not None and slot is not None:
            taken = load > 0
            freed[:] = [n for n in freed if n != slot] if taken else sorted({*freed, slot})
            del freed[FREED_SLOTS_KEPT:]
        update: dict[str, Any] = {"open_load": person.open_load}
        if assigned_at is not None and (
            person.last_assigned_at is None or assigned_at > person.last_assigned_at
        ):
            update["last_assigned_at"] = assigned_at
        people[staff_id] = person.model_copy(update=update)


def forget_desks() -> None:
    """Drop every kept desk (the hints were corrected in the database)."""
    _desks.clear()
    _desk_hints.clear()
    _desk_freed.clear()
    _counted.clear()
