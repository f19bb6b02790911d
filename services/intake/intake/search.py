"""Finding complaints: filters, substring search that works for Chinese (``intake.grams``),
cursor pages."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import aggregate
from complaints_shared.auth import Principal
from complaints_shared.datetimes import UtcDatetime, window_end
from complaints_shared.events import Category, Channel, Flag, Severity
from complaints_shared.mongo import at_or_after, by_ids, more_than_none
from complaints_shared.pagination import Page
from intake import filter_keys, grams, postings, rollup, store
from intake.identity import customer_keys
from intake.lifecycle import Status
from intake.models import MAX_PAGE_SIZE, ComplaintRead, Phone

# The first window of a page's reads on the local server (``mongo.sorted_batches``); each
# later one widens by what the earlier found.
# A filter's value as pasted, spaces at either end dropped; nothing left is a 422.
Given = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
FIRST_WINDOW = timedelta(hours=2)
# Every index of complaints, by key fields: the reads are shaped around them.
INDEXES = [[key for key, _ in keys] for keys in store.COMPLAINT_INDEXES.values()] + [
    [key for key, _ in store.REFERENCE_INDEX]
]
# Filters that select a handful of complaints by themselves: a ``q`` next to one is
# verified on those rather than looked up in the postings.
SELECTIVE = {"reference", "customer_keys"}
# Pages' worth of postings a read takes when the complaints' other filters are checked on
# what they name; of complaints read narrow, how many are verified before those kept are
# read whole.
FILTERED_READ_FACTOR = 4


class SortOrder(StrEnum):
    NEWEST = "-created_at"
    OLDEST = "created_at"
    ACKNOWLEDGE_DUE = "acknowledge_due_at"
    RESOLVE_DUE = "resolve_due_at"


class ComplaintFilters(BaseModel):
    """Query parameters of GET /v1/complaints; every given filter must hold."""

    model_config = ConfigDict(extra="forbid")

    branch: list[str] = Field(default_factory=list)
    status: list[Status] = Field(default_factory=list)
    category: list[Category] = Field(default_factory=list)
    severity: list[Severity] = Field(default_factory=list)
    channel: list[Channel] = Field(default_factory=list)
    department: Given | None = None
    owner: Given | None = None
    flag: list[Flag] = Field(default_factory=list, description="complaints carrying all of these")
    created_from: UtcDatetime | None = None
    created_to: UtcDatetime | None = None

    acknowledge_due_before: UtcDatetime | None = None
    resolve_due_before: UtcDatetime | None = None
    breached: bool | None = None
    acknowledged: bool | None = Field(None, description="受理 recorded (a fact, not a status)")
    escalated: bool | None = Field(None, description="escalated at least one level")
    repeat: bool | None = None
    # Pasted values often carry a space at either end, which no reference or text begins
    # or ends with: it is dropped. One empty (``?reference=``, a client's empty variable) is
    # a 422 naming it, as a ``q`` of spaces is: it was no condition at all, and the newest
    # complaints of every branch answered a lookup by reference. Compared as stored (ASCII,
    # upper case): ``lz-…`` or full-width ``ＬＺ－…`` found nothing until 5 December.
    reference: Given | None = None
    # As registration reads them (``Phone``, ``EmailStr``: a Chinese domain in punycode, a
    # full-width address), so the filter finds the keys registration made.
    customer_phone: Phone | None = None
    customer_email: EmailStr | None = None
    q: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
        | None
    ) = None
    sort: SortOrder = SortOrder.NEWEST
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50
    cursor: str | None = None

    @field_validator("q", "reference")
    @classmethod
    def _visible(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The value folded as matching compares it; nothing left (invisible characters and
        spaces alone: ``\u200b``, ``\ufeff``) is a 422, not a condition every complaint holds."""
        if value is None:
            return None
        normal = grams.normalise(value).strip()
        if not normal:
            raise ValueError(f"{info.field_name} holds no visible character")
        return normal.upper() if info.field_name == "reference" else normal

    @field_validator("created_to")
    @classmethod
    def _after_created_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return window_end(value, info.data.get("created_from"), start_name="created_from")


def _in(values: list) -> dict[str, Any]:
    return {"$in": [getattr(value, "value", value) for value in values]}


def build_query(filters: ComplaintFilters, principal: Principal) -> dict[str, Any]:
    query: dict[str, Any] = principal.scope_filter()
    if filters.branch:
        principal.require_branches(filters.branch, field="branch")
        query["branch"] = {"$in": filters.branch}
    for field in ("status", "category", "severity", "channel"):
        values = getattr(filters, field)
        if values:
            query[field] = _in(values)
    if filters.department:
        query["assignment.department"] = filters.department
    if filters.owner:
        query["assignment.owner_id"] = filters.owner
    if filters.flag:
        query["flags"] = {"$all": [flag.value for flag in filters.flag]}
    created: dict[str, Any] = {}
    if filters.created_from:
        created.update(at_or_after(filters.created_from))
    if filters.created_to:
        created["$lt"] = filters.created_to
    if created:
        query["created_at"] = created
    if filters.acknowledge_due_before:
        query["acknowledge_due_at"] = {"$lt": filters.acknowledge_due_before}
    if filters.resolve_due_before:
        query["resolve_due_at"] = {"$lt": filters.resolve_due_before}
    if filters.breached is not None:
        query["sla_breached"] = filters.breached
    if filters.acknowledged is not None:
        query["acknowledged_at"] = {"$ne": None} if filters.acknowledged else None
    if filters.escalated is not None:
        query["escalation_level"] = more_than_none() if filters.escalated else 0
    if filters.repeat is not None:
        query["repeat_count"] = more_than_none() if filters.repeat else 0
    if filters.reference:
        query["reference"] = filters.reference
    wanted = customer_keys({"phone": filters.customer_phone, "email": filters.customer_email})
    if wanted:
        query["customer_keys"] = {"$all": wanted}
    # ``q`` is not a condition on complaints: ``search`` looks it up in the postings.
    return filter_keys.narrowed(query)


async def search(
    *, db: AsyncDatabase, principal: Principal, filters: ComplaintFilters
) -> Page[ComplaintRead]:
    field = filters.sort.value.lstrip("-")
    descending = filters.sort.value.startswith("-")
    query = build_query(filters, principal)
    if field != "created_at":
        # Complaints not yet given a due time have no place in a due-time ordering.
        query.setdefault(field, {})["$ne"] = None
    q = filters.q
    gram = grams.lookup_gram(q) if q else None
    read_complaints = partial(
        aggregate.page,
        sort_field=field,
        limit=filters.limit,
        cursor=filters.cursor,
        to_item=store.to_read,
        descending=descending,
        window=FIRST_WINDOW,
        floor=partial(rollup.floor, db=db, org=principal.org, field=field),
        # Whichever way it is read (the postings of a gram, or the complaints), the listing
        # is the complaints these filters and ``q`` select: a cursor is a position in it.
        listing={"query": query, "q": q, "sort": filters.sort.value},
    )

    async def complaints_of(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The complaints that ``batch`` (postings or narrow reads) names and the other
        filters select, whole and in the batch's order."""
        ids = [item["_id"] for item in batch]
        if not ids:
            return []
        found = await (
            db[store.COMPLAINTS]
            .find(by_ids(ids, query), projection=store.HIDDEN_FIELDS)
            .to_list(None)
        )
        by_id = {document["_id"]: document for document in found}
        return [by_id[complaint_id] for complaint_id in ids if complaint_id in by_id]

    if gram is None or field != "created_at" or SELECTIVE & query.keys():
        # No q, no gram (one character, or none indexed), a due-time order (postings hold only the
        # registration time), or a filter that selects a handful of complaints by itself:
        # the complaints the other filters select, q verified on each (a page reads at most
        # ``aggregate.MAX_FILTERED_READS`` times).
        if not q:
            return await read_complaints(
                collection=db[store.COMPLAINTS],
                query=query,
                projection=store.HIDDEN_FIELDS,
                indexes=INDEXES,
            )

        async def verified(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return await complaints_of(
                [document for document in batch if grams.matches(document, q)]
            )

        # q is verified on the searchable texts alone; only the complaints that hold it are
        # read whole (at 100,000 complaints, three in four of a branch's lack 断).
        return await read_complaints(
            collection=db[store.COMPLAINTS],
            query=query,
            projection={**grams.TEXT_FIELDS, field: 1},
            expand=verified,
            expand_factor=FILTERED_READ_FACTOR,
            indexes=INDEXES,
        )
    # The postings of the gram in date order, each batch read as the complaints it names
    # that the other filters select, in the same order.
    postings_query = {
        "org": principal.org,
        grams.FIELD: gram,
        **{key: query[key] for key in ("branch", "created_at") if key in query},
    }
    if "branch" not in postings_query:
        # Every branch the organisation has complaints in: the postings' index has the
        # branch before the date, so each branch's matches are read in date order.
        branches = await rollup.known_branches(db=db, org=principal.org)
        if branches is not None:
            postings_query["branch"] = {"$in": branches}

    return await read_complaints(
        collection=db[postings.POSTINGS],
        query=postings_query,
        projection={"created_at": 1},
        # A q that is its gram needs no more; a longer one is verified whole on each complaint.
        keep=None if grams.normalise(q) == gram else lambda document: grams.matches(document, q),
        indexes=[postings.POSTING_KEYS],
        expand=complaints_of,
        # Conditions the postings do not hold may refuse most of what a read returns.
        read_factor=(
            FILTERED_READ_FACTOR if set(query) - set(postings_query) - {filter_keys.FIELD} else 1
        ),
    )
