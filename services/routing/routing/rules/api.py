"""HTTP routes of routing rules and the side-effect-free simulation."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Role
from complaints_shared.events import ComplaintReceived, CustomerContact
from complaints_shared.preconditions import IfMatchHeader, tag
from complaints_shared.problems import ProblemError
from complaints_shared.runtime import Runtime, runtime_of
from routing.assignments import owners, planning, routing_context, rule_changes, unroutable
from routing.assignments.models import NotifyTarget
from routing.directory import store as directory_store
from routing.directory.models import StaffRead
from routing.rules import store as rules_store
from routing.rules.models import (
    CandidateRead,
    MatchedRuleRead,
    RuleCreate,
    RuleRead,
    RuleUpdate,
    RuleVersionRead,
    SimulateRequest,
    SimulationRead,
)

router = APIRouter(prefix="/v1/routing", tags=["routing rules"])


RuleAdmin = allow(Role.ADMIN, scope=Scope.ORGANISATION, action="managing routing rules")


Simulator = allow(Role.SUPERVISOR, scope=Scope.BRANCH, action="simulating routing")


async def _follow(runtime: Runtime, *, rule: RuleRead, actor: str) -> None:
    """The work the rule placed takes its required skill as it is now (none once it is
    deactivated), and the queues where such work waits are offered it at once. Also after a
    change that made no new version: a repeat of a request an error cut short finishes it.
    (Without a repeat, the look-over the saved version is due does.)"""
    await rule_changes.follow_rule(
        db=runtime.db, settings=runtime.settings, rule=rule, actor=actor, now=runtime.clock.now()
    )


@router.get("/rules", response_model=list[RuleRead], summary="The rules in matching order")
async def list_rules(
    request: Request, principal: RuleAdmin, include_inactive: bool = False
) -> list[RuleRead]:
    runtime = runtime_of(request)
    return await rules_store.list_rules(
        db=runtime.db, principal=principal, include_inactive=include_inactive
    )


@router.post("/rules", status_code=status.HTTP_201_CREATED, response_model=RuleRead)
async def create_rule(
    body: RuleCreate, request: Request, response: Response, principal: RuleAdmin
) -> RuleRead:
    runtime = runtime_of(request)
    created = await rules_store.create_rule(
        db=runtime.db, principal=principal, body=body, now=runtime.clock.now()
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    tag(response, created.version)
    return created


@router.get("/rules/{rule_id}", response_model=RuleRead)
async def get_rule(
    rule_id: str, request: Request, response: Response, principal: RuleAdmin
) -> RuleRead:
    runtime = runtime_of(request)
    found = await rules_store.get_rule(db=runtime.db, principal=principal, rule_id=rule_id)
    tag(response, found.version)
    return found


@router.patch("/rules/{rule_id}", response_model=RuleRead, summary="Change a rule: a new version")
async def update_rule(
    rule_id: str,
    body: RuleUpdate,
    request: Request,
    response: Response,
    principal: RuleAdmin,
    if_match: IfMatchHeader,
) -> RuleRead:
    runtime = runtime_of(request)
    updated = await rules_store.update_rule(
        db=runtime.db,
        principal=principal,
        rule_id=rule_id,
        body=body,
        if_match=if_match,
        now=runtime.clock.now(),
        look_over_after=rule_changes.look_over_delay(settings=runtime.settings),
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    await _follow(runtime, rule=updated, actor=principal.subject)
    tag(response, updated.version)
    return updated


@router.delete("/rules/{rule_id}", response_model=RuleRead, summary="Deactivate (kept for audit)")
async def deactivate_rule(
    rule_id: str,
    request: Request,
    response: Response,
    principal: RuleAdmin,
    if_match: IfMatchHeader,
) -> RuleRead:
    runtime = runtime_of(request)
    deactivated = await rules_store.deactivate_rule(
        db=runtime.db,
        principal=principal,
        rule_id=rule_id,
        if_match=if_match,
        now=runtime.clock.now(),
        look_over_after=rule_changes.look_over_delay(settings=runtime.settings),
    )
    await _follow(runtime, rule=deactivated, actor=principal.subject)
    tag(response, deactivated.version)
    return deactivated


@router.get("/rules/{rule_id}/versions", response_model=list[RuleVersionRead])
async def rule_versions(
    rule_id: str, request: Request, principal: RuleAdmin
) -> list[RuleVersionRead]:
    runtime = runtime_of(request)
    return await rules_store.rule_versions(db=runtime.db, principal=principal, rule_id=rule_id)


def _as_received(body: SimulateRequest, *, org: str, runtime: Runtime) -> ComplaintReceived:
    return ComplaintReceived(
        complaint_id="simulation",
        org=org,
        branch=body.branch,
        reference="SIMULATION",
        channel=body.channel,
        category=body.category,
        severity=body.severity,
        flags=[flag.value for flag in body.flags],
        subject=body.subject,
        description=body.description,
        product=body.product,
        customer=CustomerContact(
            name="simulation", vip=body.customer.vip, language=body.customer.language
        ),
        received_at=body.received_at or runtime.clock.now(),
    )


@router.post(
    "/simulate",
    response_model=SimulationRead,
    summary="Where a complaint would go, to whom and by when; nothing is stored or sent",
)
async def simulate(body: SimulateRequest, request: Request, principal: Simulator) -> SimulationRead:
    principal.require_branch(body.branch, field="branch")
    runtime = runtime_of(request)
    complaint = _as_received(body, org=principal.org, runtime=runtime)
    context = await routing_context.load_context(db=runtime.db, complaint=complaint)
    try:
        # As if routed on arrival.
        plan = routing_context.plan_for(complaint, context, routed_at=complaint.received_at)
    except planning.NoRoute as exc:
        raise ProblemError(
            status=422, title="Unroutable", kind="unroutable", detail=str(exc)
        ) from None
    candidates = await owners.ranked_candidates(
        db=runtime.db,
        org=principal.org,
        department_id=plan.department.id,
        required_skill=plan.rule.action.required_skill,
    )
    chosen = plan.duty_officer or next((c.staff for c in candidates if c.eligible), None)
    # A rule may send the branch's complaints to another branch's department (or name
    # another branch's people): the simulation shows where, but only the people the token
    # may see.
    named = [c.staff.id for c in candidates] + [t.staff_id for t in plan.notify if t.staff_id]
    if chosen is not None:
        named.append(chosen.id)
    if plan.escalated_to is not None and plan.escalated_to.staff_id:
        named.append(plan.escalated_to.staff_id)
    shown = await directory_store.visible_staff_ids(
        db=runtime.db, principal=principal, staff_ids=named
    )
    return _simulation(plan, candidates, chosen, shown)


def _simulation(
    plan: planning.RoutePlan,
    candidates: list[planning.Candidate],
    chosen: StaffRead | None,
    shown: set[str],
) -> SimulationRead:
    escalated_to = plan.escalated_to
    regulatory = plan.clocks.get("regulatory_report")
    chosen_shown = chosen if chosen is not None and chosen.id in shown else None
    return SimulationRead(
        matched_rule=MatchedRuleRead(
            id=plan.rule.id, version=plan.rule.version, name=plan.rule.name
        ),
        skipped_rules=plan.skipped_rules,
        department=plan.department.id,
        department_name=plan.department.name,
        candidates=[
            CandidateRead(
                id=c.staff.id,
                name=c.staff.name,
                role=c.staff.role,
                open_load=c.open_load,
                capacity=c.staff.capacity,
                last_assigned_at=c.staff.last_assigned_at,
                eligible=c.eligible,
                why_not=c.why_not,
            )
            for c in candidates
            if c.staff.id in shown
        ],
        chosen_owner_id=chosen_shown.id if chosen_shown else None,
        chosen_owner_name=chosen_shown.name if chosen_shown else None,
        # Said, not only left out: an empty answer read as "nobody would take it" until
        # 6 December.
        chosen_owner_hidden=chosen is not None and chosen_shown is None,
        candidates_hidden=sum(1 for c in candidates if c.staff.id not in shown),
        queued=chosen is None,
        duty_officer=plan.duty_officer is not None,
        in_business_hours=plan.in_business_hours,
        severity=plan.severity,
        sla_policy=plan.policy.id,
        clock_starts_at=plan.clock_starts_at,
        acknowledge_due_at=plan.clocks["acknowledge"].due_at,
        resolve_due_at=plan.clocks["resolve"].due_at,
        regulatory_report_due_at=regulatory.due_at if regulatory else None,
        major_incident=plan.major_incident,
        escalation_level=plan.escalation_level,
        escalated_to_id=(
            escalated_to.staff_id if escalated_to and escalated_to.staff_id in shown else None
        ),
        notify=[
            target
            if target.staff_id is None or target.staff_id in shown
            else NotifyTarget(role=target.role)
            for target in plan.notify
        ],
    )
