"""留档分析 at scale: the report's figures kept per organisation, branch and UTC day.

``reports.summary`` over months of complaints is one aggregation over every complaint in
the window, which on the local server costs ~0.3 ms per complaint (25 s at 100,000). So a
background job keeps *tallies*: per (org, branch, day, grouping dimension) one document
holding, per group value, everything the report's figures are made of in a form that adds
up and takes away (counts, sums, and the lists a figure needs whole: durations for the
percentiles, due times whose "has it passed?" depends on when the report is asked). Beside
them it keeps a *row* per complaint (``report_rows``): the complaint as the tallies count it.

The job (:func:`run_rollup`, one replica at a time under a lease) moves the tallies on from a
watermark kept in the database: it reads every complaint whose ``updated_at`` is past the
watermark, takes each one's row out of its day's tallies and counts the complaint as it is
now, writes the rows, then moves the watermark to the pass's start minus ``ROLLUP_LAG`` (a
change stamped before that but committed late, or by a replica whose clock is behind, is
still read by the next pass; an event's change is stamped when intake applies it, however
late, not with the event's time; reading one again whose row already says the same changes
nothing; one the last pass read at the version it has now is not even looked up,
``read_versions``; a change committed more than ``aggregate.LATE_COMMIT_S`` after the kernel
took it in is stamped again when committed). A pass costs what changed since the last; a day
is read whole once, by the first pass after it ends (:func:`_audit`), which counts any
change committed too late for the passes that should have read it. Until 3 December today
was counted from its complaints by every report, and a past day changed again and again was
read whole every ten minutes and counted from its complaints by every report meanwhile
(docs/performance.md, "Reports beside writes").

The report adds the tallies of the window's days, counts a part day at its edges from the
rows (those of the part, or the day's tally less those of the rest, whichever spans less of
the day), and corrects them for what changed after the watermark the same way: each such
complaint's row out, the complaint in (``reports._from_tallies``). So its cost is the days'
tally documents, the rows of at most half a day at each edge, and the complaints changed in
the last pass or two, whatever a day holds.

A pass writes its changes to several documents, so it is made safe to break off: it first
writes what it will apply (``report_journal``: each complaint's old and new row) and notes
itself pending; each tally document it writes carries the pass's number (``seq``), and so
does each row. A pass broken off is applied again from the journal by the next, skipping the
tally documents that already carry its number. A report that reads a tally document or a row
of a pass later than the watermark it read reads again.

The lease is renewed while a pass runs, but a holder whose renewals fail loses it to another
replica and may still be passing. So passes are fenced by their numbers, not by the lease: a
pass claims its number only on the state it began from (else ``PassOvertaken``, and it
writes nothing), and a tally document or a row is only written over one of an earlier pass.
Two holders applying the same pass write the same documents from the same journal. A build
(the first pass, or the first of a new ``VERSION``) claims a number above every one before
it on the state as it found it, and sets the state only while its claim stands: a build
overtaken by another one (its holder's lease ran out meanwhile) may go on writing, but
never over the later build's documents, and the state stays the later one's.
"""

from __future__ import annotations

import contextlib
import math
import sys
import uuid
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import InsertOne, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.logs import get_logger
from complaints_shared.mongo import (
    at_or_after,
    bulk_write_unless_taken,
    ensure_index,
    lease_free,
    lease_kept,
    windows_of,
)
from complaints_shared.runtime import Runtime
from complaints_shared.timing import Pacer, wait_event
from intake import floors, store
from intake.lifecycle import OPEN_STATUSES, Status

log = get_logger(__name__)

TALLIES = "report_tallies"
# Per complaint, what the tallies count of it (``FIELDS``) and the pass that wrote it.
ROWS = "report_rows"
# The pass being applied: its changes, each complaint's old row and new one.
JOURNAL = "report_journal"
JOURNAL_CHUNK = 200
# Kept by versions before 4 (the days changed since their last tally); dropped by a build.
RETIRED = ("report_days_changed",)
STATE = "report_rollup"
WATERMARK_ID = "watermark"
LEASE_ID = "lease"
# Bump when what a pass writes changes (tallies, rows, floors, what a report may trust): the
# next pass rebuilds it all, and replicas of another version count from the complaints
# meanwhile. 5: until 3 December intake stamped an event's change with the event's time, so
# one consumed more than ``ROLLUP_LAG`` late (after an outage) was never read by a pass;
# version 4's tallies may lack such changes and are built again. 6: due times passed are
# counted, not listed (``DUE_LISTS``). 7: the lists stored packed (``_packed``); each tally
# document carries the version that wrote it. 8: the acknowledge clock is answered by
# routing's stop of it (``reports.ACK_ANSWERED``): a finish before any acknowledgement is.
VERSION = 8
ROLLUP_LAG = timedelta(seconds=30)
# The job reads complaints in windows of about this many (``mongo.windows_of``) and pauses
# between them (``timing.Pacer``); its first window of changes is this wide.
READ_BATCH = 200
CHANGES_WINDOW = timedelta(seconds=10)
AUDIT_WINDOW = timedelta(hours=1)
ROLLUP_LEASE = timedelta(seconds=60)
DAY = timedelta(days=1)
# The report's group-by dimensions, as complaint field paths.
DIMENSIONS = {
    "branch": "branch",
    "department": "assignment.department",
    "category": "category",
    "severity": "severity",
    "channel": "channel",
    "owner": "assignment.owner_id",
}
# What a tally reads of a complaint: a row (the floors' dates among them).
FIELDS = {
    name: 1
    for name in (
        "org",
        "branch",
        "created_at",
        "status",
        "assignment.department",
        "assignment.owner_id",
        "category",
        "severity",
        "channel",
        "acknowledged_at",
        store.ACKNOWLEDGE_STOPPED_AT,
        "acknowledge_due_at",
        "resolve_due_at",
        "finished_at",
        "first_resolved_at",
        "resolution_count",
        "reopen_count",
        "repeat_count",
        "satisfaction.score",
        "resolution.root_cause",
        "responsible_party",
        "responsible_department",
        "resolutions.on_time",
        "resolutions.remedies",
    )
}
# What a pass reads: the row and the version (``read_versions``).
READ_FIELDS = {**FIELDS, "version": 1}
OPEN_VALUES = {status.value for status in OPEN_STATUSES}
UNRESOLVED_VALUES = OPEN_VALUES | {Status.REJECTED.value, Status.WITHDRAWN.value}
RANKED = {
    "root_causes": "resolution.root_cause",
    "parties": "responsible_party",
    "responsible_departments": "responsible_department",
}
COUNTS = (
    "received",
    "open",
    "resolved",
    "resolutions",
    "closed",
    "rejected",
    "withdrawn",
    "ack_on_time",
    "ack_done",
    "missed_finished",
    "reopened",
    "repeats",
    "score_count",
    "cycles_on_time",
    "cycles_measurable",
    "ack_pending_passed",
    "open_resolve_passed",
)
# Whole lists of integers: durations and due times in milliseconds (a due time since
# 1970-01-01 UTC, ``epoch_ms``). Stored sorted and packed (:func:`_packed`).
LISTS = ("ack_pending_due", "open_resolve_due", "ack_ms", "resolve_ms")
# Due times of what is still pending, listed until they have passed, then counted: a report
# asks how many have passed by its present, and one that passed stays passed (:func:`fold`).
DUE_LISTS = {"ack_pending_due": "ack_pending_passed", "open_resolve_due": "open_resolve_passed"}
# Counted by value; stored as [value, count] pairs (values may hold dots).
PAIRS = ("scores", *RANKED)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    # What changed since the watermark (the job, and the report for what the job has not
    # tallied yet). The journal, one pass long, is read whole.
    await ensure_index(db[store.COMPLAINTS], [("updated_at", 1)], name="updated")
    await _ensure_own_indexes(db=db)


async def _ensure_own_indexes(*, db: AsyncDatabase) -> None:
    """The indexes of the collections a build drops and writes anew."""
    await ensure_index(
        db[TALLIES], [("org", 1), ("dimension", 1), ("day", 1)], name="org_dimension_day"
    )
    # Rows are read by ``_id`` and, those of recent complaints, by registration time.
    await ensure_index(db[ROWS], [("created_at", 1)], name="created")


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _get(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ONE_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(later: datetime, earlier: datetime) -> int:
    return (later - earlier) // _ONE_MS


def epoch_ms(moment: datetime) -> int:
    """``moment`` as a due time in a tally's lists: milliseconds since 1970-01-01 UTC."""
    return _ms(moment, _EPOCH)


def due_passed(due: list[int], *, before: datetime) -> int:
    """How many of the due times ``due`` (``epoch_ms``) passed before ``before``."""
    at = epoch_ms(before)
    return sum(moment < at for moment in due)


def empty_tally() -> dict[str, Any]:
    return {
        **dict.fromkeys(COUNTS, 0),
        "score_sum": 0.0,
        **{name: [] for name in LISTS},
        **{name: {} for name in PAIRS},
        "remedies": {},
    }


def add(tally: dict[str, Any], complaint: dict[str, Any]) -> None:
    """Count one complaint in ``tally``, exactly as ``reports._pipeline`` counts it."""
    status = complaint.get("status")
    created = complaint["created_at"]
    acknowledged = complaint.get("acknowledged_at")
    # As ``reports.ACK_ANSWERED``: routing's stop of the clock, else the acknowledgement.
    answered = complaint.get(store.ACKNOWLEDGE_STOPPED_AT) or acknowledged
    ack_due = complaint.get("acknowledge_due_at")
    resolve_due = complaint.get("resolve_due_at")
    finished = complaint.get("finished_at")
    first_resolved = complaint.get("first_resolved_at")
    tally["received"] += 1
    tally["open"] += status in OPEN_VALUES
    tally["resolved"] += first_resolved is not None
    resolutions = complaint.get("resolution_count")
    tally["resolutions"] += resolutions if _number(resolutions) else 0
    tally["closed"] += status == Status.CLOSED.value
    tally["rejected"] += status == Status.REJECTED.value
    tally["withdrawn"] += status == Status.WITHDRAWN.value
    if ack_due is not None:
        if answered is not None:
            tally["ack_done"] += 1
            tally["ack_on_time"] += answered <= ack_due
        else:
            tally["ack_pending_due"].append(epoch_ms(ack_due))  # measurable once passed
    if status in UNRESOLVED_VALUES and resolve_due is not None:
        if finished is not None:
            tally["missed_finished"] += resolve_due < finished
        else:
            tally["open_resolve_due"].append(epoch_ms(resolve_due))  # missed once passed
    if acknowledged is not None:
        tally["ack_ms"].append(_ms(acknowledged, created))
    if first_resolved is not None:
        tally["resolve_ms"].append(_ms(first_resolved, created))
    reopens, repeats = complaint.get("reopen_count"), complaint.get("repeat_count")
    tally["reopened"] += _number(reopens) and reopens > 0
    tally["repeats"] += _number(repeats) and repeats > 0
    score = _get(complaint, "satisfaction.score")
    if score is not None:
        key = str(score)
        tally["scores"][key] = tally["scores"].get(key, 0) + 1
        if _number(score):
            tally["score_sum"] += score
            tally["score_count"] += 1
    for name, path in RANKED.items():
        value = _get(complaint, path)
        if value is not None:
            key = str(value)
            tally[name][key] = tally[name].get(key, 0) + 1
    for resolution in complaint.get("resolutions") or []:
        on_time = resolution.get("on_time")
        tally["cycles_on_time"] += on_time is True
        tally["cycles_measurable"] += isinstance(on_time, bool)
        for remedy in resolution.get("remedies") or []:
            key = f"{remedy.get('type')}\x00{remedy.get('currency') or ''}"
            counted = tally["remedies"].setdefault(
                key, [remedy.get("type"), remedy.get("currency"), 0, 0]
            )
            counted[2] += 1
            cents = remedy.get("amount_cents")
            counted[3] += cents if _number(cents) else 0


def merge(into: dict[str, Any], tally: dict[str, Any]) -> None:
    for name in COUNTS:
        into[name] += tally[name]
    into["score_sum"] += tally["score_sum"]
    for name in LISTS:
        into[name] += tally[name]
    for name in PAIRS:
        for key, count in tally[name].items():
            into[name][key] = into[name].get(key, 0) + count
    for key, (kind, currency, count, cents) in tally["remedies"].items():
        counted = into["remedies"].setdefault(key, [kind, currency, 0, 0])
        counted[2] += count
        counted[3] += cents


def remove(tally: dict[str, Any], counted: dict[str, Any]) -> None:
    """Take ``counted`` (complaints ``tally`` counts, as :func:`add` counted them) out. A due
    time not in ``tally``'s list was folded into its count of those passed (:func:`fold`)."""
    for name in COUNTS:
        tally[name] -= counted[name]
    tally["score_sum"] -= counted["score_sum"]
    for name in LISTS:
        if counted[name]:
            missing = _take_out(tally[name], counted[name])
            if name in DUE_LISTS:
                tally[DUE_LISTS[name]] -= missing
    for name in PAIRS:
        for key, count in counted[name].items():
            tally[name][key] = tally[name].get(key, 0) - count
            if tally[name][key] <= 0:
                del tally[name][key]
    for key, (_, _, count, cents) in counted["remedies"].items():
        left = tally["remedies"].get(key)
        if left is not None:
            left[2] -= count
            left[3] -= cents
            if left[2] <= 0:
                del tally["remedies"][key]


def _take_out(values: list[int], taken: list[int]) -> int:
    """Take each of ``taken`` out of ``values`` once (sorting ``values`` in place); how many
    of them ``values`` did not hold. A removal is a search and a move in C, not a walk of a
    day's list in Python per pass (docs/performance.md, "Packed lists")."""
    values.sort()  # stored sorted, so this is one walk of the runs
    missing = 0
    for value in taken:
        at = bisect_left(values, value)
        if at < len(values) and values[at] == value:
            del values[at]
        else:
            missing += 1
    return missing


def fold(tally: dict[str, Any], *, before: datetime) -> None:
    """Count the due times in ``tally``'s lists that passed before ``before`` instead of
    listing them. A report asked at ``before`` or later tells the same; the stored tallies of
    past days shrink to their counts (a 30-day report's read of them took a fifth of the
    time, docs/performance.md)."""
    at = epoch_ms(before)
    for name, passed in DUE_LISTS.items():
        due = tally[name]
        due.sort()
        gone = bisect_left(due, at)
        if gone:
            tally[passed] += gone
            del due[:gone]


def _packed(values: list[int]) -> bytes:
    """``values`` sorted, as one binary of little-endian 64-bit integers. A full day's list
    as a BSON array is an element per value to encode and decode on both sides of every
    pass; as one binary it is a copy."""
    packed = array("q", sorted(values))
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def _unpacked(stored: bytes) -> list[int]:
    values = array("q")
    values.frombytes(stored)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def _stored(tally: dict[str, Any]) -> dict[str, Any]:
    return {
        **{name: tally[name] for name in (*COUNTS, "score_sum")},
        **{name: _packed(tally[name]) for name in LISTS},
        **{name: [[key, count] for key, count in tally[name].items()] for name in PAIRS},
        "remedies": [
            [kind, currency, count, _storable(cents)]
            for kind, currency, count, cents in tally["remedies"].values()
        ],
    }


# BSON integers hold 64 bits; remedy totals past them (a thousand-billion refunds summed)
# are stored as text, which stopped every pass of the job (an OverflowError) until 5 December.
_MAX_BSON_INT = 2**63 - 1


def _storable(cents: int) -> int | str:
    return cents if -_MAX_BSON_INT <= cents <= _MAX_BSON_INT else str(cents)


def load(stored: dict[str, Any]) -> dict[str, Any]:
    return {
        **{name: stored[name] for name in (*COUNTS, "score_sum")},
        **{name: _unpacked(stored[name]) for name in LISTS},
        **{name: dict(stored[name]) for name in PAIRS},
        "remedies": {
            f"{kind}\x00{currency or ''}": [kind, currency, count, int(cents)]
            for kind, currency, count, cents in stored["remedies"]
        },
    }


def tallies_by_group(
    complaints: Iterable[dict[str, Any]], dimension: str
) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, dict[str, Any]] = defaultdict(empty_tally)
    for complaint in complaints:
        add(groups[_get(complaint, DIMENSIONS[dimension])], complaint)
    return groups


def percentile(values: list[int], share: float) -> int | None:
    """The nearest-rank percentile, as MongoDB's ``$percentile`` gives it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# ---------------------------------------------------------------- the job --


def row_of(document: dict[str, Any]) -> dict[str, Any]:
    """A complaint or a stored row as the tallies count it (``FIELDS``: no id, version or
    pass)."""
    return {key: value for key, value in document.items() if key not in ("_id", "version", "seq")}


def _tally_id(org: str, branch: str, day: datetime, dimension: str) -> str:
    return f"{org}|{branch}|{day:%Y-%m-%d}|{dimension}"


def _day_of_row(row: dict[str, Any]) -> tuple[str, str, datetime]:
    return row["org"], row["branch"], day_of(row["created_at"])


async def state(*, db: AsyncDatabase, whole: bool = False) -> dict[str, Any] | None:
    """The job's state: ``until`` (every change stamped at or before it is in the tallies and
    the rows), ``seq`` (the last pass applied) and, ``whole``, ``read_versions`` (the version
    of each complaint the last pass read) and ``pending`` (a pass broken off); None until a
    pass of this ``VERSION`` has built everything (one of an earlier version is rebuilt by
    the next pass)."""
    projection = None if whole else {"read_versions": 0, "pending": 0}
    found = await db[STATE].find_one({"_id": WATERMARK_ID}, projection=projection)
    return found if found and found.get("version") == VERSION and not _building(found) else None


def _building(found: dict[str, Any]) -> bool:
    """Whether a build claimed since the last pass applied is under way (or was broken off):
    it dropped the tallies and rows first and writes them day by day, so until it sets the
    state nothing in them is whole. A replica of the version before a rolling deploy read
    the days not yet rebuilt as days without complaints until 5 December."""
    return found.get("build_seq", 0) > found.get("seq", 0)


async def watermark(*, db: AsyncDatabase) -> datetime | None:
    """Every change stamped at or before this is in the tallies (None: not built yet, or
    built by an earlier ``VERSION``: the next pass builds everything again)."""
    found = await state(db=db)
    return found["until"] if found else None


def read_versions(kept: dict[str, Any]) -> dict[Any, int]:
    """Per complaint the last pass read, the version it read (``state(whole=True)``)."""
    return dict(kept.get("read_versions") or [])


def read_before(known: dict[Any, int], complaint: dict[str, Any]) -> bool:
    """The last pass read ``complaint`` at the version it has now, so its row says the same."""
    version = complaint.get("version")
    return version is not None and known.get(complaint["_id"]) == version


async def rows_of(
    *,
    db: AsyncDatabase,
    complaints: list[dict[str, Any]],
    registered: tuple[datetime, datetime | None],
    pacer: Pacer | None = None,
) -> dict[Any, dict[str, Any]]:
    """The stored rows of ``complaints``, by id (with the ``seq`` of the pass that wrote
    each). Those registered in ``registered`` ((start, end): after start, before end or
    ever) are read by their registration time, which finds a missing row for nothing; the
    others by ``_id``, ``READ_BATCH`` at a time (on the local server a lookup by ``_id``
    costs about 0.35 ms, found or not). ``pacer`` pauses after each read."""
    start, end = registered
    wanted = {complaint["_id"] for complaint in complaints}

    def in_range(complaint: dict[str, Any]) -> bool:
        created = complaint["created_at"]
        return created > start and (end is None or created < end)

    found: dict[Any, dict[str, Any]] = {}
    if any(in_range(complaint) for complaint in complaints):
        async for rows in windows_of(
            db[ROWS],
            {},
            field="created_at",
            start=start + _ONE_MS,
            end=end,
            batch=READ_BATCH,
            width=CHANGES_WINDOW,
        ):
            found.update((row["_id"], row) for row in rows if row["_id"] in wanted)
            if pacer is not None:
                await pacer.pause()
    ids = [complaint["_id"] for complaint in complaints if not in_range(complaint)]
    for first in range(0, len(ids), READ_BATCH):
        batch = {"_id": {"$in": ids[first : first + READ_BATCH]}}
        async for row in db[ROWS].find(batch):
            found[row["_id"]] = row
        if pacer is not None:
            await pacer.pause()
    return found


async def rows_registered(
    *,
    db: AsyncDatabase,
    org: str,
    start: datetime,
    end: datetime,
    branches: list[str] | None,
) -> list[dict[str, Any]]:
    """The stored rows of ``org``'s complaints registered in [start, end), of ``branches``
    (None: every branch): what the tallies count of them, with the ``seq`` of the pass that
    wrote each. One read through the index ``created``."""
    query: dict[str, Any] = {"org": org, "created_at": {**at_or_after(start), "$lt": end}}
    if branches is not None:
        query["branch"] = {"$in": branches}
    return await db[ROWS].find(query).to_list(None)


async def _build(
    *,
    db: AsyncDatabase,
    found: dict[str, Any] | None,
    complaints: list[dict[str, Any]],
    until: datetime,
    now: datetime,
    pacer: Pacer,
) -> int:
    """Tally every complaint and write its row, from one read of them all, as a pass
    claimed on the state ``found`` before the read (the stored state of any version, or
    None): a build that lost its claim to a later one meanwhile (its holder's lease ran out)
    writes nothing over the later one's documents and does not set the state."""
    seq, token = await _claim_build(db=db, found=found)
    # Nothing an earlier version wrote is kept (its tallies are of another form).
    for name in (*RETIRED, TALLIES, ROWS, JOURNAL):
        await db.drop_collection(name)
    await _ensure_own_indexes(db=db)
    days: dict[tuple[str, str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for complaint in complaints:
        days[_day_of_row(complaint)].append(complaint)
    for (org, branch, day), registered in days.items():
        for dimension in DIMENSIONS:
            groups = tallies_by_group(registered, dimension)
            await _write_tally(
                db=db, key=(org, branch, day), dimension=dimension, groups=groups, seq=seq, now=now
            )
        await pacer.pause()
    for first in range(0, len(complaints), READ_BATCH * 5):
        rows = [
            {"_id": c["_id"], **row_of(c), "seq": seq}
            for c in complaints[first : first + READ_BATCH * 5]
        ]
        # Inserted into the emptied collection; a row standing already was written by a
        # build of an earlier claim still writing, and is replaced.
        taken = await bulk_write_unless_taken(db[ROWS], [InsertOne(row) for row in rows])
        await bulk_write_unless_taken(
            db[ROWS],
            [
                ReplaceOne({"_id": rows[i]["_id"], "seq": {"$lt": seq}}, rows[i], upsert=True)
                for i in taken
            ],
        )
        await pacer.pause()
    built = await db[STATE].update_one(
        {"_id": WATERMARK_ID, "build_token": token},
        {
            "$set": {
                "until": until,
                "passed_at": now,
                "version": VERSION,
                "seq": seq,
                "read_versions": [],
                # The build read every day whole.
                "audited_until": day_of(until),
            },
            "$unset": {"pending": ""},
        },
    )
    if not built.matched_count:
        raise PassOvertaken(seq)
    return len(complaints)


async def _claim_build(*, db: AsyncDatabase, found: dict[str, Any] | None) -> tuple[int, str]:
    """Claim the next pass number for a build, on the state as ``found``; its number and
    token. Numbers only grow, across builds too, so every document a build writes is
    numbered above those of any build or pass before it (``_write_tally``'s fence)."""
    found = found or {}
    seq = max(found.get("seq", 0), found.get("build_seq", 0)) + 1
    token = uuid.uuid4().hex
    claim = {"build_seq": seq, "build_token": token}
    if not found:
        try:
            await db[STATE].insert_one({"_id": WATERMARK_ID, **claim})
        except DuplicateKeyError:
            raise PassOvertaken(0) from None
        return seq, token
    unchanged = {
        "_id": WATERMARK_ID,
        # None matches a state stored before builds were claimed (no such field).
        **{name: found.get(name) for name in ("version", "seq", "build_token")},
    }
    claimed = await db[STATE].update_one(unchanged, {"$set": claim})
    if not claimed.matched_count:
        raise PassOvertaken(found.get("seq", 0))
    return seq, token


async def _write_tally(
    *,
    db: AsyncDatabase,
    key: tuple[str, str, datetime],
    dimension: str,
    groups: dict[Any, dict[str, Any]],
    seq: int,
    now: datetime,
) -> None:
    """Replace the tally document of ``key`` (org, branch, day) and ``dimension``, with the
    due times passed before the watermark the pass sets counted (:func:`fold`)."""
    org, branch, day = key
    for tally in groups.values():
        fold(tally, before=now - ROLLUP_LAG)
    # A document left with no group stays (carrying ``seq``): a pass applied again after a
    # break must see that it was written.
    document = {
        "org": org,
        "branch": branch,
        "day": day,
        "dimension": dimension,
        "groups": [
            {"value": value, "tally": _stored(tally)}
            for value, tally in groups.items()
            if tally["received"] > 0
        ],
        "seq": seq,
        "version": VERSION,
        "tallied_at": now,
    }
    # Only over what an earlier pass wrote: a holder that lost the lease and applies a pass
    # another has applied (and followed) since leaves the document to them.
    with contextlib.suppress(DuplicateKeyError):
        await db[TALLIES].replace_one(
            {"_id": _tally_id(org, branch, day, dimension), "seq": {"$lt": seq}},
            document,
            upsert=True,
        )


async def _apply(
    *, db: AsyncDatabase, seq: int, entries: list[dict[str, Any]], now: datetime, again: bool
) -> None:
    """Apply pass ``seq``'s ``entries`` (each a complaint's ``old`` row, None for one new to
    the tallies, and its ``new`` one): each old row out of its day's tallies, each new one in,
    then the rows. A tally document or row already carrying ``seq`` was written by this pass
    before a break (or by another holder applying it), one carrying a later pass's number by
    the passes since: either is left as it is."""
    taken: dict[tuple[str, str, datetime], list[dict[str, Any]]] = defaultdict(list)
    counted: dict[tuple[str, str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["old"] is not None:
            taken[_day_of_row(entry["old"])].append(entry["old"])
        counted[_day_of_row(entry["new"])].append(entry["new"])
    for org, branch, day in taken.keys() | counted.keys():
        ids = [_tally_id(org, branch, day, dimension) for dimension in DIMENSIONS]
        stored = {d["_id"]: d async for d in db[TALLIES].find({"_id": {"$in": ids}})}
        for dimension in DIMENSIONS:
            document = stored.get(_tally_id(org, branch, day, dimension))
            if document is not None and document.get("seq", 0) >= seq:
                continue
            groups: dict[Any, dict[str, Any]] = defaultdict(empty_tally)
            for group in document["groups"] if document else []:
                groups[group["value"]] = load(group["tally"])
            for value, tally in tallies_by_group(taken[(org, branch, day)], dimension).items():
                remove(groups[value], tally)
            for value, tally in tallies_by_group(counted[(org, branch, day)], dimension).items():
                merge(groups[value], tally)
            await _write_tally(
                db=db, key=(org, branch, day), dimension=dimension, groups=groups, seq=seq, now=now
            )
    # New rows are inserted (cheaper than an upsert on the local server), but when the pass is
    # applied again after a break, when some may stand already.
    for first in range(0, len(entries), READ_BATCH * 5):
        writes = [
            InsertOne({"_id": entry["id"], **entry["new"], "seq": seq})
            if entry["old"] is None and not again
            else ReplaceOne(
                {"_id": entry["id"], "seq": {"$lt": seq}}, {**entry["new"], "seq": seq}, upsert=True
            )
            for entry in entries[first : first + READ_BATCH * 5]
        ]
        await bulk_write_unless_taken(db[ROWS], writes)


async def _finish(
    *, db: AsyncDatabase, seq: int, token: str | None, settled: dict[str, Any], now: datetime
) -> None:
    """Pass ``seq`` (claimed as ``token``) is applied: set what it ``settled`` (the
    watermark...), unless another holder finished it first, and drop the journals of it and
    of the passes that lost their claim to it."""
    await db[STATE].update_one(
        {"_id": WATERMARK_ID, "pending.seq": seq, "pending.token": token},
        {"$set": {**settled, "seq": seq, "passed_at": now}, "$unset": {"pending": ""}},
    )
    await db[JOURNAL].delete_many({"seq": {"$lte": seq}})


async def _apply_pending(*, db: AsyncDatabase, pending: dict[str, Any], now: datetime) -> int:
    """Apply again, from its journal, a pass that was broken off; how many changes it held."""
    seq, token = pending["seq"], pending.get("token")
    entries: list[dict[str, Any]] = []
    # (A pass pending since before 4 December has no token, nor have its journal's chunks.)
    async for chunk in db[JOURNAL].find({"seq": seq, "token": token}).sort("_id", 1):
        entries += chunk["entries"]
    await _apply(db=db, seq=seq, entries=entries, now=now, again=True)
    await _finish(db=db, seq=seq, token=token, settled=pending["settled"], now=now)
    log.info("report_rollup_pass_resumed", seq=seq, changes=len(entries))
    return len(entries)


async def _move_on(
    *,
    db: AsyncDatabase,
    current: dict[str, Any],
    read: dict[Any, dict[str, Any]],
    settled: dict[str, Any],
    registered: tuple[datetime, datetime | None],
    now: datetime,
    pacer: Pacer,
) -> int:
    """Apply to the tallies and the rows what the complaints ``read`` (with their
    ``version``) changed, as one pass, then set what the pass ``settled``; how many
    complaints' figures changed. A complaint the last pass read at the version it has now
    has a row that says the same (``read_versions``) and is not looked up; rows of those
    ``registered`` in that span are read by registration time (:func:`rows_of`). The rows are
    read with ``pacer``'s pauses; the writes are not paused (reports read around a pass until
    it is applied)."""
    known = read_versions(current)
    unsure = [complaint for complaint in read.values() if not read_before(known, complaint)]
    stored = await rows_of(db=db, complaints=unsure, registered=registered, pacer=pacer)
    entries = []
    for complaint_id in (complaint["_id"] for complaint in unsure):
        new, old = row_of(read[complaint_id]), stored.get(complaint_id)
        old = row_of(old) if old is not None else None
        if new != old:  # a note, say, changes nothing the report counts
            entries.append({"id": complaint_id, "old": old, "new": new})
    # Every write of the state names the state the pass began from: a pass of a holder
    # that lost the lease meanwhile (its renewals failing) changes nothing (``PassOvertaken``).
    unchanged = {"_id": WATERMARK_ID, "seq": current["seq"], "pending": {"$exists": False}}
    if not entries:
        moved = await db[STATE].update_one(unchanged, {"$set": {**settled, "passed_at": now}})
        if not moved.matched_count:
            raise PassOvertaken(current["seq"])
        return 0
    seq, token = current["seq"] + 1, uuid.uuid4().hex
    # Written before the claim, under this pass's own token: a claim never names a journal
    # still being written, and a pass that loses its claim leaves the winner's journal be.
    await db[JOURNAL].insert_many(
        [
            {
                "_id": f"{seq}|{token}|{first:08d}",
                "seq": seq,
                "token": token,
                "entries": entries[first : first + JOURNAL_CHUNK],
            }
            for first in range(0, len(entries), JOURNAL_CHUNK)
        ]
    )
    claimed = await db[STATE].update_one(
        unchanged, {"$set": {"pending": {"seq": seq, "token": token, "settled": settled}}}
    )
    if not claimed.matched_count:
        await db[JOURNAL].delete_many({"token": token})
        raise PassOvertaken(current["seq"])
    await _apply(db=db, seq=seq, entries=entries, now=now, again=False)
    await _finish(db=db, seq=seq, token=token, settled=settled, now=now)
    return len(entries)


class PassOvertaken(Exception):
    """The state moved on since this pass read it: another holder of the lease passed."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"the report rollup's state moved on from pass {seq}")


async def _audit(
    *, db: AsyncDatabase, current: dict[str, Any], day: datetime, now: datetime, pacer: Pacer
) -> int:
    """Compare every complaint registered on ``day`` with its row and apply what differs:
    a change stamped before a watermark but committed after the pass that set it read (a
    request held up for longer than ``ROLLUP_LAG``) is counted here, once the day is over."""
    read: dict[Any, dict[str, Any]] = {}
    for org in await floors.organisations(db=db):
        async for found in windows_of(
            db[store.COMPLAINTS],
            {"org": org},
            field="created_at",
            start=day,
            end=day + DAY,
            batch=READ_BATCH,
            width=AUDIT_WINDOW,
            projection=READ_FIELDS,
        ):
            read.update((complaint["_id"], complaint) for complaint in found)
            await pacer.pause()
    # Every row of the day is looked up: the versions the last pass read say nothing here.
    settled = {"audited_until": day + DAY}
    changed = await _move_on(
        db=db,
        current={**current, "read_versions": []},
        read=read,
        settled=settled,
        registered=(day - _ONE_MS, day + DAY),
        now=now,
        pacer=pacer,
    )
    if changed:
        log.warning("report_rollup_audit_mended", day=day.date().isoformat(), complaints=changed)
    return changed


async def refresh(*, db: AsyncDatabase, now: datetime, pacer: Pacer | None = None) -> int:
    """One pass: read the complaints changed since the watermark and move the tallies and
    the rows on by what changed in them; how many complaints' figures it changed (every
    complaint on a build). Then audit every day that ended since the last audit
    (:func:`_audit`). Complaints are read in windows, with ``pacer``'s pause after each
    read."""
    pacer = pacer or Pacer(share=1)
    # As stored, whatever its version: a build claims its number on it.
    stored = await db[STATE].find_one({"_id": WATERMARK_ID})
    current = stored if stored and stored.get("version") == VERSION else None
    if current is not None and _building(current):
        # A build this replica holds the lease over was broken off (its builder lost the
        # lease): what it dropped is built again, not moved on by a pass.
        current = None
    if current is not None and current.get("pending"):
        await _apply_pending(db=db, pending=current["pending"], now=now)
        current = await state(db=db, whole=True)
    since = current["until"] if current is not None else None
    until = now - ROLLUP_LAG
    read: dict[Any, dict[str, Any]] = {}
    async for found in windows_of(
        db[store.COMPLAINTS],
        {},
        field="updated_at",
        start=since + _ONE_MS if since is not None else None,
        batch=READ_BATCH,
        width=CHANGES_WINDOW,
        projection=READ_FIELDS,
    ):
        # Once each: a change stamped by a replica whose clock is behind may move a
        # complaint into a window still to come.
        read.update((complaint["_id"], complaint) for complaint in found)
        await pacer.pause()
    await floors.lower(db=db, complaints=read.values())
    if current is None:
        return await _build(
            db=db,
            found=stored,
            complaints=list(read.values()),
            until=until,
            now=now,
            pacer=pacer,
        )
    versions = [[cid, complaint.get("version")] for cid, complaint in read.items()]
    settled = {"until": until, "read_versions": versions}
    # A complaint registered after the watermark has a row only if a pass read it since.
    changed = await _move_on(
        db=db,
        current=current,
        read=read,
        settled=settled,
        registered=(since, None),
        now=now,
        pacer=pacer,
    )
    await pacer.pause()
    audited_until = current.get("audited_until") or day_of(until)
    while audited_until + DAY <= until:
        current = await state(db=db, whole=True)
        assert current is not None  # this job alone writes it, under the lease
        changed += await _audit(db=db, current=current, day=audited_until, now=now, pacer=pacer)
        audited_until += DAY
    return changed


async def bounds(*, db: AsyncDatabase, org: str) -> dict[str, Any] | None:
    """What no complaint of ``org`` lies outside: per ``floors.FLOOR_FIELDS`` date a value none is
    below, and ``branches``, every branch it has a complaint in (None: not known yet, until
    the job's first pass has read every complaint stored before the floors were kept).

    Every write of a complaint lowers them first where needed (``intake.floors``), so the
    stored ones are the answer.
    """
    if await watermark(db=db) is None:
        return None
    return await floors.stored(db=db, org=org)


async def floor(*, db: AsyncDatabase, org: str, field: str) -> datetime | None:
    """A date no complaint of ``org`` has a lower ``field`` than (None: not known yet)."""
    found = await bounds(db=db, org=org)
    return found[field] if found is not None else None


async def known_branches(*, db: AsyncDatabase, org: str) -> list[str] | None:
    """Every branch ``org`` has a complaint in (None: not known yet)."""
    found = await bounds(db=db, org=org)
    return found["branches"] if found is not None else None


async def _take_lease(*, db: AsyncDatabase, owner: str) -> bool:
    now = datetime.now(UTC)
    lease = {"$set": {"holder": owner, "until": now + ROLLUP_LEASE}}
    kept = await db[STATE].update_one({"_id": LEASE_ID, "holder": owner}, lease)
    if kept.matched_count:
        return True
    try:
        await db[STATE].update_one(
            {"_id": LEASE_ID, **lease_free("until", now)}, lease, upsert=True
        )
    except DuplicateKeyError:
        return False  # another replica holds it
    return True


async def run_rollup(runtime: Runtime) -> None:
    """The background job: a refresh every ``report_rollup_interval_s`` by one replica."""
    owner = f"{runtime.settings.service_name}-{uuid.uuid4().hex[:12]}"
    interval_s = runtime.settings.report_rollup_interval_s  # type: ignore[attr-defined]
    while not runtime.stopping.is_set():
        try:
            if await _take_lease(db=runtime.db, owner=owner):
                held = {"_id": LEASE_ID, "holder": owner}
                lease_s = ROLLUP_LEASE.total_seconds()
                pacer = Pacer(
                    share=runtime.settings.background_work_share, stopping=runtime.stopping
                )
                async with lease_kept(runtime.db[STATE], held, field="until", lease_s=lease_s):
                    changed = await refresh(db=runtime.db, now=runtime.clock.now(), pacer=pacer)
                if changed:
                    log.info("report_rollup_refreshed", complaints=changed)
        except PassOvertaken as exc:
            log.warning("report_rollup_pass_overtaken", detail=str(exc))
        except Exception as exc:
            log.error("report_rollup_failed", error=repr(exc))
        await wait_event(runtime.stopping, timeout_s=interval_s)
