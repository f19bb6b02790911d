"""Unit: one webhook attempt on the wire (TLS name checks over pooled connections, Host).

A local HTTPS receiver holds a certificate for ``a.test`` only, from a CA made here; both
``a.test`` and ``b.test`` resolve (as the resolver is told) to its address, as two
subscriptions' hosts behind one shared front end do.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webhooks import sender as sender_module
from webhooks.sender import Sender, host_header
from webhooks.settings import WebhooksSettings

LOCAL = WebhooksSettings(deployment_environment="development", allow_loopback_targets=True)


def _certificate(
    name: str, *, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext, list[str]]]:
    """(port, a client context trusting the CA, the Host headers the receiver saw)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _certificate("test CA", key=ca_key, issuer=ca_name, signer=ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("a.test", key=leaf_key, issuer=ca_name, signer=ca_key, ca=False)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seen: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps the connection alive between requests

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(self.headers.get("host"))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client_tls = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
    )
    # The internal CA as an operator hands it to the service (``TARGET_CA_FILE``).
    (tmp_path / "internal-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    try:
        yield server.server_address[1], client_tls, seen
    finally:
        server.shutdown()
        server.server_close()


async def test_a_connection_verified_for_one_host_never_carries_another_hosts_delivery(
    receiver: tuple[int, ssl.SSLContext, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pooled client knew connections by the checked address alone: after a delivery
    to a.test, b.test's (same address) went over a.test's kept-alive connection, its
    certificate never checked for b.test (both answered 204). Each host name now has its
    connections of its own, so b.test's certificate is checked, and refused."""
    port, client_tls, seen = receiver

    async def same_address(target, **_) -> str:
        return "127.0.0.1"

    monkeypatch.setattr(sender_module, "resolve_checked", same_address)
    sender = Sender(settings=LOCAL, tls_context=client_tls)
    try:
        first = await sender.send(url=f"https://a.test:{port}/hook", headers={}, body="{}")
        second = await sender.send(url=f"https://b.test:{port}/hook", headers={}, body="{}")
        with_root_dot = await sender.send(url=f"https://a.test.:{port}/hook", headers={}, body="{}")
    finally:
        await sender.close()
    assert first.response_code == 204, first.error
    assert second.response_code is None and "CERTIFICATE_VERIFY_FAILED" in (second.error or "")
    # A name's root dot is no part of the certificate's name (it failed every attempt).
    assert with_root_dot.response_code == 204, with_root_dot.error
    assert seen == [f"a.test:{port}", f"a.test:{port}"]


def test_an_ipv6_host_is_bracketed_in_the_host_header() -> None:
    """Bare, ``2606:4700::1111:8443`` ran the address's colons into the port's."""
    url = "https://[2606:4700::1111]:8443/hook"
    assert host_header("2606:4700::1111", url) == "[2606:4700::1111]:8443"
    assert host_header("hooks.example.com", "https://hooks.example.com/h") == "hooks.example.com"


async def test_clients_of_hosts_no_longer_sent_to_are_closed(
    receiver: tuple[int, ssl.SSLContext, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the hosts a replica keeps clients for, the least recently used is closed; one
    pushed out while idle (the usual case) was kept open until shutdown, one per host ever
    sent to."""
    port, client_tls, _ = receiver

    async def same_address(target, **_) -> str:
        return "127.0.0.1"

    monkeypatch.setattr(sender_module, "resolve_checked", same_address)
    monkeypatch.setattr(sender_module, "MAX_POOLED_HOSTS", 2)
    sender = Sender(settings=LOCAL, tls_context=client_tls)
    try:
        for host in ("a.test", "b.test", "c.test", "d.test", "a.test"):
            await sender.send(url=f"https://{host}:{port}/hook", headers={}, body="{}")
        assert sender.pooled_hosts == 2
    finally:
        await sender.close()
    assert sender.pooled_hosts == 0


async def test_a_receiver_whose_certificate_an_internal_ca_issued_is_trusted_once_configured(
    receiver: tuple[int, ssl.SSLContext, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """An on-premise receiver's certificate comes from the organisation's own CA. The
    sender trusted certifi's public CAs only, and nothing could add another: every attempt
    failed its certificate check. ``TARGET_CA_FILE`` adds that CA beside the public ones."""
    port, _, seen = receiver

    async def same_address(target, **_) -> str:
        return "127.0.0.1"

    monkeypatch.setattr(sender_module, "resolve_checked", same_address)
    url = f"https://a.test:{port}/hook"
    public_only = Sender(settings=LOCAL)
    try:
        refused = await public_only.send(url=url, headers={}, body="{}")
    finally:
        await public_only.close()
    assert refused.response_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")

    monkeypatch.setenv("DEPLOYMENT_ENVIRONMENT", "development")
    monkeypatch.setenv("ALLOW_LOOPBACK_TARGETS", "true")
    monkeypatch.setenv("TARGET_CA_FILE", str(tmp_path / "internal-ca.pem"))
    internal = Sender(settings=WebhooksSettings())
    try:
        trusted = await internal.send(url=url, headers={}, body="{}")
    finally:
        await internal.close()
    assert trusted.response_code == 204, trusted.error
    assert seen == [f"a.test:{port}"]


@pytest.mark.parametrize(
    ("value", "expected"), [("", None), ("  ", None), ("/nowhere/ca.pem", ValueError)]
)
def test_the_internal_ca_file_is_none_when_empty_and_must_be_readable(
    value: str, expected: type[Exception] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose passes an unset ``TARGET_CA_FILE`` as an empty string: no internal CA. A path
    that holds no certificates stops the service at start, naming the variable."""
    monkeypatch.setenv("TARGET_CA_FILE", value)
    if expected is None:
        assert WebhooksSettings().target_ca_file is None
        return
    with pytest.raises(ValueError, match="target_ca_file"):
        WebhooksSettings()
