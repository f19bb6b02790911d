"""Registration: a new complaint stored once, with its ``complaint.received`` event.

Severity and flags are suggested from the text when left out; the customer's earlier
complaints make it a repeat; the reference number counts per branch and local day; an
identical submission within the resubmission window finds the first one's complaint.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.events import ComplaintReceived, EventType, Flag, RepeatLink
from complaints_shared.mongo import clashes_on, is_id_clash
from complaints_shared.outbox import outbox_entry, outbox_fields
from complaints_shared.problems import ConcurrentUpdate, invalid
from intake import filter_keys, postings, reference_numbers, store, submissions
from intake.identity import Submission, customer_keys, submission, submission_fingerprint
from intake.lifecycle import Action, Status, customer_contact, event_base
from intake.models import ComplaintCreate
from intake.repeats import MAX_REPEAT_LINKS, repeat_keys
from intake.settings import IntakeSettings
from intake.suggestions import suggest

# Inserts tried when an index refuses one: the claim, whose earlier holder turns out
# closed, or the reference number, taken already.
SUBMISSION_ATTEMPTS = 5


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
    taken_over: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Store a new complaint with its ``complaint.received`` event in one insert.

    Returns (document, created). An identical submission of the same customer within
    the resubmission window returns the earlier complaint, created=False: the insert
    is the submission's claim (``intake.submissions``), so the first stored wins.
    The complaint's search posting (``intake.postings``) is written before the insert,
    so a stored complaint always has it; a retry that finds its complaint stored already
    writes it again from the stored one. ``taken_over``: the id is that of an earlier
    request under the same ``Idempotency-Key``, which may have stored it; found stored, it
    is answered as it is, and no draft's posting (another reference and time) overwrites
    the stored complaint's meanwhile.
    """
    entered = time.monotonic()  # with ``now``: a late insert is stamped again
    body = request.model_dump(mode="json", exclude={"severity", "flags"})
    fingerprint = submission_of(principal=principal, request=request, body=body).fingerprint

    async def prepared() -> dict[str, Any]:
        """The document to insert, its search posting written already."""
        document = await _prepare(
            db=db,
            settings=settings,
            principal=principal,
            request=request,
            body=body,
            complaint_id=complaint_id,
            now=now,
        )
        await postings.write(db=db, document=document)
        return document

    if taken_over:
        existing = await store.find(db=db, complaint_id=complaint_id)
        if existing is not None and _submitted_as(existing, fingerprint):
            await postings.write(db=db, document=existing)
            return await store.stamped_if_late(db=db, document=existing, entered=entered), True
    document = await prepared()
    for _ in range(SUBMISSION_ATTEMPTS):
        try:
            return await store.insert(db=db, document=document, entered=entered), True
        except DuplicateKeyError as exc:
            # Our own id stored already: a retry finishing a request that stored it (a dropped
            # reply, or an Idempotency-Key taken over from a request that failed late). The
            # server may name another unique index of it first (its submission claim): taken
            # for an earlier submission, it answered the complaint as its own resubmission and
            # dropped its search posting.
            existing = await store.find(db=db, complaint_id=complaint_id)
            if existing is None and is_id_clash(exc):
                # Refused for an id no complaint holds now: it was taken away in between.
                raise ConcurrentUpdate(
                    detail="the complaint changed while it was stored; retry it"
                ) from exc
            if existing is not None:
                if not _submitted_as(existing, fingerprint):
                    raise
                # This attempt's posting (another reference, another time) gave way to
                # the stored complaint's.
                await postings.write(db=db, document=existing)
                return await store.stamped_if_late(db=db, document=existing, entered=entered), True
            if clashes_on(exc, "reference"):
                # The counter was behind the numbers stored (lost, or restored from an older
                # backup): it moves past them and the complaint takes a free number.
                await reference_numbers.skip_taken(
                    db=db, org=principal.org, reference=document["reference"]
                )
                document = await prepared()
                continue
        earlier = await submissions.earlier_submission(
            db=db, claims=document.get(submissions.RESUBMISSION_KEY, []), now=now
        )
        if earlier is not None:
            await postings.discard(db=db, complaint_id=complaint_id)
            return earlier, False
    raise ConcurrentUpdate(
        detail="identical submissions of this customer kept racing each other; retry it"
    )


def _submitted_as(existing: dict[str, Any], fingerprint: str) -> bool:
    """Whether the complaint stored under the request's id is the submission ``fingerprint``
    names: by the fingerprint stored with it or, stored by a release that computed it
    otherwise (or before there was one), by the fingerprint of what it holds, computed as
    now. Until 6 December only the stored one counted, and a keyed retry of a complaint an
    older release stored failed every time with a 500."""
    if existing.get("submission_fingerprint") == fingerprint:
        return True
    return (
        submission_fingerprint(
            org=existing["org"],
            branch=existing["branch"],
            customer=existing["customer"],
            subject=existing["subject"],
            description=existing["description"],
        )
        == fingerprint
    )


async def _prepare(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
    body: dict[str, Any],
    complaint_id: str,
    now: datetime,
) -> dict[str, Any]:
    """The complaint to insert: its repeat links, reference number and first event."""
    earlier = await store.find_earlier_complaints(
        db=db,
        org=principal.org,
        keys=customer_keys(body["customer"]),
        since=now - timedelta(days=settings.repeat_window_days),
        now=now,
    )
    branch = await reference_numbers.reference_branch(
        db=db, settings=settings, org=principal.org, branch=request.branch
    )
    if not branch.active:
        # Its departments take no work: until 5 December such a complaint was registered
        # and routed as if the branch were open.
        raise invalid("branch", f"branch {request.branch!r} is closed: it registers no complaints")
    reference = await reference_numbers.next_reference(
        db=db, org=principal.org, branch=request.branch, at=now, time_zone=branch.time_zone
    )
    return new_document(
        settings=settings,
        principal=principal,
        request=request,
        body=body,
        complaint_id=complaint_id,
        reference=reference,
        earlier=[RepeatLink(complaint_id=doc["_id"], branch=doc["branch"]) for doc in earlier],
        now=now,
    )


def submission_of(
    *, principal: Principal, request: ComplaintCreate, body: dict[str, Any]
) -> Submission:
    """The request's submission: its fingerprint and the claims its complaint holds."""
    return submission(
        org=principal.org,
        branch=request.branch,
        customer=body["customer"],
        subject=request.subject,
        description=request.description,
    )


def new_document(
    *,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
    body: dict[str, Any],
    complaint_id: str,
    reference: str,
    earlier: list[RepeatLink],
    now: datetime,
) -> dict[str, Any]:
    """A new complaint as stored, with its ``complaint.received`` in the outbox.

    ``earlier``: the customer's earlier complaints that make it a repeat, newest first,
    each with its branch (the event says it, so a branch's webhook can leave the others'
    out). Pure, so the benchmark seeds complaints of exactly this shape.
    """
    keys = customer_keys(body["customer"])
    # Without a phone, e-mail or external id nothing says two submissions are the same
    # customer's: two strangers registered as "匿名" with the same short text were one.
    asked = submission_of(principal=principal, request=request, body=body)
    claim = (
        submissions.claim_fields(settings=settings, claims=asked.claims, now=now)
        if asked.claims
        else {}
    )
    classification = _classify(request, settings)
    repeat_links = earlier[:MAX_REPEAT_LINKS]
    links = [link.complaint_id for link in repeat_links]
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
        "submission_fingerprint": asked.fingerprint,
        **claim,
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
        store.TIMELINE_LENGTH: 1,
        "timeline": [
            store.timeline_entry(
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
        repeat_links=repeat_links,
    )
    entry = outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=received, settings=settings)
    document.update(outbox_fields([entry]))
    document.update(filter_keys.stored_fields(document))
    document[store.RECORD_BYTES] = store.estimated_bytes(document)
    return document
