"""留档分析: summary figures per branch, department, category...

Once the report rollup is built (``intake.rollup``), from its per-day tallies corrected for
what changed since its last pass (:func:`_from_tallies`); before that, and as the reference
the tallies are tested against, from one aggregation with ``$facet`` over every complaint of
the window (:func:`live_groups`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.logs import get_logger
from complaints_shared.mongo import at_or_after, bson_time
from intake import filter_keys, rollup, store
from intake.lifecycle import OPEN_STATUSES, Status

log = get_logger(__name__)

TOP_N = 5
_ONE_MS = timedelta(milliseconds=1)


class GroupBy(StrEnum):
    BRANCH = "branch"
    DEPARTMENT = "department"
    CATEGORY = "category"
    SEVERITY = "severity"
    CHANNEL = "channel"
    OWNER = "owner"


GROUP_FIELDS = {
    GroupBy.BRANCH: "$branch",
    GroupBy.DEPARTMENT: "$assignment.department",
    GroupBy.CATEGORY: "$category",
    GroupBy.SEVERITY: "$severity",
    GroupBy.CHANNEL: "$channel",
    GroupBy.OWNER: "$assignment.owner_id",
}


class Durations(BaseModel):
    median_s: float | None = None
    p90_s: float | None = None


class RankedCount(BaseModel):
    value: str
    count: int


class RemedyTotal(BaseModel):
    type: str
    currency: str | None
    count: int
    total_amount: str = Field(description="Decimal string in the currency's major unit")


class GroupSummary(BaseModel):
    group: str | None
    received: int
    open: int
    resolved: int = Field(description="Complaints resolved at least once")
    resolutions: int = Field(description="Resolutions recorded, every cycle counted")
    closed: int
    rejected: int
    withdrawn: int
    acknowledge_on_time_pct: float | None
    resolve_on_time_pct: float | None = Field(
        description="Per resolution cycle: cycles resolved by their own due time ÷ cycles "
        "resolved with a known due time plus unresolved cycles that passed theirs"
    )
    time_to_acknowledge: Durations
    time_to_resolve: Durations
    reopen_rate_pct: float | None
    repeat_share_pct: float | None
    satisfaction_average: float | None
    satisfaction_distribution: dict[str, int]
    top_root_causes: list[RankedCount]
    top_responsible_parties: list[RankedCount]
    top_responsible_departments: list[RankedCount]
    remedies: list[RemedyTotal]


class SummaryReport(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: GroupBy
    branches: list[str] = Field(
        description="The branches counted: those asked for, else the token's (empty: every "
        "branch of the organisation)"
    )
    groups: list[GroupSummary]

    model_config = {"populate_by_name": True}


def _count_if(condition: dict[str, Any]) -> dict[str, Any]:
    return {"$sum": {"$cond": [condition, 1, 0]}}


def _exists(field: str) -> dict[str, Any]:
    return {"$gt": [f"${field}", None]}


def _percentiles(start: str, end: str) -> dict[str, Any]:
    """p50 and p90 of (end - start) in milliseconds over documents that have ``end``."""
    return {
        "$percentile": {
            "input": {"$cond": [_exists(end), {"$subtract": [f"${end}", f"${start}"]}, None]},
            "p": [0.5, 0.9],
            "method": "approximate",
        }
    }


def _on_time(done: str, due: str, now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """(on time, measurable): measurable once done, or once the due time has passed undone."""
    on_time = {"$and": [_exists(done), _exists(due), {"$lte": [f"${done}", f"${due}"]}]}
    measurable = {"$and": [_exists(due), {"$or": [_exists(done), {"$lt": [f"${due}", now]}]}]}
    return on_time, measurable


# When the acknowledge clock was answered: routing's stop (an acknowledgement, or a finish
# before any), else the acknowledgement (its verdict not recorded yet, or a record from
# before it was kept). ``rollup.add`` counts the same.
ACK_ANSWERED = "ack_answered_at"


def _ack_answered() -> dict[str, Any]:
    return {"$ifNull": [f"${store.ACKNOWLEDGE_STOPPED_AT}", "$acknowledged_at"]}


def _pipeline(*, match: dict[str, Any], key: str, now: datetime) -> list[dict[str, Any]]:
    # A complaint without the grouped field (no assignment yet, grouped by department or
    # owner) is the null group. Said so, not left to the path: inside a composite ``_id``
    # the local server drops a missing field, and reading that row's group raised.
    group: dict[str, Any] = {"$ifNull": [key, None]}
    ack_on_time, ack_measurable = _on_time(ACK_ANSWERED, "acknowledge_due_at", now)
    open_values = [status.value for status in OPEN_STATUSES]
    is_open = {"$in": ["$status", open_values]}
    unresolved_values = [*open_values, Status.REJECTED.value, Status.WITHDRAWN.value]
    figures = {
        "$group": {
            "_id": group,
            "received": {"$sum": 1},
            "open": _count_if(is_open),
            "resolved": _count_if(_exists("first_resolved_at")),
            "resolutions": {"$sum": {"$ifNull": ["$resolution_count", 0]}},
            "closed": _count_if({"$eq": ["$status", Status.CLOSED.value]}),
            "rejected": _count_if({"$eq": ["$status", Status.REJECTED.value]}),
            "withdrawn": _count_if({"$eq": ["$status", Status.WITHDRAWN.value]}),
            "ack_on_time": _count_if(ack_on_time),
            "ack_measurable": _count_if(ack_measurable),
            # A cycle without a resolution counts as missed once its due time passed before
            # it ended: still open past it, or rejected or withdrawn after it.
            "cycles_missed": _count_if(
                {
                    "$and": [
                        {"$in": ["$status", unresolved_values]},
                        _exists("resolve_due_at"),
                        {"$lt": ["$resolve_due_at", {"$ifNull": ["$finished_at", now]}]},
                    ]
                }
            ),
            "ack_ms": _percentiles("created_at", "acknowledged_at"),
            "resolve_ms": _percentiles("created_at", "first_resolved_at"),
            "reopened": _count_if({"$gt": ["$reopen_count", 0]}),
            "repeats": _count_if({"$gt": ["$repeat_count", 0]}),
            "satisfaction_average": {"$avg": "$satisfaction.score"},
        }
    }

    def ranked(field: str) -> list[dict[str, Any]]:
        # The top values of each group only, chosen in the database: every distinct root
        # cause of a long window would otherwise come back in the one ``$facet`` document,
        # whose 16 MB they pass at about 140,000.
        return [
            {"$match": {field: {"$ne": None}}},
            {"$group": {"_id": {"group": group, "value": f"${field}"}, "count": {"$sum": 1}}},
            {
                "$group": {
                    "_id": "$_id.group",
                    "top": {
                        "$topN": {
                            "n": TOP_N,
                            "sortBy": {"count": -1, "_id.value": 1},
                            "output": {"value": "$_id.value", "count": "$count"},
                        }
                    },
                }
            },
        ]

    return [
        {"$match": match},
        {"$set": {ACK_ANSWERED: _ack_answered()}},
        {
            "$facet": {
                "figures": [figures],
                "scores": [
                    {"$match": {"satisfaction.score": {"$ne": None}}},
                    {
                        "$group": {
                            "_id": {"group": group, "score": "$satisfaction.score"},
                            "count": {"$sum": 1},
                        }
                    },
                ],
                "root_causes": ranked("resolution.root_cause"),
                "parties": ranked("responsible_party"),
                "responsible_departments": ranked("responsible_department"),
                # Every resolution cycle, so a reopen keeps the earlier cycle's figures.
                "cycles": [
                    {"$match": {"resolutions.0": {"$exists": True}}},
                    {"$project": {"group": group, "resolutions": 1}},
                    {"$unwind": "$resolutions"},
                    {
                        "$group": {
                            "_id": "$group",
                            "on_time": _count_if({"$eq": ["$resolutions.on_time", True]}),
                            "measurable": _count_if(
                                {"$in": ["$resolutions.on_time", [True, False]]}
                            ),
                        }
                    },
                ],
                "remedies": [
                    {"$match": {"resolutions.remedies.0": {"$exists": True}}},
                    {"$project": {"group": group, "resolutions": 1}},
                    {"$unwind": "$resolutions"},
                    {"$project": {"group": 1, "remedies": "$resolutions.remedies"}},
                    {"$unwind": "$remedies"},
                    {
                        "$group": {
                            "_id": {
                                "group": "$group",
                                "type": "$remedies.type",
                                "currency": "$remedies.currency",
                            },
                            "count": {"$sum": 1},
                            "amount_cents": {"$sum": {"$ifNull": ["$remedies.amount_cents", 0]}},
                        }
                    },
                ],
            }
        },
    ]


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _durations(percentiles: list[float | None] | None) -> Durations:
    if not percentiles or percentiles[0] is None:
        return Durations()
    median_ms, p90_ms = percentiles
    return Durations(median_s=median_ms / 1000, p90_s=p90_ms / 1000)


def _top(rows: list[dict[str, Any]], group: Any) -> list[RankedCount]:
    mine = next((row["top"] for row in rows if row["_id"] == group), [])
    mine.sort(key=lambda row: (-row["count"], str(row["value"])))
    return [RankedCount(value=str(row["value"]), count=row["count"]) for row in mine]


def _group_summary(figures: dict[str, Any], facets: dict[str, Any]) -> GroupSummary:
    group = figures["_id"]
    distribution = {
        str(row["_id"]["score"]): row["count"]
        for row in facets["scores"]
        if row["_id"]["group"] == group
    }
    remedies = [
        RemedyTotal(
            type=row["_id"]["type"],
            currency=row["_id"].get("currency"),
            count=row["count"],
            total_amount=_amount_text(row["amount_cents"]),
        )
        for row in facets["remedies"]
        if row["_id"]["group"] == group
    ]
    remedies.sort(key=lambda total: (total.type, total.currency or ""))
    cycles = next((row for row in facets["cycles"] if row["_id"] == group), {})
    resolve_on_time = cycles.get("on_time", 0)
    resolve_measurable = cycles.get("measurable", 0) + figures["cycles_missed"]
    average = figures["satisfaction_average"]
    return GroupSummary(
        group=group,
        received=figures["received"],
        open=figures["open"],
        resolved=figures["resolved"],
        resolutions=figures["resolutions"],
        closed=figures["closed"],
        rejected=figures["rejected"],
        withdrawn=figures["withdrawn"],
        acknowledge_on_time_pct=_pct(figures["ack_on_time"], figures["ack_measurable"]),
        resolve_on_time_pct=_pct(resolve_on_time, resolve_measurable),
        time_to_acknowledge=_durations(figures["ack_ms"]),
        time_to_resolve=_durations(figures["resolve_ms"]),
        reopen_rate_pct=_pct(figures["reopened"], figures["resolved"]),
        repeat_share_pct=_pct(figures["repeats"], figures["received"]),
        satisfaction_average=round(average, 2) if average is not None else None,
        satisfaction_distribution=dict(sorted(distribution.items())),
        top_root_causes=_top(facets["root_causes"], group),
        top_responsible_parties=_top(facets["parties"], group),
        top_responsible_departments=_top(facets["responsible_departments"], group),
        remedies=remedies,
    )


def _tally_summary(group: Any, tally: dict[str, Any], now: datetime) -> GroupSummary:
    """``_group_summary`` of a rollup tally (``intake.rollup``): the same figures."""
    ack_passed = tally["ack_pending_passed"] + rollup.due_passed(
        tally["ack_pending_due"], before=now
    )
    ack_measurable = tally["ack_done"] + ack_passed
    missed = (
        tally["missed_finished"]
        + tally["open_resolve_passed"]
        + rollup.due_passed(tally["open_resolve_due"], before=now)
    )
    average = tally["score_sum"] / tally["score_count"] if tally["score_count"] else None

    def durations(values: list[int]) -> Durations:
        median, p90 = rollup.percentile(values, 0.5), rollup.percentile(values, 0.9)
        if median is None or p90 is None:
            return Durations()
        return Durations(median_s=median / 1000, p90_s=p90 / 1000)

    def top(counts: dict[str, int]) -> list[RankedCount]:
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_N]
        return [RankedCount(value=value, count=count) for value, count in ranked]

    remedies = [
        RemedyTotal(
            type=kind,
            currency=currency,
            count=count,
            total_amount=_amount_text(cents),
        )
        for kind, currency, count, cents in tally["remedies"].values()
    ]
    remedies.sort(key=lambda total: (total.type, total.currency or ""))
    return GroupSummary(
        group=group,
        received=tally["received"],
        open=tally["open"],
        resolved=tally["resolved"],
        resolutions=tally["resolutions"],
        closed=tally["closed"],
        rejected=tally["rejected"],
        withdrawn=tally["withdrawn"],
        acknowledge_on_time_pct=_pct(tally["ack_on_time"], ack_measurable),
        resolve_on_time_pct=_pct(tally["cycles_on_time"], tally["cycles_measurable"] + missed),
        time_to_acknowledge=durations(tally["ack_ms"]),
        time_to_resolve=durations(tally["resolve_ms"]),
        reopen_rate_pct=_pct(tally["reopened"], tally["resolved"]),
        repeat_share_pct=_pct(tally["repeats"], tally["received"]),
        satisfaction_average=round(average, 2) if average is not None else None,
        satisfaction_distribution=dict(sorted(tally["scores"].items())),
        top_root_causes=top(tally["root_causes"]),
        top_responsible_parties=top(tally["parties"]),
        top_responsible_departments=top(tally["responsible_departments"]),
        remedies=remedies,
    )


def _next_day(moment: datetime) -> datetime:
    day = rollup.day_of(moment)
    return day if day == moment else day + rollup.DAY


@dataclass(frozen=True)
class _Asked:
    """What a report counts: ``org``'s complaints registered in [created_from, created_to),
    of the ``allowed`` branches (None: every one), by ``group_by``; ``days`` (first, end) are
    the days of the window the rollup's tallies count whole (:func:`_tallied_days`)."""

    org: str
    created_from: datetime
    created_to: datetime
    days: tuple[datetime, datetime]
    group_by: GroupBy
    allowed: list[str] | None


@dataclass(frozen=True)
class _Edge:
    """A part of a report's window outside the days it counts whole, within one ``day``:
    counted from the rollup's rows registered in ``rows`` (start, end), which are either
    that part (``less`` False) or the rest of the day, taken from the day's tallies (``less``
    True), whichever spans less of the day."""

    day: datetime
    rows: tuple[datetime, datetime]
    less: bool


def _edges(
    *, created_from: datetime, created_to: datetime, days: tuple[datetime, datetime]
) -> list[_Edge]:
    """The edges of [created_from, created_to) outside the whole ``days`` (first, end)."""
    first_day, end_day = days
    edges = []
    if created_from < first_day:
        day = first_day - rollup.DAY
        if created_from - day < first_day - created_from:
            edges.append(_Edge(day=day, rows=(day, created_from), less=True))
        else:
            edges.append(_Edge(day=day, rows=(created_from, first_day), less=False))
    if end_day < created_to:
        day_end = end_day + rollup.DAY
        if day_end - created_to < created_to - end_day:
            edges.append(_Edge(day=end_day, rows=(created_to, day_end), less=True))
        else:
            edges.append(_Edge(day=end_day, rows=(end_day, created_to), less=False))
    return edges


async def _from_tallies(
    *, db: AsyncDatabase, asked: _Asked, kept: dict[str, Any]
) -> dict[Any, dict[str, Any]] | None:
    """Per group, the tally of what is ``asked``: the rollup's tallies of its whole days, the
    window's edges outside them from the rollup's rows (:func:`_edges`), corrected for every
    complaint changed after the rollup's watermark (its row out, the complaint in). None when
    what was read does not fit together: a pass of the rollup wrote some of it after the
    watermark ``kept`` was read."""
    org, allowed = asked.org, asked.allowed
    created_from, created_to = asked.created_from, asked.created_to
    first_day, end_day = asked.days
    dimension = asked.group_by.value
    merged: dict[Any, dict[str, Any]] = defaultdict(rollup.empty_tally)
    taken: list[dict[str, Any]] = []
    edges = _edges(created_from=created_from, created_to=created_to, days=asked.days)
    less = [edge.day for edge in edges if edge.less]
    days_read = (min([first_day, *less]), max([end_day, *(day + rollup.DAY for day in less)]))

    def in_scope(row: dict[str, Any]) -> bool:
        return row["org"] == org and (allowed is None or row["branch"] in allowed)

    def in_window(row: dict[str, Any]) -> bool:
        return created_from <= row["created_at"] < created_to

    def counted_here(row: dict[str, Any]) -> bool:
        """Whether what was read (whole days, edges) counts a stored ``row``."""
        whole_day = first_day <= rollup.day_of(row["created_at"]) < end_day
        return in_scope(row) and (in_window(row) or whole_day)

    tallies = db[rollup.TALLIES].find(
        {
            "org": org,
            "dimension": dimension,
            "day": {"$gt": days_read[0] - _ONE_MS, "$lt": days_read[1]},
        },
        # Whole documents: the local server spends twice as long projecting the groups as
        # sending them (docs/mongodb-compatibility.md), and nothing else is in them.
    )
    async for document in tallies:
        # Written by a pass after the watermark read, or by a replica of another rollup
        # version building anew (a rolling deploy): what was read does not fit together.
        written_by = document.get("seq")
        if (
            written_by is None
            or written_by > kept["seq"]
            or document.get("version") != rollup.VERSION
        ):
            return None
        if allowed is None or document["branch"] in allowed:
            for group in document["groups"]:
                rollup.merge(merged[group["value"]], rollup.load(group["tally"]))
    for edge in edges:
        start, end = edge.rows
        edge_rows = await rollup.rows_registered(
            db=db, org=org, start=start, end=end, branches=allowed
        )
        if any(row["seq"] > kept["seq"] for row in edge_rows):
            return None
        apply = rollup.remove if edge.less else rollup.merge
        for group, tally in rollup.tallies_by_group(edge_rows, dimension).items():
            apply(merged[group], tally)
    changed = await (
        db[store.COMPLAINTS]
        .find({"updated_at": {"$gt": kept["until"]}}, projection=rollup.READ_FIELDS)
        .to_list(None)
    )
    # A complaint the last pass read at the version it has now is counted as it is (unless
    # registered after the window, by a clock running ahead).
    known = rollup.read_versions(kept)
    changed = [
        complaint
        for complaint in changed
        if complaint["org"] == org
        and (not rollup.read_before(known, complaint) or complaint["created_at"] >= created_to)
    ]
    rows = await rollup.rows_of(db=db, complaints=changed, registered=(kept["until"], None))
    for row in rows.values():
        if row["seq"] > kept["seq"]:
            return None
        if counted_here(row):
            taken.append(row)
    counted = [complaint for complaint in changed if in_scope(complaint) and in_window(complaint)]
    for group, tally in rollup.tallies_by_group(counted, dimension).items():
        rollup.merge(merged[group], tally)
    for group, tally in rollup.tallies_by_group(taken, dimension).items():
        rollup.remove(merged[group], tally)
    return {group: tally for group, tally in merged.items() if tally["received"] > 0}


def _tallied_days(
    *, created_from: datetime, created_to: datetime, now: datetime
) -> tuple[datetime, datetime]:
    """The days [first, end) of the window the rollup's tallies can count whole: those
    inside it, and the last one too when the window reaches the present (no complaint is
    registered after now, and one stamped ahead by a fast clock has changed since the
    watermark, so the report takes it out again)."""
    first_day, last_day = _next_day(created_from), rollup.day_of(created_to)
    if created_to >= now and last_day >= first_day:
        return first_day, last_day + rollup.DAY
    return first_day, last_day


# A report whose reads a rollup pass wrote into waits for the pass to end (at most
# ``TALLY_WAIT_S``, looking every ``TALLY_LOOK_S``) and reads again, at most ``TALLY_READS``
# times, then counts from the complaints alone; a pass's writes take about a second.
TALLY_READS = 3
TALLY_WAIT_S = 3.0
TALLY_LOOK_S = 0.05


async def _read_tallies(*, db: AsyncDatabase, asked: _Asked) -> dict[Any, dict[str, Any]] | None:
    """:func:`_from_tallies`, read again while a rollup pass writes into what it reads; None
    before the rollup's first pass, or when passes kept writing (then logged)."""
    for _ in range(TALLY_READS):
        kept = await rollup.state(db=db, whole=True)
        if kept is None:
            return None
        tallies = await _from_tallies(db=db, asked=asked, kept=kept)
        if tallies is not None:
            return tallies
        await _pass_applied(db=db, after=kept["seq"])
    log.warning("report_counted_from_complaints", reason="rollup pass in progress", org=asked.org)
    return None


async def _pass_applied(*, db: AsyncDatabase, after: int) -> None:
    """Wait until a rollup pass after ``after`` is applied, at most ``TALLY_WAIT_S``."""
    waited = 0.0
    while waited < TALLY_WAIT_S:
        kept = await rollup.state(db=db)
        if kept is None or kept["seq"] > after:
            return
        await asyncio.sleep(TALLY_LOOK_S)
        waited += TALLY_LOOK_S


def _amount_text(cents: Any) -> str:
    """Cents as an amount (``3000`` is ``30.00``). A sum past 64 bits comes back from the
    database as a double (or from a tally as text) and is read as a whole number: formatted
    as the integer it was taken for, it was a 500 until 5 December."""
    whole = int(cents)
    return f"{whole // 100}.{whole % 100:02d}"


async def summary(
    *,
    db: AsyncDatabase,
    principal: Principal,
    created_from: datetime,
    created_to: datetime,
    group_by: GroupBy,
    branches: list[str],
    now: datetime,
) -> SummaryReport:
    """Figures for complaints received in [created_from, created_to), per group.

    From the rollup (``intake.rollup``) once it is built and the window holds a day it can
    count whole; else, and as the reference the rollup is tested against, by
    :func:`live_groups`.
    """
    principal.require_branches(branches, field="branch")
    # As the database compares them: the tallies' window test in Python and the server's
    # read of the window's rows must agree about a complaint registered in the bound's
    # millisecond (a bound given with microseconds split them).
    created_from, created_to = bson_time(created_from), bson_time(created_to)
    allowed = branches or (None if principal.all_branches else list(principal.branches))
    asked = _Asked(
        org=principal.org,
        created_from=created_from,
        created_to=created_to,
        days=_tallied_days(created_from=created_from, created_to=created_to, now=now),
        group_by=group_by,
        allowed=allowed,
    )
    tallies = None
    if asked.days[0] < asked.days[1]:
        tallies = await _read_tallies(db=db, asked=asked)
    if tallies is not None:
        groups = [_tally_summary(group, tally, now) for group, tally in tallies.items()]
    else:
        groups = await live_groups(
            db=db,
            principal=principal,
            created_from=created_from,
            created_to=created_to,
            group_by=group_by,
            branches=branches,
            now=now,
        )
    groups.sort(key=lambda summary: (-summary.received, str(summary.group)))
    return SummaryReport(
        **{"from": created_from},
        to=created_to,
        group_by=group_by,
        # A token of some branches counts those alone: until 5 December the answer said
        # ``[]`` ("every branch") for them, and a sum of such answers double counted.
        branches=branches or sorted(allowed or ()),
        groups=groups,
    )


async def live_groups(
    *,
    db: AsyncDatabase,
    principal: Principal,
    created_from: datetime,
    created_to: datetime,
    group_by: GroupBy,
    branches: list[str],
    now: datetime,
) -> list[GroupSummary]:
    """The figures by one aggregation over every complaint of the window."""
    match = {
        **principal.scope_filter(),
        "created_at": {**at_or_after(created_from), "$lt": created_to},
    }
    if branches:
        principal.require_branches(branches, field="branch")
        match["branch"] = {"$in": branches}
    pipeline = _pipeline(match=filter_keys.narrowed(match), key=GROUP_FIELDS[group_by], now=now)
    facets = (await (await db[store.COMPLAINTS].aggregate(pipeline)).to_list(None))[0]
    return [_group_summary(figures, facets) for figures in facets["figures"]]
