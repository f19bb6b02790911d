"""留档分析: summary figures per branch, department, category... computed in MongoDB.

One aggregation with ``$facet`` computes every figure per group; Python only
reshapes the few result rows into the response.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.mongo import at_or_after
from intake import store
from intake.lifecycle import OPEN_STATUSES, Status

TOP_N = 5


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
    branches: list[str] = Field(description="The branch filter applied (empty: every branch)")
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


def _pipeline(*, match: dict[str, Any], key: str, now: datetime) -> list[dict[str, Any]]:
    ack_on_time, ack_measurable = _on_time("acknowledged_at", "acknowledge_due_at", now)
    open_values = [status.value for status in OPEN_STATUSES]
    is_open = {"$in": ["$status", open_values]}
    unresolved_values = [*open_values, Status.REJECTED.value, Status.WITHDRAWN.value]
    figures = {
        "$group": {
            "_id": key,
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
        return [
            {"$match": {field: {"$ne": None}}},
            {"$group": {"_id": {"group": key, "value": f"${field}"}, "count": {"$sum": 1}}},
        ]

    return [
        {"$match": match},
        {
            "$facet": {
                "figures": [figures],
                "scores": [
                    {"$match": {"satisfaction.score": {"$ne": None}}},
                    {
                        "$group": {
                            "_id": {"group": key, "score": "$satisfaction.score"},
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
                    {"$project": {"group": key, "resolutions": 1}},
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
                    {"$project": {"group": key, "resolutions": 1}},
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
    mine = [row for row in rows if row["_id"]["group"] == group]
    mine.sort(key=lambda row: (-row["count"], str(row["_id"]["value"])))
    return [RankedCount(value=str(row["_id"]["value"]), count=row["count"]) for row in mine][:TOP_N]


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
            total_amount=f"{row['amount_cents'] // 100}.{row['amount_cents'] % 100:02d}",
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
    """Figures for complaints received in [created_from, created_to), per group."""
    match = {
        **principal.scope_filter(),
        "created_at": {**at_or_after(created_from), "$lt": created_to},
    }
    if branches:
        # Within the caller's scope: a branch the token may not see simply has no data.
        visible = [b for b in branches if principal.all_branches or b in principal.branches]
        match["branch"] = {"$in": visible}
    pipeline = _pipeline(match=match, key=GROUP_FIELDS[group_by], now=now)
    facets = (await (await db[store.COMPLAINTS].aggregate(pipeline)).to_list(None))[0]
    groups = [_group_summary(figures, facets) for figures in facets["figures"]]
    groups.sort(key=lambda summary: (-summary.received, str(summary.group)))
    return SummaryReport(
        **{"from": created_from},
        to=created_to,
        group_by=group_by,
        branches=branches,
        groups=groups,
    )
