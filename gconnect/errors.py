"""The exception tree. Data only: each class names one failure and the HTTP
status it becomes while the client has not yet been told 200.

OS and dnspython exceptions are translated once, where they happen, with
``raise ... from exc``; none of these subclass ``OSError``.
"""

from __future__ import annotations


class GConnectError(Exception):
    """Base of every failure gconnect knows how to report."""

    status: int = 500
    reason: str = "Internal Server Error"
    #: Short machine-readable cause, used as the access log's ``reason=``.
    code: str = "error"
    #: Extra response headers, e.g. ``Allow`` for 405.
    headers: tuple[tuple[str, str], ...] = ()
    #: False when no HTTP response can be sent (the connection only closes).
    answerable: bool = True


class ClientError(GConnectError):
    """The client sent something we will not act on (4xx)."""

    status = 400
    reason = "Bad Request"
    code = "bad_request"


class MalformedRequestError(ClientError):
    status = 400
    reason = "Bad Request"
    code = "bad_request"


class PolicyDeniedError(ClientError):
    status = 403
    reason = "Forbidden"
    code = "denied"


class MethodNotAllowedError(ClientError):
    status = 405
    reason = "Method Not Allowed"
    code = "bad_method"
    headers = (("Allow", "CONNECT"),)


class ProxyAuthRequiredError(ClientError):
    status = 407
    reason = "Proxy Authentication Required"
    code = "auth_required"

    def __init__(self, message: str, realm: str = "gconnect") -> None:
        super().__init__(message)
        self.headers = (("Proxy-Authenticate", f'Basic realm="{realm}"'),)


class ProxyAuthFailedError(ProxyAuthRequiredError):
    """Credentials given but wrong (unknown user or wrong password: not told apart)."""

    code = "auth_failed"


class ProxyAuthMalformedError(ProxyAuthRequiredError):
    """A Proxy-Authorization header that cannot be read: still a 407, never a 400,
    so the client is asked again."""

    code = "auth_malformed"


class HeadTimeoutError(ClientError):
    status = 408
    reason = "Request Timeout"
    code = "head_timeout"


class HeadTooLargeError(ClientError):
    status = 431
    reason = "Request Header Fields Too Large"
    code = "head_too_large"


class VersionNotSupportedError(ClientError):
    # 505 is a 5xx by number, but it is the client's request that is at fault.
    status = 505
    reason = "HTTP Version Not Supported"
    code = "bad_version"


class UpstreamError(GConnectError):
    """We could not reach the destination (5xx)."""

    status = 502
    reason = "Bad Gateway"
    code = "upstream_error"


class ResolveError(UpstreamError):
    status = 502
    code = "dns_error"


class ResolveTimeoutError(UpstreamError):
    status = 504
    reason = "Gateway Timeout"
    code = "dns_timeout"


class UpstreamConnectError(UpstreamError):
    status = 502
    code = "connect_error"


class UpstreamConnectTimeoutError(UpstreamError):
    status = 504
    reason = "Gateway Timeout"
    code = "connect_timeout"


class ClientClosedError(ClientError):
    """The client closed before its request head was complete."""

    status = 400
    code = "client_closed"


class ProxyHeaderError(ClientError):
    """A trusted load balancer's PROXY protocol header is missing or malformed."""

    status = 400
    code = "bad_proxy_header"


class ParentProxyError(UpstreamError):
    """The parent proxy refused the CONNECT; the message carries its status line."""

    status = 502
    code = "parent_refused"


class ParentProxyTimeoutError(UpstreamError):
    status = 504
    reason = "Gateway Timeout"
    code = "parent_timeout"


class TooManyClientsError(GConnectError):
    """The proxy is at --max-clients: the server's own overload, not the client's."""

    # RFC 9110 §15.6.4: 503 is the server's own overload, temporary by nature.
    status = 503
    reason = "Service Unavailable"
    code = "too_many_clients"
    headers = (("Retry-After", "1"),)


class OutOfDescriptorsError(GConnectError):
    """The proxy could not open the upstream socket for want of descriptors or
    memory: its own overload (503), not the destination's fault (a 502 would
    blame the target)."""

    status = 503
    reason = "Service Unavailable"
    code = "no_descriptors"
    headers = (("Retry-After", "1"),)


class TooManyClientsPerAddressError(ClientError):
    # RFC 6585 §4: 429 is one client sending too much; nginx limit_conn uses 503,
    # but the fault here is the client's, and 429 says so.
    status = 429
    reason = "Too Many Requests"
    code = "too_many_per_address"
    headers = (("Retry-After", "1"),)


class AuthRateLimitedError(ClientError):
    """Too many failed logins from one address: refused before any hash runs."""

    status = 429
    reason = "Too Many Requests"
    code = "auth_rate_limited"

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.headers = (("Retry-After", str(retry_after)),)


class TLSHandshakeError(ClientError):
    """The client's TLS handshake failed: there is no channel to answer on."""

    status = 400
    code = "tls_handshake"
    #: Nothing can be said in plain text to a client mid-handshake.
    answerable = False


class StreamResetError(ClientError):
    """An HTTP/2 client reset its CONNECT stream (or lost its connection) before
    the 200: nothing to answer on that stream."""

    status = 499
    code = "client_reset"
    answerable = False
