"""Who may call a route: one declaration per route, checked before the route runs.

Every route of every service declares its access as a FastAPI dependency, in the style of
Netflix Dispatch's ``PermissionsDependency``::

    Reader = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="reading complaints")

    @router.get("/{complaint_id}")
    async def get_complaint(complaint_id: str, principal: Reader) -> ComplaintRead: ...

- ``roles``: a caller needs at least one of them (``admin`` holds every role); a token
  without a listed role is a 403. Every declaration names at least one role.
- ``scope``: ``Scope.BRANCH`` routes act on branch data, and the route's store limits what
  they see to the token's branches (another branch's ids are 404, never 403);
  ``Scope.ORGANISATION`` routes act on the organisation's configuration (routing rules, SLA
  policies, follow-up policies, creating and retiring branches) and need a token for all
  branches (``"branches": "*"``), else 403.

Operational probes (``/healthz``, ``/readyz``, ``/metrics``) declare :func:`public` instead.
:func:`declaration_of` finds a route's declaration; the access test walks every route of
every app with it, and docs/security.md's role matrix is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from complaints_shared.auth import CurrentPrincipal, Principal, Role, current_principal_of
from complaints_shared.problems import ProblemError


class Scope(StrEnum):
    """What a route acts on."""

    BRANCH = "branch"
    ORGANISATION = "organisation"


def forbidden(detail: str) -> ProblemError:
    return ProblemError(status=403, title="Forbidden", kind="forbidden", detail=detail)


@dataclass(frozen=True)
class Access:
    """A route's access declaration; as a dependency it yields the permitted principal."""

    roles: frozenset[Role]
    scope: Scope
    action: str

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError(f"{self.action}: an access declaration needs at least one role")

    async def __call__(self, principal: CurrentPrincipal) -> Principal:
        if not principal.has_any_role(self.roles):
            wanted = " or ".join(sorted(role.value for role in self.roles | {Role.ADMIN}))
            held = [role.value for role in principal.roles]
            raise forbidden(f"{self.action} needs role {wanted}; the token has {held}")
        if self.scope is Scope.ORGANISATION and not principal.all_branches:
            raise forbidden(
                f"{self.action} changes or reads the organisation's configuration and needs "
                "a token for all branches of the organisation"
            )
        return principal

    def permits(self, role: Role) -> bool:
        return role is Role.ADMIN or role in self.roles


@dataclass(frozen=True)
class Public:
    """A route any caller may reach without a token (liveness, readiness, metrics)."""

    reason: str

    async def __call__(self) -> None:
        return None


async def refusal(request: Request) -> ProblemError | None:
    """The 401, 403 or 503 the route's declaration answers this caller; None when it lets
    them through (or the route declares none).

    For answers decided before the route's dependencies run: FastAPI reads a JSON body, and
    the app checks the query's parameter names, first. A caller without a token, or without
    the role, learned from a 422 how the route reads its input instead of that they may not
    call it."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    declared = _declarations(dependant) if dependant is not None else []
    if len(declared) != 1 or not isinstance(declared[0], Access):
        return None
    try:
        await declared[0](await current_principal_of(request))
    except ProblemError as refused:
        return refused
    return None


def allow(*roles: Role, scope: Scope, action: str) -> Any:
    """The principal type of a route parameter: ``principal: allow(...)`` declares access."""
    return Annotated[Principal, Depends(Access(frozenset(roles), scope, action))]


def public(reason: str) -> Any:
    """Route ``dependencies=[public(...)]``: reachable without a token, on purpose."""
    return Depends(Public(reason))


@dataclass(frozen=True)
class Operation:
    """One method on one path of an app, with what it declares about access."""

    method: str
    path: str
    declarations: tuple[Access | Public, ...]
    # Routes FastAPI adds itself (OpenAPI document, Swagger UI, ReDoc) have no dependencies.
    documentation: bool = False

    @property
    def declaration(self) -> Access | Public | None:
        return self.declarations[0] if len(self.declarations) == 1 else None


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of ``app`` (walking ``app.routes``, included routers expanded)."""
    documentation = {app.openapi_url, app.docs_url, app.redoc_url}
    documentation.add(app.swagger_ui_oauth2_redirect_url)
    found: list[Operation] = []
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        declared = tuple(_declarations(dependant)) if dependant is not None else ()
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append(
                Operation(
                    method=method,
                    path=str(route.path),
                    declarations=declared,
                    documentation=dependant is None and route.path in documentation,
                )
            )
    return found


def _declarations(dependant: Dependant) -> list[Access | Public]:
    found: list[Access | Public] = []
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, Access | Public):
            found.append(dependency.call)
        found.extend(_declarations(dependency))
    return found
