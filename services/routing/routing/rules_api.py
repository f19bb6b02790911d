"""HTTP routes of routing rules, SLA policies and the side-effect-free simulation."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from complaints_shared.auth import CurrentPrincipal, Principal, Role, require_role
from complaints_shared.events import ComplaintReceived, CustomerContact
from complaints_shared.problems import ProblemError, not_found
from complaints_shared.runtime import Runtime
from routing import flows, rules_store, store
from routing.models import (
    CandidateRead,
    MatchedRuleRead,
    RuleCreate,
    RuleRead,
    RuleUpdate,
    RuleVersionRead,
    SimulateRequest,
    SimulationRead,
    SlaPolicy,
    SlaPolicyWrite,
    Slug,
)

router = APIRouter(prefix="/v1/routing", tags=["routing rules"])


def _admin(request: Request, principal: Principal, action: str) -> Runtime:
    require_role(principal, Role.ADMIN, action=action)
    return request.app.state.runtime


# --------------------------------------------------------------------- rules --


@router.get("/rules", response_model=list[RuleRead], summary="The rules in matching order")
async def list_rules(
    request: Request, principal: CurrentPrincipal, include_inactive: bool = False
) -> list[RuleRead]:
    runtime = _admin(request, principal, "listing routing rules")
    return await rules_store.list_rules(
        db=runtime.db, principal=principal, include_inactive=include_inactive
    )


@router.post("/rules", status_code=status.HTTP_201_CREATED, response_model=RuleRead)
async def create_rule(body: RuleCreate, request: Request, principal: CurrentPrincipal) -> RuleRead:
    runtime = _admin(request, principal, "creating a routing rule")
    return await rules_store.create_rule(
        db=runtime.db, principal=principal, body=body, now=runtime.clock.now()
    )


@router.get("/rules/{rule_id}", response_model=RuleRead)
async def get_rule(rule_id: str, request: Request, principal: CurrentPrincipal) -> RuleRead:
    runtime = _admin(request, principal, "reading a routing rule")
    return await rules_store.get_rule(db=runtime.db, principal=principal, rule_id=rule_id)


@router.patch("/rules/{rule_id}", response_model=RuleRead, summary="Change a rule: a new version")
async def update_rule(
    rule_id: str, body: RuleUpdate, request: Request, principal: CurrentPrincipal
) -> RuleRead:
    runtime = _admin(request, principal, "changing a routing rule")
    return await rules_store.update_rule(
        db=runtime.db, principal=principal, rule_id=rule_id, body=body, now=runtime.clock.now()
    )


@router.delete("/rules/{rule_id}", response_model=RuleRead, summary="Deactivate (kept for audit)")
async def deactivate_rule(rule_id: str, request: Request, principal: CurrentPrincipal) -> RuleRead:
    runtime = _admin(request, principal, "deactivating a routing rule")
    return await rules_store.deactivate_rule(
        db=runtime.db, principal=principal, rule_id=rule_id, now=runtime.clock.now()
    )


@router.get("/rules/{rule_id}/versions", response_model=list[RuleVersionRead])
async def rule_versions(
    rule_id: str, request: Request, principal: CurrentPrincipal
) -> list[RuleVersionRead]:
    runtime = _admin(request, principal, "reading a rule's history")
    return await rules_store.rule_versions(db=runtime.db, principal=principal, rule_id=rule_id)


# -------------------------------------------------------------- SLA policies --


@router.get("/sla-policies", response_model=list[SlaPolicy])
async def list_policies(request: Request, principal: CurrentPrincipal) -> list[SlaPolicy]:
    runtime = _admin(request, principal, "listing SLA policies")
    return await rules_store.list_policies(db=runtime.db, principal=principal)


@router.get("/sla-policies/{policy_id}", response_model=SlaPolicy)
async def get_policy(policy_id: str, request: Request, principal: CurrentPrincipal) -> SlaPolicy:
    runtime = _admin(request, principal, "reading an SLA policy")
    return await rules_store.get_policy(db=runtime.db, principal=principal, policy_id=policy_id)


@router.put("/sla-policies/{policy_id}", response_model=SlaPolicy, summary="Create or replace")
async def put_policy(
    policy_id: Slug, body: SlaPolicyWrite, request: Request, principal: CurrentPrincipal
) -> SlaPolicy:
    runtime = _admin(request, principal, "changing an SLA policy")
    return await rules_store.put_policy(
        db=runtime.db, principal=principal, policy_id=policy_id, body=body, now=runtime.clock.now()
    )


# ---------------------------------------------------------------- simulation --


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
async def simulate(
    body: SimulateRequest, request: Request, principal: CurrentPrincipal
) -> SimulationRead:
    require_role(principal, Role.SUPERVISOR, action="simulating routing")
    if not principal.can_see(org=principal.org, branch=body.branch):
        raise not_found(what="branch", identifier=body.branch)
    runtime: Runtime = request.app.state.runtime
    complaint = _as_received(body, org=principal.org, runtime=runtime)
    context = await store.load_context(db=runtime.db, complaint=complaint)
    try:
        plan = store.plan_for(complaint, context)
    except flows.NoRoute as exc:
        raise ProblemError(
            status=422, title="Unroutable", kind="unroutable", detail=str(exc)
        ) from None
    candidates = await store.ranked_candidates(
        db=runtime.db,
        org=principal.org,
        department_id=plan.department.id,
        required_skill=plan.rule.action.required_skill,
    )
    chosen = plan.duty_officer or next((c.staff for c in candidates if c.eligible), None)
    return _simulation(plan, candidates, chosen)


def _simulation(plan: flows.RoutePlan, candidates: list[flows.Candidate], chosen) -> SimulationRead:
    escalated_to = plan.escalated_to
    regulatory = plan.clocks.get("regulatory_report")
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
        ],
        chosen_owner_id=chosen.id if chosen else None,
        chosen_owner_name=chosen.name if chosen else None,
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
        escalated_to_id=escalated_to.staff_id if escalated_to else None,
        notify=plan.notify,
    )
