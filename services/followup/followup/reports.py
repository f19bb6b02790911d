"""Follow-up statistics, computed by MongoDB aggregation over the satisfaction checks.

Cancelled checks are left out: nobody was meant to call. The response rate is
the share of completed checks that reached the customer (satisfied or not);
time to first contact is measured per resolution, from the resolution to the
first attempt of any of its checks that reached the customer. The groups count
calls (a serious complaint's two checks twice); ``complaint_satisfaction`` counts
each complaint once, by the order intake keeps its satisfaction by
(``intake.projections.outcome_rank``): the latest resolution, a reached answer
before no answer, the later check of the series.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.events import FollowupOutcome
from complaints_shared.mongo import at_or_after
from followup.models import (
    CheckStatus,
    ComplaintSatisfaction,
    FirstContactStats,
    FollowupStats,
    StatsFilters,
    StatsGroup,
)
from followup.store import CHECKS

SCORES = range(1, 6)
MS_PER_HOUR = 3_600_000
DIMENSIONS = {
    "by_branch": "branch",
    "by_department": "department",
    "by_owner": "owner_id",
    "by_category": "category",
}


def _match(*, principal: Principal, filters: StatsFilters) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [
        principal.scope_filter(),
        {"status": {"$ne": CheckStatus.CANCELLED.value}},
    ]
    if filters.branch is not None:
        principal.require_branch(filters.branch, field="branch")
        conditions.append({"branch": filters.branch})
    if filters.category is not None:
        conditions.append({"category": filters.category.value})
    if filters.resolved_from is not None:
        conditions.append({"resolved_at": at_or_after(filters.resolved_from)})
    if filters.resolved_to is not None:
        conditions.append({"resolved_at": {"$lt": filters.resolved_to}})
    return {"$and": conditions}


def _count_if(field: str, value: Any) -> dict[str, Any]:
    return {"$sum": {"$cond": [{"$eq": [f"${field}", value]}, 1, 0]}}


def _accumulators() -> dict[str, Any]:
    return {
        "checks": {"$sum": 1},
        "completed": _count_if("status", CheckStatus.COMPLETED.value),
        "satisfied": _count_if("outcome", FollowupOutcome.SATISFIED.value),
        "unsatisfied": _count_if("outcome", FollowupOutcome.UNSATISFIED.value),
        "no_response": _count_if("outcome", FollowupOutcome.NO_RESPONSE.value),
        # $avg skips checks without a score (not completed, or no response).
        "satisfaction_average": {"$avg": "$score"},
        **{f"score_{score}": _count_if("score", score) for score in SCORES},
    }


def _first_contact_stages() -> list[dict[str, Any]]:
    return [
        {"$match": {"first_contact_at": {"$ne": None}}},
        {
            "$group": {
                "_id": {"complaint": "$complaint_id", "resolution": "$resolution_number"},
                "first_contact_at": {"$min": "$first_contact_at"},
                "resolved_at": {"$first": "$resolved_at"},
            }
        },
        {
            "$project": {
                "hours": {
                    "$divide": [{"$subtract": ["$first_contact_at", "$resolved_at"]}, MS_PER_HOUR]
                }
            }
        },
        {
            "$group": {
                "_id": None,
                "resolutions": {"$sum": 1},
                "average_hours": {"$avg": "$hours"},
                "median_hours": {"$median": {"input": "$hours", "method": "approximate"}},
                "p90_hours": {
                    "$percentile": {"input": "$hours", "p": [0.9], "method": "approximate"}
                },
            }
        },
    ]


def _complaint_satisfaction_stages() -> list[dict[str, Any]]:
    no_response = FollowupOutcome.NO_RESPONSE.value
    per_complaint = {
        name: accumulator
        for name, accumulator in _accumulators().items()
        if name not in ("checks", "completed")
    }
    return [
        {"$match": {"status": CheckStatus.COMPLETED.value}},
        {"$addFields": {"reached": {"$ne": ["$outcome", no_response]}}},
        {"$sort": {"complaint_id": 1, "resolution_number": -1, "reached": -1, "sequence": -1}},
        {
            "$group": {
                "_id": "$complaint_id",
                "outcome": {"$first": "$outcome"},
                "score": {"$first": "$score"},
            }
        },
        {"$group": {"_id": None, "complaints": {"$sum": 1}, **per_complaint}},
    ]


def pipeline(*, principal: Principal, filters: StatsFilters) -> list[dict[str, Any]]:
    """One pass over the matching checks; a facet per breakdown."""
    accumulators = _accumulators()
    facets: dict[str, list[dict[str, Any]]] = {
        "overall": [{"$group": {"_id": None, **accumulators}}],
        **{
            name: [{"$group": {"_id": f"${field}", **accumulators}}, {"$sort": {"_id": 1}}]
            for name, field in DIMENSIONS.items()
        },
        "first_contact": _first_contact_stages(),
        "complaints": _complaint_satisfaction_stages(),
    }
    return [{"$match": _match(principal=principal, filters=filters)}, {"$facet": facets}]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _group(row: dict[str, Any] | None) -> StatsGroup:
    row = row or {}
    completed = row.get("completed", 0)
    reached = row.get("satisfied", 0) + row.get("unsatisfied", 0)
    return StatsGroup(
        key=row.get("_id"),
        checks=row.get("checks", 0),
        completed=completed,
        reached=reached,
        no_response=row.get("no_response", 0),
        satisfied=row.get("satisfied", 0),
        unsatisfied=row.get("unsatisfied", 0),
        response_rate=_rounded(reached / completed) if completed else None,
        satisfaction_average=_rounded(row.get("satisfaction_average")),
        score_distribution={str(score): row.get(f"score_{score}", 0) for score in SCORES},
    )


def _first_contact(row: dict[str, Any] | None) -> FirstContactStats:
    if not row:
        return FirstContactStats(resolutions=0)
    p90 = row.get("p90_hours")
    return FirstContactStats(
        resolutions=row["resolutions"],
        average_hours=_rounded(row.get("average_hours")),
        median_hours=_rounded(row.get("median_hours")),
        p90_hours=_rounded(p90[0] if isinstance(p90, list) and p90 else p90),
    )


def _complaints(row: dict[str, Any] | None) -> ComplaintSatisfaction:
    row = row or {}
    return ComplaintSatisfaction(
        complaints=row.get("complaints", 0),
        satisfied=row.get("satisfied", 0),
        unsatisfied=row.get("unsatisfied", 0),
        no_response=row.get("no_response", 0),
        satisfaction_average=_rounded(row.get("satisfaction_average")),
        score_distribution={str(score): row.get(f"score_{score}", 0) for score in SCORES},
    )


async def followup_stats(
    *, db: AsyncDatabase, principal: Principal, filters: StatsFilters
) -> FollowupStats:
    cursor = await db[CHECKS].aggregate(pipeline(principal=principal, filters=filters))
    result = (await cursor.to_list(None))[0]
    return FollowupStats(
        overall=_group(next(iter(result["overall"]), None)),
        **{name: [_group(row) for row in result[name]] for name in DIMENSIONS},
        resolution_to_first_contact=_first_contact(next(iter(result["first_contact"]), None)),
        complaint_satisfaction=_complaints(next(iter(result["complaints"]), None)),
    )
