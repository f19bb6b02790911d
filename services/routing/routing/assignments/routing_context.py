"""What one routing decision reads: rules, departments, people, calendar, policies.

The real assignment, a retry of an unroutable complaint and ``POST
/v1/routing/simulate`` all load the same context and plan with it, so a
simulation cannot drift from what would really happen.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import ComplaintReceived, Severity
from routing.assignments import planning
from routing.directory import calendar_history
from routing.directory import store as directory_store
from routing.directory.escalation import EscalationTarget, chain_targets
from routing.directory.models import BranchRead, DepartmentRead, StaffRead
from routing.rules import store as rules_store
from routing.rules.models import RoutingRule
from routing.sla import clocks as sla_clocks
from routing.sla import store as policy_store
from routing.sla.models import SlaPolicy


@dataclass
class RoutingContext:
    """What one routing decision reads from the directory, the rules and the policies."""

    rules: list[RoutingRule]
    departments: list[DepartmentRead]
    calendar: BusinessCalendar
    policies: list[SlaPolicy]
    staff: list[StaffRead]
    duty_officer: StaffRead | None
    # The branch's ``calendar_version`` of ``calendar``: the assignment planned on it says so.
    calendar_version: int = 0


def default_branch(org: str, code: str) -> BranchRead:
    """A branch missing from the directory still gets business hours (the defaults)."""
    return BranchRead(org=org, code=code, name=code)


async def branch_calendar(
    *, db: AsyncDatabase, org: str, branch: str, version: int | None = None
) -> BusinessCalendar:
    """The branch's calendar; with ``version``, the one it had then: an assignment's clocks
    are laid out on the calendar of its ``calendar_version`` until they are re-laid on the
    branch's new one (``assignments.calendar_changes``)."""
    if version is not None:
        calendars = await calendar_history.branch_calendars(db=db, org=org, code=branch)
        return calendars.at_version(version)
    found = await directory_store.find_branch(db=db, org=org, code=branch)
    return sla_clocks.branch_calendar(found or default_branch(org, branch))


async def load_context(*, db: AsyncDatabase, complaint: ComplaintReceived) -> RoutingContext:
    """Everything a routing decision reads, fetched in two concurrent rounds."""
    org = complaint.org
    rules, branch, policies = await asyncio.gather(
        rules_store.load_rules(db=db, org=org),
        directory_store.find_branch(db=db, org=org, code=complaint.branch),
        policy_store.load_policies(db=db, org=org),
    )
    branch = branch or default_branch(org, complaint.branch)
    explicit = sorted({r.action.department_id for r in rules if r.action.department_id})
    # A department id starts with its branch code, so the people can be fetched alongside.
    branches = [complaint.branch, *(department_id.split(":")[0] for department_id in explicit)]
    departments, staff, duty_officer = await asyncio.gather(
        directory_store.departments_for_routing(
            db=db, org=org, branch=complaint.branch, department_ids=explicit
        ),
        directory_store.staff_of_branches(db=db, org=org, branches=branches),
        _duty_officer(db=db, org=org, branch=branch),
    )
    return RoutingContext(
        rules=rules,
        departments=departments,
        calendar=sla_clocks.branch_calendar(branch),
        policies=policies,
        staff=staff,
        duty_officer=duty_officer,
        calendar_version=branch.calendar_version,
    )


async def _duty_officer(*, db: AsyncDatabase, org: str, branch: BranchRead) -> StaffRead | None:
    """The branch's duty officer; none while the branch is closed (deactivated)."""
    if branch.duty_officer_id is None or not branch.active:
        return None
    return await directory_store.find_staff(db=db, org=org, staff_id=branch.duty_officer_id)


async def _calendar_and_duty_officer(
    *, db: AsyncDatabase, org: str, branch: str
) -> tuple[BusinessCalendar, StaffRead | None]:
    found = await directory_store.find_branch(db=db, org=org, code=branch)
    found = found or default_branch(org, branch)
    officer = await _duty_officer(db=db, org=org, branch=found)
    return sla_clocks.branch_calendar(found), officer


async def duty_officer_on_duty(
    *, db: AsyncDatabase, org: str, branch: str, at: datetime
) -> StaffRead | None:
    """``branch``'s duty officer if they stand in for it at ``at`` (``planning.on_duty``)."""
    calendar, officer = await _calendar_and_duty_officer(db=db, org=org, branch=branch)
    return planning.on_duty(officer, calendar=calendar, at=at)


async def duty_officer_taking(
    *, db: AsyncDatabase, org: str, branch: str, severity: Severity, at: datetime
) -> StaffRead | None:
    """``planning.duty_officer_taking`` for a complaint routed before (queued, reopened): the
    branch and its duty officer are read only for a high or critical one."""
    if severity not in planning.URGENT:
        return None
    calendar, officer = await _calendar_and_duty_officer(db=db, org=org, branch=branch)
    return planning.duty_officer_taking(severity, duty_officer=officer, calendar=calendar, at=at)


def plan_for(
    complaint: ComplaintReceived,
    context: RoutingContext,
    *,
    routed_at: datetime,
    severity_decided: bool = False,
) -> planning.RoutePlan:
    plan = planning.plan_route(
        complaint,
        rules=context.rules,
        departments=context.departments,
        calendar=context.calendar,
        policies=context.policies,
        staff=context.staff,
        duty_officer=context.duty_officer,
        routed_at=routed_at,
        severity_decided=severity_decided,
    )
    return replace(plan, calendar_version=context.calendar_version)


async def escalation_targets(
    *, db: AsyncDatabase, org: str, department_id: str
) -> list[EscalationTarget]:
    department = await directory_store.find_department(db=db, org=org, department_id=department_id)
    if department is None:
        return []
    staff = await directory_store.staff_of_branches(db=db, org=org, branches=[department.branch])
    return chain_targets(
        department.escalation_chain, department_code=department.code, branch_staff=staff
    )
