"""留档分析 at scale: the report's figures kept per organisation, branch and UTC day.

``reports.summary`` over months of complaints is one aggregation over every complaint in
the window, which on the local server costs ~0.3 ms per complaint (25 s at 100,000). So a
background job keeps *tallies*: per (org, branch, day, grouping dimension) one document
holding, per group value, everything the report's figures are made of in a form that adds
up (counts, sums, and the lists a figure needs whole: durations for the percentiles, due
times whose "has it passed?" depends on when the report is asked). The report adds the
tallies of the window's whole days and tallies what the rollup cannot vouch for from the
complaints themselves: the partial days at the window's edges and every day holding a
complaint changed after the rollup's watermark. Same figures as the single aggregation
(``tests/test_report_rollup.py`` compares them), and no work on the per-complaint write
path: the job finds changes by ``updated_at``, which every change sets. It reads
complaints in windows of about ``READ_BATCH`` and pauses after each read and each day's
writes (``timing.Pacer``, ``background_work_share`` of the time): read whole at once, a
pass held the database, and every request and event behind it, for up to 2 s.

The job (:func:`run_rollup`, one replica at a time under a lease) refreshes from a
watermark kept in the database: it notes as changed (``report_days_changed``) every
(org, branch, day) holding a complaint whose ``updated_at`` is past the watermark, then
moves the watermark to the pass's start minus ``ROLLUP_LAG`` (a change stamped before that
but committed late, or by a replica whose clock is behind, is still picked up by the next
pass). A changed day is re-tallied, which reads all its complaints, once it is over and unless it
was re-tallied within ``RETALLY_AFTER``: today, still receiving complaints, is not read whole
at all until it ends, and a past day changed again and again is read whole at most once every
ten minutes. Until then the report counts that day from its complaints, as it does for a day
changed after the watermark (and for a window's partial days, today among them).
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.logs import get_logger
from complaints_shared.mongo import ensure_index, lease_free, lease_kept, windows_of
from complaints_shared.runtime import Runtime
from complaints_shared.timing import Pacer, wait_event
from intake import filter_keys, floors, store
from intake.lifecycle import OPEN_STATUSES, Status

log = get_logger(__name__)

TALLIES = "report_tallies"
# The (org, branch, day)s changed since their tallies (``changed``), and those re-tallied
# within ``RETALLY_AFTER`` (``tallied_at``); a few documents per branch at any time.
DAYS_CHANGED = "report_days_changed"
RETALLY_AFTER = timedelta(minutes=10)
STATE = "report_rollup"
WATERMARK_ID = "watermark"
LEASE_ID = "lease"
# Bump when what a pass writes changes (tallies, floors, what a report may trust): the next
# pass rebuilds it all, and replicas of another version count from the complaints meanwhile.
VERSION = 3
ROLLUP_LAG = timedelta(seconds=30)
# The job reads complaints in windows of about this many (``mongo.windows_of``) and pauses
# between them (``timing.Pacer``): its first window of changes is this wide, of a day's
# complaints that.
READ_BATCH = 200
CHANGES_WINDOW = timedelta(seconds=10)
DAY_WINDOW = timedelta(hours=1)
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
# What a tally reads of a complaint.
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
# What the job and the report read of a complaint changed since the watermark.
CHANGE_FIELDS = dict.fromkeys(floors.SOURCE_FIELDS, 1)
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
)
LISTS = ("ack_pending_due", "open_resolve_due", "ack_ms", "resolve_ms")
# Counted by value; stored as [value, count] pairs (values may hold dots).
PAIRS = ("scores", *RANKED)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await ensure_index(
        db[TALLIES], [("org", 1), ("dimension", 1), ("day", 1)], name="org_dimension_day"
    )
    # The report's days still to re-tally (the job reads the whole collection: a few
    # documents per branch).
    await ensure_index(db[DAYS_CHANGED], [("org", 1), ("changed", 1)], name="org_changed")
    # What changed since the watermark (the job, and the report for what the job has not
    # tallied yet).
    await ensure_index(db[store.COMPLAINTS], [("updated_at", 1)], name="updated")


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


def _ms(later: datetime, earlier: datetime) -> int:
    return (later - earlier) // timedelta(milliseconds=1)


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
        if acknowledged is not None:
            tally["ack_done"] += 1
            tally["ack_on_time"] += acknowledged <= ack_due
        else:
            tally["ack_pending_due"].append(ack_due)  # measurable once passed
    if status in UNRESOLVED_VALUES and resolve_due is not None:
        if finished is not None:
            tally["missed_finished"] += resolve_due < finished
        else:
            tally["open_resolve_due"].append(resolve_due)  # missed once passed
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


def _stored(tally: dict[str, Any]) -> dict[str, Any]:
    return {
        **{name: tally[name] for name in (*COUNTS, "score_sum", *LISTS)},
        **{name: [[key, count] for key, count in tally[name].items()] for name in PAIRS},
        "remedies": list(tally["remedies"].values()),
    }


def load(stored: dict[str, Any]) -> dict[str, Any]:
    return {
        **{name: stored[name] for name in (*COUNTS, "score_sum", *LISTS)},
        **{name: dict(stored[name]) for name in PAIRS},
        "remedies": {
            f"{kind}\x00{currency or ''}": [kind, currency, count, cents]
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


async def retally(
    *,
    db: AsyncDatabase,
    org: str,
    branch: str,
    day: datetime,
    now: datetime,
    pacer: Pacer | None = None,
) -> None:
    """Replace the tallies of one (org, branch, day) with what its complaints say now."""
    pacer = pacer or Pacer(share=1)
    complaints: list[dict[str, Any]] = []
    async for found in windows_of(
        db[store.COMPLAINTS],
        filter_keys.narrowed({"org": org, "branch": branch}),
        field="created_at",
        start=day,
        end=day + DAY,
        batch=READ_BATCH,
        width=DAY_WINDOW,
        projection=FIELDS,
    ):
        complaints += found
        await pacer.pause()
    await _write(db=db, org=org, branch=branch, day=day, complaints=complaints, now=now)
    await pacer.pause()


_ONE_MS = timedelta(milliseconds=1)


async def _write(
    *,
    db: AsyncDatabase,
    org: str,
    branch: str,
    day: datetime,
    complaints: list[dict[str, Any]],
    now: datetime,
) -> None:
    for dimension in DIMENSIONS:
        key = f"{_day_key(org, branch, day)}|{dimension}"
        if not complaints:
            await db[TALLIES].delete_one({"_id": key})
            continue
        groups = tallies_by_group(complaints, dimension)
        document = {
            "org": org,
            "branch": branch,
            "day": day,
            "dimension": dimension,
            "groups": [{"value": value, "tally": _stored(t)} for value, t in groups.items()],
            "tallied_at": now,
        }
        await db[TALLIES].replace_one({"_id": key}, document, upsert=True)


async def watermark(*, db: AsyncDatabase) -> datetime | None:
    """Every change stamped at or before this is in the tallies (None: not built yet, or
    built by an earlier ``VERSION``: the next pass builds everything again)."""
    state = await db[STATE].find_one({"_id": WATERMARK_ID})
    return state["until"] if state and state.get("version") == VERSION else None


def _day_key(org: str, branch: str, day: datetime) -> str:
    return f"{org}|{branch}|{day:%Y-%m-%d}"


async def refresh(*, db: AsyncDatabase, now: datetime, pacer: Pacer | None = None) -> int:
    """One pass: note the (org, branch, day)s changed since the watermark, re-tally those
    changed, over and not re-tallied within ``RETALLY_AFTER``; how many it re-tallied. Complaints
    are read in windows, with ``pacer``'s pause after each read."""
    pacer = pacer or Pacer(share=1)
    since = await watermark(db=db)
    until = now - ROLLUP_LAG
    read: dict[Any, dict[str, Any]] = {}
    async for found in windows_of(
        db[store.COMPLAINTS],
        {},
        field="updated_at",
        start=since + _ONE_MS if since is not None else None,
        batch=READ_BATCH,
        width=CHANGES_WINDOW,
        projection=FIELDS if since is None else CHANGE_FIELDS,
    ):
        # Once each: a change stamped by a replica whose clock is behind may move a
        # complaint into a window still to come.
        read.update((complaint["_id"], complaint) for complaint in found)
        await pacer.pause()
    complaints = list(read.values())
    if since is None:
        # The first build reads every complaint once and tallies all days from that read.
        await db[DAYS_CHANGED].delete_many({})
        days: dict[tuple[str, str, datetime], list[dict[str, Any]]] = defaultdict(list)
        for complaint in complaints:
            key = (complaint["org"], complaint["branch"], day_of(complaint["created_at"]))
            days[key].append(complaint)
        for (org, branch, day), found in days.items():
            await _write(db=db, org=org, branch=branch, day=day, complaints=found, now=now)
            await pacer.pause()
        done = len(days)
    else:
        keys = {(c["org"], c["branch"], day_of(c["created_at"])) for c in complaints}
        for org, branch, day in keys:
            await db[DAYS_CHANGED].update_one(
                {"_id": _day_key(org, branch, day)},
                {"$set": {"org": org, "branch": branch, "day": day, "changed": True}},
                upsert=True,
            )
        done = await _retally_changed(db=db, now=now, pacer=pacer)
    await floors.lower(db=db, complaints=complaints)
    await db[STATE].update_one(
        {"_id": WATERMARK_ID},
        {"$set": {"until": until, "passed_at": now, "version": VERSION}},
        upsert=True,
    )
    return done


async def _retally_changed(*, db: AsyncDatabase, now: datetime, pacer: Pacer) -> int:
    """Re-tally the changed days that are over and not re-tallied within ``RETALLY_AFTER``;
    forget the days re-tallied before that and unchanged since. How many it re-tallied."""
    done = 0
    cooled = now - RETALLY_AFTER
    for day in await db[DAYS_CHANGED].find({}).to_list(None):
        if day["day"] + DAY > now:
            # Not over: re-read whole it would be out of date at its next complaint, and a
            # report counts it from its complaints anyway (a window ending now holds part of
            # it, and it stays noted as changed). Re-tallied at the first pass after it ends.
            continue
        tallied_at = day.get("tallied_at")
        if tallied_at is not None and tallied_at > cooled:
            continue  # changed or not, read whole again only once it has cooled
        if not day.get("changed"):
            await db[DAYS_CHANGED].delete_one({"_id": day["_id"], "changed": False})
            continue
        await retally(
            db=db, org=day["org"], branch=day["branch"], day=day["day"], now=now, pacer=pacer
        )
        # Nothing else writes here meanwhile: one job at a time, under the lease.
        await db[DAYS_CHANGED].update_one(
            {"_id": day["_id"]}, {"$set": {"changed": False, "tallied_at": now}}
        )
        done += 1
    return done


async def changed_days(*, db: AsyncDatabase, org: str) -> set[tuple[str, datetime]]:
    """The (branch, day)s of ``org`` whose tallies the job has not brought up to date with
    the changes it has seen (each counted from its complaints meanwhile)."""
    found = db[DAYS_CHANGED].find({"org": org, "changed": True}, projection={"branch": 1, "day": 1})
    return {(day["branch"], day["day"]) async for day in found}


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
                    log.info("report_rollup_refreshed", days=changed)
        except Exception as exc:
            log.error("report_rollup_failed", error=repr(exc))
        await wait_event(runtime.stopping, timeout_s=interval_s)
