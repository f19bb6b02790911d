"""Data access for the complaint of record. No HTTP here.

Every change goes through ``change``, a complaint's use of the shared aggregate
kernel (``complaints_shared.aggregate``): read the document, let the caller decide
(using the lifecycle), then write conditionally on the version read (optimistic
concurrency) together with the timeline entries and the outbox events it causes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate
from complaints_shared.auth import Principal
from complaints_shared.events import (
    BranchUpdated,
    ComplaintReceived,
    CustomerContact,
    EventData,
    EventType,
    Flag,
)
from complaints_shared.mongo import (
    as_stored,
    ensure_index,
    is_id_clash,
    lease_kept,
    merge_updates,
    retrying,
)
from complaints_shared.outbox import outbox_entry, outbox_fields
from intake import grams, idempotency
from intake.identity import customer_keys, submission_fingerprint
from intake.lifecycle import OPEN_STATUSES, Action, Status
from intake.models import ComplaintCreate, ComplaintRead
from intake.settings import IntakeSettings
from intake.suggestions import suggest

COMPLAINTS = "complaints"
# What intake knows of routing's branches (from ``branch.updated``): their time zones.
BRANCHES = "branches"
REFERENCE_COUNTERS = "reference_counters"
SUBMISSIONS = "submission_fingerprints"
APPLIED_EVENTS_KEPT = 500
MAX_WRITE_ATTEMPTS = 8
# Earlier complaints named in ``repeat_of`` (newest first); ``repeat_count`` counts them all.
MAX_REPEAT_LINKS = 20
# The ``repeat_keys`` bucket of an open complaint (a finished one: the day it finished).
REPEAT_OPEN = "open"
# The timeline's ``cause`` of a change asked for over HTTP (else the consumed event's type).
COMMAND_CAUSE = "command"
REFERENCE_ATTEMPTS = 5
# Reference numbers a process reserves per counter write (``next_reference``).
REFERENCE_BLOCK = 20
# Blocks (branch-days) a process remembers; an evicted block's unused numbers are skipped.
BLOCKS_KEPT = 1024
# How long a process keeps a branch's time zone (``reference_time_zone``).
TIME_ZONE_KEPT_S = 30.0
# Per process: (database, counter key) -> [next number, last number of the block].
_blocks: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
_block_locks: dict[tuple[str, str], asyncio.Lock] = {}
# Per process: (database, branch key) -> (time zone, kept until on the monotonic clock).
_time_zones: dict[tuple[str, str], tuple[str, float]] = {}

HIDDEN_FIELDS = {
    "outbox": 0,
    "applied_events": 0,
    "timeline": 0,
    grams.FIELD: 0,
    grams.VERSION_FIELD: 0,
}
COMPLAINT = Aggregate(
    collection=COMPLAINTS,
    what="complaint",
    applied_events_kept=APPLIED_EVENTS_KEPT,
    max_write_attempts=MAX_WRITE_ATTEMPTS,
    hidden=HIDDEN_FIELDS,
)


# Each list filter of GET /v1/complaints narrows through one of these (org first: every
# query is scoped to the caller's organisation); the sort key comes last, then the ``_id``
# tie-break every page sorts on. docs/performance.md lists each query shape and its index;
# tests/test_index_coverage.py checks that every shape has one.
COMPLAINT_INDEXES: dict[str, list[tuple[str, int]]] = {
    "org_created": [("org", 1), ("created_at", -1), ("_id", -1)],
    "org_branch_created": [("org", 1), ("branch", 1), ("created_at", -1), ("_id", -1)],
    "org_status_created": [("org", 1), ("status", 1), ("created_at", -1), ("_id", -1)],
    "org_branch_status_created": [
        ("org", 1),
        ("branch", 1),
        ("status", 1),
        ("created_at", -1),
        ("_id", -1),
    ],
    "org_category_created": [("org", 1), ("category", 1), ("created_at", -1), ("_id", -1)],
    "org_severity_created": [("org", 1), ("severity", 1), ("created_at", -1), ("_id", -1)],
    "org_channel_created": [("org", 1), ("channel", 1), ("created_at", -1), ("_id", -1)],
    "org_flags_created": [("org", 1), ("flags", 1), ("created_at", -1), ("_id", -1)],
    "org_department_status": [
        ("org", 1),
        ("assignment.department", 1),
        ("status", 1),
        ("created_at", -1),
        ("_id", -1),
    ],
    "org_owner_status": [
        ("org", 1),
        ("assignment.owner_id", 1),
        ("status", 1),
        ("created_at", -1),
        ("_id", -1),
    ],
    "org_ack_due": [("org", 1), ("acknowledge_due_at", 1), ("_id", 1)],
    "org_resolve_due": [("org", 1), ("resolve_due_at", 1), ("_id", 1)],
    "org_customer_keys": [("org", 1), ("customer_keys", 1), ("created_at", -1), ("_id", -1)],
    "org_repeat_keys": [("org", 1), ("repeat_keys", 1)],
    "org_breached": [("org", 1), ("sla_breached", 1), ("created_at", -1), ("_id", -1)],
    "org_repeat": [("org", 1), ("repeat_count", 1), ("created_at", -1), ("_id", -1)],
    # Substring search (``intake.grams``): one gram, then the branch filter most searches carry.
    "org_grams_branch_created": [
        ("org", 1),
        (grams.FIELD, 1),
        ("branch", 1),
        ("created_at", -1),
        ("_id", -1),
    ],
}
BACKFILL_BATCH = 500


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    complaints = db[COMPLAINTS]
    await ensure_index(complaints, "reference", unique=True, name="reference_unique")
    for name, keys in COMPLAINT_INDEXES.items():
        await ensure_index(complaints, keys, name=name)
    await ensure_index(db[SUBMISSIONS], "expires_at", name="expires_at")
    await backfill_search_grams(db=db)


async def backfill_search_grams(*, db: AsyncDatabase) -> int:
    """Give complaints stored before ``grams.VERSION`` their grams; how many it changed.

    Runs at every start and is cheap once done: the complaints still to do are those
    without the current version (one indexed read when there are none on MongoDB; a
    scan on the local server). Several replicas starting together write the same values.
    """
    complaints = db[COMPLAINTS]
    outdated = {grams.VERSION_FIELD: {"$ne": grams.VERSION}}
    changed = 0
    while True:
        batch = (
            await complaints.find(
                outdated,
                projection={"subject": 1, "description": 1, "reference": 1, "customer_keys": 1},
            )
            .limit(BACKFILL_BATCH)
            .to_list(None)
        )
        if not batch:
            return changed
        result = await complaints.bulk_write(
            [
                UpdateOne({"_id": document["_id"]}, {"$set": grams.search_fields(document)})
                for document in batch
            ],
            ordered=False,
        )
        changed += result.modified_count


def timeline_entry(
    *,
    actor: str,
    action: str,
    at: datetime,
    cause: str = COMMAND_CAUSE,
    event_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One line of the complaint's history; ``action`` is a word of ``Action``."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "cause": cause,
        "event_id": event_id,
        "details": details or {},
    }


def customer_contact(document: dict[str, Any]) -> CustomerContact:
    customer = document["customer"]
    return CustomerContact(
        name=customer["name"],
        phone=customer.get("phone"),
        email=customer.get("email"),
        external_id=customer.get("external_id"),
        preferred_channel=customer.get("preferred_contact_channel", "phone"),
        language=customer.get("language", "zh"),
        vip=customer.get("vip", False),
    )


def event_base(document: dict[str, Any]) -> dict[str, str]:
    return {"complaint_id": document["_id"], "org": document["org"], "branch": document["branch"]}


def to_read(document: dict[str, Any]) -> ComplaintRead:
    return ComplaintRead.model_validate({**document, "id": document["_id"]})


def branch_key(org: str, code: str) -> str:
    return f"{org}:{code}"


async def record_branch(*, db: AsyncDatabase, branch: BranchUpdated) -> None:
    """Keep the newest version of a branch routing announced; older or repeated ones are no-ops.

    The upsert only matches an older version: a newer or equal one already stored makes
    it try an insert of the same ``_id``, which the unique ``_id`` refuses.
    """
    _time_zones.pop((db.name, branch_key(branch.org, branch.branch)), None)
    with suppress(DuplicateKeyError):
        await db[BRANCHES].update_one(
            {"_id": branch_key(branch.org, branch.branch), "version": {"$lt": branch.version}},
            {
                "$set": {
                    "org": branch.org,
                    "code": branch.branch,
                    "time_zone": branch.time_zone,
                    "active": branch.active,
                    "version": branch.version,
                    "updated_at": branch.updated_at,
                }
            },
            upsert=True,
        )
    # Again after the write: a read racing it may have kept the old zone meanwhile.
    _time_zones.pop((db.name, branch_key(branch.org, branch.branch)), None)


async def reference_time_zone(
    *, db: AsyncDatabase, settings: IntakeSettings, org: str, branch: str
) -> str:
    """The branch's own time zone once routing announced it, else ``REFERENCE_TIME_ZONE``.

    Kept per process for ``TIME_ZONE_KEPT_S`` (one read per branch, not per complaint);
    ``record_branch`` forgets it at once in the process that consumed the change, other
    replicas within that time.
    """
    slot = (db.name, branch_key(org, branch))
    kept = _time_zones.get(slot)
    if kept is not None and kept[1] > time.monotonic():
        return kept[0]
    known = await db[BRANCHES].find_one(
        {"_id": branch_key(org, branch)}, projection={"time_zone": 1}
    )
    time_zone = known["time_zone"] if known else settings.reference_time_zone
    _time_zones[slot] = (time_zone, time.monotonic() + TIME_ZONE_KEPT_S)
    return time_zone


async def next_reference(*, db: AsyncDatabase, branch: str, at: datetime, time_zone: str) -> str:
    """Reference numbers count per branch and local calendar day: ``LZ-20261123-0007``.

    A process reserves ``REFERENCE_BLOCK`` numbers at a time with one counter write and
    hands them out in order, so the counter is written once per block, not per complaint.
    Replicas hold different blocks (numbers are unique, not in registration order across
    replicas), and a block's unused numbers are skipped when its process stops: gaps,
    never duplicates.
    """
    day = at.astimezone(ZoneInfo(time_zone)).strftime("%Y%m%d")
    key = f"{branch}-{day}"
    slot = (db.name, key)
    async with _block_locks.setdefault(slot, asyncio.Lock()):
        block = _blocks.get(slot)
        if block is None or block[0] > block[1]:
            last = await _reserve_block(db=db, key=key)
            block = _blocks[slot] = [last - REFERENCE_BLOCK + 1, last]
            _blocks.move_to_end(slot)
            while len(_blocks) > BLOCKS_KEPT:
                forgotten, _ = _blocks.popitem(last=False)
                _block_locks.pop(forgotten, None)
        number = block[0]
        block[0] += 1
    return f"{key}-{number:04d}"


async def _reserve_block(*, db: AsyncDatabase, key: str) -> int:
    """The last number of a newly reserved block of the counter ``key``."""
    counters = db[REFERENCE_COUNTERS]
    for _ in range(REFERENCE_ATTEMPTS):
        # Repeated after a dropped connection that had counted already, a block is
        # skipped (a gap, never a duplicate): no worse than the failed request it saves.
        counter = await retrying(
            counters.find_one_and_update,
            {"_id": key},
            {"$inc": {"seq": REFERENCE_BLOCK}},
            return_document=ReturnDocument.AFTER,
        )
        if counter is not None:
            return counter["seq"]
        # The day's first complaint creates the counter. Not as an upsert of the $inc:
        # SecantusDB answers the loser of two racing upserts with no document after
        # counting it, which would leave a gap in the numbers.
        with suppress(DuplicateKeyError):
            await retrying(counters.insert_one, {"_id": key, "seq": 0})
    raise RuntimeError(f"reference counter {key} could not be incremented")


async def get_visible(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    """The complaint if the caller may see it; a foreign one is simply not found."""
    return await aggregate.get_visible(
        db=db, aggregate=COMPLAINT, principal=principal, aggregate_id=complaint_id
    )


async def get_timeline(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    return await aggregate.get_visible(
        db=db,
        aggregate=COMPLAINT,
        principal=principal,
        aggregate_id=complaint_id,
        projection={"reference": 1, "timeline": 1},
    )


# ------------------------------------------------------------------ creation --


@dataclass
class SubmissionClaim:
    """Create the complaint ``complaint_id`` (as ``holder``), or return ``existing``."""

    complaint_id: str
    holder: str | None = None
    existing: dict[str, Any] | None = None


async def claim_submission(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    fingerprint: str,
    complaint_id: str,
    now: datetime,
) -> SubmissionClaim:
    """Claim a submission fingerprint for ``complaint_id``, or find the complaint that has it.

    The claim is one atomic upsert: of identical concurrent submissions only one can
    insert the fingerprint document, the others see a duplicate key and wait for the
    winner's complaint (a 409 with Retry-After if it takes longer than
    ``IDEMPOTENCY_WAIT_S``). A winner that died or failed before storing it (its lease
    ran out or was given up) is taken over *with its complaint id*, so however the
    winner ended, one complaint exists.
    """
    claims = db[SUBMISSIONS]
    holder = idempotency.new_holder()
    deadline = time.monotonic() + settings.idempotency_wait_s
    while True:
        claim = {
            "complaint_id": complaint_id,
            "holder": holder,
            "lease_until": idempotency.lease_until(settings),
            "expires_at": now + timedelta(seconds=settings.resubmission_window_s),
        }
        try:
            await retrying(
                claims.update_one,
                {"_id": fingerprint, "expires_at": {"$lte": now}},
                {"$set": claim},
                upsert=True,
            )
            return SubmissionClaim(complaint_id=complaint_id, holder=holder)
        except DuplicateKeyError:
            pass
        live = await claims.find_one({"_id": fingerprint})
        if live is None:  # expired and removed meanwhile: claim afresh
            continue
        if live.get("holder") == holder:  # our own claim, stored before a dropped reply
            return SubmissionClaim(complaint_id=live["complaint_id"], holder=holder)
        existing = await db[COMPLAINTS].find_one(
            {"_id": live["complaint_id"]}, projection=HIDDEN_FIELDS
        )
        if existing is not None:
            return SubmissionClaim(complaint_id=live["complaint_id"], existing=existing)
        if idempotency.lease_expired(live):
            taken = await retrying(
                claims.update_one,
                {
                    "_id": fingerprint,
                    "holder": live.get("holder"),
                    "lease_until": live.get("lease_until"),
                },
                {"$set": {"holder": holder, "lease_until": idempotency.lease_until(settings)}},
            )
            if taken.modified_count == 1:
                return SubmissionClaim(complaint_id=live["complaint_id"], holder=holder)
            continue  # lost the race, or ours already (the next read tells)
        if time.monotonic() > deadline:
            raise idempotency.in_progress(
                "an identical complaint of this customer is still being registered; "
                f"retry in {idempotency.RETRY_AFTER_S} s"
            )
        await asyncio.sleep(idempotency.POLL_S)


async def release_submission(*, db: AsyncDatabase, fingerprint: str, holder: str) -> None:
    """Give up the claim's lease after a failure; the claim and its complaint id stay."""
    await retrying(
        db[SUBMISSIONS].update_one,
        {"_id": fingerprint, "holder": holder},
        {"$set": {"lease_until": datetime.now(UTC)}},
    )


def repeat_keys(customer_keys: list[str], *, status: Status, at: datetime) -> list[str]:
    """The keys repeat detection finds a complaint by: ``<customer key>|open`` while it is
    open, ``<customer key>|<UTC day it finished>`` once resolved, closed, rejected or
    withdrawn (a reopen makes it open again)."""
    bucket = REPEAT_OPEN if status in OPEN_STATUSES else at.astimezone(UTC).strftime("%Y%m%d")
    return [f"{key}|{bucket}" for key in customer_keys]


def _repeat_buckets(*, since: datetime, now: datetime) -> list[str]:
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    days = [(first + timedelta(days=n)).strftime("%Y%m%d") for n in range((last - first).days + 1)]
    return [REPEAT_OPEN, *days]


async def find_earlier_complaints(
    *, db: AsyncDatabase, org: str, keys: list[str], since: datetime, now: datetime
) -> list[dict[str, Any]]:
    """The customer's open complaints and those finished since ``since``, newest first.

    One equality ``$in`` on the multikey index ``(org, repeat_keys)``, however many
    complaints the customer has: the keys name the customer and either ``open`` or
    the day the complaint finished, so "open, or finished within the window" is the
    customer's keys × (``open`` + each day of the window). A range or a status
    condition next to the customer keys would make SecantusDB scan the collection
    (docs/mongodb-compatibility.md). The window's first day is trimmed exactly here.
    """
    if not keys:
        return []
    wanted = [f"{key}|{bucket}" for key in keys for bucket in _repeat_buckets(since=since, now=now)]
    candidates = await (
        db[COMPLAINTS]
        .find(
            {"org": org, "repeat_keys": {"$in": wanted}},
            projection={"_id": 1, "created_at": 1, "finished_at": 1},
        )
        .to_list(None)
    )
    earlier = [
        document
        for document in candidates
        if document.get("finished_at") is None or document["finished_at"] >= since
    ]
    earlier.sort(key=lambda document: (document["created_at"], document["_id"]), reverse=True)
    return earlier


def _classify(request: ComplaintCreate, settings: IntakeSettings) -> dict[str, Any]:
    """Severity and flags as given, or suggested from the text when left out."""
    suggestion = suggest(
        rules=settings.suggestion_rules,
        subject=request.subject,
        description=request.description,
        channel=request.channel,
    )
    suggested: dict[str, Any] = {"severity": None, "flags": [], "rules": suggestion.rule_ids}
    severity = request.severity
    if severity is None:
        severity = suggested["severity"] = suggestion.severity
    flags = list(request.flags) if request.flags is not None else []
    if request.flags is None:
        flags = suggested["flags"] = list(suggestion.flags)
    return {"severity": severity, "flags": flags, "suggested": suggested}


async def create_complaint(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
    complaint_id: str,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Store a new complaint with its ``complaint.received`` event in one insert.

    Returns (document, created). An identical submission of the same customer
    within the resubmission window returns the earlier complaint, created=False.
    """
    body = request.model_dump(mode="json", exclude={"severity", "flags"})
    fingerprint = submission_fingerprint(
        org=principal.org,
        branch=request.branch,
        customer=body["customer"],
        subject=request.subject,
        description=request.description,
    )
    claim = await claim_submission(
        db=db, settings=settings, fingerprint=fingerprint, complaint_id=complaint_id, now=now
    )
    if claim.existing is not None:
        # Our own id: an idempotent retry finishing a request that stored it already.
        return claim.existing, claim.complaint_id == complaint_id
    assert claim.holder is not None
    try:
        async with lease_kept(
            db[SUBMISSIONS],
            {"_id": fingerprint, "holder": claim.holder},
            field="lease_until",
            lease_s=settings.creation_lease_s,
        ):
            document = await _insert_new(
                db=db,
                settings=settings,
                principal=principal,
                request=request,
                body=body,
                complaint_id=claim.complaint_id,
                fingerprint=fingerprint,
                now=now,
            )
    except DuplicateKeyError as exc:
        # The claim's earlier holder stored this very submission after all (it was slow).
        existing = await db[COMPLAINTS].find_one(
            {"_id": claim.complaint_id}, projection=HIDDEN_FIELDS
        )
        if not is_id_clash(exc) or (existing or {}).get("submission_fingerprint") != fingerprint:
            await release_submission(db=db, fingerprint=fingerprint, holder=claim.holder)
            raise
        return existing, claim.complaint_id == complaint_id
    except BaseException:
        await release_submission(db=db, fingerprint=fingerprint, holder=claim.holder)
        raise
    return document, True


async def _insert_new(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
    body: dict[str, Any],
    complaint_id: str,
    fingerprint: str,
    now: datetime,
) -> dict[str, Any]:
    earlier = await find_earlier_complaints(
        db=db,
        org=principal.org,
        keys=customer_keys(body["customer"]),
        since=now - timedelta(days=settings.repeat_window_days),
        now=now,
    )
    time_zone = await reference_time_zone(
        db=db, settings=settings, org=principal.org, branch=request.branch
    )
    reference = await next_reference(db=db, branch=request.branch, at=now, time_zone=time_zone)
    document = new_document(
        settings=settings,
        principal=principal,
        request=request,
        body=body,
        complaint_id=complaint_id,
        fingerprint=fingerprint,
        reference=reference,
        earlier=[doc["_id"] for doc in earlier],
        now=now,
    )
    # A repeat after a dropped reply is a duplicate ``_id``: create_complaint finds it.
    await retrying(db[COMPLAINTS].insert_one, document)
    return as_stored(document)


def new_document(
    *,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
    body: dict[str, Any],
    complaint_id: str,
    fingerprint: str,
    reference: str,
    earlier: list[str],
    now: datetime,
) -> dict[str, Any]:
    """A new complaint as stored, with its ``complaint.received`` in the outbox.

    ``earlier``: the ids of the customer's earlier complaints that make it a repeat,
    newest first. Pure, so the benchmark seeds complaints of exactly this shape.
    """
    keys = customer_keys(body["customer"])
    classification = _classify(request, settings)
    links = earlier[:MAX_REPEAT_LINKS]
    flags: list[str] = [flag.value for flag in classification["flags"]]
    if earlier and Flag.REPEAT.value not in flags:
        flags.append(Flag.REPEAT.value)
    document: dict[str, Any] = {
        "_id": complaint_id,
        "reference": reference,
        "org": principal.org,
        **body,
        "occurred_at": request.occurred_at,
        "severity": classification["severity"].value,
        "flags": flags,
        "suggested": classification["suggested"],
        "repeat_count": len(earlier),
        "repeat_of": links,
        "customer_keys": keys,
        "submission_fingerprint": fingerprint,
        "status": Status.RECEIVED.value,
        "repeat_keys": repeat_keys(keys, status=Status.RECEIVED, at=now),
        "version": 1,
        "resolution_count": 0,
        "reopen_count": 0,
        "escalation_level": 0,
        "sla": {},
        "sla_breached": False,
        "notes": [],
        "created_at": now,
        "updated_at": now,
        "applied_events": [],
        "timeline": [
            timeline_entry(
                actor=principal.subject,
                action=Action.RECEIVED,
                at=now,
                details={"channel": request.channel.value, "reference": reference},
            )
        ],
    }
    received = ComplaintReceived(
        **event_base(document),
        reference=reference,
        channel=request.channel,
        category=request.category,
        subcategory=request.subcategory,
        severity=classification["severity"],
        flags=flags,
        subject=request.subject,
        description=request.description,
        product=request.product,
        customer=customer_contact(document),
        received_at=now,
        repeat_count=len(earlier),
        repeat_of=links,
    )
    document.update(grams.search_fields(document))
    entry = outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=received, settings=settings)
    document.update(outbox_fields([entry]))
    return document


# ------------------------------------------------------------------- changes --


@dataclass(frozen=True)
class Decision:
    """What one change does to a complaint.

    ``status`` is the next status as ``lifecycle.transition`` decided it (None keeps
    the current one); ``entries`` are timeline entries (action, details) written after
    the caller's own entry, and a status change is recorded on the last entry.
    """

    update: dict[str, Any]
    events: list[tuple[EventType, EventData]] = field(default_factory=list)
    status: Status | None = None
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


UNCHANGED = Decision({})


def _status_update(*, current: dict[str, Any], next_status: Status | None, now: datetime) -> dict:
    if next_status is None or next_status.value == current["status"]:
        return {}
    keys = repeat_keys(current.get("customer_keys", []), status=next_status, at=now)
    return {"$set": {"status": next_status.value, "repeat_keys": keys}}


async def change(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    complaint_id: str,
    scope: dict[str, Any],
    actor: str,
    action: str,
    decide: Callable[[dict[str, Any]], Decision],
    now: datetime,
    cause: str = COMMAND_CAUSE,
    event_id: str | None = None,
    details: dict[str, Any] | None = None,
    read_back: bool = True,
) -> dict[str, Any] | None:
    """Apply one decided change atomically; returns the new document (with
    ``read_back=False`` the document before it: see ``aggregate.change``).

    Every change writes its timeline entries with the actor, the cause (``command``
    or the consumed event's type) and the causing event id; a status change is
    recorded on the entry that caused it (``status_from`` / ``status_to``).
    ``event_id`` makes the change idempotent for consumed events: a document that
    already applied it is returned unchanged (None when it does not exist).
    """

    def timeline_and_status(current: dict[str, Any]) -> aggregate.Decision:
        decision = decide(current)
        status_from = Status(current["status"])
        entries = [(action, details or {}), *decision.entries]
        timeline = [
            timeline_entry(
                actor=actor, action=name, at=now, cause=cause, event_id=event_id, details=extra
            )
            for name, extra in entries
        ]
        if decision.status is not None and decision.status is not status_from:
            timeline[-1]["status_from"] = status_from.value
            timeline[-1]["status_to"] = decision.status.value
        update = merge_updates(
            decision.update,
            _status_update(current=current, next_status=decision.status, now=now),
            {"$push": {"timeline": {"$each": timeline}}},
        )
        return aggregate.Decision(update, decision.events)

    return await aggregate.change(
        db=db,
        settings=settings,
        aggregate=COMPLAINT,
        aggregate_id=complaint_id,
        decide=timeline_and_status,
        now=now,
        scope=scope,
        event_id=event_id,
        read_back=read_back,
    )


def new_id() -> str:
    return str(uuid.uuid4())
