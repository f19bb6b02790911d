"""Escalation chains: who is at each level of a department's chain (pure functions).

A chain lists steps as named people or roles; roles are looked up when the
complaint escalates, so a new team lead takes over without editing chains. A
named person who is inactive or on leave is stood in for by whoever holds their
role now (the branch head for a branch head, the department's holder otherwise).
Every chain ends with the branch head: if an organisation left that rung out,
it is implied, because a major incident must always be able to reach the head.

A climb starts from what the complaint's escalations reached (the person, else
their role), not from a position in the chain as it is now: an administrator may
have changed the chain since, or the complaint moved to another department's.
A step that finds nobody is passed over, never climbed to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from routing.directory.models import (
    ROLE_RANK,
    EscalationStep,
    StaffRead,
    StaffRole,
    StaffStatus,
)


@dataclass(frozen=True)
class EscalationTarget:
    level: int
    role: StaffRole | None
    staff_id: str | None
    name: str | None


@dataclass(frozen=True)
class Reached:
    """What a complaint's escalations reached: the level, and the person and role of the
    escalation standing there (None when nothing was climbed, or it recorded neither)."""

    level: int = 0
    staff_id: str | None = None
    role: StaffRole | None = None


def _first_with_role(people: Iterable[StaffRead], role: StaffRole) -> StaffRead | None:
    matching = sorted((person for person in people if person.role is role), key=lambda p: p.id)
    return matching[0] if matching else None


def _is_active_branch_head(step: EscalationStep, by_id: dict[str, StaffRead]) -> bool:
    if step.role is StaffRole.BRANCH_HEAD:
        return True
    person = by_id.get(step.staff_id or "")
    return (
        person is not None
        and person.role is StaffRole.BRANCH_HEAD
        and person.status is StaffStatus.ACTIVE
    )


def effective_chain(
    chain: list[EscalationStep], *, branch_staff: list[StaffRead]
) -> list[EscalationStep]:
    """The configured chain, with the branch head appended unless a step already reaches
    one: the role, or a named branch head still active (a retired head named in the chain
    was taken for the rung, and a major incident reached nobody)."""
    by_id = {person.id: person for person in branch_staff}
    if any(_is_active_branch_head(step, by_id) for step in chain):
        return list(chain)
    return [*chain, EscalationStep(role=StaffRole.BRANCH_HEAD)]


def chain_targets(
    chain: list[EscalationStep], *, department_code: str, branch_staff: list[StaffRead]
) -> list[EscalationTarget]:
    """Level 1..n of the chain resolved to active people where possible.

    Team leads and department heads are looked up in the department, the branch
    head in the whole branch. A named person who is inactive or on leave is stood in
    for by the active holder of their role found the same way. A step that finds
    nobody still names the role (``staff_id`` None); climbs pass it over.
    """
    active = [person for person in branch_staff if person.status is StaffStatus.ACTIVE]
    by_id = {person.id: person for person in branch_staff}
    in_department = [person for person in active if person.department == department_code]

    def holder(role: StaffRole) -> StaffRead | None:
        return _first_with_role(active if role is StaffRole.BRANCH_HEAD else in_department, role)

    targets = []
    for level, step in enumerate(effective_chain(chain, branch_staff=branch_staff), start=1):
        person: StaffRead | None
        if step.staff_id is not None:
            named = by_id.get(step.staff_id)
            role = named.role if named is not None else None
            if named is not None and named.status is StaffStatus.ACTIVE:
                person = named
            else:
                person = holder(role) if role is not None else None
        else:
            role = step.role or StaffRole.BRANCH_HEAD
            person = holder(role)
        targets.append(
            EscalationTarget(
                level, role, person.id if person else None, person.name if person else None
            )
        )
    return targets


def _climbed_past(targets: list[EscalationTarget], reached: Reached) -> int:
    """How many of ``targets`` lie at or below what was reached: up to the last step that
    found the person reached, else the last step not ranking above their role, else (an
    escalation that recorded neither) the level, as a rung of this chain."""
    if reached.level == 0:
        return 0
    if reached.staff_id is not None:
        for index in range(len(targets) - 1, -1, -1):
            if targets[index].staff_id == reached.staff_id:
                return index + 1
    if reached.role is not None:
        rank = ROLE_RANK[reached.role]
        return max(
            (
                index + 1
                for index, target in enumerate(targets)
                if target.role is not None and ROLE_RANK[target.role] <= rank
            ),
            default=0,
        )
    return min(reached.level, len(targets))


def _climbed_to(target: EscalationTarget, reached: Reached) -> EscalationTarget:
    # Levels only go up: a chain shortened since, or a shorter one the complaint moved to,
    # counts on from the level reached.
    return replace(target, level=max(target.level, reached.level + 1))


def next_target(targets: list[EscalationTarget], *, reached: Reached) -> EscalationTarget | None:
    """The next step above what was reached that finds a person (None: nobody above)."""
    for target in targets[_climbed_past(targets, reached) :]:
        if target.staff_id is not None:
            return _climbed_to(target, reached)
    return None


def vacant_above(targets: list[EscalationTarget], *, reached: Reached) -> bool:
    """Whether the chain has steps above what was reached, all of them without a person."""
    above = targets[_climbed_past(targets, reached) :]
    return bool(above) and all(target.staff_id is None for target in above)


def branch_head_target(
    targets: list[EscalationTarget], *, reached: Reached
) -> EscalationTarget | None:
    """The chain's branch-head rung with a person, unless what was reached stands there or
    higher already (None also while the branch has no active head)."""
    for target in targets[_climbed_past(targets, reached) :]:
        if target.role is StaffRole.BRANCH_HEAD and target.staff_id is not None:
            return _climbed_to(target, reached)
    return None


def has_branch_head(targets: list[EscalationTarget]) -> bool:
    """Whether the chain's branch-head rung finds a person."""
    return any(
        target.role is StaffRole.BRANCH_HEAD and target.staff_id is not None for target in targets
    )


def major_incident_target(
    targets: list[EscalationTarget], *, reached: Reached
) -> EscalationTarget | None:
    """Where a major incident goes at once: the branch head; while the branch has none
    active, the most senior person the chain finds above what was reached (until 5
    December nobody: a medical error in a hospital without a head was escalated to no one
    at once). None when what was reached stands there already."""
    if has_branch_head(targets):
        return branch_head_target(targets, reached=reached)
    staffed = [
        target
        for target in targets[_climbed_past(targets, reached) :]
        if target.staff_id is not None
    ]
    return _climbed_to(staffed[-1], reached) if staffed else None
