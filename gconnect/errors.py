"""The exception tree. Data only: each class names one failure and the HTTP
status it becomes while the client has not yet been told 200.

OS and dnspython exceptions are translated once, where they happen, with
``raise ... from exc``; none of these subclass ``OSError``.
"""

from __future__ import annotations


class GConnectError(Exception):
    """Base of every failure gconnect knows how to report."""

    status: int = 500
    #: The status line's phrase ("Bad Request"); not to be confused with an end reason.
    phrase: str = "Internal Server Error"
    #: Short machine-readable cause, used as the access log's ``reason=``.
    code: str = "error"
    #: Extra response headers, e.g. ``Allow`` for 405.
    headers: tuple[tuple[str, str], ...] = ()
    #: False when no HTTP response can be sent (the connection only closes).
    answerable: bool = True
    #: RFC 9209 §2.3 error type for the response's Proxy-Status header.
    proxy_status: str = "proxy_internal_error"
    #: A parent proxy's own Proxy-Status members, kept in front of ours
    #: (RFC 9209 §2: the list runs from the origin side outwards).
    parent_proxy_status: str = ""


class ClientError(GConnectError):
    """The client sent something we will not act on (4xx)."""

    status = 400
    phrase = "Bad Request"
    code = "bad_request"
    proxy_status = "http_request_error"


class MalformedRequestError(ClientError):
    status = 400
    phrase = "Bad Request"
    code = "bad_request"


class PolicyDeniedError(ClientError):
    status = 403
    phrase = "Forbidden"
    code = "denied"
    proxy_status = "http_request_denied"


class DestinationDeniedError(PolicyDeniedError):
    """Every address the target has (or is) is refused by the address policy."""

    proxy_status = "destination_ip_prohibited"


class LoopDetectedError(PolicyDeniedError):
    """The tunnel would lead back into this proxy."""

    proxy_status = "proxy_loop_detected"


class HostDeniedError(PolicyDeniedError):
    """The target matches a deny-host pattern."""

    code = "host_denied"


class HostNotAllowedError(PolicyDeniedError):
    """An allow-host list is set and the target matches none of it."""

    code = "host_not_allowed"


class ClientCertificateRequiredError(PolicyDeniedError):
    """Only a client certificate can name a user here, and the client sent none
    (a 407 would ask for a password no provider could check)."""

    code = "cert_required"


class ExternalDeniedError(PolicyDeniedError):
    """The external decision helper answered ERR for this user, client and target."""

    code = "external_denied"


class MethodNotAllowedError(ClientError):
    status = 405
    phrase = "Method Not Allowed"
    code = "bad_method"
    headers = (("Allow", "CONNECT"),)


class ProxyAuthRequiredError(ClientError):
    status = 407
    phrase = "Proxy Authentication Required"
    code = "auth_required"
    proxy_status = "http_request_denied"

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
    phrase = "Request Timeout"
    code = "head_timeout"


class HeadTooLargeError(ClientError):
    status = 431
    phrase = "Request Header Fields Too Large"
    code = "head_too_large"


class VersionNotSupportedError(ClientError):
    # 505 is a 5xx by number, but it is the client's request that is at fault.
    status = 505
    phrase = "HTTP Version Not Supported"
    code = "bad_version"


class OutboundError(GConnectError):
    """The way out failed: resolving the target, connecting to it, or a parent
    proxy on the way (5xx). The code keeps its old name, ``upstream_error``:
    operators' log queries and alerts match it."""

    status = 502
    phrase = "Bad Gateway"
    code = "upstream_error"
    proxy_status = "destination_unavailable"


class ResolveError(OutboundError):
    status = 502
    code = "dns_error"
    proxy_status = "dns_error"


class NameNotFoundError(ResolveError):
    """The name does not exist, or has no address: nothing to connect to."""

    proxy_status = "destination_not_found"


class ResolveTimeoutError(OutboundError):
    status = 504
    phrase = "Gateway Timeout"
    code = "dns_timeout"
    proxy_status = "dns_timeout"


class OutboundConnectError(OutboundError):
    status = 502
    code = "connect_error"
    proxy_status = "connection_refused"


class UnroutableError(OutboundConnectError):
    """No route to the destination's addresses (ENETUNREACH, EHOSTUNREACH)."""

    proxy_status = "destination_ip_unroutable"


class OutboundTimeoutError(OutboundError):
    status = 504
    phrase = "Gateway Timeout"
    code = "connect_timeout"
    proxy_status = "connection_timeout"


class ClientClosedError(ClientError):
    """The client closed before its request head was complete."""

    status = 400
    code = "client_closed"


class ProxyHeaderError(ClientError):
    """A trusted load balancer's PROXY protocol header is missing or malformed."""

    status = 400
    code = "bad_proxy_header"


class ParentProxyError(OutboundError):
    """The parent proxy refused the CONNECT; the message carries its status line."""

    status = 502
    code = "parent_refused"
    # The next hop (the parent) refused the tunnel; its own Proxy-Status, if
    # any, is kept in parent_proxy_status.
    proxy_status = "connection_refused"
    #: The parent's own status (403, 503...); 0 when it gave none we could read.
    parent_status = 0

    def __init__(self, message: str, parent_status: int = 0) -> None:
        super().__init__(message)
        self.parent_status = parent_status


class ParentDeniedError(ParentProxyError):
    """The parent proxy answered 403: its policy's verdict on the client's
    request, passed on as ours (not retried on another parent). Other 4xx from a
    parent (407: our credentials) are about our request to it and stay 502."""

    status = 403
    phrase = "Forbidden"
    code = "parent_denied"
    proxy_status = "http_request_denied"


class ParentProxyTimeoutError(OutboundError):
    status = 504
    phrase = "Gateway Timeout"
    code = "parent_timeout"
    proxy_status = "connection_timeout"


class TooManyClientsError(GConnectError):
    """The proxy is at --max-clients: the server's own overload, not the client's."""

    # RFC 9110 §15.6.4: 503 is the server's own overload, temporary by nature.
    status = 503
    phrase = "Service Unavailable"
    code = "too_many_clients"
    headers = (("Retry-After", "1"),)
    proxy_status = "connection_limit_reached"


class OutOfDescriptorsError(GConnectError):
    """The proxy could not open the upstream socket for want of descriptors or
    memory: its own overload (503), not the destination's fault (a 502 would
    blame the target)."""

    status = 503
    phrase = "Service Unavailable"
    code = "no_descriptors"
    headers = (("Retry-After", "1"),)
    proxy_status = "connection_limit_reached"


class AuthUnavailableError(GConnectError):
    """A helper program the decision rests on crashed, did not answer in time, or
    answered BH: the proxy cannot tell, so nobody is let in on its word (RFC 9110
    §15.6.4: 503, the server's own trouble, not the client's)."""

    status = 503
    phrase = "Service Unavailable"
    code = "auth_unavailable"
    headers = (("Retry-After", "1"),)
    # RFC 9209 §2.3.23: an internal error of the intermediary, unrelated to the origin.
    proxy_status = "proxy_internal_error"


class TooManyClientsPerAddressError(ClientError):
    # RFC 6585 §4: 429 is one client sending too much; nginx limit_conn uses 503,
    # but the fault here is the client's, and 429 says so.
    status = 429
    phrase = "Too Many Requests"
    code = "too_many_per_address"
    headers = (("Retry-After", "1"),)
    proxy_status = "connection_limit_reached"


class AuthRateLimitedError(ClientError):
    """Too many failed logins from one address: refused before any hash runs."""

    status = 429
    phrase = "Too Many Requests"
    code = "auth_rate_limited"
    proxy_status = "http_request_denied"

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.headers = (("Retry-After", str(retry_after)),)


class QuotaExceededError(ClientError):
    """The user's byte quota for this period is spent: refused until the next
    period starts (*retry_after* seconds from now); Proxy-Status' details name
    the quota."""

    status = 429
    phrase = "Too Many Requests"
    code = "quota_exceeded"
    proxy_status = "http_request_denied"

    def __init__(self, message: str, retry_after: int) -> None:
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


class MalformedStreamError(ClientError):
    """An HTTP/2 request whose ``content-length`` disagrees with its DATA
    (RFC 9113 §8.1.1): a stream error of type PROTOCOL_ERROR, no response."""

    status = 400
    code = "malformed_stream"
    answerable = False


class UnsupportedRequestError(ClientError):
    """A request the proxy does not forward: an unknown method, an Upgrade."""

    # RFC 9110 §15.6.2: 501 is the answer to a method the server does not recognise.
    status = 501
    phrase = "Not Implemented"
    code = "not_supported"


class TraceRefusedError(MethodNotAllowedError):
    """TRACE is not forwarded: it would echo the client's headers, credentials
    included, to whoever answers it."""

    headers = (("Allow", "CONNECT, GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),)


class NotFoundError(ClientError):
    """An origin-form request for a path the proxy does not serve."""

    status = 404
    phrase = "Not Found"
    code = "not_found"


class BadResponseError(OutboundError):
    """The origin's (or parent's) response is malformed or framed ambiguously:
    nothing of it is passed on, and the connection is dropped."""

    status = 502
    code = "bad_response"
    proxy_status = "http_protocol_error"


class ResponseTimeoutError(OutboundError):
    """No response head from the origin within the idle limit."""

    status = 504
    phrase = "Gateway Timeout"
    code = "response_timeout"
    proxy_status = "http_response_timeout"


class ResponseIncompleteError(OutboundError):
    """The origin closed (or reset) the connection before its response head was complete."""

    status = 502
    code = "upstream_reset"
    proxy_status = "http_response_incomplete"


class BodyTimeoutError(ClientError):
    """The client stopped sending its request body for longer than the idle limit."""

    status = 408
    phrase = "Request Timeout"
    code = "idle_timeout"
