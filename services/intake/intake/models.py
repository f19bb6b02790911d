"""API and stored-document models of the complaint of record."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    EmailStr,
    Field,
    StringConstraints,
)

from complaints_shared import text
from complaints_shared.datetimes import UtcDatetime
from complaints_shared.events import (
    Category,
    Channel,
    ClosedVia,
    ContactChannel,
    Flag,
    FollowupOutcome,
    RemedyType,
    ResponsibleParty,
    Severity,
)
from complaints_shared.models import Code, StrictModel
from complaints_shared.stored import request_only
from intake.lifecycle import Status

MAX_SUBJECT_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_SUMMARY_CHARS = 4_000
MAX_NOTE_CHARS = 4_000
MAX_ATTACHMENTS = 20
MAX_PAGE_SIZE = 100

Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), request_only(text.visible)
]
ShortText = Annotated[Text, StringConstraints(max_length=200)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


def _zero_as_zero(amount: Decimal) -> Decimal:
    """A zero however written (``-0``, ``0E+999999999``, which the digit bounds let through
    and which was stored and sent on as given until 5 December) is ``0.00``."""
    return Decimal("0.00") if amount.is_zero() else amount


Amount = Annotated[
    Decimal, Field(ge=0, max_digits=14, decimal_places=2), AfterValidator(_zero_as_zero)
]

# Remedies one resolution holds at most: given with it, and recorded after it.
MAX_REMEDIES = 10
# Notes one complaint holds at most. Each is kept on the complaint's document with its
# timeline entry: without a bound, notes of up to MAX_NOTE_CHARS each could take the
# document past the server's 16 MB, after which every write to it fails (an error on each
# request, a dead letter for each event about it). 500 of the longest take about 6 MB.
MAX_NOTES = 500
# Timeline entries a complaint holds before commands are refused, except those that end it
# (reject, withdraw, close). Events keep their entries past it: what routing and follow-up
# did is recorded whatever the count. Commands such as a wait and a resume can be repeated
# without end, and every entry stays on the complaint's document; 2,000 take about 1 MB.
MAX_TIMELINE_FOR_COMMANDS = 2_000
# The size past which commands are refused, except those that end the complaint, as
# estimated on the document (``store.RECORD_BYTES``). The counts above do not bound bytes:
# 500 notes of 4,000 four-byte characters with long wait and resume reasons would pass the
# server's 16 MB before the timeline's 2,000 entries. Below this, a command (a 256 KiB body
# at most) and the events still to come stay well inside it.
MAX_RECORD_BYTES = 8 * 1024 * 1024
# Resolutions one complaint holds at most. Each resolve starts what a reopen can follow with
# a new cycle (call-backs, deadlines, escalations: a dozen entries each); the list and each
# cycle's entries stay on the document.
MAX_RESOLUTIONS = 100


class DesiredOutcome(StrEnum):
    REFUND = "refund"
    REPLACEMENT = "replacement"
    REPAIR = "repair"
    APOLOGY = "apology"
    COMPENSATION = "compensation"
    EXPLANATION = "explanation"
    OTHER = "other"


class NoteVisibility(StrEnum):
    INTERNAL = "internal"
    CUSTOMER = "customer"


class RejectionReason(StrEnum):
    """不予受理 reasons, after the 12315 acceptance rules."""

    OUT_OF_SCOPE = "out_of_scope"
    DUPLICATE = "duplicate"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    ALREADY_IN_COURT_OR_ARBITRATION = "already_in_court_or_arbitration"
    NOT_A_CUSTOMER = "not_a_customer"
    OTHER = "other"


def _dialable(phone: str) -> str:
    if sum(character.isdigit() for character in phone) < MIN_PHONE_DIGITS:
        raise ValueError(f"a phone number needs at least {MIN_PHONE_DIGITS} digits")
    return phone


def _half_width(phone: object) -> object:
    """Compatibility forms folded (NFKC): ``１３８…``, ``＋86``, ``（010）``, the ideographic
    space, as a Chinese input method types them, are the ASCII the pattern takes (they were a
    422, though the repeat keys were already built from the folded digits)."""
    return unicodedata.normalize("NFKC", phone) if isinstance(phone, str) else phone


# A phone number is digits, with spaces, brackets and hyphens as the customer wrote them.
MIN_PHONE_DIGITS = 5
# The digit count is checked since 4 December: a phone stored before it is read as stored.
Phone = Annotated[
    str,
    BeforeValidator(_half_width),
    StringConstraints(pattern=r"^\+?[0-9 ()-]{5,24}$"),
    request_only(_dialable),
]


class Customer(StrictModel):
    name: Annotated[Text, StringConstraints(max_length=100)]
    phone: Phone | None = None
    email: EmailStr | None = None
    external_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    preferred_contact_channel: ContactChannel = ContactChannel.PHONE
    language: Annotated[str, StringConstraints(max_length=16)] = "zh"
    vip: bool = False


class Money(StrictModel):
    amount: Amount
    currency: Currency = "CNY"


class Attachment(StrictModel):
    """Metadata only: the file itself lives in the integrator's document store."""

    name: ShortText
    media_type: Annotated[str, StringConstraints(pattern=r"^[\w.+-]+/[\w.+-]+$")]
    size_bytes: int = Field(ge=0, le=1_000_000_000)
    url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2000)]


class ComplaintCreate(StrictModel):
    """What an integrator sends to register a complaint.

    Leave ``severity`` or ``flags`` out to let intake suggest them from the text.
    """

    branch: Code
    channel: Channel
    customer: Customer
    subject: Annotated[Text, StringConstraints(max_length=MAX_SUBJECT_CHARS)]
    description: Annotated[Text, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)]
    category: Category = Category.OTHER
    subcategory: Annotated[str, StringConstraints(max_length=64)] | None = None
    severity: Severity | None = None
    flags: list[Flag] | None = Field(None, max_length=len(Flag))
    occurred_at: UtcDatetime | None = None
    location: ShortText | None = None
    product: ShortText | None = None
    account_number: Annotated[str, StringConstraints(max_length=64)] | None = None
    disputed_amount: Money | None = None
    desired_outcomes: list[DesiredOutcome] = Field(default_factory=list, max_length=7)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)


class AcknowledgeRequest(StrictModel):
    """受理: what the customer was promised, and when."""

    promised_response_at: UtcDatetime | None = None
    message_to_customer: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)] | None = None


class NoteCreate(StrictModel):
    text: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]
    visibility: NoteVisibility = NoteVisibility.INTERNAL


class PendingCustomerRequest(StrictModel):
    reason: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]


class ResumeRequest(StrictModel):
    comment: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)] | None = None


class RemedyIn(StrictModel):
    type: RemedyType
    amount: Amount | None = None
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None


class ResolveRequest(StrictModel):
    summary: Annotated[Text, StringConstraints(max_length=MAX_SUMMARY_CHARS)]
    root_cause: Annotated[str, StringConstraints(max_length=64)] | None = None
    responsible_department: Annotated[str, StringConstraints(max_length=64)] | None = None
    responsible_party: ResponsibleParty | None = None
    remedies: list[RemedyIn] = Field(default_factory=list, max_length=MAX_REMEDIES)
    customer_accepted: bool | None = None


class RejectRequest(StrictModel):
    reason_code: RejectionReason
    explanation: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]


class WithdrawRequest(StrictModel):
    reason: Annotated[str, StringConstraints(max_length=MAX_NOTE_CHARS)] | None = None


class ReopenRequest(StrictModel):
    reason: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]


class CloseRequest(StrictModel):
    reason: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]


class ReclassifyRequest(StrictModel):
    """A supervisor's new classification: any of ``severity``, ``category`` and ``flags``
    (the full new set; ``[]`` clears them), at least one, and why."""

    severity: Severity | None = None
    category: Category | None = None
    flags: list[Flag] | None = Field(None, max_length=len(Flag))
    reason: Annotated[Text, StringConstraints(max_length=MAX_NOTE_CHARS)]


class Assignment(BaseModel):
    department: str
    department_name: str
    owner_id: str | None
    owner_name: str | None
    rule_id: str | None = None
    rule_version: int | None = None
    assigned_at: datetime
    queued: bool = False
    duty_officer: bool = False


class Unroutable(BaseModel):
    """Routing found no rule for the complaint (no matching, no default rule): nobody owns it
    until an administrator adds one or a supervisor assigns it."""

    reason: str
    passed_over_rules: list[str] = Field(default_factory=list)
    since: datetime


class Acknowledgement(BaseModel):
    """受理, once: who, when, what the customer was promised, and whether it was late."""

    acknowledged_by: str
    acknowledged_at: datetime
    promised_response_at: UtcDatetime | None = None
    message_to_customer: str | None = None
    late: bool = Field(
        False,
        description="After the acknowledge deadline (it still stops it), as routing's clock "
        "judged it once its verdict arrived (complaint.sla_stopped)",
    )


class Escalation(BaseModel):
    """The highest escalation routing reported."""

    level: int
    escalated_to_id: str | None = None
    escalated_to_name: str | None = None
    escalated_to_role: str | None = None
    reason: str
    escalated_by: str
    escalated_at: datetime
    note: str | None = Field(
        None, description="The words of the person who escalated it by hand (reason `manual`)"
    )


class Responsibility(BaseModel):
    """责任部门 as last set (at resolution, or by a supervisor in routing)."""

    department: str
    party: ResponsibleParty | None = None
    set_by: str
    set_at: datetime


class RegulatoryReport(BaseModel):
    """A major incident's report to the authority, filed (recorded in routing): its deadline
    ``regulatory_report_due_at`` is met or missed, no longer pending."""

    reference: str | None = Field(None, description="The authority's reference for the report")
    filed_by: str
    filed_at: datetime
    on_time: bool | None = Field(
        None,
        description="Filed by the deadline, as routing judged it (None: no deadline was known "
        "at the filing, made while unroutable, until routing's verdict arrives)",
    )


class Note(BaseModel):
    id: str
    author: str
    visibility: NoteVisibility
    text: str
    added_at: datetime


class Remedy(BaseModel):
    type: RemedyType
    amount: Decimal | None = None
    currency: str | None = None
    description: str | None = None
    recorded_by: str | None = Field(None, description="Who recorded it after the resolution")
    recorded_at: datetime | None = Field(None, description="When, for one given later")


class Resolution(BaseModel):
    number: int
    summary: str
    root_cause: str | None = None
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    remedies: list[Remedy] = Field(default_factory=list)
    customer_accepted: bool | None = None
    resolved_by: str
    resolved_at: datetime
    resolve_due_at: datetime | None = Field(
        None,
        description="This cycle's resolve deadline: the one known when the resolution was "
        "recorded, then routing's clock's final one (pauses left out) once its verdict arrived",
    )
    on_time: bool | None = Field(
        None, description="Resolved by that deadline (None: unknown until routing's verdict)"
    )


class Rejection(BaseModel):
    reason_code: RejectionReason
    explanation: str
    rejected_by: str
    rejected_at: datetime


class Satisfaction(BaseModel):
    """The outcome of the latest resolution's follow-up (docs/intake.md, "Satisfaction")."""

    followup_id: str
    resolution_number: int
    sequence: int | None = Field(None, description="The check's place in its series")
    outcome: FollowupOutcome
    score: int | None = None
    problem_solved: bool | None = None
    comment: str | None = None
    completed_at: datetime


class SlaState(BaseModel):
    """What routing reported about the clocks; flags only go from false to true, but a reopen
    sets the resolve clock's back to false (a fresh clock, a new cycle), and a breach routing
    withdraws (the clock stopped in time; its news came late) clears its flag."""

    acknowledge_warning: bool = False
    acknowledge_breached: bool = False
    resolve_warning: bool = False
    resolve_breached: bool = False
    regulatory_report_warning: bool = False
    regulatory_report_breached: bool = False


class Suggested(BaseModel):
    """Which values intake suggested from the text (and by which keyword rules)."""

    severity: Severity | None = None
    flags: list[Flag] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)


class TimelineEntry(BaseModel):
    """One thing that happened; a status change names the statuses it went from and to."""

    at: datetime
    actor: str
    action: str = Field(description="A word of the documented vocabulary (docs/intake.md)")
    cause: str = Field(
        "command", description="`command` (HTTP) or the consumed event's type that caused it"
    )
    event_id: str | None = Field(None, description="The causing event's id")
    status_from: Status | None = None
    status_to: Status | None = None
    details: dict = Field(default_factory=dict)
    withdrawn: dict | None = Field(
        None,
        description="A breach or escalation routing withdrew later (`at`, `reason`, "
        "`event_id`): it happened and was notified, and no longer counts",
    )


class ComplaintRead(BaseModel):
    """The complaint of record as integrators see it."""

    id: str
    reference: str
    org: str
    branch: str
    status: Status
    channel: Channel
    category: Category
    subcategory: str | None = None
    severity: Severity
    flags: list[Flag]
    suggested: Suggested = Field(default_factory=Suggested)
    repeat_count: int = 0
    repeat_of: list[str] = Field(default_factory=list)
    customer: Customer
    subject: str
    description: str
    occurred_at: UtcDatetime | None = None
    location: str | None = None
    product: str | None = None
    account_number: str | None = None
    disputed_amount: Money | None = None
    desired_outcomes: list[DesiredOutcome] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list)
    assignment: Assignment | None = None
    major_incident: bool = False
    unroutable: Unroutable | None = None
    escalation_level: int = 0
    escalation: Escalation | None = None
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    responsibility: Responsibility | None = None
    acknowledged_at: datetime | None = None
    acknowledgement: Acknowledgement | None = None
    work_started_at: datetime | None = None
    pending_customer_since: datetime | None = Field(
        None, description="While waiting on the customer (status pending_customer)"
    )
    acknowledge_due_at: datetime | None = None
    acknowledge_stopped_at: datetime | None = Field(
        None,
        description="When routing's acknowledge clock stopped (its verdict): the "
        "acknowledgement, or a resolution, rejection, withdrawal or closure before any",
    )
    resolve_due_at: datetime | None = None
    regulatory_report_due_at: datetime | None = None
    regulatory_report: RegulatoryReport | None = Field(
        None, description="The filing of the regulatory report (None: not filed)"
    )
    sla: SlaState = Field(default_factory=SlaState)
    sla_breached: bool = Field(
        False, description="A clock of the current cycle breached (what `breached=true` selects)"
    )
    notes: list[Note] = Field(default_factory=list)
    resolution: Resolution | None = Field(None, description="The latest resolution")
    resolutions: list[Resolution] = Field(
        default_factory=list, description="Every resolution, one per cycle (reopens start one)"
    )
    rejection: Rejection | None = None
    withdrawal_reason: str | None = Field(None, description="Why the customer withdrew it")
    satisfaction: Satisfaction | None = None
    reopen_count: int = 0
    last_reopen_reason: str | None = Field(None, description="Why it was last reopened")
    reclassification_count: int = Field(
        0,
        description="How often a supervisor changed severity, category or flags (timeline: "
        "`reclassified`, with before and after)",
    )
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    closed_at: datetime | None = None
    closed_via: ClosedVia | None = Field(
        None, description="Who closed it: `followup` (the customer's answer) or `admin`"
    )


class ComplaintCreated(ComplaintRead):
    """The creation response; ``resubmission`` says an earlier identical complaint was returned."""

    resubmission: bool = False


class Timeline(BaseModel):
    complaint_id: str
    reference: str
    entries: list[TimelineEntry]
