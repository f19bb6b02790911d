"""Escalation chains: who is at each level of a department's chain (pure functions).

A chain lists steps as named people or roles; roles are looked up when the
complaint escalates, so a new team lead takes over without editing chains.
Every chain ends with the branch head: if an organisation left that rung out,
it is implied, because a major incident must always be able to reach the head.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routing.directory.models import EscalationStep, StaffRead, StaffRole, StaffStatus


@dataclass(frozen=True)
class EscalationTarget:
    level: int
    role: StaffRole | None
    staff_id: str | None
    name: str | None


def _first_with_role(people: Iterable[StaffRead], role: StaffRole) -> StaffRead | None:
    matching = sorted((person for person in people if person.role is role), key=lambda p: p.id)
    return matching[0] if matching else None


def _is_branch_head_step(step: EscalationStep, by_id: dict[str, StaffRead]) -> bool:
    if step.role is StaffRole.BRANCH_HEAD:
        return True
    person = by_id.get(step.staff_id or "")
    return person is not None and person.role is StaffRole.BRANCH_HEAD


def effective_chain(
    chain: list[EscalationStep], *, branch_staff: list[StaffRead]
) -> list[EscalationStep]:
    """The configured chain, with the branch head appended when it is missing."""
    by_id = {person.id: person for person in branch_staff}
    if any(_is_branch_head_step(step, by_id) for step in chain):
        return list(chain)
    return [*chain, EscalationStep(role=StaffRole.BRANCH_HEAD)]


def chain_targets(
    chain: list[EscalationStep], *, department_code: str, branch_staff: list[StaffRead]
) -> list[EscalationTarget]:
    """Level 1..n of the chain resolved to active people where possible.

    Team leads and department heads are looked up in the department, the branch
    head in the whole branch. A step whose person is gone still names the role,
    so the escalation is visible even before the post is filled.
    """
    active = [person for person in branch_staff if person.status is StaffStatus.ACTIVE]
    by_id = {person.id: person for person in branch_staff}
    in_department = [person for person in active if person.department == department_code]
    targets = []
    for level, step in enumerate(effective_chain(chain, branch_staff=branch_staff), start=1):
        if step.staff_id is not None:
            person = by_id.get(step.staff_id)
            if person is not None and person.status is StaffStatus.ACTIVE:
                targets.append(EscalationTarget(level, person.role, person.id, person.name))
            else:
                role = person.role if person is not None else None
                targets.append(EscalationTarget(level, role, None, None))
            continue
        role = step.role or StaffRole.BRANCH_HEAD
        pool = active if role is StaffRole.BRANCH_HEAD else in_department
        person = _first_with_role(pool, role)
        targets.append(
            EscalationTarget(
                level, role, person.id if person else None, person.name if person else None
            )
        )
    return targets


def branch_head_level(targets: list[EscalationTarget]) -> int:
    """The level a major incident jumps to: the chain's branch-head rung."""
    for target in targets:
        if target.role is StaffRole.BRANCH_HEAD:
            return target.level
    return len(targets)


def target_at(targets: list[EscalationTarget], level: int) -> EscalationTarget | None:
    return targets[level - 1] if 1 <= level <= len(targets) else None
