"""JWT bearer auth (HS256): who is calling, for which organisation and branches.

Claims: ``sub`` (who), ``org`` (organisation code), ``branches`` (a list of
branch codes, or ``"*"`` for all branches of the organisation), ``roles``.
Role mapping: ``agent`` works complaints, ``supervisor`` also reopens, closes
and reassigns, ``admin`` may do everything including directory and rules.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from complaints_shared.problems import ProblemError
from complaints_shared.settings import ServiceSettings

ALL_BRANCHES = "*"


class Role(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Principal(BaseModel):
    """The authenticated caller."""

    subject: str
    org: str
    branches: list[str] | str
    roles: list[Role]

    @property
    def all_branches(self) -> bool:
        return self.branches == ALL_BRANCHES

    def can_see(self, *, org: str, branch: str) -> bool:
        return org == self.org and (self.all_branches or branch in self.branches)

    def scope_filter(self) -> dict[str, Any]:
        """A MongoDB filter restricting documents (with org/branch fields) to this caller."""
        if self.all_branches:
            return {"org": self.org}
        return {"org": self.org, "branch": {"$in": list(self.branches)}}

    def has_any_role(self, *roles: Role) -> bool:
        return Role.ADMIN in self.roles or any(role in self.roles for role in roles)


def mint_token(
    *,
    secret: str,
    subject: str,
    org: str,
    branches: list[str] | str,
    roles: list[str],
    ttl: timedelta = timedelta(hours=12),
    issuer: str = "complaint-desk",
    audience: str = "complaint-desk",
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": subject,
        "org": org,
        "branches": branches,
        "roles": roles,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        status=401,
        title="Unauthorized",
        detail=detail,
        kind="unauthorized",
    )


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the caller from a valid bearer token, else 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (Authorization: Bearer <jwt>)")
    settings: ServiceSettings = request.app.state.settings
    try:
        claims = jwt.decode(
            credentials.credentials,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    try:
        return Principal(
            subject=claims["sub"],
            org=claims["org"],
            branches=claims["branches"],
            roles=claims.get("roles", []),
        )
    except (KeyError, ValueError) as exc:
        raise _unauthorized(f"token claims are incomplete or invalid: {exc}") from None


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(principal: Principal, *roles: Role, action: str) -> None:
    if not principal.has_any_role(*roles):
        wanted = " or ".join(role.value for role in roles)
        held = [role.value for role in principal.roles]
        raise ProblemError(
            status=403,
            title="Forbidden",
            kind="forbidden",
            detail=f"{action} needs role {wanted}; the token has {held}",
        )


def main(argv: list[str] | None = None) -> None:
    """CLI: print a signed token (``complaints-token --org demo --branches LZ --roles agent``)."""
    parser = argparse.ArgumentParser(description="Mint a bearer token for the complaint services.")
    parser.add_argument("--org", default="demo")
    parser.add_argument("--branches", default=ALL_BRANCHES, help="comma-separated codes or *")
    parser.add_argument("--roles", default="admin", help="comma-separated: agent,supervisor,admin")
    parser.add_argument("--subject", default="cli-user")
    parser.add_argument("--ttl-hours", type=float, default=12.0)
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    branches: list[str] | str = (
        ALL_BRANCHES if args.branches == ALL_BRANCHES else args.branches.split(",")
    )
    roles = [Role(role.strip()).value for role in args.roles.split(",") if role.strip()]
    token = mint_token(
        secret=os.environ.get("JWT_SECRET", settings.jwt_secret),
        subject=args.subject,
        org=args.org,
        branches=branches,
        roles=roles,
        ttl=timedelta(hours=args.ttl_hours),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    sys.stdout.write(token + "\n")


if __name__ == "__main__":
    main()
