"""A local OIDC identity provider for tests: discovery document, JWKS, signed tokens.

It runs a real HTTP server on a free port (the services fetch keys from it exactly as
from Keycloak or Entra ID), counts key-set fetches, and lets a test rotate keys.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "complaint-desk"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any

    def public_jwk(self) -> dict[str, Any]:
        if self.algorithm.startswith("ES"):
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass
class IdentityProvider:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks`` on 127.0.0.1."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    jwks_fetches: int = 0
    discovery_fetches: int = 0
    # Set to answer these bytes instead (an error page, JSON that is no key set).
    jwks_body: bytes | None = None
    discovery_body: bytes | None = None
    _server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None, "start() the identity provider first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def start(self) -> IdentityProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    provider.discovery_fetches += 1
                    body = {"issuer": provider.issuer, "jwks_uri": provider.jwks_url}
                    payload = provider.discovery_body or json.dumps(body).encode()
                elif self.path == "/jwks":
                    provider.jwks_fetches += 1
                    body = {"keys": [provider.keys[kid].public_jwk() for kid in provider.published]}
                    payload = provider.jwks_body or json.dumps(body).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add_key(self, kid: str, *, algorithm: str = "RS256", publish: bool = True) -> SigningKey:
        if algorithm.startswith("ES"):
            private_key: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = SigningKey(kid=kid, algorithm=algorithm, private_key=private_key)
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "sub": "tester",
            "org": "demo",
            "branches": "*",
            "roles": ["admin"],
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, kid: str, **claims: Any) -> str:
        key = self.keys[kid]
        return jwt.encode(
            self.claims(**claims), key.private_key, algorithm=key.algorithm, headers={"kid": kid}
        )
