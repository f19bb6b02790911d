"""Token verification against an identity provider's JWKS, and the shared-secret mode."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from complaints_shared.auth import Role, TokenVerifier, mint_token
from complaints_shared.problems import ProblemError
from complaints_shared.settings import ServiceSettings
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.identity_provider import AUDIENCE, IdentityProvider
from tests.support.private_infrastructure import free_port
from tests.support.system import TEST_JWT_SECRET
from tests.support.waits import eventually


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider().start()
    provider.add_key("k1")
    yield provider
    provider.stop()


def oidc_settings(idp: IdentityProvider, **overrides: object) -> ServiceSettings:
    values = {
        "jwt_jwks_url": idp.jwks_url,
        "jwt_issuer": idp.issuer,
        "jwt_audience": AUDIENCE,
        **overrides,
    }
    return ServiceSettings(**values)


async def refused(verifier: TokenVerifier, token: str) -> ProblemError:
    with pytest.raises(ProblemError) as raised:
        await verifier.principal(token)
    return raised.value


async def test_provider_keys_verify_tokens_and_the_key_set_is_cached(
    idp: IdentityProvider,
) -> None:
    verifier = TokenVerifier(oidc_settings(idp))
    for _ in range(3):
        principal = await verifier.principal(idp.token("k1", branches=["LZ"], roles=["agent"]))
        assert principal.branches == ("LZ",) and principal.roles == (Role.AGENT,)
    assert idp.jwks_fetches == 1


async def test_a_rotated_key_is_accepted_without_restart_and_an_unknown_key_is_refused(
    idp: IdentityProvider,
) -> None:
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=0.3))
    assert (await verifier.principal(idp.token("k1"))).subject == "tester"

    # The provider rotates: k2 published, k1 retired.
    idp.add_key("k2", algorithm="ES256")
    idp.published.remove("k1")

    async def rotated_key_accepted() -> bool:
        # Within the cooldown after the last fetch the set is not fetched again.
        try:
            return (await verifier.principal(idp.token("k2"))).org == "demo"
        except ProblemError:
            return False

    await eventually(rotated_key_accepted, timeout_s=5, what="the rotated key")
    fetches = idp.jwks_fetches
    assert fetches >= 2
    await verifier.principal(idp.token("k2"))
    assert idp.jwks_fetches == fetches, "a known kid is served from the cache"

    idp.add_key("stranger", publish=False)
    problem = await refused(verifier, idp.token("stranger"))
    assert problem.status == 401 and "stranger" in problem.detail


async def test_unknown_kids_cannot_make_the_service_hammer_the_provider(
    idp: IdentityProvider,
) -> None:
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=60))
    await verifier.principal(idp.token("k1"))
    idp.add_key("made-up", publish=False)
    for _ in range(5):
        assert (await refused(verifier, idp.token("made-up"))).status == 401
    assert idp.jwks_fetches == 1


async def test_discovery_finds_the_key_set_from_the_issuer(idp: IdentityProvider) -> None:
    settings = oidc_settings(idp, jwt_jwks_url="", jwt_oidc_discovery=True)
    verifier = TokenVerifier(settings)
    assert (await verifier.principal(idp.token("k1"))).subject == "tester"

    # An issuer without a discovery document: the keys cannot be found, which is no token flaw.
    wrong = TokenVerifier(
        oidc_settings(
            idp, jwt_jwks_url="", jwt_oidc_discovery=True, jwt_issuer=idp.issuer + "/realms/x"
        )
    )
    problem = await refused(wrong, idp.token("k1", iss=idp.issuer + "/realms/x"))
    assert problem.status == 503 and problem.headers["Retry-After"]


async def test_an_unreachable_provider_is_a_503_with_retry_after(idp: IdentityProvider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = oidc_settings(
        idp, jwt_jwks_url=f"http://127.0.0.1:{closed_port}/jwks", jwt_jwks_timeout_s=1
    )
    problem = await refused(TokenVerifier(settings), idp.token("k1"))
    assert problem.status == 503
    assert int(problem.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "answer",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'[{"kty": "RSA"}]',
        b'{"keys": []}',
        b'{"keys": [{"kty": "RSA", "kid": "k1", "use": "enc", "n": "AQAB", "e": "AQAB"}]}',
    ],
    ids=["error page", "json array", "empty set", "no signing key"],
)
async def test_a_key_source_answering_no_usable_key_set_is_a_503_and_is_not_hammered(
    idp: IdentityProvider, answer: bytes
) -> None:
    """An error page or JSON that is no key set is the provider's failure, not the token's:
    the first was a 500 (the library's JSON error passed through), the others a 401 telling
    the caller their good token was bad. Requests within the cooldown do not fetch again."""
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=60))
    idp.jwks_body = answer
    for _ in range(3):
        problem = await refused(verifier, idp.token("k1"))
        assert problem.status == 503, problem.detail
        assert int(problem.headers["Retry-After"]) == 60
    assert idp.jwks_fetches == 1


async def test_the_key_source_is_asked_again_after_the_cooldown(idp: IdentityProvider) -> None:
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=0.2))
    idp.jwks_body = b"<html>maintenance</html>"
    assert (await refused(verifier, idp.token("k1"))).status == 503
    idp.jwks_body = None
    await asyncio.sleep(0.3)
    assert (await verifier.principal(idp.token("k1"))).subject == "tester"


@pytest.mark.parametrize(
    "document",
    [b'["not", "a", "document"]', b"<html>login</html>", b"{}"],
    ids=["json array", "error page", "no jwks_uri"],
)
async def test_a_discovery_document_that_names_no_key_set_is_a_503(
    idp: IdentityProvider, document: bytes
) -> None:
    idp.discovery_body = document
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_url="", jwt_oidc_discovery=True))
    problem = await refused(verifier, idp.token("k1"))
    assert problem.status == 503 and problem.headers["Retry-After"], problem.detail


async def test_a_discovered_key_set_address_that_is_not_http_is_a_503(
    idp: IdentityProvider,
) -> None:
    idp.discovery_body = f'{{"issuer": "{idp.issuer}", "jwks_uri": "file:///etc/passwd"}}'.encode()
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_url="", jwt_oidc_discovery=True))
    problem = await refused(verifier, idp.token("k1"))
    assert problem.status == 503 and "file:///etc/passwd" in problem.detail


async def test_a_refresh_that_fails_leaves_the_kept_keys_serving(idp: IdentityProvider) -> None:
    """A token with a made-up ``kid`` makes the service fetch the set again; should that one
    fetch fail (the provider blinks), the set it holds still verifies every good token. It
    made every token a 503 for the cooldown: anyone could keep the service down with one
    request every ten seconds."""
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=0.2))
    assert (await verifier.principal(idp.token("k1"))).subject == "tester"
    await asyncio.sleep(0.3)
    idp.add_key("made-up", publish=False)
    idp.jwks_body = b"<html>502 Bad Gateway</html>"
    assert (await refused(verifier, idp.token("made-up"))).status == 401
    assert (await verifier.principal(idp.token("k1"))).subject == "tester"
    assert idp.jwks_fetches == 2


async def test_concurrent_unknown_kids_fetch_the_key_set_once(idp: IdentityProvider) -> None:
    """Each request fetched for itself: twenty unknown kids after the cooldown made twenty
    fetches, a cold start with twenty good tokens six."""
    verifier = TokenVerifier(oidc_settings(idp, jwt_jwks_refresh_cooldown_s=0.2))
    tokens = [idp.token("k1") for _ in range(20)]
    principals = await asyncio.gather(*(verifier.principal(token) for token in tokens))
    assert {principal.subject for principal in principals} == {"tester"}
    assert idp.jwks_fetches == 1
    await asyncio.sleep(0.3)
    idp.add_key("made-up", publish=False)
    answers = await asyncio.gather(*(refused(verifier, idp.token("made-up")) for _ in range(20)))
    assert {problem.status for problem in answers} == {401}
    assert idp.jwks_fetches == 2


async def test_a_failing_discovery_is_not_asked_again_within_the_cooldown(
    idp: IdentityProvider,
) -> None:
    idp.discovery_body = b"<html>login</html>"
    verifier = TokenVerifier(
        oidc_settings(idp, jwt_jwks_url="", jwt_oidc_discovery=True, jwt_jwks_refresh_cooldown_s=60)
    )
    asked = idp.discovery_fetches
    for _ in range(3):
        assert (await refused(verifier, idp.token("k1"))).status == 503
    assert idp.discovery_fetches == asked + 1


async def test_leeway_tolerates_small_clock_skew_only(idp: IdentityProvider) -> None:
    verifier = TokenVerifier(oidc_settings(idp, jwt_leeway_s=30))
    now = int(time.time())
    assert await verifier.principal(idp.token("k1", exp=now - 10))
    assert await verifier.principal(idp.token("k1", nbf=now + 10))
    assert (await refused(verifier, idp.token("k1", exp=now - 60))).status == 401
    assert (await refused(verifier, idp.token("k1", nbf=now + 60))).status == 401


async def test_the_shared_secret_is_not_accepted_once_a_provider_is_configured(
    idp: IdentityProvider,
) -> None:
    settings = oidc_settings(idp, jwt_secret=TEST_JWT_SECRET)
    secret_token = mint_token(
        secret=settings.jwt_secret,
        subject="dev",
        org="demo",
        branches="*",
        roles=["admin"],
        issuer=idp.issuer,
        audience=AUDIENCE,
    )
    problem = await refused(TokenVerifier(settings), secret_token)
    assert problem.status == 401 and "HS256" in problem.detail


async def test_secret_mode_accepts_only_hs256_with_the_secret() -> None:
    settings = ServiceSettings(jwt_secret=TEST_JWT_SECRET)
    verifier = TokenVerifier(settings)
    good = mint_token(
        secret=settings.jwt_secret, subject="dev", org="demo", branches=["LZ"], roles=["agent"]
    )
    assert (await verifier.principal(good)).branches == ("LZ",)
    forged = mint_token(
        secret="another-secret-of-enough-length-0123",
        subject="x",
        org="demo",
        branches="*",
        roles=[],
    )
    assert (await refused(verifier, forged)).status == 401


@pytest.mark.parametrize("secret", ["", "短" * 10, "x" * 31])
async def test_a_service_without_a_secret_of_32_bytes_or_an_identity_provider_refuses_to_start(
    secret: str,
) -> None:
    """Until 5 December the shared secret had a default, written in this repository: a
    service started without ``JWT_SECRET`` (outside compose, which requires it) accepted
    admin tokens anyone could sign. Now it refuses to start, naming the setting, before it
    connects to anything; 30 bytes of Chinese characters are still too few. An app only
    built (the role matrix, OpenAPI) needs no secret."""
    settings = IntakeSettings(jwt_secret=secret, mongodb_uri=f"mongodb://127.0.0.1:{free_port()}")
    app = create_intake_app(settings)
    assert "/v1/complaints" in app.openapi()["paths"]
    with pytest.raises(ValueError, match="JWT_SECRET"):
        async with asyncio.timeout(10), app.router.lifespan_context(app):
            pass
    with pytest.raises(ValueError, match="JWT_SECRET"):
        TokenVerifier(ServiceSettings(jwt_secret=secret)).check_configuration()
    TokenVerifier(ServiceSettings(jwt_secret="x" * 32)).check_configuration()


def test_an_identity_provider_needs_no_secret(idp: IdentityProvider) -> None:
    verifier = TokenVerifier(oidc_settings(idp, jwt_secret=""))
    verifier.check_configuration()
    assert verifier.uses_jwks is True


@pytest.mark.parametrize("algorithms", ["RS256,none", "HS256", "RS256,HS512", ""])
def test_unsafe_algorithm_lists_are_refused_at_start_up(algorithms: str) -> None:
    with pytest.raises(ValueError, match="JWT_ALGORITHMS"):
        TokenVerifier(ServiceSettings(jwt_algorithms=algorithms))


@pytest.mark.parametrize(
    ("claims", "claim"),
    [
        ({"branches": "LZ"}, "branches"),
        ({"branches": []}, "branches"),
        ({"branches": ["lz"]}, "branches"),
        ({"branches": None}, "branches"),
        ({"roles": "admin"}, "roles"),
        ({"roles": ["root"]}, "roles"),
        ({"org": ""}, "org"),
        ({"org": "acme:x"}, "org"),  # would name org "acme"'s "x:<id>" things
        ({"org": None}, "org"),
        ({"sub": None}, "sub"),
    ],
)
async def test_malformed_claims_are_a_401_naming_the_claim(
    idp: IdentityProvider, claims: dict, claim: str
) -> None:
    problem = await refused(TokenVerifier(oidc_settings(idp)), idp.token("k1", **claims))
    assert problem.status == 401
    assert problem.extensions["claim"] == claim


async def test_claim_names_and_roles_map_for_other_identity_providers(
    idp: IdentityProvider,
) -> None:
    settings = oidc_settings(
        idp,
        jwt_claim_subject="preferred_username",
        jwt_claim_org="tenant",
        jwt_claim_branches="complaint_branches",
        jwt_claim_roles="realm_access.roles",
        jwt_role_map={"complaints-lead": "supervisor", "complaints-agent": "agent"},
    )
    token = idp.token(
        "k1",
        preferred_username="wang.fang",
        tenant="demo",
        complaint_branches=["LZ", "HQ"],
        realm_access={"roles": ["offline_access", "complaints-lead", "uma_authorization"]},
        roles=None,
        org=None,
        branches=None,
    )
    principal = await TokenVerifier(settings).principal(token)
    assert principal.subject == "wang.fang" and principal.org == "demo"
    assert principal.branches == ("LZ", "HQ")
    assert principal.roles == (Role.SUPERVISOR,)
    with pytest.raises(ValueError):
        TokenVerifier(oidc_settings(idp, jwt_role_map={"x": "superuser"}))
