"""Proxy-Status (RFC 9209) values, sans I/O: every error class names a type from
the RFC's registry, the value parses as an RFC 8941 list (http-sfv, a parser we
did not write) whatever the message holds, and a parent's members come first."""

from __future__ import annotations

import errno

import http_sfv
import pytest

from gconnect import errors
from gconnect.tunnel.dial import _connect_error
from gconnect.tunnel.head import MAX_PROXY_STATUS_DETAILS_CHARS, proxy_status
from gconnect.tunnel.parent import proxy_status_of

pytestmark = pytest.mark.timeout(30)

#: RFC 9209 §2.3, the Proxy Error Types registry.
RFC_9209_TYPES = {
    "dns_timeout", "dns_error", "destination_not_found", "destination_unavailable", "destination_ip_prohibited",
    "destination_ip_unroutable", "connection_refused", "connection_terminated", "connection_timeout",
    "connection_read_timeout", "connection_write_timeout", "connection_limit_reached", "tls_protocol_error",
    "tls_certificate_error", "tls_alert_received", "http_request_error", "http_request_denied",
    "http_response_incomplete", "http_response_header_section_size", "http_response_header_size",
    "http_response_body_size", "http_response_trailer_section_size", "http_response_trailer_size",
    "http_response_transfer_coding", "http_response_content_coding", "http_response_timeout",
    "http_upgrade_failed", "http_protocol_error", "proxy_internal_response", "proxy_internal_error",
    "proxy_configuration_error", "proxy_loop_detected",
}  # fmt: skip


def parse(value: str) -> list[tuple[str, dict[str, str]]]:
    members = http_sfv.List()
    members.parse(value.encode())
    return [(str(m.value), {k: str(v) for k, v in m.params.items()}) for m in members]


def error_classes() -> list[type[errors.GConnectError]]:
    found = [errors.GConnectError]
    for cls in found:
        found += [sub for sub in cls.__subclasses__() if sub not in found]
    return found


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_names_a_registered_type(cls):
    assert cls.proxy_status in RFC_9209_TYPES


@pytest.mark.parametrize(
    "message",
    ["plain", 'quote " and backslash \\ inside', "non-ASCII: Bücher 例", "control \x00\x1b\x7f", "x" * 5000],
)
def test_any_message_gives_a_valid_list(message):
    exc = errors.PolicyDeniedError(message)
    [(name, params)] = parse(proxy_status(exc))
    assert name == "gconnect" and params["error"] == "http_request_denied"
    assert len(params["details"]) <= MAX_PROXY_STATUS_DETAILS_CHARS
    if message.isascii() and message.isprintable():
        assert params["details"] == message[:MAX_PROXY_STATUS_DETAILS_CHARS]


def test_a_parents_members_come_first():
    head = (
        b"HTTP/1.1 502 Bad Gateway\r\nProxy-Status: origin-side; error=dns_timeout\r\n"
        b"Via: 1.1 parent\r\nproxy-status: parent; error=connection_timeout\r\n\r\n"
    )
    exc = errors.ParentProxyError("parent proxy answered 502 Bad Gateway")
    exc.parent_proxy_status = proxy_status_of(head)
    members = parse(proxy_status(exc))
    assert [name for name, _ in members] == ["origin-side", "parent", "gconnect"]
    assert members[2][1]["error"] == "connection_refused"
    assert proxy_status_of(b"HTTP/1.1 403 Forbidden\r\n\r\n") == ""


def test_unroutable_is_told_apart_from_refused():
    assert isinstance(_connect_error("x", [errno.ENETUNREACH, errno.EHOSTUNREACH]), errors.UnroutableError)
    refused = _connect_error("x", [errno.ENETUNREACH, errno.ECONNREFUSED])
    assert type(refused) is errors.OutboundConnectError and refused.proxy_status == "connection_refused"
    assert errors.UnroutableError.proxy_status == "destination_ip_unroutable"
