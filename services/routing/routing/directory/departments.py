"""Departments as their branch's administrators keep them: validated writes, scoped reads.

An escalation chain only goes up (no person or role twice, never down a rank), a branch
has one active department of each kind (also when one is reactivated), and a department an
active rule names stays active. Every change announces ``department.updated`` in the same
write (intake shows the department's name on its complaints).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.events import DepartmentUpdated, EventType
from complaints_shared.outbox import outbox_entry, outbox_fields, outbox_update
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import conflict, invalid, not_found
from complaints_shared.settings import ServiceSettings
from routing.directory import store
from routing.directory.models import (
    ROLE_RANK,
    DepartmentCreate,
    DepartmentRead,
    DepartmentUpdate,
    EscalationStep,
)


async def _check_chain(
    *, db: AsyncDatabase, principal: Principal, chain: list[EscalationStep], branch: str
) -> None:
    """Chains go up: no person or role twice (a cycle), never back down a rank; a person
    named is of the department's ``branch``, where an escalation looks them up (another
    branch's was accepted from a token covering both, then escalated to nobody, the rung
    counted as climbed)."""
    if not chain:
        raise invalid("escalation_chain", "an escalation chain needs at least one step")
    seen: set[str] = set()
    highest_rank = 0
    for index, step in enumerate(chain):
        field = f"escalation_chain.{index}"
        if step.staff_id is not None:
            person = await store.visible_staff(db=db, principal=principal, staff_id=step.staff_id)
            if person is None:
                raise invalid(f"{field}.staff_id", f"unknown staff member {step.staff_id!r}")
            if person["branch"] != branch:
                raise invalid(
                    f"{field}.staff_id",
                    f"{step.staff_id!r} is staff of branch {person['branch']}: a chain names "
                    f"people of its department's branch {branch} (or a role)",
                )
            key, rank = f"staff:{step.staff_id}", ROLE_RANK[person["role"]]
        else:
            assert step.role is not None  # the model guarantees one of the two
            key, rank = f"role:{step.role.value}", ROLE_RANK[step.role]
        if key in seen:
            raise invalid(field, f"{key} appears twice: the chain would loop")
        if rank < highest_rank:
            raise invalid(field, f"{key} ranks below an earlier step: escalation would go down")
        seen.add(key)
        highest_rank = max(highest_rank, rank)


async def _check_kind_free(
    *, db: AsyncDatabase, org: str, branch: str, kind: str, except_code: str | None = None
) -> None:
    query: dict[str, Any] = {"org": org, "branch": branch, "kind": kind, "active": True}
    if except_code is not None:
        query["code"] = {"$ne": except_code}
    other = await db[store.DEPARTMENTS].find_one(query)
    if other is not None:
        raise invalid(
            "kind", f"branch {branch} already has department {other['id']} of kind {kind!r}"
        )


# The routing rules' collection (``routing.rules.store``, which reads this package).
RULES = "rules"


async def rules_naming(*, db: AsyncDatabase, org: str, department_ids: list[str]) -> list[str]:
    """The ids of (up to 10) active rules that send complaints to one of ``department_ids``."""
    rules = (
        await db[RULES]
        .find(
            {
                "org": org,
                "action.department_id": {"$in": department_ids},
                "active": {"$ne": False},
            },
            projection={"_id": 1},
            limit=10,
        )
        .to_list(None)
    )
    return sorted(rule["_id"] for rule in rules)


async def _refuse_if_a_rule_names(*, db: AsyncDatabase, org: str, department_id: str) -> None:
    """A department an active rule sends complaints to by id stays active: the rule would
    pass it over from then on (the default rule's: everything no other rule covers went
    unroutable), and a branch's administrator would have changed the organisation's routing."""
    rules = await rules_naming(db=db, org=org, department_ids=[department_id])
    if rules:
        names = ", ".join(rules)
        raise conflict(
            f"department {department_id} is the target of routing rule(s) {names}: an "
            "administrator of all branches changes them first",
            kind="department-in-use",
        )


def _department_updated(document: dict[str, Any], *, settings: ServiceSettings) -> dict[str, Any]:
    """The outbox entry announcing the department as ``document`` shows it."""
    event = DepartmentUpdated(
        org=document["org"],
        branch=document["branch"],
        department=document["id"],
        name=document["name"],
        kind=document["kind"],
        active=document.get("active", True),
        version=document["version"],
        updated_at=document["updated_at"],
    )
    return outbox_entry(event_type=EventType.DEPARTMENT_UPDATED, data=event, settings=settings)


def _announced(
    current: dict[str, Any], changes: dict[str, Any], *, settings: ServiceSettings, now: datetime
) -> dict[str, Any]:
    """The update adding ``department.updated`` of the department after ``changes`` to its
    outbox, for ``store.change_entry`` to make with the change (its version is the next)."""
    after = {**current, **changes, "updated_at": now, "version": current["version"] + 1}
    return outbox_update([_department_updated(after, settings=settings)])


async def create_department(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    body: DepartmentCreate,
    now: datetime,
) -> DepartmentRead:
    principal.require_branch(body.branch, field="branch")

    async def validate() -> None:
        await store.require_active_branch(db=db, org=principal.org, code=body.branch)
        await _check_chain(
            db=db, principal=principal, chain=body.escalation_chain, branch=body.branch
        )
        # Its own code left out: the same creation beside this one may have stored it.
        await _check_kind_free(
            db=db, org=principal.org, branch=body.branch, kind=body.kind, except_code=body.code
        )

    department_id = f"{body.branch}:{body.code}"
    document = store.new_entry(
        key=store.department_key(principal.org, department_id),
        fields={
            "id": department_id,
            "org": principal.org,
            **body.model_dump(mode="json"),
            "active": True,
        },
        now=now,
    )
    document.update(outbox_fields([_department_updated(document, settings=settings)]))
    stored = await store.insert_entry(
        db=db,
        principal=principal,
        entry=store.DEPARTMENT,
        document=document,
        at=now,
        validate=validate,
    )
    return store.department_read(stored)


async def _department_document(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> dict[str, Any]:
    branch, _ = store.split_department_id(department_id)
    principal.require_branch(branch, what="department", identifier=department_id)
    document = await db[store.DEPARTMENTS].find_one(
        {"_id": store.department_key(principal.org, department_id)}
    )
    if document is None:
        raise not_found(what="department", identifier=department_id)
    return document


async def get_department(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> DepartmentRead:
    document = await _department_document(db=db, principal=principal, department_id=department_id)
    return store.department_read(document)


async def list_departments(
    *, db: AsyncDatabase, principal: Principal, branch: str | None, include_inactive: bool
) -> list[DepartmentRead]:
    query: dict[str, Any] = principal.scope_filter()
    if branch is not None:
        principal.require_branch(branch, field="branch")
        query["branch"] = branch
    if not include_inactive:
        query["active"] = True
    documents = await db[store.DEPARTMENTS].find(query).sort("_id", ASCENDING).to_list(None)
    return [store.department_read(document) for document in documents]


async def update_department(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    department_id: str,
    body: DepartmentUpdate,
    if_match: IfMatch | None,
    now: datetime,
) -> DepartmentRead:
    current = await _department_document(db=db, principal=principal, department_id=department_id)
    changes = store.patch_fields(body, nullable=set())

    async def validate() -> None:
        if body.escalation_chain is not None:
            await _check_chain(
                db=db, principal=principal, chain=body.escalation_chain, branch=current["branch"]
            )
        if body.kind is not None:
            await _check_kind_free(
                db=db,
                org=principal.org,
                branch=current["branch"],
                kind=body.kind,
                except_code=current["code"],
            )

    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.DEPARTMENT,
        current=current,
        changes=changes,
        action="updated",
        at=now,
        if_match=if_match,
        validate=validate,
        announce=_announced(current, changes, settings=settings, now=now),
    )
    return store.department_read(updated)


async def deactivate_department(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    department_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> DepartmentRead:
    current = await _department_document(db=db, principal=principal, department_id=department_id)

    async def validate() -> None:
        await _refuse_if_a_rule_names(db=db, org=principal.org, department_id=department_id)

    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.DEPARTMENT,
        current=current,
        changes={"active": False},
        action="deactivated",
        at=now,
        if_match=if_match,
        validate=validate,
        announce=_announced(current, {"active": False}, settings=settings, now=now),
    )
    return store.department_read(updated)


async def reactivate_department(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    department_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> DepartmentRead:
    """Reopen a deactivated department as it was (chain, kind, people): its branch must be
    open and have no other active department of its kind (a 409 naming what blocks it)."""
    current = await _department_document(db=db, principal=principal, department_id=department_id)

    async def validate() -> None:
        branch = await db[store.BRANCHES].find_one(
            {"_id": store.branch_key(principal.org, current["branch"])}
        )
        if branch is not None and not branch.get("active", True):
            raise conflict(
                f"branch {current['branch']} is closed: an administrator of all branches "
                f"reopens it first (POST /v1/directory/branches/{current['branch']}/reactivate)",
                kind="branch-closed",
            )
        other = await db[store.DEPARTMENTS].find_one(
            {
                "org": principal.org,
                "branch": current["branch"],
                "kind": current["kind"],
                "active": True,
                "code": {"$ne": current["code"]},
            }
        )
        if other is not None:
            raise conflict(
                f"branch {current['branch']} has department {other['id']} of kind "
                f"{current['kind']!r} now: one department of a kind per branch",
                kind="department-kind-taken",
            )

    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.DEPARTMENT,
        current=current,
        changes={"active": True},
        action="reactivated",
        at=now,
        if_match=if_match,
        validate=validate,
        announce=_announced(current, {"active": True}, settings=settings, now=now),
    )
    return store.department_read(updated)
