"""Event contracts: one pydantic model per event type, the topic each lives on.

These models are the contract between services. Within a version only
additive changes are allowed (new optional fields, each raising the minor part of
``asyncapi.CONTRACT_VERSION``); consumers ignore fields they do not know, and read an
event published before a field existed safely. A breaking change is a new type with a
new version suffix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from complaints_shared.datetimes import EventDatetime
from complaints_shared.stored import from_stored

EVENT_TYPE_PREFIX = "org.complaintdesk."


class Topic(StrEnum):
    """One topic per producing service; dead letters go to ``<topic>.dlq``."""

    INTAKE = "complaints.intake.v1"
    ROUTING = "complaints.routing.v1"
    FOLLOWUP = "complaints.followup.v1"


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


class EventType(StrEnum):
    """CloudEvents ``type`` values (reverse-DNS prefix, version suffix)."""

    # intake
    COMPLAINT_RECEIVED = f"{EVENT_TYPE_PREFIX}complaint.received.v1"
    COMPLAINT_ACKNOWLEDGED = f"{EVENT_TYPE_PREFIX}complaint.acknowledged.v1"
    COMPLAINT_NOTE_ADDED = f"{EVENT_TYPE_PREFIX}complaint.note_added.v1"
    COMPLAINT_PENDING_CUSTOMER = f"{EVENT_TYPE_PREFIX}complaint.pending_customer.v1"
    COMPLAINT_RESUMED = f"{EVENT_TYPE_PREFIX}complaint.resumed.v1"
    COMPLAINT_RESOLVED = f"{EVENT_TYPE_PREFIX}complaint.resolved.v1"
    COMPLAINT_REOPENED = f"{EVENT_TYPE_PREFIX}complaint.reopened.v1"
    COMPLAINT_REJECTED = f"{EVENT_TYPE_PREFIX}complaint.rejected.v1"
    COMPLAINT_WITHDRAWN = f"{EVENT_TYPE_PREFIX}complaint.withdrawn.v1"
    COMPLAINT_CLOSED = f"{EVENT_TYPE_PREFIX}complaint.closed.v1"
    COMPLAINT_REMEDY_RECORDED = f"{EVENT_TYPE_PREFIX}complaint.remedy_recorded.v1"
    COMPLAINT_RECLASSIFIED = f"{EVENT_TYPE_PREFIX}complaint.reclassified.v1"
    # routing
    COMPLAINT_ASSIGNED = f"{EVENT_TYPE_PREFIX}complaint.assigned.v1"
    COMPLAINT_QUEUED = f"{EVENT_TYPE_PREFIX}complaint.queued.v1"
    COMPLAINT_UNROUTABLE = f"{EVENT_TYPE_PREFIX}complaint.unroutable.v1"
    COMPLAINT_REASSIGNED = f"{EVENT_TYPE_PREFIX}complaint.reassigned.v1"
    COMPLAINT_ESCALATED = f"{EVENT_TYPE_PREFIX}complaint.escalated.v1"
    COMPLAINT_SLA_WARNING = f"{EVENT_TYPE_PREFIX}complaint.sla_warning.v1"
    COMPLAINT_SLA_BREACHED = f"{EVENT_TYPE_PREFIX}complaint.sla_breached.v1"
    COMPLAINT_SLA_STOPPED = f"{EVENT_TYPE_PREFIX}complaint.sla_stopped.v1"
    COMPLAINT_SLA_BREACH_WITHDRAWN = f"{EVENT_TYPE_PREFIX}complaint.sla_breach_withdrawn.v1"
    COMPLAINT_RESPONSIBILITY_SET = f"{EVENT_TYPE_PREFIX}complaint.responsibility_set.v1"
    COMPLAINT_REGULATORY_REPORT_FILED = f"{EVENT_TYPE_PREFIX}complaint.regulatory_report_filed.v1"
    BRANCH_UPDATED = f"{EVENT_TYPE_PREFIX}branch.updated.v1"
    DEPARTMENT_UPDATED = f"{EVENT_TYPE_PREFIX}department.updated.v1"
    STAFF_UPDATED = f"{EVENT_TYPE_PREFIX}staff.updated.v1"
    # followup
    FOLLOWUP_SCHEDULED = f"{EVENT_TYPE_PREFIX}followup.scheduled.v1"
    FOLLOWUP_ATTEMPTED = f"{EVENT_TYPE_PREFIX}followup.attempted.v1"
    FOLLOWUP_COMPLETED = f"{EVENT_TYPE_PREFIX}followup.completed.v1"
    FOLLOWUP_CANCELLED = f"{EVENT_TYPE_PREFIX}followup.cancelled.v1"
    FOLLOWUP_RESCHEDULED = f"{EVENT_TYPE_PREFIX}followup.rescheduled.v1"


class Severity(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_ORDER = [Severity.LOW, Severity.NORMAL, Severity.HIGH, Severity.CRITICAL]


class Channel(StrEnum):
    PHONE = "phone"
    HOTLINE = "hotline"
    EMAIL = "email"
    WEB = "web"
    CHAT = "chat"
    SOCIAL = "social"
    WALK_IN = "walk_in"
    LETTER = "letter"
    REGULATOR = "regulator"
    OTHER = "other"


class Category(StrEnum):
    SERVICE_ATTITUDE = "service_attitude"
    BILLING = "billing"
    PRODUCT_QUALITY = "product_quality"
    AFTER_SALES = "after_sales"
    NETWORK = "network"
    DELIVERY = "delivery"
    POLICY = "policy"
    SAFETY = "safety"
    MEDICAL = "medical"
    OTHER = "other"


class Flag(StrEnum):
    REPEAT = "repeat"
    MEDIA_RISK = "media_risk"
    REGULATOR_INVOLVED = "regulator_involved"
    LEGAL_THREAT = "legal_threat"
    VULNERABLE_CUSTOMER = "vulnerable_customer"
    SAFETY_RISK = "safety_risk"


class ContactChannel(StrEnum):
    PHONE = "phone"
    SMS = "sms"
    EMAIL = "email"
    OTHER = "other"


class FollowupOutcome(StrEnum):
    SATISFIED = "satisfied"
    UNSATISFIED = "unsatisfied"
    NO_RESPONSE = "no_response"


class RemedyType(StrEnum):
    REFUND = "refund"
    REPLACEMENT = "replacement"
    REPAIR = "repair"
    APOLOGY = "apology"
    COMPENSATION = "compensation"
    EXPLANATION = "explanation"


class ResponsibleParty(StrEnum):
    COMPANY = "company"
    STAFF = "staff"
    SUPPLIER = "supplier"
    CUSTOMER = "customer"
    THIRD_PARTY = "third_party"
    NONE = "none"


class SlaClock(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    REGULATORY_REPORT = "regulatory_report"


class ClosedVia(StrEnum):
    FOLLOWUP = "followup"
    ADMIN = "admin"


class EventPayload(BaseModel, ABC):
    """The data of any event; unknown fields are ignored on read.

    Abstract (pydantic's model metaclass is an ``ABCMeta``): every event type says
    what its order is kept per, or it cannot be instantiated.
    """

    model_config = ConfigDict(extra="ignore")

    @abstractmethod
    def cloudevent_subject(self) -> str:
        """The CloudEvents subject and Kafka key: what the event's order is kept per."""


class EventData(EventPayload):
    """Fields every complaint event carries; ordered per complaint."""

    complaint_id: str
    org: str
    branch: str

    def cloudevent_subject(self) -> str:
        return self.complaint_id


class CustomerContact(BaseModel):
    """What a follow-up agent needs to reach the customer."""

    model_config = ConfigDict(extra="ignore")

    name: str
    phone: str | None = None
    email: str | None = None
    external_id: str | None = None
    preferred_channel: ContactChannel = ContactChannel.PHONE
    language: str = "zh"
    vip: bool = False


class Remedy(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: RemedyType
    amount: Decimal | None = None
    currency: str | None = None
    description: str | None = None


# ---------------------------------------------------------------- intake --


class RepeatLink(BaseModel):
    """One earlier complaint a new one repeats, and the branch it is of."""

    model_config = ConfigDict(extra="ignore")

    complaint_id: str
    branch: str


class ComplaintReceived(EventData):
    """A complaint was stored by intake and is waiting to be routed."""

    reference: str
    channel: Channel
    category: Category
    subcategory: str | None = None
    severity: Severity
    flags: list[str] = Field(default_factory=list)
    subject: str
    description: str
    product: str | None = None
    customer: CustomerContact
    received_at: EventDatetime
    repeat_count: int = Field(
        0, description="The customer's earlier complaints, in every branch of the organisation"
    )
    repeat_of: list[str] = Field(
        default_factory=list,
        description="Ids of the customer's newest earlier complaints, newest first",
    )
    repeat_links: list[RepeatLink] | None = Field(
        None,
        description="The complaints of repeat_of, in the same order, each with its branch "
        "(since contract 1.1.0; absent from earlier events, whose links' branches are unknown)",
    )


class ComplaintAcknowledged(EventData):
    """受理: the complaint was accepted and the customer told when to expect an answer."""

    acknowledged_by: str
    acknowledged_at: EventDatetime
    promised_response_at: EventDatetime | None = None
    message_to_customer: str | None = None
    late: bool = Field(False, description="Acknowledged after the acknowledge deadline")


class ComplaintNoteAdded(EventData):
    """A note was added (internal, or visible to the customer)."""

    note_id: str
    author: str
    visibility: str
    text: str
    added_at: EventDatetime


class ComplaintPendingCustomer(EventData):
    """Waiting on the customer: SLA clocks pause until ``complaint.resumed``."""

    reason: str
    paused_by: str
    paused_at: EventDatetime


class ComplaintResumed(EventData):
    """The customer answered; SLA clocks run again."""

    resumed_by: str
    resumed_at: EventDatetime


class ComplaintResolved(EventData):
    """The complaint was resolved; follow-up schedules a satisfaction check."""

    reference: str
    category: Category
    severity: Severity
    resolution_number: int = Field(description="1 for the first resolution, 2 after a reopen...")
    summary: str
    root_cause: str | None = None
    responsible_department: str | None = None
    responsible_party: ResponsibleParty | None = None
    remedies: list[Remedy] = Field(default_factory=list)
    customer_accepted: bool | None = None
    department: str | None = None
    owner_id: str | None = None
    resolved_by: str | None = None
    customer: CustomerContact
    subject: str | None = None
    resolved_at: EventDatetime
    responsibility_set_at: EventDatetime | None = Field(
        None,
        description="When the responsibility named here is set (after the one on record): "
        "routing keeps the responsibility set latest by this, as intake does; none from "
        "producers before 6 December (then resolved_at)",
    )


class ComplaintReopened(EventData):
    """A resolved or closed complaint is open again (customer not satisfied)."""

    reason: str
    reopened_by: str
    reopened_at: EventDatetime
    reopen_count: int
    # The resolutions the complaint had when it was reopened: follow-up's checks of those are
    # moot, not those of a later resolution (a reopen replayed late). None from producers
    # before 4 December: every open check then.
    resolution_count: int | None = None


class ComplaintRejected(EventData):
    """不予受理: the complaint is not accepted for handling."""

    reason_code: str
    explanation: str
    rejected_by: str
    rejected_at: EventDatetime


class ComplaintWithdrawn(EventData):
    """The customer withdrew the complaint."""

    reason: str | None = None
    withdrawn_by: str
    withdrawn_at: EventDatetime


class ComplaintClosed(EventData):
    """The complaint is closed (after follow-up, or by an administrator)."""

    reason: str
    closed_by: str
    closed_via: ClosedVia = ClosedVia.FOLLOWUP
    closed_at: EventDatetime
    # The resolutions the complaint had when it was closed: an administrator's close makes
    # follow-up's checks of those moot, not those of a resolution after a later reopen (a
    # close redelivered after them). None from producers before 4 December: checks of
    # resolutions made by the time of the close then.
    resolution_count: int | None = None


class ComplaintRemedyRecorded(EventData):
    """A remedy given after the resolution (a goodwill payment made later), recorded on the
    latest resolution of a resolved or closed complaint without reopening it."""

    resolution_number: int
    remedy: Remedy
    recorded_by: str
    recorded_at: EventDatetime


class ComplaintReclassified(EventData):
    """A supervisor changed the complaint's classification after registration (a later
    call reveals a medical error, the customer went to the regulator): the severity,
    category and flags it has now, and those it had. Routing re-plans what depends on them
    (the acknowledge and resolve targets, a major incident's report deadline and escalation)
    and announces the result as ``complaint.assigned`` / ``complaint.queued``."""

    reclassification_number: int = Field(
        description="1 for the complaint's first reclassification, 2 for the next...: "
        "consumers keep the highest (a replayed older one changes nothing)"
    )
    category: Category
    severity: Severity
    flags: list[str] = Field(default_factory=list, description="The full set of flags now")
    previous_category: Category
    previous_severity: Severity
    previous_flags: list[str] = Field(default_factory=list)
    reason: str
    reclassified_by: str
    reclassified_at: EventDatetime


# --------------------------------------------------------------- routing --


class AssignmentAnnounced(EventData):
    """What every event announcing the complaint's assignment carries."""

    assignment_sequence: int | None = Field(
        None,
        description="One more than the complaint's previous assigned / queued / reassigned "
        "event: consumers keep the state of the highest, whatever the clocks of the replicas "
        "that wrote the times (None from earlier routing versions)",
    )


ROUTED_BY_DESCRIPTION = (
    "The supervisor who routed the complaint by hand, when no rule could (an unroutable "
    "complaint); None when a rule routed it, and on later announcements of the same assignment"
)
ROUTED_REASON_DESCRIPTION = "The supervisor's reason, with ``routed_by``"


class ComplaintAssigned(AssignmentAnnounced):
    """Routing chose the handling department and owner and set the due times."""

    department: str
    department_name: str
    owner_id: str | None
    owner_name: str | None
    rule_id: str
    rule_version: int
    assigned_at: EventDatetime
    acknowledge_due_at: EventDatetime | None = None
    resolve_due_at: EventDatetime | None = None
    regulatory_report_due_at: EventDatetime | None = None
    escalation_level: int = 0
    sla_policy: str | None = None
    clock_starts_at: EventDatetime | None = None
    duty_officer: bool = Field(False, description="Assigned out of hours to the duty officer")
    routed_by: str | None = Field(None, description=ROUTED_BY_DESCRIPTION)
    routed_reason: str | None = Field(None, description=ROUTED_REASON_DESCRIPTION)
    severity: Severity | None = Field(
        None, description="The severity routing works to (a rule may have raised it)"
    )
    flags: list[str] | None = Field(None, description="The flags routing applied")
    major_incident: bool = False
    reclassification_number: int | None = Field(
        None,
        description="The complaint's last reclassification routing had applied when it "
        "announced this (0: none): severity and flags from before a later one are not "
        "the complaint's any more (None from earlier routing versions)",
    )


QUEUED_DUE_DESCRIPTION = (
    "As on complaint.assigned (None in events published before queued ones carried it: "
    "the due times known stay)"
)


class ComplaintQueued(AssignmentAnnounced):
    """Nobody in the department has capacity; the complaint waits in its queue."""

    department: str
    department_name: str
    rule_id: str
    rule_version: int
    queued_at: EventDatetime
    routed_by: str | None = Field(None, description=ROUTED_BY_DESCRIPTION)
    routed_reason: str | None = Field(None, description=ROUTED_REASON_DESCRIPTION)
    severity: Severity | None = Field(
        None, description="The severity routing works to (a rule may have raised it)"
    )
    flags: list[str] | None = Field(None, description="The flags routing applied")
    major_incident: bool = False
    reclassification_number: int | None = Field(
        None,
        description="The complaint's last reclassification routing had applied when it "
        "announced this (0: none): severity and flags from before a later one are not "
        "the complaint's any more (None from earlier routing versions)",
    )
    # The clocks run while the complaint waits in the queue.
    acknowledge_due_at: EventDatetime | None = Field(None, description=QUEUED_DUE_DESCRIPTION)
    resolve_due_at: EventDatetime | None = Field(None, description=QUEUED_DUE_DESCRIPTION)
    regulatory_report_due_at: EventDatetime | None = Field(None, description=QUEUED_DUE_DESCRIPTION)


class ComplaintUnroutable(EventData):
    """No routing rule leads to an active department for this complaint (no matching and no
    default rule). Routing keeps it, unowned, until a rule or department that covers it is
    added (then ``complaint.assigned`` / ``complaint.queued`` follow) or a supervisor
    reassigns it (``complaint.reassigned``)."""

    reason: str = Field(description="Why no rule applies, naming the rules passed over")
    passed_over_rules: list[str] = Field(
        default_factory=list, description="Matching rules whose department does not exist"
    )
    unroutable_at: EventDatetime


class ComplaintReassigned(AssignmentAnnounced):
    """The complaint moved to another owner or department."""

    from_department: str | None = None
    from_owner_id: str | None = None
    department: str
    department_name: str
    owner_id: str | None
    owner_name: str | None
    reason: str
    reassigned_by: str
    reassigned_at: EventDatetime


ESCALATION_NOTE_DESCRIPTION = (
    "The words of the person who escalated it by hand (reason ``manual``); None for routing's "
    "own rungs, and in events published before contract 1.9.0"
)


class ComplaintEscalated(EventData):
    """The complaint went one (or more) levels up the escalation chain."""

    level: int
    escalated_to_id: str | None = None
    escalated_to_name: str | None = None
    escalated_to_role: str | None = None
    reason: str = Field(description="sla_breach, manual, reopened, critical_incident ...")
    escalated_by: str = "routing"
    escalated_at: EventDatetime
    note: str | None = Field(None, description=ESCALATION_NOTE_DESCRIPTION)
    regulatory_report_due_at: EventDatetime | None = None


CYCLE_DESCRIPTION = "The complaint's cycle: 0 from registration, n since the nth reopen"
# Warnings and breaches published before they carried their cycle.
CYCLE_OR_NONE = f"{CYCLE_DESCRIPTION} (None: an event published before it was carried)"


class ComplaintSlaWarning(EventData):
    """A clock passed its warning share (80% by default) of the allowed time."""

    clock: SlaClock
    due_at: EventDatetime
    warned_at: EventDatetime
    reopen_count: int | None = Field(None, description=CYCLE_OR_NONE)


class ComplaintSlaBreached(EventData):
    """A clock passed its due time."""

    clock: SlaClock
    due_at: EventDatetime
    breached_at: EventDatetime
    escalation_level: int | None = None
    reopen_count: int | None = Field(None, description=CYCLE_OR_NONE)


class ComplaintSlaStopped(EventData):
    """Routing's verdict on a clock that stopped: was it met?

    Published when 受理 stops the acknowledge clock, and when a resolution (or a rejection,
    withdrawal or closure) stops the resolve clock, and the acknowledge clock too when
    nobody acknowledged before it (since contract 1.5.0: the finish answered the customer).
    Judged on routing's clock: business hours, and no time counted while the complaint
    waited on the customer. For the
    regulatory report deadline only when a report filed while the complaint was unroutable
    stops the deadline routing lays out on routing it (since contract 1.4.0), or when a
    reclassification makes such a complaint, routed since, a major incident (since contract
    1.9.0); any other filing carries its verdict in ``complaint.regulatory_report_filed``.
    """

    clock: SlaClock
    due_at: EventDatetime = Field(
        description="The clock's final due time: its target laid out with every pause left out"
    )
    stopped_at: EventDatetime
    on_time: bool = Field(description="Stopped by its due time (stopped_at <= due_at)")
    breached: bool = Field(description="A breach of this clock was announced before it stopped")
    reopen_count: int = Field(0, description=CYCLE_DESCRIPTION)
    resolution_number: int | None = Field(
        None, description="The resolution that stopped the resolve clock (None: something else)"
    )


class EscalationStep(BaseModel):
    """One rung of an escalation as routing recorded it (who was notified, why, when)."""

    model_config = ConfigDict(extra="ignore")

    level: int
    escalated_to_id: str | None = None
    escalated_to_name: str | None = None
    escalated_to_role: str | None = None
    reason: str
    escalated_by: str = "routing"
    escalated_at: EventDatetime
    note: str | None = Field(None, description=ESCALATION_NOTE_DESCRIPTION)


class ComplaintSlaBreachWithdrawn(EventData):
    """A breach announced for a clock is withdrawn: the acknowledgement, pause or finish
    that stopped the clock happened at or before its due time, but reached routing only
    after the timer had fired (held in intake's outbox by a broker outage, a consumer
    behind). The escalations the breach caused are withdrawn with it (their notifications
    were sent: they stay on record, marked withdrawn)."""

    clock: SlaClock
    due_at: EventDatetime
    stopped_at: EventDatetime = Field(
        description="When the clock really stopped or paused: the time of intake's event"
    )
    reason: str = Field(
        description="acknowledged_on_time, paused_on_time, resolved_on_time, rejected_on_time "
        "or withdrawn_on_time"
    )
    withdrawn_breaches: int = Field(
        description="How many breaches of this clock (announced as sla_breached) are withdrawn"
    )
    withdrawn_at: EventDatetime
    withdrawn_escalations: list[EscalationStep] = Field(
        default_factory=list, description="The escalations those breaches caused, withdrawn"
    )
    escalation_level: int = Field(description="The escalation level after the withdrawal")
    escalation: EscalationStep | None = Field(
        None, description="The highest escalation still standing (none: not escalated)"
    )
    breached_clocks: list[SlaClock] = Field(
        default_factory=list,
        description="The clocks still breached in this cycle after the withdrawal",
    )
    reopen_count: int = Field(0, description=CYCLE_DESCRIPTION)


class ComplaintResponsibilitySet(EventData):
    """责任部门: the department (and party) responsible, distinct from the handling one."""

    responsible_department: str
    responsible_party: ResponsibleParty | None = None
    set_by: str
    set_at: EventDatetime


class ComplaintRegulatoryReportFiled(EventData):
    """The major incident's report reached the authority: routing recorded the filing and
    its deadline (the ``regulatory_report`` clock) stopped, whatever the complaint's status.

    Announced once per complaint (a retried identical filing is on record already). A
    filing made while the complaint was unroutable knows no deadline yet: the one routing
    lays out once it routes the complaint stops at this filing, and its verdict follows as
    ``complaint.sla_stopped`` (clock ``regulatory_report``).
    """

    reference: str | None = Field(None, description="The authority's reference for the report")
    filed_by: str
    filed_at: EventDatetime
    due_at: EventDatetime | None = Field(
        None, description="The report deadline (None: none known at the filing, see above)"
    )
    on_time: bool | None = Field(
        None, description="Filed by the deadline (filed_at <= due_at; None: no deadline known)"
    )
    breached: bool = Field(
        False, description="A breach of the deadline was announced before the filing"
    )


class BranchUpdated(EventPayload):
    """A branch was created or changed in routing's directory: the facts other services need.

    Subject and key ``branch:<org>:<code>``, so a branch's versions arrive in order;
    consumers keep the highest ``version``.
    """

    org: str
    branch: str = Field(description="The branch code")
    name: str
    time_zone: str = Field(description="IANA time zone of the branch (reference numbers' day)")
    active: bool = True
    version: int
    updated_at: EventDatetime

    def cloudevent_subject(self) -> str:
        return f"branch:{self.org}:{self.branch}"


class DepartmentUpdated(EventPayload):
    """A department was created or changed in routing's directory (renamed, deactivated...):
    what other services show of it.

    Subject and key ``department:<org>:<id>``, so a department's versions arrive in order;
    consumers keep the highest ``version`` (since contract 1.8.0).
    """

    org: str
    branch: str = Field(description="The department's branch code")
    department: str = Field(description="The department id, BRANCH:CODE")
    name: str
    kind: str
    active: bool = True
    version: int
    updated_at: EventDatetime

    def cloudevent_subject(self) -> str:
        return f"department:{self.org}:{self.department}"


class StaffUpdated(EventPayload):
    """A staff member was created or changed in routing's directory: the name complaints
    show for them, and their department. Names only: no capacity, skills or leave.

    Subject and key ``staff:<org>:<id>``, so a person's versions arrive in order; consumers
    keep the highest ``version`` (since contract 1.8.0).
    """

    org: str
    branch: str = Field(description="The staff member's branch code")
    staff_id: str
    name: str
    department: str = Field(description="Their department's id, BRANCH:CODE")
    version: int
    updated_at: EventDatetime

    def cloudevent_subject(self) -> str:
        return f"staff:{self.org}:{self.staff_id}"


# -------------------------------------------------------------- followup --


class FollowupScheduled(EventData):
    """A satisfaction check was scheduled."""

    followup_id: str
    resolution_number: int
    sequence: int
    due_at: EventDatetime
    channel: ContactChannel


class FollowupAttempted(EventData):
    """An attempt to reach the customer was made."""

    followup_id: str
    resolution_number: int
    attempt_number: int
    reached: bool
    channel: ContactChannel
    attempted_by: str
    attempted_at: EventDatetime
    next_attempt_at: EventDatetime | None = None


class FollowupCompleted(EventData):
    """A satisfaction check ended with an outcome."""

    followup_id: str
    resolution_number: int
    sequence: int | None = Field(
        None, description="The check's place in its resolution's series (1, 2 ...)"
    )
    outcome: FollowupOutcome
    score: int | None = Field(None, ge=1, le=5)
    problem_solved: bool | None = None
    comment: str | None = None
    attempts: int = 1
    channel: ContactChannel | None = None
    completed_at: EventDatetime


class FollowupCancelled(EventData):
    """Pending checks were cancelled (complaint reopened, withdrawn or closed by an admin)."""

    followup_id: str
    resolution_number: int
    reason: str
    cancelled_at: EventDatetime


class RescheduleReason(StrEnum):
    """Why follow-up moved a scheduled check's due time."""

    # Its due time came outside the customer's contact hours (the branch's hours changed, the
    # scheduler behind): due at the next moment they may be called.
    OUTSIDE_CONTACT_HOURS = "outside_contact_hours"
    # An earlier check of the resolution is still open: ``due_at`` is when it is asked again.
    EARLIER_CHECK_OPEN = "earlier_check_open"
    # An earlier check called the customer less than the attempt spacing ago.
    CALLED_RECENTLY = "called_recently"


class FollowupRescheduled(EventData):
    """A scheduled check's due time moved before it fell due.

    Once per move: a check waiting on an earlier one still open says so when it begins to
    wait, not each time it is asked again."""

    followup_id: str
    resolution_number: int
    sequence: int | None = Field(
        None, description="The check's place in its resolution's series (1, 2 ...)"
    )
    due_at: EventDatetime
    previous_due_at: EventDatetime
    reason: RescheduleReason
    rescheduled_at: EventDatetime


EVENT_CONTRACTS: dict[EventType, tuple[Topic, type[EventPayload]]] = {
    EventType.COMPLAINT_RECEIVED: (Topic.INTAKE, ComplaintReceived),
    EventType.COMPLAINT_ACKNOWLEDGED: (Topic.INTAKE, ComplaintAcknowledged),
    EventType.COMPLAINT_NOTE_ADDED: (Topic.INTAKE, ComplaintNoteAdded),
    EventType.COMPLAINT_PENDING_CUSTOMER: (Topic.INTAKE, ComplaintPendingCustomer),
    EventType.COMPLAINT_RESUMED: (Topic.INTAKE, ComplaintResumed),
    EventType.COMPLAINT_RESOLVED: (Topic.INTAKE, ComplaintResolved),
    EventType.COMPLAINT_REOPENED: (Topic.INTAKE, ComplaintReopened),
    EventType.COMPLAINT_REJECTED: (Topic.INTAKE, ComplaintRejected),
    EventType.COMPLAINT_WITHDRAWN: (Topic.INTAKE, ComplaintWithdrawn),
    EventType.COMPLAINT_CLOSED: (Topic.INTAKE, ComplaintClosed),
    EventType.COMPLAINT_REMEDY_RECORDED: (Topic.INTAKE, ComplaintRemedyRecorded),
    EventType.COMPLAINT_RECLASSIFIED: (Topic.INTAKE, ComplaintReclassified),
    EventType.COMPLAINT_ASSIGNED: (Topic.ROUTING, ComplaintAssigned),
    EventType.COMPLAINT_QUEUED: (Topic.ROUTING, ComplaintQueued),
    EventType.COMPLAINT_UNROUTABLE: (Topic.ROUTING, ComplaintUnroutable),
    EventType.COMPLAINT_REASSIGNED: (Topic.ROUTING, ComplaintReassigned),
    EventType.COMPLAINT_ESCALATED: (Topic.ROUTING, ComplaintEscalated),
    EventType.COMPLAINT_SLA_WARNING: (Topic.ROUTING, ComplaintSlaWarning),
    EventType.COMPLAINT_SLA_BREACHED: (Topic.ROUTING, ComplaintSlaBreached),
    EventType.COMPLAINT_SLA_STOPPED: (Topic.ROUTING, ComplaintSlaStopped),
    EventType.COMPLAINT_SLA_BREACH_WITHDRAWN: (Topic.ROUTING, ComplaintSlaBreachWithdrawn),
    EventType.COMPLAINT_RESPONSIBILITY_SET: (Topic.ROUTING, ComplaintResponsibilitySet),
    EventType.COMPLAINT_REGULATORY_REPORT_FILED: (Topic.ROUTING, ComplaintRegulatoryReportFiled),
    EventType.BRANCH_UPDATED: (Topic.ROUTING, BranchUpdated),
    EventType.DEPARTMENT_UPDATED: (Topic.ROUTING, DepartmentUpdated),
    EventType.STAFF_UPDATED: (Topic.ROUTING, StaffUpdated),
    EventType.FOLLOWUP_SCHEDULED: (Topic.FOLLOWUP, FollowupScheduled),
    EventType.FOLLOWUP_ATTEMPTED: (Topic.FOLLOWUP, FollowupAttempted),
    EventType.FOLLOWUP_COMPLETED: (Topic.FOLLOWUP, FollowupCompleted),
    EventType.FOLLOWUP_CANCELLED: (Topic.FOLLOWUP, FollowupCancelled),
    EventType.FOLLOWUP_RESCHEDULED: (Topic.FOLLOWUP, FollowupRescheduled),
}


def topic_of(event_type: EventType) -> Topic:
    return EVENT_CONTRACTS[event_type][0]


def parse_data(event_type: str, data: dict) -> EventPayload:
    """Validate event data against its contract; raises KeyError for unknown types.

    Read as stored (``stored.from_stored``): an event another version published is not
    refused by a check added to requests since.
    """
    model = EVENT_CONTRACTS[EventType(event_type)][1]
    return from_stored(model, data)
