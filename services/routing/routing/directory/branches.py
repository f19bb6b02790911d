"""Branches as their administrators keep them: validated writes, scoped reads.

A branch's time zone, opening hours and holiday calendar are checked before they are
stored (a 422 naming the field); every change announces ``branch.updated`` in the same
write (intake numbers references in the branch's time zone), and a change of the calendar
records the calendar it replaces there too, for routing to re-lay the branch's open work
(``calendar_history``). A branch closes only once no rule and no open work needs its
departments, and reopens as it was; intake refuses complaints for it while it is closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, time
from itertools import pairwise
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.business_calendar import closure_problem
from complaints_shared.events import BranchUpdated, EventType
from complaints_shared.models import Weekday
from complaints_shared.mongo import merge_updates
from complaints_shared.outbox import outbox_entry, outbox_fields, outbox_update
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import conflict, invalid, not_found
from complaints_shared.settings import ServiceSettings
from complaints_shared.stored import from_stored
from routing.assignments.models import AssignmentStatus
from routing.directory import calendar_history, departments, store
from routing.directory.models import (
    BranchBase,
    BranchCreate,
    BranchRead,
    BranchUpdate,
    HolidayCalendar,
    OpeningRange,
    StaffStatus,
)
from routing.sla.clocks import CALENDAR_FIELDS, branch_calendar

# The assignments' collection (``routing.assignments.store``, which reads this package).
ASSIGNMENTS = "assignments"


def _check_holidays(calendar: HolidayCalendar) -> None:
    # The zone, the country and its subdivision are checked by the models' field types.
    both = set(calendar.closed_days) & set(calendar.working_days)
    if both:
        days = ", ".join(sorted(day.isoformat() for day in both))
        raise invalid("holidays.working_days", f"{days} also listed as closed days")


def _check_closures(branch: BranchBase) -> None:
    """Closed days that shut the branch for over a year would leave complaints without
    SLA deadlines (checked once the hours are known to be valid)."""
    problem = closure_problem(branch_calendar(branch))
    if problem is not None:
        raise invalid("holidays.closed_days", problem)


def _check_hours(hours: dict[Weekday, list[OpeningRange]]) -> None:
    if not any(hours.values()):
        raise invalid("hours", "a branch needs opening hours on at least one weekday")
    for weekday, ranges in hours.items():
        ordered = sorted(ranges, key=lambda slot: slot.start)
        for earlier, later in pairwise(ordered):
            if earlier.end == time(0) or later.start < earlier.end:
                raise invalid(f"hours.{weekday.value}", "opening ranges overlap")


async def _check_duty_officer(
    *, db: AsyncDatabase, principal: Principal, staff_id: str | None, branch: str
) -> None:
    """The duty officer is a person of ``branch``: another branch's, accepted from a token
    covering both, took the branch's urgent night work, uncapped, though their own token
    could not open it, and their branch's admin could take the branch's cover away."""
    if staff_id is None:
        return
    person = await store.visible_staff(db=db, principal=principal, staff_id=staff_id)
    if person is None:
        raise invalid("duty_officer_id", f"unknown staff member {staff_id!r}")
    if person["branch"] != branch:
        raise invalid(
            "duty_officer_id",
            f"{staff_id!r} is staff of branch {person['branch']}, not of {branch}",
        )
    if person["status"] == StaffStatus.INACTIVE.value:
        raise invalid("duty_officer_id", f"staff member {staff_id!r} is inactive")


def _branch_updated(document: dict[str, Any], *, settings: ServiceSettings) -> dict[str, Any]:
    """The outbox entry announcing the branch as ``document`` shows it (intake numbers
    references in the branch's time zone from it)."""
    event = BranchUpdated(
        org=document["org"],
        branch=document["code"],
        name=document["name"],
        time_zone=document["time_zone"],
        active=document.get("active", True),
        version=document["version"],
        updated_at=document["updated_at"],
    )
    return outbox_entry(event_type=EventType.BRANCH_UPDATED, data=event, settings=settings)


async def create_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    body: BranchCreate,
    now: datetime,
) -> BranchRead:
    _check_hours(body.hours)
    _check_holidays(body.holidays)
    _check_closures(body)
    document = store.new_entry(
        key=store.branch_key(principal.org, body.code),
        fields={
            "org": principal.org,
            **body.model_dump(mode="json"),
            "active": True,
        },
        now=now,
    )
    document.update(outbox_fields([_branch_updated(document, settings=settings)]))

    async def validate() -> None:
        await _check_duty_officer(
            db=db, principal=principal, staff_id=body.duty_officer_id, branch=body.code
        )

    stored = await store.insert_entry(
        db=db,
        principal=principal,
        entry=store.BRANCH,
        document=document,
        at=now,
        validate=validate,
    )
    return store.branch_read(stored)


async def _branch_document(*, db: AsyncDatabase, principal: Principal, code: str) -> dict:
    principal.require_branch(code)
    document = await db[store.BRANCHES].find_one({"_id": store.branch_key(principal.org, code)})
    if document is None:
        raise not_found(what="branch", identifier=code)
    return document


async def get_branch(*, db: AsyncDatabase, principal: Principal, code: str) -> BranchRead:
    return store.branch_read(await _branch_document(db=db, principal=principal, code=code))


async def list_branches(
    *, db: AsyncDatabase, principal: Principal, include_inactive: bool
) -> list[BranchRead]:
    query: dict[str, Any] = {"org": principal.org}
    if not principal.all_branches:
        query["code"] = {"$in": list(principal.branches)}
    if not include_inactive:
        query["active"] = True
    documents = await db[store.BRANCHES].find(query).sort("code", ASCENDING).to_list(None)
    return [store.branch_read(document) for document in documents]


async def update_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    code: str,
    body: BranchUpdate,
    if_match: IfMatch | None,
    now: datetime,
) -> BranchRead:
    current = await _branch_document(db=db, principal=principal, code=code)
    changes = store.patch_fields(body, nullable={"duty_officer_id"})

    async def validate() -> None:
        # The body's fields were checked as a request; the rest is read as stored, and the
        # branch is checked for what the change touches (a calendar kept from before a
        # check was added does not refuse a new name).
        merged = from_stored(BranchRead, {**current, **changes})
        if "hours" in changes:
            _check_hours(merged.hours)
        if "holidays" in changes:
            _check_holidays(merged.holidays)
        if changes.keys() & CALENDAR_FIELDS:
            _check_closures(merged)
        if "duty_officer_id" in changes:
            await _check_duty_officer(
                db=db, principal=principal, staff_id=merged.duty_officer_id, branch=merged.code
            )

    return await _change_branch(
        db=db,
        settings=settings,
        principal=principal,
        current=current,
        changes=changes,
        action="updated",
        if_match=if_match,
        validate=validate,
        now=now,
    )


async def _refuse_if_in_use(*, db: AsyncDatabase, org: str, code: str) -> None:
    """A branch closes once nothing needs its departments: no active rule names one by id,
    and no complaint waits in one's queue or is open with one's people. A closed branch's
    departments take no work (``store.in_service``): such a rule would be passed over (the
    default rule's: everything no other rule covers went unroutable) and such a queue would
    never drain. Until 5 December closing the branch bypassed the department's own guard
    (``departments.deactivate_department``) and routing went on using its departments."""
    department_ids = [
        document["id"]
        async for document in db[store.DEPARTMENTS].find(
            {"org": org, "branch": code}, projection={"id": 1}
        )
    ]
    if not department_ids:
        return
    blocking = []
    rules = await departments.rules_naming(db=db, org=org, department_ids=department_ids)
    if rules:
        blocking.append(f"routing rule(s) {', '.join(rules)} name its departments")
    work = {
        "org": org,
        "department": {"$in": department_ids},
        "status": {"$in": [AssignmentStatus.QUEUED.value, AssignmentStatus.OPEN.value]},
    }
    count = await db[ASSIGNMENTS].count_documents(work)
    if count:
        shown = await db[ASSIGNMENTS].find(work, projection={"_id": 1}, limit=5).to_list(None)
        named = ", ".join(sorted(document["_id"] for document in shown))
        blocking.append(f"{count} complaint(s) are queued or open in its departments ({named})")
    if blocking:
        raise conflict(
            f"branch {code} is still in use: {'; '.join(blocking)}. Change the rules and "
            "reassign or finish the work first",
            kind="branch-in-use",
        )


async def deactivate_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    code: str,
    if_match: IfMatch | None,
    now: datetime,
) -> BranchRead:
    """Close the branch (refused while in use: ``_refuse_if_in_use``); its departments and
    people keep their own state, idle until it reopens."""
    current = await _branch_document(db=db, principal=principal, code=code)

    async def validate() -> None:
        await _refuse_if_in_use(db=db, org=principal.org, code=code)

    return await _change_branch(
        db=db,
        settings=settings,
        principal=principal,
        current=current,
        changes={"active": False},
        action="deactivated",
        if_match=if_match,
        validate=validate,
        now=now,
    )


async def reactivate_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    code: str,
    if_match: IfMatch | None,
    now: datetime,
) -> BranchRead:
    """Reopen a closed branch as it was: its departments that were active take work again,
    and intake registers its complaints again once ``branch.updated`` reaches it."""
    current = await _branch_document(db=db, principal=principal, code=code)
    return await _change_branch(
        db=db,
        settings=settings,
        principal=principal,
        current=current,
        changes={"active": True},
        action="reactivated",
        if_match=if_match,
        now=now,
    )


async def _change_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    current: dict[str, Any],
    changes: dict[str, Any],
    action: str,
    if_match: IfMatch | None,
    now: datetime,
    validate: Callable[[], Awaitable[None]] | None = None,
) -> BranchRead:
    """Write a change of the branch and announce the branch as it now is, in one write; a
    new calendar is recorded with the one it replaces (``calendar_history``), in that write."""
    announced = {**current, **changes, "updated_at": now, "version": current["version"] + 1}
    calendar_change = calendar_history.recorded_change(current=current, changes=changes, now=now)
    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.BRANCH,
        current=current,
        changes=changes,
        action=action,
        at=now,
        if_match=if_match,
        validate=validate,
        announce=merge_updates(
            outbox_update([_branch_updated(announced, settings=settings)]), calendar_change
        ),
    )
    return store.branch_read(updated)
