"""Parent proxies without a socket: which destinations go to a parent, what the CONNECT to it carries."""

from __future__ import annotations

import socket

import pytest

from gconnect.config import ParentProxy
from gconnect.tunnel.parent import Chain, connect_request, parse_status

pytestmark = pytest.mark.timeout(60)


def test_rules_pick_names_by_glob_and_literals_by_cidr():
    chain = Chain(ParentProxy("p.test", 3128), ("*.corp.test", "10.0.0.0/8", "db?.test"), resolver=None)
    assert chain.applies("www.corp.test", 0)
    assert not chain.applies("corp.test", 0)
    assert chain.applies("db1.test", 0) and not chain.applies("db12.test", 0)
    assert chain.applies("10.1.2.3", socket.AF_INET)
    assert not chain.applies("11.1.2.3", socket.AF_INET)
    everything = Chain(ParentProxy("p.test", 3128), (), resolver=None)
    assert everything.applies("anything.test", 0)


def test_connect_request_carries_only_the_parents_credentials():
    head = connect_request("::1", 443, ParentProxy("p", 1, "us er", "p@ss:"))
    assert head == (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nProxy-Authorization: Basic dXMgZXI6cEBzczo=\r\n\r\n"
    )
    assert parse_status(b"HTTP/1.0 403 Forbidden by rule\r\nX: y") == (403, "Forbidden by rule")
