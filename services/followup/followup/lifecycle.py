"""The satisfaction check's state machine: one table and one function decide every change.

``TABLE`` maps (status, command) to the next status; ``transition`` adds what
depends on time and on who asks (a check not due yet, a claim held by someone
else). Refusals are 409 problems naming the status and the command. Beside the
table: the update that records a move and the events a check announces, and the
decisions that finish a check or send it back to the schedule after a call.

```
scheduled ──due time──▶ due ──claim──▶ in_progress ──reached──▶ completed
    ▲                    ▲                  │  └──unreached, last──▶ completed (no_response)
    │                    └─lease expired────┤
    └──────────unreached, more attempts─────┘
due ──a call made under a claim that lapsed since, by its holder──▶ scheduled / completed
scheduled / due / in_progress ──reopen, withdraw, admin close──▶ cancelled
(new) ──schedule──▶ scheduled
```
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from complaints_shared.aggregate import Decision
from complaints_shared.events import (
    EventType,
    FollowupAttempted,
    FollowupCompleted,
    FollowupOutcome,
    FollowupRescheduled,
    RescheduleReason,
)
from complaints_shared.mongo import merge_updates
from complaints_shared.transitions import InvalidTransition, TransitionTable
from followup.contact_hours import next_attempt_at
from followup.models import CheckStatus, ContactHours

WHAT = "satisfaction check"
SYSTEM_ACTOR = "followup"
# The claim's fields, dropped whenever a check leaves the agent who held it.
CLAIM_FIELDS = {"claimed_by": "", "claim_lease_until": ""}


class Command(StrEnum):
    """What can happen to a check, from the scheduler, an agent or a consumed event."""

    SCHEDULE = "schedule"
    BECOME_DUE = "become_due"
    # Its due time came outside contact hours (the scheduler behind, follow-up down, the
    # resolution late, the hours changed): due again at the next moment customers may be called.
    WAIT_FOR_CONTACT_HOURS = "wait_for_contact_hours"
    # An earlier check of the resolution is still open, or called the customer less than the
    # attempt spacing ago: due again once it may be this check's turn.
    WAIT_FOR_EARLIER_CHECK = "wait_for_earlier_check"
    CLAIM = "claim"
    RELEASE = "release"
    EXPIRE_CLAIM = "expire_claim"
    RETRY_LATER = "retry_later"
    GIVE_UP = "give_up"
    RECORD_REACHED = "record_reached"
    RECORD_OUTCOME = "record_outcome"
    CANCEL = "cancel"


SCHEDULED, DUE, IN_PROGRESS = CheckStatus.SCHEDULED, CheckStatus.DUE, CheckStatus.IN_PROGRESS
COMPLETED, CANCELLED = CheckStatus.COMPLETED, CheckStatus.CANCELLED
_OPEN = (SCHEDULED, DUE, IN_PROGRESS)

# (status, command) -> resulting status; None is a check not created yet.
_RULES: dict[tuple[CheckStatus | None, Command], CheckStatus] = {
    (None, Command.SCHEDULE): SCHEDULED,
    (SCHEDULED, Command.BECOME_DUE): DUE,
    (SCHEDULED, Command.WAIT_FOR_CONTACT_HOURS): SCHEDULED,
    (SCHEDULED, Command.WAIT_FOR_EARLIER_CHECK): SCHEDULED,
    (DUE, Command.CLAIM): IN_PROGRESS,
    (IN_PROGRESS, Command.CLAIM): IN_PROGRESS,
    (IN_PROGRESS, Command.RELEASE): DUE,
    (IN_PROGRESS, Command.EXPIRE_CLAIM): DUE,
    (IN_PROGRESS, Command.RETRY_LATER): SCHEDULED,
    (IN_PROGRESS, Command.GIVE_UP): COMPLETED,
    (IN_PROGRESS, Command.RECORD_REACHED): COMPLETED,
    # A call made under a claim that lapsed since, recorded by its holder while nobody has
    # claimed the check again (``transition``).
    (DUE, Command.RETRY_LATER): SCHEDULED,
    (DUE, Command.GIVE_UP): COMPLETED,
    (DUE, Command.RECORD_REACHED): COMPLETED,
    # The outcome shortcut predates claims: it works on any open check nobody else holds.
    **{(status, Command.RECORD_OUTCOME): COMPLETED for status in _OPEN},
    **{(status, Command.CANCEL): CANCELLED for status in _OPEN},
}

TABLE: TransitionTable[CheckStatus, Command] = TransitionTable(what=WHAT, rules=_RULES)

# What the scheduler does with a check whose due time has come.
_FIRING = frozenset(
    {Command.BECOME_DUE, Command.WAIT_FOR_CONTACT_HOURS, Command.WAIT_FOR_EARLIER_CHECK}
)
# Commands only the agent holding the claim may give.
_HOLDER_ONLY = frozenset(
    {Command.RELEASE, Command.RETRY_LATER, Command.GIVE_UP, Command.RECORD_REACHED}
)
# The records of a call, which go by who held the claim when it was made.
_CALLS = frozenset({Command.RETRY_LATER, Command.GIVE_UP, Command.RECORD_REACHED})
# A check's history past this many entries takes no more claims or releases: taking a check
# and giving it back without end would take its document past the server's 16 MB (every
# write to it failing from then on). Calls are bounded by the policy's attempts, and the
# outcome (which ends the check) is still taken.
MAX_HISTORY_FOR_CLAIMS = 500
_BOUNDED = frozenset({Command.CLAIM, Command.RELEASE})


@dataclass(frozen=True)
class LastClaim:
    """The check's latest claim as its history tells it: who took it and when, and, when the
    scheduler put the check back in the queue after it lapsed with nothing since, when."""

    claimed_by: str
    claimed_at: datetime
    lapsed_at: datetime | None = None

    def covers(self, *, actor: str, attempted_at: datetime) -> bool:
        """Whether ``actor`` held this claim at ``attempted_at``."""
        ended_at = self.lapsed_at or attempted_at
        return self.claimed_by == actor and self.claimed_at <= attempted_at <= ended_at


def last_claim(history: Any) -> LastClaim | None:
    """The ``LastClaim`` of a check's history (renewals add no entries: the first take).
    A history that is no list of entries (a document damaged by hand) tells of no claim:
    the check's own write then fails, that check alone (``complaints_shared.timers``)."""
    if not isinstance(history, list):
        return None
    history = [entry for entry in history if isinstance(entry, dict)]
    expired = bool(history) and history[-1].get("action") == Command.EXPIRE_CLAIM
    lapsed_at = history[-1]["at"] if expired else None
    for entry in reversed(history):
        if entry.get("action") == Command.CLAIM:
            return LastClaim(claimed_by=entry["actor"], claimed_at=entry["at"], lapsed_at=lapsed_at)
    return None


@dataclass(frozen=True)
class CheckState:
    """The part of a stored check the state machine looks at."""

    status: CheckStatus
    due_at: datetime
    claimed_by: str | None = None
    claim_lease_until: datetime | None = None
    history_length: int = 0
    last_claim: LastClaim | None = None

    @classmethod
    def of(cls, document: dict[str, Any]) -> CheckState:
        history = document.get("history", [])
        return cls(
            status=CheckStatus(document["status"]),
            due_at=document["due_at"],
            claimed_by=document.get("claimed_by"),
            claim_lease_until=document.get("claim_lease_until"),
            history_length=len(history),
            last_claim=last_claim(history),
        )

    def renewal_by(self, actor: str) -> bool:
        """Whether ``actor`` claiming the check renews their own claim (no move)."""
        return self.status is CheckStatus.IN_PROGRESS and self.claimed_by == actor

    def lease_live(self, now: datetime) -> bool:
        return self.claim_lease_until is not None and self.claim_lease_until > now


def _refused(current: CheckStatus, command: Command, reason: str) -> InvalidTransition:
    return InvalidTransition(current=current, command=command, what=WHAT, reason=reason)


class NotDueYet(InvalidTransition):
    """A scheduled check cannot be claimed before its due time (409 ``not-due``)."""

    def __init__(self, *, due_at: datetime) -> None:
        super().__init__(
            current=CheckStatus.SCHEDULED,
            command=Command.CLAIM,
            what=WHAT,
            reason=f"the check is not due until {due_at.isoformat()}",
            title="Not due yet",
            kind="not-due",
            due_at=due_at.isoformat(),
        )
        self.due_at = due_at


class OutsideContactHours(InvalidTransition):
    """A check is not claimed while its customer may not be called (409
    ``outside-contact-hours``, with the next moment they may: ``next_contact_at``)."""

    def __init__(self, *, current: CheckStatus, next_contact_at: datetime) -> None:
        super().__init__(
            current=current,
            command=Command.CLAIM,
            what=WHAT,
            reason=(
                "the customer is outside the branch's contact hours; calls may be made "
                f"from {next_contact_at.isoformat()}"
            ),
            title="Outside contact hours",
            kind="outside-contact-hours",
            next_contact_at=next_contact_at.isoformat(),
        )
        self.next_contact_at = next_contact_at


@dataclass(frozen=True)
class EarlierCalls:
    """Where the resolution's earlier checks leave this one: ``open`` names one still open
    (scheduled, due or being called); ``last_call_at`` is their latest call."""

    open: str | None = None
    last_call_at: datetime | None = None

    def callable_from(self, *, spacing_hours: float) -> datetime | None:
        """The first moment this check may call the customer after the last earlier call."""
        if self.last_call_at is None:
            return None
        return self.last_call_at + timedelta(hours=spacing_hours)


def earlier_calls(earlier: list[dict[str, Any]]) -> EarlierCalls:
    """``EarlierCalls`` of the resolution's earlier checks (``store.earlier_checks``)."""
    still_open = sorted(
        (check for check in earlier if CheckStatus(check["status"]) in _OPEN),
        key=lambda check: check.get("sequence") or 0,
    )
    calls = [
        moment
        for check in earlier
        for moment in [
            check.get("completed_at"),
            *(attempt.get("attempted_at") for attempt in check.get("attempts", ())),
        ]
        if moment is not None
    ]
    return EarlierCalls(
        open=still_open[0]["_id"] if still_open else None, last_call_at=max(calls, default=None)
    )


class EarlierCheckFirst(InvalidTransition):
    """A resolution's checks call the customer one at a time, ``attempt_spacing_hours`` apart
    (409 ``earlier-check-open``, naming it, or ``called-recently``, with ``callable_from``)."""

    def __init__(
        self, *, current: CheckStatus, earlier: str | None, callable_from: datetime | None
    ) -> None:
        if earlier is not None:
            reason = f"check {earlier} of the same resolution is still open: it is called first"
            title, kind = "Earlier check open", "earlier-check-open"
        else:
            assert callable_from is not None
            reason = (
                "the customer was called about this resolution less than the attempt spacing "
                f"ago; calls may be made from {callable_from.isoformat()}"
            )
            title, kind = "Called recently", "called-recently"
        super().__init__(
            current=current,
            command=Command.CLAIM,
            what=WHAT,
            reason=reason,
            title=title,
            kind=kind,
            earlier_check=earlier,
            callable_from=callable_from.isoformat() if callable_from else None,
        )


class ClaimHeld(InvalidTransition):
    """Someone else holds the claim, or the caller holds none (409 claim-held / claim-required)."""

    def __init__(
        self,
        *,
        current: CheckStatus,
        command: Command,
        holder: str | None,
        lease_until: datetime | None,
        reason: str | None = None,
    ) -> None:
        reason = reason or (
            f"claimed by {holder} until {lease_until.isoformat()}"
            if holder and lease_until
            else f"{command.value} needs the caller's claim on the check: claim it first"
        )
        super().__init__(
            current=current,
            command=command,
            what=WHAT,
            reason=reason,
            title="Claimed by someone else" if holder else "Claim required",
            kind="claim-held" if holder else "claim-required",
            claimed_by=holder,
            lease_until=lease_until.isoformat() if lease_until else None,
        )
        self.holder = holder
        self.lease_until = lease_until


def transition(
    *,
    state: CheckState,
    command: Command,
    actor: str,
    now: datetime,
    callable_from: datetime | None = None,
    earlier: EarlierCalls | None = None,
    spacing_hours: float = 0,
    attempted_at: datetime | None = None,
) -> CheckStatus:
    """Return the status after ``command`` by ``actor`` at ``now``, or raise InvalidTransition.

    ``callable_from``: for a claim, the first moment from ``now`` on that the customer may be
    called (their branch's contact hours); a new claim before it is refused. ``earlier``: for
    a claim, the resolution's earlier checks; a new claim while one is open, or within
    ``spacing_hours`` of their last call, is refused. ``attempted_at``: for a call's record,
    when the call was made (``now`` unless said); it counts when the caller held the claim
    then (``_check_call_under_claim``)."""
    if command is Command.CLAIM and state.status is CheckStatus.SCHEDULED:
        raise NotDueYet(due_at=state.due_at)
    if command in _CALLS:
        _check_call_under_claim(
            state=state, command=command, actor=actor, attempted_at=attempted_at or now
        )
    elif command in _HOLDER_ONLY and state.status in {CheckStatus.SCHEDULED, CheckStatus.DUE}:
        raise ClaimHeld(current=state.status, command=command, holder=None, lease_until=None)
    target = TABLE.next(current=state.status, command=command)
    if command in _FIRING and state.due_at > now:
        raise _refused(state.status, command, "not due yet")
    if command is Command.EXPIRE_CLAIM and state.lease_live(now):
        raise _refused(state.status, command, "lease still live")
    if command in _HOLDER_ONLY | {Command.CLAIM, Command.RECORD_OUTCOME}:
        _check_claim(state=state, command=command, actor=actor, now=now)
    renewal = command is Command.CLAIM and state.renewal_by(actor)
    if command is Command.CLAIM and not renewal and callable_from and callable_from > now:
        raise OutsideContactHours(current=state.status, next_contact_at=callable_from)
    if command is Command.CLAIM and not renewal and earlier is not None:
        spaced_from = earlier.callable_from(spacing_hours=spacing_hours)
        if earlier.open is not None or (spaced_from is not None and spaced_from > now):
            raise EarlierCheckFirst(
                current=state.status, earlier=earlier.open, callable_from=spaced_from
            )
    if command in _BOUNDED and not renewal and state.history_length >= MAX_HISTORY_FOR_CLAIMS:
        raise _refused(
            state.status,
            command,
            f"the check's history holds {state.history_length} entries, the most claims "
            "and releases may add to; its outcome may still be recorded",
        )
    return target


def _check_claim(*, state: CheckState, command: Command, actor: str, now: datetime) -> None:
    if state.status is not CheckStatus.IN_PROGRESS or state.claimed_by == actor:
        return
    live = state.lease_live(now)
    # A holder whose lease ran out may still finish, until someone else claims the check;
    # anyone may take over (or record the outcome of) a check whose lease ran out.
    if command in _HOLDER_ONLY or live:
        raise ClaimHeld(
            current=state.status,
            command=command,
            holder=state.claimed_by if live else None,
            lease_until=state.claim_lease_until if live else None,
        )


def _check_call_under_claim(
    *, state: CheckState, command: Command, actor: str, attempted_at: datetime
) -> None:
    """A call is recorded by the agent who held the check's claim when they made it: its
    holder, or, on a check back in the queue because that claim lapsed (a call at 19:55
    under a claim lapsing at 20:05, after contact hours, when no new claim may be taken),
    the holder of the lapsed claim while nobody has claimed the check since."""
    claim = state.last_claim
    if state.status is CheckStatus.IN_PROGRESS:
        # Someone else's claim is ``_check_claim``'s refusal.
        if claim is None or claim.claimed_by != actor or claim.claimed_at <= attempted_at:
            return
        reason = (
            f"the call at {attempted_at.isoformat()} was made before the caller's claim "
            f"(from {claim.claimed_at.isoformat()})"
        )
        raise ClaimHeld(
            current=state.status, command=command, holder=None, lease_until=None, reason=reason
        )
    if state.status is CheckStatus.SCHEDULED:
        raise ClaimHeld(current=state.status, command=command, holder=None, lease_until=None)
    if state.status is not CheckStatus.DUE:
        return  # finished: the table refuses
    reason = None
    if claim is not None and claim.lapsed_at is not None:
        if claim.covers(actor=actor, attempted_at=attempted_at):
            return
        if claim.claimed_by == actor:
            reason = (
                f"the caller's claim ({claim.claimed_at.isoformat()} to "
                f"{claim.lapsed_at.isoformat()}) lapsed: a call made under it is recorded "
                "with its attempted_at; a later one needs a new claim"
            )
    raise ClaimHeld(
        current=state.status, command=command, holder=None, lease_until=None, reason=reason
    )


def unreached_command(*, attempt_number: int, max_attempts: int) -> Command:
    """After an unreached call: try again later, or give up when this was the last attempt."""
    return Command.GIVE_UP if attempt_number >= max_attempts else Command.RETRY_LATER


def judge(*, score: int, problem_solved: bool, threshold: int) -> FollowupOutcome:
    """Satisfied needs both a good score and the problem really solved."""
    if score >= threshold and problem_solved:
        return FollowupOutcome.SATISFIED
    return FollowupOutcome.UNSATISFIED


# ------------------------------------------------------ updates and events --


def history_entry(*, action: str, status: CheckStatus, actor: str, at: datetime) -> dict:
    return {"at": at, "action": action, "status": status.value, "actor": actor}


def moved(
    *, command: Command, status: CheckStatus, actor: str, now: datetime, **fields: Any
) -> dict[str, Any]:
    """The update that puts a check in ``status`` and records why in its history."""
    return {
        "$set": {"status": status.value, **fields},
        "$push": {
            "history": history_entry(action=command.value, status=status, actor=actor, at=now)
        },
    }


def identity(document: dict[str, Any]) -> dict[str, Any]:
    """The fields every follow-up event carries to name its check."""
    return {
        "complaint_id": document["complaint_id"],
        "org": document["org"],
        "branch": document["branch"],
        "followup_id": document["_id"],
        "resolution_number": document["resolution_number"],
    }


def attempted_event(current: dict[str, Any], attempt: dict[str, Any]) -> FollowupAttempted:
    return FollowupAttempted(
        **identity(current),
        attempt_number=attempt["number"],
        reached=attempt["reached"],
        channel=attempt["channel"],
        attempted_by=attempt["attempted_by"],
        attempted_at=attempt["attempted_at"],
        next_attempt_at=attempt.get("next_attempt_at"),
    )


def rescheduled_event(
    current: dict[str, Any], *, due_at: datetime, reason: RescheduleReason, now: datetime
) -> FollowupRescheduled:
    """The announcement of a scheduled check's due time moved from ``current``'s to ``due_at``."""
    return FollowupRescheduled(
        **identity(current),
        sequence=current.get("sequence"),
        due_at=due_at,
        previous_due_at=current["due_at"],
        reason=reason,
        rescheduled_at=now,
    )


# ---------------------------------------------------------- after a call --


def new_attempt(
    *,
    current: dict[str, Any],
    actor: str,
    attempted_at: datetime,
    reached: bool,
    channel: str | None,
    idempotency_key: str | None,
    request_fingerprint: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The check's next attempt as it is stored (numbered after the ones recorded).

    ``idempotency_key`` is kept with the fingerprint of the request that first used it,
    for as long as the attempt: a retry is told apart from another call under the key.
    """
    return {
        "number": current.get("attempt_count", 0) + 1,
        "reached": reached,
        "channel": channel or current.get("channel", "phone"),
        "attempted_by": actor,
        "attempted_at": attempted_at,
        "idempotency_key": idempotency_key,
        "request_fingerprint": request_fingerprint,
        **details,
    }


def complete(
    *,
    current: dict[str, Any],
    command: Command,
    attempt: dict[str, Any],
    outcome: FollowupOutcome,
    now: datetime,
) -> Decision:
    """Finish the check with ``outcome``: the attempt, then the completion, in one write."""
    status = transition(
        state=CheckState.of(current),
        command=command,
        actor=attempt["attempted_by"],
        now=now,
        attempted_at=attempt["attempted_at"],
    )
    verdict = {
        "outcome": outcome.value,
        "score": attempt.get("score"),
        "problem_solved": attempt.get("problem_solved"),
        "comment": attempt.get("comment"),
    }
    update = merge_updates(
        moved(
            command=command,
            status=status,
            actor=attempt["attempted_by"],
            now=now,
            completed_at=now,
            completed_by=attempt["attempted_by"],
            **verdict,
        ),
        {"$push": {"attempts": attempt}, "$inc": {"attempt_count": 1}},
        {"$unset": CLAIM_FIELDS},
        {"$min": {"first_contact_at": attempt["attempted_at"]}} if attempt["reached"] else {},
    )
    completed = FollowupCompleted(
        **identity(current),
        sequence=current.get("sequence"),
        **verdict,
        attempts=attempt["number"],
        channel=attempt["channel"],
        completed_at=now,
    )
    return Decision(
        update,
        [
            (EventType.FOLLOWUP_ATTEMPTED, attempted_event(current, attempt)),
            (EventType.FOLLOWUP_COMPLETED, completed),
        ],
    )


def retry_later(
    *,
    current: dict[str, Any],
    attempt: dict[str, Any],
    hours: ContactHours,
    now: datetime,
    spacing_hours: float,
) -> Decision:
    """Unreached, attempts left: back to the schedule at the next allowed moment."""
    status = transition(
        state=CheckState.of(current),
        command=Command.RETRY_LATER,
        actor=attempt["attempted_by"],
        now=now,
        attempted_at=attempt["attempted_at"],
    )
    attempt["next_attempt_at"] = next_attempt_at(
        attempted_at=attempt["attempted_at"], spacing_hours=spacing_hours, hours=hours
    )
    update = merge_updates(
        moved(
            command=Command.RETRY_LATER,
            status=status,
            actor=attempt["attempted_by"],
            now=now,
            due_at=attempt["next_attempt_at"],
        ),
        {"$push": {"attempts": attempt}, "$inc": {"attempt_count": 1}},
        {"$unset": CLAIM_FIELDS},
    )
    return Decision(update, [(EventType.FOLLOWUP_ATTEMPTED, attempted_event(current, attempt))])
