"""Unit: where a major incident goes at once, with and without a branch head."""

from __future__ import annotations

from routing.directory.escalation import (
    Reached,
    chain_targets,
    has_branch_head,
    major_incident_target,
)
from routing.directory.models import EscalationStep, StaffRead, StaffRole, StaffStatus

CHAIN = [
    EscalationStep(role=StaffRole.TEAM_LEAD),
    EscalationStep(role=StaffRole.DEPARTMENT_HEAD),
    EscalationStep(role=StaffRole.BRANCH_HEAD),
]


def _person(staff_id: str, role: StaffRole, *, status: StaffStatus = StaffStatus.ACTIVE):
    return StaffRead(
        id=staff_id,
        org="demo",
        branch="HOSP",
        department="PRO",
        department_id="HOSP:PRO",
        name=staff_id,
        role=role,
        status=status,
    )


LEAD = _person("lead", StaffRole.TEAM_LEAD)
DEPARTMENT_HEAD = _person("dept-head", StaffRole.DEPARTMENT_HEAD)
HEAD = _person("head", StaffRole.BRANCH_HEAD)


def _targets(*people: StaffRead):
    return chain_targets(CHAIN, department_code="PRO", branch_staff=list(people))


def test_a_major_incident_goes_to_the_branch_head() -> None:
    targets = _targets(LEAD, DEPARTMENT_HEAD, HEAD)
    assert has_branch_head(targets)
    target = major_incident_target(targets, reached=Reached())
    assert (target.level, target.staff_id) == (3, "head")


def test_without_a_head_it_goes_to_the_most_senior_person_the_chain_finds() -> None:
    on_leave = _person("head", StaffRole.BRANCH_HEAD, status=StaffStatus.ON_LEAVE)
    targets = _targets(LEAD, DEPARTMENT_HEAD, on_leave)
    assert not has_branch_head(targets)
    target = major_incident_target(targets, reached=Reached())
    assert (target.level, target.staff_id, target.role) == (
        2,
        "dept-head",
        StaffRole.DEPARTMENT_HEAD,
    )
    # Standing there already: nobody more senior to go to.
    there = Reached(level=2, staff_id="dept-head", role=StaffRole.DEPARTMENT_HEAD)
    assert major_incident_target(targets, reached=there) is None


def test_without_anyone_on_the_chain_it_goes_to_nobody() -> None:
    assert major_incident_target(_targets(), reached=Reached()) is None
