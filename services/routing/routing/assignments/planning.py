"""Routing decisions as pure functions: which rule, which department, whose turn, which clocks.

The store loads the data and persists the outcome; everything that decides
lives here so the real assignment and ``POST /v1/routing/simulate`` take the
same path and a simulation can never drift from what would really happen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import Category, ComplaintReceived, Severity, SlaClock
from complaints_shared.text import folded
from routing.assignments.models import NotifyTarget
from routing.directory.escalation import (
    EscalationTarget,
    Reached,
    chain_targets,
    major_incident_target,
)
from routing.directory.models import DepartmentRead, StaffRead, StaffRole, StaffStatus
from routing.rules.matching import complaint_flags, matching_rules, severity_at_least
from routing.rules.models import RoutingRule
from routing.sla import clocks as sla_clocks
from routing.sla.models import SlaPolicy

URGENT = frozenset({Severity.HIGH, Severity.CRITICAL})
NEVER = datetime.min.replace(tzinfo=UTC)


class NoRoute(LookupError):
    """No rule leads to an existing department: the organisation lacks a default rule.

    ``passed_over`` names the matching rules whose department does not exist.
    """

    def __init__(self, message: str, *, passed_over: list[str]) -> None:
        super().__init__(message)
        self.passed_over = passed_over


@dataclass(frozen=True)
class Candidate:
    staff: StaffRead
    open_load: int
    eligible: bool
    why_not: str | None = None


@dataclass
class RoutePlan:
    """Everything decided about a complaint before an owner is picked."""

    rule: RoutingRule
    skipped_rules: list[str]
    department: DepartmentRead
    severity: Severity
    policy: SlaPolicy
    in_business_hours: bool
    duty_officer: StaffRead | None
    clock_starts_at: datetime
    clocks: dict[str, sla_clocks.Clock]
    major_incident: bool
    escalation_targets: list[EscalationTarget]
    escalation_level: int
    notify: list[NotifyTarget] = field(default_factory=list)
    # The branch's calendar version the clocks are laid out on (``routing_context.plan_for``).
    calendar_version: int = 0

    @property
    def escalated_to(self) -> EscalationTarget | None:
        if self.escalation_level == 0:
            return None
        return self.escalation_targets[self.escalation_level - 1]


def rule_department(
    rule: RoutingRule, *, branch: str, departments: Iterable[DepartmentRead]
) -> DepartmentRead | None:
    """The rule's target as seen from the complaint's branch (None when it does not exist)."""
    for department in departments:
        if not department.active:
            continue
        if rule.action.department_id is not None:
            if department.id == rule.action.department_id:
                return department
        elif department.branch == branch and department.kind == rule.action.department_kind:
            return department
    return None


def choose_route(
    complaint: ComplaintReceived,
    *,
    rules: Iterable[RoutingRule],
    departments: list[DepartmentRead],
) -> tuple[RoutingRule, DepartmentRead, list[str]]:
    """First matching rule whose department exists; also the matches passed over."""
    skipped: list[str] = []
    for rule in matching_rules(rules, complaint):
        department = rule_department(rule, branch=complaint.branch, departments=departments)
        if department is not None:
            return rule, department, skipped
        skipped.append(rule.id)
    raise NoRoute(
        f"no routing rule with an existing department matches complaint "
        f"{complaint.complaint_id} of org {complaint.org!r} in branch {complaint.branch!r} "
        f"(passed over: {skipped}); add a default rule",
        passed_over=skipped,
    )


def rank_candidates(
    staff: Iterable[StaffRead], *, loads: dict[str, int], required_skill: str | None
) -> list[Candidate]:
    """Eligible people first: least open load, then longest since their last assignment."""
    candidates = [
        Candidate(person, loads.get(person.id, 0), *_eligibility(person, loads, required_skill))
        for person in staff
    ]
    return sorted(
        candidates,
        key=lambda c: (
            not c.eligible,
            c.open_load,
            c.staff.last_assigned_at or NEVER,
            c.staff.id,
        ),
    )


def has_skill(person: StaffRead, skill: str) -> bool:
    """Whether ``person`` lists ``skill`` among their skills or languages, compared as text
    is (``VIP``, ``ｖｉｐ`` and ``vip`` are one skill)."""
    wanted = folded(skill.strip())
    return any(folded(have.strip()) == wanted for have in (*person.skills, *person.languages))


def _eligibility(
    person: StaffRead, loads: dict[str, int], required_skill: str | None
) -> tuple[bool, str | None]:
    if person.status is not StaffStatus.ACTIVE:
        return False, f"status {person.status.value}"
    if required_skill and not has_skill(person, required_skill):
        return False, f"lacks skill {required_skill!r}"
    if loads.get(person.id, 0) >= person.capacity:
        return False, f"at capacity ({person.capacity})"
    return True, None


def _notify_targets(
    roles: list[StaffRole], *, department: DepartmentRead, branch_staff: list[StaffRead]
) -> list[NotifyTarget]:
    targets = []
    for role in roles:
        people = [
            person
            for person in branch_staff
            if person.role is role
            and person.status is StaffStatus.ACTIVE
            and (role is StaffRole.BRANCH_HEAD or person.department_id == department.id)
        ]
        if not people:
            targets.append(NotifyTarget(role=role))
        targets.extend(NotifyTarget(role=role, staff_id=p.id, name=p.name) for p in people)
    return targets


def on_duty(
    duty_officer: StaffRead | None, *, calendar: BusinessCalendar, at: datetime
) -> StaffRead | None:
    """The branch's duty officer while they stand in for it: active, the branch closed at
    ``at`` (``calendar`` is the branch's)."""
    if duty_officer is None or duty_officer.status is not StaffStatus.ACTIVE:
        return None
    return None if calendar.is_open(at) else duty_officer


def duty_officer_taking(
    severity: Severity,
    *,
    duty_officer: StaffRead | None,
    calendar: BusinessCalendar,
    at: datetime,
) -> StaffRead | None:
    """The out-of-hours rule, asked whenever an owner is chosen (on arrival, from the queue,
    on a reopen): a high or critical complaint whose owner is chosen at ``at`` while its
    branch is closed goes to the branch's duty officer. None: the department's people."""
    if severity not in URGENT:
        return None
    return on_duty(duty_officer, calendar=calendar, at=at)


def _clock_start(
    *,
    calendar: BusinessCalendar,
    received_at: datetime,
    in_hours: bool,
    urgent: bool,
) -> datetime:
    # Urgent complaints run from the moment they arrive; the rest wait for the next opening.
    if in_hours or urgent:
        return received_at
    return sla_clocks.clock_start(calendar, received_at)


def plan_route(
    complaint: ComplaintReceived,
    *,
    rules: Iterable[RoutingRule],
    departments: list[DepartmentRead],
    calendar: BusinessCalendar,
    policies: Iterable[SlaPolicy],
    staff: list[StaffRead],
    duty_officer: StaffRead | None,
    routed_at: datetime,
    severity_decided: bool = False,
) -> RoutePlan:
    """Rule, department, severity, policy, out-of-hours handling, clocks and escalation.

    ``severity_decided``: a supervisor set the complaint's severity (a reclassification
    while it was unroutable), which a rule's ``severity_override`` does not replace.

    ``staff`` holds the people of every branch a reachable department is in. The clocks
    count from the receipt; whether the duty officer takes an urgent complaint depends on
    the branch being closed at ``routed_at``, when an owner is chosen: one received at
    night and routed in the morning (after an outage, or left unroutable until a rule was
    added) goes to the department's people, who are at work by then.
    """
    rule, department, skipped = choose_route(complaint, rules=rules, departments=departments)
    action = rule.action
    severity = complaint.severity
    override = action.severity_override
    if override is not None and not severity_decided and not severity_at_least(severity, override):
        # The rule raises the severity to at least its own, never lowers one given at
        # registration: until 6 December a ``high`` override made a critical complaint high.
        severity = override
    # A retired policy stays on the assignments that have it, but is never given anew.
    policy = sla_clocks.select_policy(
        [policy for policy in policies if policy.in_force],
        org=complaint.org,
        requested=action.sla_policy,
        category=complaint.category,
    )
    in_hours = calendar.is_open(complaint.received_at)
    urgent = severity in URGENT
    clock_starts_at = _clock_start(
        calendar=calendar, received_at=complaint.received_at, in_hours=in_hours, urgent=urgent
    )
    major = action.major_incident or sla_clocks.is_major_incident(
        policy, severity=severity, category=complaint.category, flags=complaint_flags(complaint)
    )
    clocks = _start_clocks(
        calendar=calendar,
        policy=policy,
        severity=severity,
        clock_starts_at=clock_starts_at,
        received_at=complaint.received_at,
        major_incident=major,
    )
    # The chain and the people on it belong to the handling department's branch.
    department_staff = [person for person in staff if person.branch == department.branch]
    targets = chain_targets(
        department.escalation_chain, department_code=department.code, branch_staff=department_staff
    )
    # A major incident goes to the branch head at once; without one, to the most senior
    # person the chain finds (and to the head once there is one: ``major_incidents``).
    head = major_incident_target(targets, reached=Reached()) if major else None
    return RoutePlan(
        rule=rule,
        skipped_rules=skipped,
        department=department,
        severity=severity,
        policy=policy,
        in_business_hours=in_hours,
        duty_officer=duty_officer_taking(
            severity, duty_officer=duty_officer, calendar=calendar, at=routed_at
        ),
        clock_starts_at=clock_starts_at,
        clocks=clocks,
        major_incident=major,
        escalation_targets=targets,
        escalation_level=head.level if head is not None else 0,
        notify=_notify_targets(
            action.notify_roles, department=department, branch_staff=department_staff
        ),
    )


def _start_clocks(
    *,
    calendar: BusinessCalendar,
    policy: SlaPolicy,
    severity: Severity,
    clock_starts_at: datetime,
    received_at: datetime,
    major_incident: bool,
) -> dict[str, sla_clocks.Clock]:
    targets = sla_clocks.targets_for(policy, severity)
    share = policy.warning_share
    clocks = {
        SlaClock.ACKNOWLEDGE.value: sla_clocks.start_clock(
            calendar, start=clock_starts_at, duration=targets.acknowledge, warning_share=share
        ),
        SlaClock.RESOLVE.value: sla_clocks.start_clock(
            calendar, start=clock_starts_at, duration=targets.resolve, warning_share=share
        ),
    }
    if major_incident:
        # The authority's deadline runs from the report of the incident, whatever the hours.
        clocks[SlaClock.REGULATORY_REPORT.value] = sla_clocks.start_clock(
            calendar,
            start=received_at,
            duration=policy.regulatory_report_within,
            warning_share=share,
        )
    return clocks


def restart_resolve_clock(
    *,
    calendar: BusinessCalendar,
    policy: SlaPolicy,
    severity: Severity,
    start: datetime,
) -> sla_clocks.Clock:
    """A reopened complaint gets a fresh resolve clock from the reopen instant."""
    targets = sla_clocks.targets_for(policy, severity)
    return sla_clocks.start_clock(
        calendar, start=start, duration=targets.resolve, warning_share=policy.warning_share
    )


@dataclass
class Reclassified:
    """What a complaint's new classification changes in its plan: the clocks, and whether it
    is a major incident now (``became_major``: it was not before)."""

    clocks: dict[str, sla_clocks.Clock]
    major_incident: bool
    became_major: bool


# The customer's clocks, whose targets depend on the severity.
SEVERITY_CLOCKS = (SlaClock.ACKNOWLEDGE.value, SlaClock.RESOLVE.value)


def replan_classification(
    clocks: dict[str, sla_clocks.Clock],
    *,
    calendar: BusinessCalendar,
    policy: SlaPolicy,
    major_criteria: Iterable[SlaPolicy],
    severity_before: Severity,
    severity: Severity,
    category: Category,
    flags: set[str],
    major_before: bool,
    reclassified_at: datetime,
) -> Reclassified:
    """The plan of a routed complaint after a reclassification at ``reclassified_at``.

    A new severity re-lays the acknowledge and resolve clocks to its targets measured from
    each clock's start (``sla_clocks.retarget_clock``: stopped or breached clocks stay as
    they are). A complaint that now meets the major-incident criteria of any of
    ``major_criteria`` (its own policy's, and the one its new category would be given)
    becomes one (a major incident is never revoked): its report deadline, that policy's,
    runs from the reclassification, when the organisation learnt of the incident, whatever
    the hours.
    """
    relaid = dict(clocks)
    if severity is not severity_before:
        targets = sla_clocks.targets_for(policy, severity)
        for name in SEVERITY_CLOCKS:
            if name in relaid:
                relaid[name] = sla_clocks.retarget_clock(
                    relaid[name],
                    calendar=calendar,
                    duration=getattr(targets, name),
                    warning_share=policy.warning_share,
                )
    deciding = next(
        (
            criteria
            for criteria in major_criteria
            if sla_clocks.is_major_incident(
                criteria, severity=severity, category=category, flags=flags
            )
        ),
        None,
    )
    major = major_before or deciding is not None
    became_major = major and not major_before
    if became_major and deciding is not None and SlaClock.REGULATORY_REPORT.value not in relaid:
        relaid[SlaClock.REGULATORY_REPORT.value] = sla_clocks.start_clock(
            calendar,
            start=reclassified_at,
            duration=deciding.regulatory_report_within,
            warning_share=deciding.warning_share,
        )
    return Reclassified(clocks=relaid, major_incident=major, became_major=became_major)
