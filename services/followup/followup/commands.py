"""What agents ask of a satisfaction check: claim, release, record a call or its outcome.

Each command is one change through the aggregate kernel (``store.change``) within
the caller's visibility; the check's transition table and decisions
(``followup.lifecycle``) decide it. A command returns the changed document, or
None when the caller cannot see the check (the route answers 404).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import aggregate
from complaints_shared.aggregate import Decide, Decision
from complaints_shared.auth import Principal
from complaints_shared.events import FollowupOutcome
from complaints_shared.failures import redacted_error
from complaints_shared.idempotency import CommandKey, key_conflict, request_hash
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from complaints_shared.problems import conflict, invalid
from followup import projections, store
from followup.contact_hours import next_contact_moment
from followup.lifecycle import (
    CLAIM_FIELDS,
    SYSTEM_ACTOR,
    CheckState,
    Command,
    complete,
    earlier_calls,
    history_entry,
    judge,
    moved,
    new_attempt,
    retry_later,
    transition,
    unreached_command,
)
from followup.models import AttemptCreate, CheckStatus, OutcomeRequest
from followup.settings import FollowupSettings

log = get_logger(__name__)

# The answers a customer gave: an earlier check of the resolution is moot after one.
ANSWERED = frozenset({FollowupOutcome.SATISFIED.value, FollowupOutcome.UNSATISFIED.value})
SUPERSEDED_BY_ANSWER = "superseded by a later check's answer"


def ending_earlier_checks(
    decision: Decision, *, db: AsyncDatabase, settings: FollowupSettings, now: datetime
) -> Decision:
    """``decision`` (a completion) that, once written, cancels the resolution's earlier
    checks still open when the customer answered. An earlier check answered after a later
    one counts for nothing (intake and the statistics go by the later check), so an
    "unsatisfied" on it was silently dropped and the complaint stayed closed, while the
    customer was called a second time about the same resolution."""

    async def cancel_earlier(document: dict[str, Any]) -> None:
        if document.get("outcome") not in ANSWERED or not document.get("sequence"):
            return
        try:
            await projections.cancel_open_checks(
                db=db,
                settings=settings,
                org=document["org"],
                complaint_id=document["complaint_id"],
                only={
                    "resolution_number": document.get("resolution_number"),
                    "sequence": {"$lt": document["sequence"]},
                },
                reason=SUPERSEDED_BY_ANSWER,
                now=now,
            )
        except Exception as exc:  # the answer is recorded: the request stands
            log.warning("followup_earlier_checks_not_cancelled", error=redacted_error(exc))

    return replace(decision, effects=[*decision.effects, cancel_earlier])


async def _refused_if_superseded(
    *, db: AsyncDatabase, settings: FollowupSettings, check: dict[str, Any], now: datetime
) -> None:
    """A ``check`` a later check's answer settled, still open because the cancellation that
    answer made failed (``ending_earlier_checks``: the database away, a crash between the
    two writes), is cancelled now and the command refused (a 409 ``superseded``): an answer
    on it would count for nothing. So no failure lets an earlier check be worked after a
    later one was answered. Asked by a command's decision, after a retry of an earlier
    request was recognised (answered as it was, not refused as superseded since)."""
    if not check.get("sequence") or check.get("status") not in store.OPEN:
        return
    later = await db[store.CHECKS].find_one(
        {
            "org": check["org"],
            "complaint_id": check["complaint_id"],
            "resolution_number": check.get("resolution_number"),
            "sequence": {"$gt": check["sequence"]},
            "outcome": {"$in": sorted(ANSWERED)},
        },
        projection={"_id": 1},
    )
    if later is None:
        return
    cancelled = await projections.cancel_open_checks(
        db=db,
        settings=settings,
        org=check["org"],
        complaint_id=check["complaint_id"],
        only={"_id": check["_id"]},
        reason=SUPERSEDED_BY_ANSWER,
        now=now,
    )
    if cancelled:
        raise conflict(
            f"satisfaction check {check['_id']} is {SUPERSEDED_BY_ANSWER} ({later['_id']})",
            kind="superseded",
        )


async def _change_visible(
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    decide: Decide,
    now: datetime,
    /,
    *,
    command_key: CommandKey | None = None,
) -> dict[str, Any] | None:
    """One change within the caller's visibility; None when the caller cannot see the check.
    A ``command_key`` applied before answers the check as it is (``replayed``)."""
    return await store.change(
        db=db,
        settings=settings,
        followup_id=followup_id,
        scope=aggregate.visibility(principal),
        decide=decide,
        now=now,
        command_key=command_key,
    )


async def claim(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    now: datetime,
    command_key: CommandKey | None = None,
) -> dict[str, Any] | None:
    """Give the caller the check for ``claim_lease_s``; claiming again renews the lease,
    which moves nothing and so adds nothing to the check's history."""
    visible = await store.get_visible(db=db, principal=principal, followup_id=followup_id)
    # A check that fell due in hours stays due after they end (and the scheduler may have
    # fired one late): it is not taken to call the customer at night.
    hours = await store.current_contact_hours(
        db=db, settings=settings, org=visible["org"], branch=visible["branch"]
    )
    callable_from = next_contact_moment(hours=hours.contact_hours, at=now)
    # One check of a resolution calls the customer at a time (``scheduler.fire_due_check``).
    earlier = earlier_calls(await store.earlier_checks(db=db, check=visible))

    async def decide(current: dict[str, Any]) -> Decision:
        await _refused_if_superseded(db=db, settings=settings, check=current, now=now)
        state = CheckState.of(current)
        # Due, but the scheduler has not fired it yet (between its passes, behind a backlog,
        # or a retry with no spacing): it becomes due in this same write. It was a 409
        # "not due until" a time already past.
        fell_due = state.status is CheckStatus.SCHEDULED and state.due_at <= now
        if fell_due:
            transition(state=state, command=Command.BECOME_DUE, actor=SYSTEM_ACTOR, now=now)
            state = replace(state, status=CheckStatus.DUE, history_length=state.history_length + 1)
        status = transition(
            state=state,
            command=Command.CLAIM,
            actor=principal.subject,
            now=now,
            callable_from=callable_from,
            earlier=earlier,
            spacing_hours=current.get("attempt_spacing_hours", settings.attempt_spacing_hours),
        )
        lease_until = now + timedelta(seconds=settings.claim_lease_s)
        if state.renewal_by(principal.subject):
            return Decision({"$set": {"claim_lease_until": lease_until}})
        update = moved(
            command=Command.CLAIM,
            status=status,
            actor=principal.subject,
            now=now,
            claimed_by=principal.subject,
            claim_lease_until=lease_until,
        )
        if fell_due:
            became_due = history_entry(
                action=Command.BECOME_DUE.value,
                status=CheckStatus.DUE,
                actor=SYSTEM_ACTOR,
                at=now,
            )
            update["$push"]["history"] = {"$each": [became_due, update["$push"]["history"]]}
            update = merge_updates(update, {"$unset": store.TIMER_FIELDS})
        return Decision(update)

    return await _change_visible(
        db, settings, principal, followup_id, decide, now, command_key=command_key
    )


async def release(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    now: datetime,
    command_key: CommandKey | None = None,
) -> dict[str, Any] | None:
    """Give a claimed check back to the queue before the lease runs out."""

    def decide(current: dict[str, Any]) -> Decision:
        status = transition(
            state=CheckState.of(current), command=Command.RELEASE, actor=principal.subject, now=now
        )
        update = merge_updates(
            moved(command=Command.RELEASE, status=status, actor=principal.subject, now=now),
            {"$unset": CLAIM_FIELDS},
        )
        return Decision(update)

    return await _change_visible(
        db, settings, principal, followup_id, decide, now, command_key=command_key
    )


def _rules(current: dict[str, Any], settings: FollowupSettings) -> dict[str, Any]:
    """The policy values a check was scheduled under (the defaults for checks stored before)."""
    return {
        "max_attempts": current.get("max_attempts", settings.max_attempts),
        "attempt_spacing_hours": current.get(
            "attempt_spacing_hours", settings.attempt_spacing_hours
        ),
        "satisfied_score_threshold": current.get(
            "satisfied_score_threshold", settings.satisfied_score_threshold
        ),
    }


def _already_recorded(
    current: dict[str, Any],
    *,
    idempotency_key: str | None,
    caller: str,
    request: AttemptCreate,
    fingerprint: str,
) -> bool:
    """Whether this request repeats the attempt recorded under its key (nothing more to do).

    The key belongs to the agent and the call that first used it: from another agent,
    or for another call, it is a 422 rather than a replay that drops what was sent.
    """
    if idempotency_key is None:
        return False
    recorded = next(
        (a for a in current.get("attempts", []) if a.get("idempotency_key") == idempotency_key),
        None,
    )
    if recorded is None:
        return False
    if recorded["attempted_by"] != caller:
        raise key_conflict(idempotency_key, reason="by another caller")
    if not _same_call(recorded, request=request, fingerprint=fingerprint):
        raise key_conflict(idempotency_key)
    return True


def _same_call(attempt: dict[str, Any], *, request: AttemptCreate, fingerprint: str) -> bool:
    stored = attempt.get("request_fingerprint")
    if stored is not None:
        return stored == fingerprint
    # Attempts recorded before fingerprints were kept: the request must say what they say.
    said = request.model_dump(exclude={"channel", "attempted_at"})
    return request.channel in (None, attempt["channel"]) and all(
        attempt.get(name) == value for name, value in said.items()
    )


async def record_attempt(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    request: AttemptCreate,
    idempotency_key: str | None,
    now: datetime,
) -> tuple[dict[str, Any] | None, bool]:
    """Record one call by the agent who held the claim when making it (``request.attempted_at``,
    now unless said: a call under a claim that lapsed since says when); ends the check when
    it can. Answers the check (None: the caller cannot see it) and whether it was a replay.

    With ``idempotency_key``, the same call again by the same agent records nothing more
    and answers the check as it is; another call or agent under the key is a 422.
    """
    if request.attempted_at is not None and request.attempted_at > now:
        raise invalid("attempted_at", f"in the future (now is {now.isoformat()})")
    attempted_at = request.attempted_at or now
    visible = await store.get_visible(db=db, principal=principal, followup_id=followup_id)
    hours = await store.current_contact_hours(
        db=db, settings=settings, org=visible["org"], branch=visible["branch"]
    )

    # Without ``attempted_at`` the fingerprint is the one kept before the field existed.
    unsaid = {"attempted_at"} if request.attempted_at is None else set()
    fingerprint = request_hash(request.model_dump(mode="json", exclude=unsaid))
    replayed = False

    async def decide(current: dict[str, Any]) -> Decision | None:
        nonlocal replayed
        # Decided again on a conflict: what counts is the try that is stored.
        replayed = _already_recorded(
            current,
            idempotency_key=idempotency_key,
            caller=principal.subject,
            request=request,
            fingerprint=fingerprint,
        )
        if replayed:
            return None
        await _refused_if_superseded(db=db, settings=settings, check=current, now=now)
        rules = _rules(current, settings)
        attempt = new_attempt(
            current=current,
            actor=principal.subject,
            attempted_at=attempted_at,
            reached=request.reached,
            channel=request.channel,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint if idempotency_key is not None else None,
            note=request.note,
        )
        if request.reached:
            assert request.score is not None and request.problem_solved is not None
            attempt |= request.model_dump(include={"score", "problem_solved", "comment"})
            outcome = judge(
                score=request.score,
                problem_solved=request.problem_solved,
                threshold=rules["satisfied_score_threshold"],
            )
            return ending_earlier_checks(
                complete(
                    current=current,
                    command=Command.RECORD_REACHED,
                    attempt=attempt,
                    outcome=outcome,
                    now=now,
                ),
                db=db,
                settings=settings,
                now=now,
            )
        command = unreached_command(
            attempt_number=attempt["number"], max_attempts=rules["max_attempts"]
        )
        if command is Command.GIVE_UP:
            return complete(
                current=current,
                command=command,
                attempt=attempt,
                outcome=FollowupOutcome.NO_RESPONSE,
                now=now,
            )
        return retry_later(
            current=current,
            attempt=attempt,
            hours=hours.contact_hours,
            now=now,
            spacing_hours=rules["attempt_spacing_hours"],
        )

    document = await _change_visible(db, settings, principal, followup_id, decide, now)
    return document, replayed


async def record_outcome(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    request: OutcomeRequest,
    now: datetime,
    command_key: CommandKey | None = None,
) -> dict[str, Any] | None:
    """Shortcut: a reached attempt with the agent's verdict, on an open check nobody else holds."""

    async def decide(current: dict[str, Any]) -> Decision:
        await _refused_if_superseded(db=db, settings=settings, check=current, now=now)
        attempt = new_attempt(
            current=current,
            actor=principal.subject,
            attempted_at=now,
            reached=True,
            channel=None,
            idempotency_key=None,
            score=request.score,
            problem_solved=request.problem_solved,
            comment=request.comment,
        )
        outcome = FollowupOutcome.SATISFIED if request.satisfied else FollowupOutcome.UNSATISFIED
        return ending_earlier_checks(
            complete(
                current=current,
                command=Command.RECORD_OUTCOME,
                attempt=attempt,
                outcome=outcome,
                now=now,
            ),
            db=db,
            settings=settings,
            now=now,
        )

    return await _change_visible(
        db, settings, principal, followup_id, decide, now, command_key=command_key
    )
