"""The key an address is counted under by the per-address limits: IPv4 as it is, IPv6 by its /64."""

from __future__ import annotations

import pytest

from app.addresses import limit_key


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:ffff:eeee:dddd:cccc", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("unknown", "unknown"),
])
def test_an_address_is_counted_as_itself_or_its_ipv6_network(address: str, key: str) -> None:
    assert limit_key(address) == key


def test_two_addresses_of_one_ipv6_network_are_one_client_and_of_two_networks_two() -> None:
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:9:9:9:9")
    assert limit_key("2001:db8:1:2::1") != limit_key("2001:db8:1:3::1")
