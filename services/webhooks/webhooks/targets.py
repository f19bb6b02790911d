"""Which target URLs and addresses deliveries may go to (server-side request forgery guard).

Checked twice: the URL when a subscription is saved (scheme, host name, literal
addresses), and every address the host resolves to right before each attempt, so a name
that resolves (or is re-pointed) to an internal address is refused too. The attempt
then connects to the address that was checked, never resolving the name again.

A refusal is a property of the target, not an outage: an attempt refused is a failed
attempt like any other (retried per the schedule, counted in the failure streak). Names are
looked up on the resolver's own threads (``webhooks.resolver``), never the event loop's.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import idna

from complaints_shared.logs import get_logger
from webhooks.resolver import HostResolver
from webhooks.settings import WebhooksSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = get_logger(__name__)

# Cloud instance metadata endpoints: never a webhook target, whatever the settings.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT

# DNS limits (RFC 1035): 63 octets a label, 253 characters a name written out. Labels are
# letters, digits and hyphens; underscores occur in real names and resolvers accept them.
MAX_LABEL_LENGTH = 63
MAX_HOST_NAME_LENGTH = 253
HOST_LABEL = re.compile(r"[a-z0-9_-]+", re.IGNORECASE)


class TargetRefused(ValueError):
    """A target URL or address deliveries may not go to; the message says why."""


class AddressRefused(TargetRefused):
    """An address deliveries may not go to: ``kind`` says what sort it is (without it)."""

    def __init__(self, address: IPAddress, kind: str) -> None:
        super().__init__(f"{address} is {kind}")
        self.kind = kind


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # a literal address, or a host name in ASCII (IDNA A-labels)
    port: int


def parse_target(url: str, *, settings: WebhooksSettings) -> Target:
    """Validate a subscription's URL; a literal IP address is checked here as well."""
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)  # the client sending the attempts parses it too: it must accept it
    except (ValueError, httpx.InvalidURL) as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise TargetRefused("must be an absolute http(s) URL with a host")
    if parts.scheme == "http" and not settings.development:
        raise TargetRefused("must use https (http is accepted in development only)")
    if parts.username or parts.password:
        raise TargetRefused("must not carry credentials; receivers verify the signature")
    if parts.fragment:
        raise TargetRefused("must not have a #fragment")
    if port == 0:
        # Nothing listens on port 0: every attempt failed, and the address check read it as
        # "no port" (the default) until 5 December.
        raise TargetRefused("port 0 is no port a receiver listens on")
    host = parts.hostname
    literal = _literal_address(host)
    if literal is None:
        # As the client sends it: IDNA maps 。．｡ to dots, so "127。0。0。1" is 127.0.0.1.
        host = _host_name(host)
        literal = _literal_address(host)
    if literal is not None:
        check_address(literal, settings=settings)
    else:
        name = host.removesuffix(".")  # "localhost." and "0x7f.1." resolve as without it
        _refuse_shorthand_address(name)
        if name == "localhost" or name.endswith(".localhost"):
            check_address(ipaddress.ip_address("127.0.0.1"), settings=settings)
    return Target(scheme=parts.scheme, host=host, port=port or _default_port(parts.scheme))


def _refuse_shorthand_address(host: str) -> None:
    """An IPv4 address in a form other than four decimal numbers (``0x7f.1``, ``2130706433``,
    ``127.1``, ``0177.0.0.1``) is no host name: the resolver reads it as the address (here
    127.0.0.1), which only the attempt would find internal, and resolvers do not all agree
    on such forms. Refused at once, asking for the plain form."""
    try:
        packed = socket.inet_aton(host)
    except (OSError, ValueError):  # not an address in any form (ValueError: a NUL)
        return
    raise TargetRefused(
        f"the host {host!r} is an IPv4 address in a shorthand form; "
        f"write it as {ipaddress.IPv4Address(packed)}"
    )


def _host_name(host: str) -> str:
    """``host`` as DNS, TLS and the Host header carry it (IDNA A-labels); refused unless it
    is a host name a resolver accepts."""
    try:
        # Encoded as the HTTP client encodes it when it sends (IDNA 2008).
        encoded = httpx.URL(scheme="https", host=host).raw_host.decode("ascii")
    except httpx.InvalidURL as exc:
        raise TargetRefused(f"the host is not a valid host name: {exc}") from None
    name = encoded.removesuffix(".")  # a fully qualified name may end with the root's dot
    if len(name) > MAX_HOST_NAME_LENGTH:
        raise TargetRefused(
            f"the host name has {len(name)} characters (at most {MAX_HOST_NAME_LENGTH})"
        )
    for label in name.split("."):
        if not label:
            raise TargetRefused(f"the host name {host!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise TargetRefused(
                f"the host name has a label of {len(label)} characters (at most {MAX_LABEL_LENGTH})"
            )
        if not HOST_LABEL.fullmatch(label):
            raise TargetRefused(
                f"the host name label {label!r} has characters other than letters, "
                "digits, '-' and '_'"
            )
        if label.startswith("-") or label.endswith("-"):
            # RFC 1123: resolvers refuse such a name, so every attempt failed.
            raise TargetRefused(f"the host name label {label!r} begins or ends with '-'")
        if label[:4].lower() == "xn--":
            # An A-label must decode to the name it stands for; a resolver refuses it later.
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise TargetRefused(
                    f"the host name label {label!r} is not a valid IDNA A-label: {exc}"
                ) from None
    return encoded


def check_address(address: IPAddress, *, settings: WebhooksSettings) -> None:
    """Refuse an address the settings do not allow; see the module docstring."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        # A 6to4 address (2002::/16) is global, but a 6to4 relay delivers it to the IPv4
        # address inside it (2002:7f00:1:: to 127.0.0.1): that address must pass as well.
        check_address(address.sixtofour, settings=settings)
    if address in METADATA_ADDRESSES:
        raise AddressRefused(address, "a cloud metadata address")
    if address.is_loopback:
        if settings.allow_loopback_targets:
            return
        raise AddressRefused(address, "a loopback address")
    if address.is_link_local:
        raise AddressRefused(address, "a link-local address")
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        raise AddressRefused(address, "not a unicast address")
    # Site-local (fec0::/10) is deprecated but still routed inside some networks, and
    # ``ipaddress`` counts it neither private nor anything but global.
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    if address.is_private or site_local or address in SHARED_ADDRESS_SPACE:
        if settings.allow_private_targets:
            return
        raise AddressRefused(address, "a private address (ALLOW_PRIVATE_TARGETS is off)")
    if not address.is_global:
        raise AddressRefused(address, "not a public address")


async def resolve_checked(
    target: Target, *, settings: WebhooksSettings, resolver: HostResolver
) -> str:
    """Resolve the host, check every address it has, and return the first to connect to.

    ``webhooks.resolver.LookupDeferred`` when no lookup could be started now (not a refusal).
    """
    literal = _literal_address(target.host)
    if literal is not None:
        check_address(literal, settings=settings)
        return str(literal)
    try:
        infos = await resolver.resolve(target.host)
    except socket.gaierror as exc:
        raise TargetRefused(f"{target.host} does not resolve: {exc.strerror}") from None
    except ValueError as exc:  # UnicodeError: the resolver's IDNA codec refuses the name
        raise TargetRefused(f"{target.host} is not a valid host name: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise TargetRefused(f"{target.host} does not resolve")
    for address in addresses:
        # Any internal address refuses the host: the resolver may hand out either one.
        try:
            check_address(address, settings=settings)
        except AddressRefused as exc:
            # Said without the address: the refusal is on the delivery log a tenant's
            # admin reads, which named what internal names (``mongo``) resolve to.
            log.warning("webhook_target_address_refused", host=target.host, reason=str(exc))
            raise TargetRefused(f"{target.host} resolves to {exc.kind}") from None
    return str(addresses[0])


def _literal_address(host: str) -> IPAddress | None:
    """The address ``host`` is written as, if it is one; a root dot after an IPv4 address
    changes nothing (``127.0.0.1.`` connects to 127.0.0.1)."""
    try:
        return ipaddress.ip_address(host.strip("[]").removesuffix("."))
    except ValueError:
        return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
