"""superimap.netguard: which addresses count as internal, and host checks by resolution."""

from __future__ import annotations

import asyncio

import pytest

from superimap.netguard import (
    PrivateTargetRefused,
    address_is_private,
    check_host,
    resolve_checked,
    resolve_checked_async,
)

PRIVATE = [
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # TEST-NET
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fd00::1",  # ULA
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # v4-mapped
    "::ffff:10.0.0.1",
    "2002:7f00:0001::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "[::1]",
    "not an address",
    "",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:2800:220:1:248:1893:25c8:1946"]


@pytest.mark.parametrize("ip", PRIVATE)
def test_it_counts_internal_addresses_as_private(ip):
    assert address_is_private(ip) is True


@pytest.mark.parametrize("ip", PUBLIC)
def test_it_counts_public_addresses_as_public(ip):
    assert address_is_private(ip) is False


def test_it_refuses_a_host_resolving_to_loopback():
    with pytest.raises(PrivateTargetRefused, match="localhost"):
        check_host("localhost", 80)
    with pytest.raises(PrivateTargetRefused):
        check_host("127.0.0.1", 80)
    with pytest.raises(PrivateTargetRefused):
        asyncio.run(resolve_checked_async("localhost", 443))


def test_it_returns_the_addresses_of_a_public_host():
    # An IP literal resolves without any DNS server.
    assert check_host("93.184.216.34", 443) == ["93.184.216.34"]
    assert asyncio.run(resolve_checked_async("8.8.8.8", 80)) == ["8.8.8.8"]


def test_a_refusal_is_a_value_error():
    assert issubclass(PrivateTargetRefused, ValueError)


def test_the_operators_switch_skips_the_check_but_not_the_lookup():
    assert resolve_checked("127.0.0.1", 80, allow_private=True) == ["127.0.0.1"]
    assert asyncio.run(resolve_checked_async("127.0.0.1", 80, allow_private=True)) == ["127.0.0.1"]
