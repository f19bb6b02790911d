"""Bearer tokens: verify the signature and claims, then say who is calling.

Two ways to verify, chosen by the settings:

- the shared secret (``JWT_SECRET``, HS256 only, at least 32 bytes, no default): development,
  tests and deployments without an identity provider;
- an OIDC identity provider's keys (``JWT_JWKS_URL``, or ``JWT_OIDC_DISCOVERY`` from
  ``JWT_ISSUER``): only the asymmetric algorithms of ``JWT_ALGORITHMS``, each key bound to
  its own algorithm, so neither ``alg: none`` nor an HS256 token signed with a public key
  passes. Keys come from PyJWT's ``PyJWKClient``: the set is cached, an unknown ``kid``
  refetches it (at most once per cooldown), so a rotated key works without a restart.

Either way ``exp``, ``nbf``, ``iss`` and ``aud`` are checked with ``JWT_LEEWAY_S`` of clock
skew. The claims then map onto a :class:`Principal` (claim names configurable for identity
providers that use others, see docs/security.md): ``org`` (organisation code), ``branches``
(a list of branch codes, or ``"*"`` for all branches) and ``roles`` (``agent``,
``supervisor``, ``admin``). Anything else is a 401 problem naming the claim.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from complaints_shared.logs import get_logger
from complaints_shared.models import CODE_PATTERN, Code
from complaints_shared.problems import ProblemError, not_found
from complaints_shared.settings import ServiceSettings

log = get_logger(__name__)

ALL_BRANCHES = "*"
SECRET_ALGORITHM = "HS256"
# RFC 7518 §3.2: an HS256 key at least as long as the hash (256 bits).
MIN_SECRET_BYTES = 32
# Refused whatever JWT_ALGORITHMS says: no signature at all, or a shared-secret family
# whose "secret" an attacker could take from the published public key.
FORBIDDEN_ALGORITHMS = {"none", "HS256", "HS384", "HS512"}
DISCOVERY_PATH = "/.well-known/openid-configuration"


class Role(StrEnum):
    """What a caller may do; ``admin`` may do everything."""

    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Principal(BaseModel):
    """The authenticated caller, from a verified token's claims."""

    model_config = ConfigDict(frozen=True)

    subject: Annotated[str, StringConstraints(min_length=1)]
    # No ":": the services key an organisation's things "<org>:<id>" (a staff member, an SLA
    # policy, a rule), so org "acme" asking for policy "x:default" read org "acme:x"'s.
    org: Annotated[str, StringConstraints(min_length=1, pattern=r"^[^:]+$")]
    # A list of codes or "*": a bare string such as "LZ" is refused, never iterated.
    branches: Annotated[tuple[Code, ...], Field(min_length=1)] | Literal["*"]
    roles: tuple[Role, ...] = ()

    @property
    def all_branches(self) -> bool:
        return self.branches == ALL_BRANCHES

    def can_see(self, *, org: str, branch: str) -> bool:
        return org == self.org and (self.all_branches or branch in self.branches)

    def require_branch(
        self, branch: str, *, what: str = "branch", identifier: str = "", field: str | None = None
    ) -> None:
        """404 unless the token covers ``branch``: another branch's things do not exist for it."""
        if not self.can_see(org=self.org, branch=branch):
            problem = not_found(what=what, identifier=identifier or branch)
            if field is not None:
                problem.extensions["field"] = field
            raise problem

    def require_branches(self, branches: Iterable[str], *, field: str) -> None:
        """:meth:`require_branch` for every branch a filter names: one outside the token is a
        404 naming ``field``, never a quietly empty answer."""
        for branch in branches:
            self.require_branch(branch, field=field)

    def scope_filter(self) -> dict[str, Any]:
        """A MongoDB filter restricting documents (with org/branch fields) to this caller."""
        if self.all_branches:
            return {"org": self.org}
        return {"org": self.org, "branch": {"$in": list(self.branches)}}

    def has_any_role(self, roles: frozenset[Role] | set[Role]) -> bool:
        return Role.ADMIN in self.roles or any(role in self.roles for role in roles)


def unauthorized(detail: str, *, claim: str | None = None) -> ProblemError:
    extensions = {"claim": claim} if claim else {}
    return ProblemError(
        status=401,
        title="Unauthorized",
        detail=detail,
        kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        **extensions,
    )


def _key_source_unavailable(detail: str, *, retry_after_s: int) -> ProblemError:
    return ProblemError(
        status=503,
        title="Service unavailable",
        detail=f"the identity provider's keys cannot be fetched right now ({detail}); "
        f"retry after {retry_after_s} seconds",
        kind="dependency-unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


# ---------------------------------------------------------------- claim mapping --


class ClaimMapping(BaseModel):
    """Where the principal's fields sit in the token, and how provider roles map onto ours."""

    subject: str = "sub"
    org: str = "org"
    branches: str = "branches"
    roles: str = "roles"
    role_map: dict[str, Role] = Field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ClaimMapping:
        return cls(
            subject=settings.jwt_claim_subject,
            org=settings.jwt_claim_org,
            branches=settings.jwt_claim_branches,
            roles=settings.jwt_claim_roles,
            role_map=settings.jwt_role_map,
        )

    def principal(self, claims: dict[str, Any]) -> Principal:
        """The principal the claims describe, or a 401 naming the first bad claim."""
        values = {
            "subject": _claim(claims, self.subject),
            "org": _claim(claims, self.org),
            "branches": _claim(claims, self.branches),
            "roles": self._roles(_claim(claims, self.roles)),
        }
        for field, value in values.items():
            if value is None and field != "roles":
                claim = getattr(self, field)
                raise unauthorized(f"the token has no {claim!r} claim", claim=claim)
        if values["roles"] is None:
            values["roles"] = ()
        try:
            return Principal.model_validate(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            claim = getattr(self, str(error["loc"][0]))
            raise unauthorized(
                f"invalid {claim!r} claim: {_claim_rule(str(error['loc'][0]))}", claim=claim
            ) from None

    def _roles(self, raw: Any) -> Any:
        if not self.role_map or not isinstance(raw, list):
            return raw
        # A provider's token carries other applications' roles too: keep only ours.
        return [
            self.role_map[role] for role in raw if isinstance(role, str) and role in self.role_map
        ]


def _claim(claims: dict[str, Any], path: str) -> Any:
    """``realm_access.roles`` reaches nested claims; an exact key with dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _claim_rule(field: str) -> str:
    return {
        "subject": "a non-empty string",
        "org": 'a non-empty string without ":"',
        "branches": f'a non-empty list of branch codes ({CODE_PATTERN}) or "*"',
        "roles": "a list of roles: " + ", ".join(role.value for role in Role),
    }[field]


# ------------------------------------------------------------------ verifying --


class TokenVerifier:
    """Checks signature and registered claims of bearer tokens for one service."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self.mapping = ClaimMapping.from_settings(settings)
        self.algorithms = _asymmetric_algorithms(settings.jwt_algorithms)
        self.uses_jwks = bool(settings.jwt_jwks_url or settings.jwt_oidc_discovery)
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_lock = asyncio.Lock()
        self._cooldown_s = settings.jwt_jwks_refresh_cooldown_s
        # The provider's signing keys as last fetched, and when (monotonic); one fetch at a
        # time (``_keys``). When a fetch (or the discovery) last failed, and why.
        self._keys_lock = asyncio.Lock()
        self._key_set: list[jwt.PyJWK] | None = None
        self._key_set_at = -float("inf")
        self._fetch_failed_at = -float("inf")
        self._discovery_failed_at = -float("inf")
        self._failure = ""
        if settings.jwt_jwks_url:
            self._jwks = self._client(settings.jwt_jwks_url)

    def check_configuration(self) -> None:
        """Refuse to start a service without a way to verify tokens: a shared secret of at
        least ``MIN_SECRET_BYTES`` (RFC 7518 §3.2: an HS256 key of at least 256 bits), or an
        identity provider. There is no default secret to fall back on: one written in this
        repository let a deployment that forgot ``JWT_SECRET`` accept tokens anyone could
        sign. (An app built only to read its routes, for the role matrix or OpenAPI, needs
        none.)"""
        shortfall = secret_shortfall(self._settings.jwt_secret)
        if self.uses_jwks or shortfall is None:
            return
        raise ValueError(
            f"JWT_SECRET: set a secret of at least {MIN_SECRET_BYTES} bytes (e.g. "
            "`openssl rand -hex 32`), or an identity provider (JWT_JWKS_URL, "
            f"JWT_OIDC_DISCOVERY); {shortfall}"
        )

    async def principal(self, token: str) -> Principal:
        return self.mapping.principal(await self.claims(token))

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; 401 for any flaw, 503 if keys are unreachable."""
        if self.uses_jwks:
            key: Any = await self._signing_key(token)
            algorithms = self.algorithms
        else:
            key, algorithms = self._settings.jwt_secret, [SECRET_ALGORITHM]
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token: {exc}") from None

    async def _signing_key(self, token: str) -> jwt.PyJWK:
        """The provider's key named by the token's ``kid``: 401 when the provider has none
        such (the set is fetched again for an unknown ``kid`` at most once per cooldown, so a
        rotated key is taken up), 503 when the key source cannot be reached or does not
        answer a usable key set."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        if header.get("alg") not in self.algorithms:
            raise unauthorized(
                f"invalid token: algorithm {header.get('alg')!r} is not accepted "
                f"(accepted: {', '.join(self.algorithms)})"
            )
        kid = header.get("kid")
        client = await self._client_for_issuer()
        keys, fetched_at = await self._keys(client)
        key = jwt.PyJWKClient.match_kid(keys, kid)
        if key is None:  # perhaps rotated in since: the set again, at most once per cooldown
            keys, _ = await self._keys(client, refresh_since=fetched_at)
            key = jwt.PyJWKClient.match_kid(keys, kid)
        if key is None:
            raise unauthorized(f"invalid token: the identity provider has no signing key {kid!r}")
        return key

    async def _keys(
        self, client: jwt.PyJWKClient, *, refresh_since: float | None = None
    ) -> tuple[list[jwt.PyJWK], float]:
        """The signing keys and when they were fetched: the set kept for
        ``jwt_jwks_cache_s``, fetched one at a time (concurrent requests wait for the one
        fetch). ``refresh_since``: a ``kid`` not in the set fetched then; fetched again
        unless that was within the cooldown or someone has fetched it since.

        Whatever keeps the keys from being read (no connection, an error page, JSON that is
        no key set, a set without signing keys) is the source's failure, not the token's: a
        503, without asking the source again until the cooldown has passed. A refresh that
        fails leaves the kept set serving: a random ``kid`` meeting a provider's blip made
        every token a 503 for the cooldown."""
        async with self._keys_lock:
            now = time.monotonic()
            kept = self._key_set
            fresh = kept is not None and now - self._key_set_at < self._settings.jwt_jwks_cache_s
            refresh = (
                refresh_since is not None
                and self._key_set_at <= refresh_since
                and now - self._key_set_at >= self._cooldown_s
            )
            if fresh and not refresh:
                assert kept is not None
                return kept, self._key_set_at
            if now - self._fetch_failed_at < self._cooldown_s:  # failed lately: not yet again
                if fresh:
                    assert kept is not None
                    return kept, self._key_set_at
                raise _key_source_unavailable(self._failure, retry_after_s=self._retry_after_s())
            try:
                # PyJWKClient fetches with blocking urllib: keep it off the event loop.
                keys = await asyncio.to_thread(client.get_signing_keys, True)
            except Exception as exc:
                self._fetch_failed_at = time.monotonic()
                self._failure = f"{client.uri}: {exc}"
                if fresh:
                    assert kept is not None
                    log.warning("jwks_refresh_failed", error=self._failure)
                    return kept, self._key_set_at
                raise _key_source_unavailable(
                    self._failure, retry_after_s=self._retry_after_s()
                ) from None
            self._key_set, self._key_set_at = keys, time.monotonic()
            return keys, self._key_set_at

    async def _client_for_issuer(self) -> jwt.PyJWKClient:
        if self._jwks is not None:
            return self._jwks
        async with self._jwks_lock:
            if self._jwks is None:
                if time.monotonic() - self._discovery_failed_at < self._cooldown_s:
                    raise _key_source_unavailable(
                        self._failure, retry_after_s=self._retry_after_s()
                    )
                try:
                    url = await self._discover_jwks_url()
                    try:
                        self._jwks = self._client(url)
                    except jwt.PyJWKClientError as exc:  # a jwks_uri that is not http(s)
                        raise _key_source_unavailable(
                            f"discovery names jwks_uri {url!r}: {exc}",
                            retry_after_s=self._retry_after_s(),
                        ) from None
                except ProblemError as unavailable:
                    self._discovery_failed_at = time.monotonic()
                    self._failure = unavailable.detail
                    raise
        return self._jwks

    async def _discover_jwks_url(self) -> str:
        issuer = self._settings.jwt_issuer
        url = issuer.rstrip("/") + DISCOVERY_PATH
        try:
            async with httpx.AsyncClient(timeout=self._settings.jwt_jwks_timeout_s) as client:
                response = await client.get(url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _key_source_unavailable(
                f"discovery at {url}: {exc}", retry_after_s=self._retry_after_s()
            ) from None
        if not isinstance(document, dict):
            document = {}
        # OIDC Discovery 1.0 §4.3: the document must name exactly the issuer we asked.
        if document.get("issuer") != issuer or not isinstance(document.get("jwks_uri"), str):
            raise _key_source_unavailable(
                f"discovery at {url} names issuer {document.get('issuer')!r} "
                f"and jwks_uri {document.get('jwks_uri')!r}",
                retry_after_s=self._retry_after_s(),
            )
        return document["jwks_uri"]

    def _client(self, url: str) -> jwt.PyJWKClient:
        # Only fetches: ``_keys`` keeps the set and decides when to fetch it again.
        return jwt.PyJWKClient(url, cache_jwk_set=False, timeout=self._settings.jwt_jwks_timeout_s)

    def _retry_after_s(self) -> int:
        return max(1, round(self._settings.jwt_jwks_refresh_cooldown_s))


def secret_shortfall(secret: str) -> str | None:
    """What keeps ``secret`` from being a shared secret (None: nothing)."""
    if not secret:
        return "none is set"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return "the one set is shorter"
    return None


def _asymmetric_algorithms(configured: str) -> list[str]:
    algorithms = [name.strip() for name in configured.split(",") if name.strip()]
    refused = [name for name in algorithms if name in FORBIDDEN_ALGORITHMS]
    if refused or not algorithms:
        raise ValueError(
            f"JWT_ALGORITHMS={configured!r}: list asymmetric algorithms only "
            f"(refused: {', '.join(refused) or 'an empty list'})"
        )
    return algorithms


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the caller from a valid bearer token, else 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("a bearer token is required (Authorization: Bearer <jwt>)")
    verifier: TokenVerifier = request.app.state.token_verifier
    return await verifier.principal(credentials.credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def current_principal_of(request: Request) -> Principal:
    """:func:`current_principal` outside dependency solving (an exception handler's)."""
    return await current_principal(request, await _bearer(request))


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
    """A token signed with the shared secret (development, tests, ``make token``)."""
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
    return jwt.encode(claims, secret, algorithm=SECRET_ALGORITHM)


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
    secret = os.environ.get("JWT_SECRET", settings.jwt_secret)
    shortfall = secret_shortfall(secret)
    if shortfall is not None:
        parser.error(
            f"JWT_SECRET: {shortfall}; the secret the services verify tokens with, at least "
            f"{MIN_SECRET_BYTES} bytes"
        )
    branches: list[str] | str = (
        ALL_BRANCHES if args.branches == ALL_BRANCHES else args.branches.split(",")
    )
    roles = [Role(role.strip()).value for role in args.roles.split(",") if role.strip()]
    token = mint_token(
        secret=secret,
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
