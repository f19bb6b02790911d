"""A branch's calendar changes, kept on the branch for the clocks laid out before them.

A change of a branch's calendar (``sla.clocks.CALENDAR_FIELDS``: time zone, opening hours,
holidays) is written together with a new ``calendar_version``, a record of the calendar it
replaced and when, and the mark ``calendar_change_pending``: the branch's open assignments
still run on the calendar they were laid out with (their own ``calendar_version``) until
routing re-lays their clocks (``routing.assignments.calendar_changes``). The last
``CHANGES_KEPT`` changes are kept; work further behind is re-laid from the oldest kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.logs import get_logger
from complaints_shared.stored import from_stored
from routing.directory import store
from routing.directory.models import BranchRead
from routing.sla.clocks import CALENDAR_FIELDS, branch_calendar

CHANGES_KEPT = 20

log = get_logger(__name__)


def _calendar_spec(document: dict[str, Any]) -> dict[str, Any]:
    return {field: document.get(field) for field in sorted(CALENDAR_FIELDS)}


def recorded_change(
    *, current: dict[str, Any], changes: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The update recording that ``changes`` replace the calendar of the stored branch
    ``current`` at ``now``, to write with them; ``{}`` when its calendar stays as it is."""
    previous = _calendar_spec(current)
    if _calendar_spec({**current, **changes}) == previous:
        return {}
    version = current.get(store.CALENDAR_VERSION, 0) + 1
    record = {"version": version, "changed_at": now, "previous": previous}
    return {
        "$set": {store.CALENDAR_VERSION: version, store.CALENDAR_CHANGE_PENDING: True},
        "$unset": {store.CALENDAR_SETTLE_AT: ""},  # the wait starts again for this change
        "$push": {store.CALENDAR_CHANGES: {"$each": [record], "$slice": -CHANGES_KEPT}},
    }


@dataclass(frozen=True)
class CalendarChange:
    """The branch's calendar became ``calendar`` (its version ``version``) at
    ``changed_at``, replacing ``previous``."""

    version: int
    changed_at: datetime
    previous: BusinessCalendar
    calendar: BusinessCalendar


@dataclass(frozen=True)
class BranchCalendars:
    """A branch's calendar now (at ``version``) and the changes that led to it, oldest first."""

    org: str
    code: str
    version: int
    calendar: BusinessCalendar
    changes: tuple[CalendarChange, ...]

    def changes_since(self, version: int) -> tuple[CalendarChange, ...]:
        """The changes after ``version``, in order (from the oldest kept, when some of them
        are no longer kept)."""
        after = tuple(change for change in self.changes if change.version > version)
        if after and after[0].version != version + 1:
            log.warning(
                "calendar_changes_not_kept",
                org=self.org,
                branch=self.code,
                laid_out_at_version=version,
                oldest_kept=after[0].version,
            )
        return after

    def at_version(self, version: int) -> BusinessCalendar:
        """The calendar the branch had at ``version`` (the oldest kept, when that is older)."""
        for change in self.changes:
            if change.version > version:
                return change.previous
        return self.calendar


def _branch(document: dict[str, Any], spec: dict[str, Any]) -> BranchRead:
    # A field missing from a branch stored long ago has its default, then as now.
    rest = {key: value for key, value in document.items() if key not in CALENDAR_FIELDS}
    given = {field: value for field, value in spec.items() if value is not None}
    return from_stored(BranchRead, {**rest, **given})


def calendars_of(document: dict[str, Any]) -> BranchCalendars:
    """The calendars of the stored branch ``document``."""
    calendar = branch_calendar(_branch(document, _calendar_spec(document)))
    records = sorted(document.get(store.CALENDAR_CHANGES) or [], key=lambda r: r["version"])
    previous_calendars = [branch_calendar(_branch(document, r["previous"])) for r in records]
    # What each change led to: the calendar the next one replaced, the last one's is today's.
    following = [*previous_calendars[1:], calendar] if records else []
    changes = tuple(
        CalendarChange(
            version=record["version"],
            changed_at=record["changed_at"],
            previous=previous,
            calendar=after,
        )
        for record, previous, after in zip(records, previous_calendars, following, strict=True)
    )
    return BranchCalendars(
        org=document["org"],
        code=document["code"],
        version=document.get(store.CALENDAR_VERSION, 0),
        calendar=calendar,
        changes=changes,
    )


async def branch_calendars(*, db: AsyncDatabase, org: str, code: str) -> BranchCalendars:
    """The branch's calendars; a branch missing from the directory has the default hours."""
    document = await store.branch_document(db=db, org=org, code=code)
    if document is None:
        calendar = branch_calendar(BranchRead(org=org, code=code, name=code))
        return BranchCalendars(org=org, code=code, version=0, calendar=calendar, changes=())
    return calendars_of(document)
