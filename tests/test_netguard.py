"""superimap.netguard: which addresses count as private, checked after DNS resolution."""

from __future__ import annotations

import asyncio

import pytest

from superimap.netguard import (
    PrivateTargetRefused,
    address_is_private,
    check_host,
    check_host_async,
)

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fd00::1",
    "fc00::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # v4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # v4-compatible
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "not an address",
]
PUBLIC = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:0808:0808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_it_calls_private_and_reserved_addresses_private(address):
    assert address_is_private(address) is True


@pytest.mark.parametrize("address", PUBLIC)
def test_it_calls_public_addresses_public(address):
    assert address_is_private(address) is False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "::1", "0"])
def test_it_refuses_hosts_resolving_to_private_addresses(host):
    with pytest.raises(PrivateTargetRefused) as refused:
        check_host(host, 993)
    assert isinstance(refused.value, ValueError)
    assert address_is_private(refused.value.address)


def test_it_returns_the_resolved_addresses_of_a_public_host():
    assert check_host("8.8.8.8", 993) == ["8.8.8.8"]


def test_it_checks_through_the_event_loop_too():
    async def both():
        public = await check_host_async("1.1.1.1", 993)
        with pytest.raises(PrivateTargetRefused):
            await check_host_async("localhost", 143)
        return public

    assert asyncio.run(both()) == ["1.1.1.1"]
