"""Client limits without a socket: the key a client is counted under, counting and release."""

from __future__ import annotations

import pytest

from gconnect.errors import TooManyClientsError, TooManyClientsPerAddressError
from gconnect.tunnel.limits import ClientLimits, client_key

from .workers import two_workers

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    "host,key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_client_key_is_the_ipv4_address_or_the_ipv6_64(host, key):
    # One IPv6 host can rotate through its whole /64: that is one client.
    assert client_key(host) == key


def test_client_limits_count_and_release():
    limits = ClientLimits(max_clients=3, max_clients_per_ip=2)
    limits.admit("a")
    limits.admit("a")
    with pytest.raises(TooManyClientsPerAddressError):
        limits.admit("a")
    limits.admit("b")
    with pytest.raises(TooManyClientsError):
        limits.admit("c")
    limits.release("a")
    limits.admit("c")
    assert (limits.active, limits.count("a"), limits.count("c")) == (3, 1, 1)
    for who in ("a", "b", "c"):
        limits.release(who)
    assert limits.active == 0 and limits.count("a") == 0


def test_the_per_address_limit_holds_across_workers_sharing_the_gauges():
    one, two = (ClientLimits(max_clients=10, max_clients_per_ip=3, gauges=gauges) for gauges in two_workers("gauges"))
    one.admit("a")
    two.admit("a")
    one.admit("a")
    for limits in (one, two):
        with pytest.raises(TooManyClientsPerAddressError):
            limits.admit("a")
    assert (one.active, two.active, two.count("a")) == (2, 1, 3)  # --max-clients counts each process alone
    one.release("a")
    two.admit("a")
    assert one.count("a") == 3
