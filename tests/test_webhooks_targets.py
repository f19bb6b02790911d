"""Which targets deliveries may go to: the server-side request forgery guard (pure logic)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

import pytest

from webhooks.resolver import HostResolver
from webhooks.scheduler import retry_delay_s
from webhooks.settings import DEFAULT_RETRY_SCHEDULE_S, WebhooksSettings
from webhooks.targets import Target, TargetRefused, check_address, parse_target, resolve_checked

PRODUCTION = WebhooksSettings()
ON_PREMISE = WebhooksSettings(allow_private_targets=True)
DEVELOPMENT = WebhooksSettings(deployment_environment="development", allow_loopback_targets=True)


@pytest.fixture
def resolver() -> Iterator[HostResolver]:
    """The system resolver, on threads of its own, as a replica has it."""
    resolver = HostResolver(threads=4, unproven_share=0.5, failure_kept_s=30)
    yield resolver
    resolver.close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.7",
        "172.16.3.4",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "2002:a00:7::1",  # 6to4 wrapping 10.0.0.7
        "2002:a9fe:a9fe::",  # 6to4 wrapping the metadata address
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "fec0::1",  # site-local: neither private nor global to ``ipaddress``
    ],
)
def test_production_refuses_internal_addresses(address: str) -> None:
    with pytest.raises(TargetRefused):
        check_address(ipaddress.ip_address(address), settings=PRODUCTION)


def test_public_addresses_are_allowed() -> None:
    for address in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8", "2002:5db8:d822::1"]:
        check_address(ipaddress.ip_address(address), settings=PRODUCTION)


def test_on_premise_setting_allows_private_ranges_but_never_metadata_or_link_local() -> None:
    for address in ["10.0.0.7", "192.168.1.1", "100.64.0.1", "fd12::1"]:
        check_address(ipaddress.ip_address(address), settings=ON_PREMISE)
    for address in ["169.254.169.254", "169.254.1.1", "fe80::1", "127.0.0.1", "100.100.100.200"]:
        with pytest.raises(TargetRefused):
            check_address(ipaddress.ip_address(address), settings=ON_PREMISE)


def test_loopback_only_in_development_and_only_by_setting() -> None:
    check_address(ipaddress.ip_address("127.0.0.1"), settings=DEVELOPMENT)
    with pytest.raises(TargetRefused):
        check_address(
            ipaddress.ip_address("127.0.0.1"),
            settings=WebhooksSettings(deployment_environment="development"),
        )
    with pytest.raises(ValueError, match="DEPLOYMENT_ENVIRONMENT=development"):
        WebhooksSettings(allow_loopback_targets=True)


def test_https_is_required_outside_development() -> None:
    assert parse_target("https://crm.example.com/h", settings=PRODUCTION) == Target(
        scheme="https", host="crm.example.com", port=443
    )
    with pytest.raises(TargetRefused, match="https"):
        parse_target("http://crm.example.com/h", settings=PRODUCTION)
    assert parse_target("http://127.0.0.1:9000/h", settings=DEVELOPMENT).port == 9000
    # Nothing listens on port 0 (it was taken as no port, the default, when checked).
    with pytest.raises(TargetRefused, match="port 0"):
        parse_target("https://crm.example.com:0/h", settings=PRODUCTION)
    assert parse_target("https://crm-1.example.com:8443/h", settings=PRODUCTION).port == 8443


@pytest.mark.parametrize(
    "url",
    [
        "https://a..example.com/h",
        "https://.example.com/h",
        f"https://{'a' * 64}.example.com/h",
        f"https://{'.'.join(['a' * 60] * 5)}/h",
        "https://☃.example.com/h",
        "https://crm example.com/h",
        "https://xn--zz.example.com/h",
        "https://XN--A.example.com/h",
        "https://-crm.example.com/h",
        "https://crm-.example.com/h",
    ],
    ids=[
        "empty-label",
        "leading-dot",
        "label-64",
        "name-304",
        "not-idna",
        "space",
        "bad-a-label",
        "a-label-of-a-control-character",
        "leading-hyphen",
        "trailing-hyphen",
    ],
)
def test_a_host_that_is_no_host_name_is_refused(url: str) -> None:
    with pytest.raises(TargetRefused, match=r"host|not a valid URL"):
        parse_target(url, settings=PRODUCTION)


@pytest.mark.parametrize(
    "host",
    ["0x7f.1", "2130706433", "127.1", "0x7f.0.0.1", "017700000001", "0x5db8d822"],
)
def test_an_ipv4_address_in_a_shorthand_form_is_refused_when_saved(host: str) -> None:
    """The resolver reads these as addresses (all but the last are 127.0.0.1): they used to
    be saved as host names and refused only at each attempt. (Dotted forms with a leading
    zero, such as ``0177.0.0.1``, the URL parser refuses already.)"""
    with pytest.raises(TargetRefused, match="shorthand form; write it as"):
        parse_target(f"https://{host}/hooks", settings=PRODUCTION)


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1.", "loopback"),
        ("10.0.0.5.", "private"),
        ("169.254.169.254.", "metadata"),
        ("0.0.0.0.", "not a unicast"),
        ("localhost.", "loopback"),
        ("api.localhost.", "loopback"),
        ("0x7f.1.", "shorthand form; write it as 127.0.0.1"),
        ("2130706433.", "shorthand form; write it as 127.0.0.1"),
        ("127。0。0。1", "loopback"),
        ("169．254．169．254", "metadata"),
        ("10｡0｡0｡5", "private"),
        ("127.0.0.1。", "loopback"),
        ("localhost．", "loopback"),
    ],
)
def test_an_internal_host_spelt_with_a_root_dot_or_another_full_stop_is_refused_when_saved(
    host: str, refusal: str
) -> None:
    """The resolver and the client read these as the plain forms (IDNA maps 。．｡ to dots):
    they used to be saved as host names and refused only at each attempt."""
    with pytest.raises(TargetRefused, match=refusal):
        parse_target(f"https://{host}/latest", settings=PRODUCTION)


def test_a_public_address_or_a_name_with_a_root_dot_is_accepted() -> None:
    assert parse_target("https://93.184.216.34./h", settings=PRODUCTION).host == "93.184.216.34."
    assert parse_target("https://crm.example.com./h", settings=PRODUCTION).host == (
        "crm.example.com."
    )
    assert parse_target("http://localhost./h", settings=DEVELOPMENT).host == "localhost."


async def test_a_literal_address_with_a_root_dot_is_checked_as_the_address_at_delivery(
    resolver: HostResolver,
) -> None:
    with pytest.raises(TargetRefused, match="metadata"):
        await resolve_checked(
            Target("https", "169.254.169.254.", 443), settings=PRODUCTION, resolver=resolver
        )
    address = await resolve_checked(
        Target("https", "93.184.216.34.", 443), settings=PRODUCTION, resolver=resolver
    )
    assert address == "93.184.216.34"


def test_an_international_host_name_is_accepted_in_its_ascii_form() -> None:
    # DNS, the TLS server name and the Host header all carry the A-labels.
    assert parse_target("https://投诉.中国/hooks", settings=PRODUCTION) == Target(
        scheme="https", host="xn--oru203g.xn--fiqs8s", port=443
    )
    assert parse_target("https://a_b.example.com./h", settings=PRODUCTION).host == (
        "a_b.example.com."
    )
    # Given in A-labels already (any case): kept as the client sends it.
    assert parse_target("https://XN--BCHER-KVA.example/h", settings=PRODUCTION).host == (
        "xn--bcher-kva.example"
    )


async def test_a_host_the_resolver_cannot_encode_is_refused_at_delivery(
    resolver: HostResolver,
) -> None:
    # Saved before host names were checked: the resolver's IDNA codec raises UnicodeError.
    for host in ["a..example.com", f"{'a' * 64}.example.com"]:
        with pytest.raises(TargetRefused, match="not a valid host name"):
            await resolve_checked(
                Target("https", host, 443), settings=PRODUCTION, resolver=resolver
            )


async def test_a_name_resolving_to_an_internal_address_is_refused_at_delivery(
    resolver: HostResolver,
) -> None:
    with pytest.raises(TargetRefused) as refused:
        await resolve_checked(
            Target("https", "localhost", 443), settings=PRODUCTION, resolver=resolver
        )
    # The delivery log a tenant's admin reads says what sort of address, never which one:
    # it mapped what internal names resolve to.
    assert str(refused.value) == "localhost resolves to a loopback address"
    local = await resolve_checked(
        Target("http", "localhost", 80), settings=DEVELOPMENT, resolver=resolver
    )
    assert local in {"127.0.0.1", "::1"}


def test_the_default_retry_schedule_spans_more_than_a_day_with_bounded_jitter() -> None:
    assert sum(DEFAULT_RETRY_SCHEDULE_S) >= 24 * 3600
    rng = random.Random(7)
    for index, base in enumerate(DEFAULT_RETRY_SCHEDULE_S):
        delays = [retry_delay_s(settings=PRODUCTION, retry_index=index, rng=rng) for _ in range(50)]
        assert all(base * 0.8 <= delay <= base * 1.2 for delay in delays)
        assert len(set(delays)) > 1, "jitter spreads retries of many deliveries"
