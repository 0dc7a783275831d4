"""Every tunable in one frozen object, built once (by the CLI or a test) and
passed down explicitly. No module reads the environment.

Each default names its precedent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Squid's default http_port, the port proxy clients expect.
DEFAULT_LISTEN = ("127.0.0.1", 3128)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Squid's SSL_ports ACL: CONNECT is for TLS unless the operator says otherwise.
DEFAULT_ALLOW_PORTS = ((443, 443),)
#: Apache mod_reqtimeout allows 20-40 s for the head, nginx client_header_timeout
#: 60 s; a CONNECT head is one small packet, so the low end.
#: Plain http:// URLs: port 80 only unless the operator says otherwise
#: (Squid's Safe_ports is wider; CONNECT keeps its own list above).
DEFAULT_FORWARD_PORTS = ((80, 80),)
#: RFC 9110 §7.6.3 lets a proxy name itself by a pseudonym; no version, which
#: would tell an attacker what to aim at (tinyproxy#134).
DEFAULT_VIA_NAME = "gconnect"
#: Idle connections to origins kept for reuse: how long, and how many per
#: destination (nginx keepalive_timeout 60 s upstream; Squid
#: server_idle_pconn_timeout 1 minute; Go's MaxIdleConnsPerHost is 2).
DEFAULT_FORWARD_IDLE_TIMEOUT = 60.0
DEFAULT_FORWARD_MAX_IDLE = 4
DEFAULT_HEADER_TIMEOUT = 20.0
#: glibc resolv.conf "timeout:5".
DEFAULT_DNS_TIMEOUT = 5.0
#: Squid connect_timeout is 60 s; browsers give up near 30 s (Chromium's TCP
#: connect job), and Happy Eyeballs has long tried every address by then.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Squid read_timeout: 15 minutes. Short idle defaults break WebSockets and long polls.
DEFAULT_IDLE_TIMEOUT = 900.0
#: Idle limit once one side has half-closed; HAProxy's "timeout client-fin" is the
#: precedent for a separate, shorter limit in that state.
DEFAULT_HALF_CLOSE_TIMEOUT = 60.0
#: How long SIGTERM waits for open tunnels; systemd's DefaultTimeoutStopSec is 90 s.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: h11's max_incomplete_event_size is 16 KiB; tomcat 8 KiB, node.js 16 KiB (since
#: 14). A CONNECT head with a Proxy-Authorization header is well under 1 KiB.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: Name rules refuse (enforce) unless the operator is rolling them out (report).
DEFAULT_HOST_RULES_MODE = "enforce"
#: The TLS name check (the ClientHello's server name against the CONNECT host)
#: reports by default and never refuses: an upgrade changes no tunnel's fate,
#: while the access log shows every operator what enforce would close (the name
#: rules' report mode is the precedent for rolling out a check). Its cost is a
#: parse of one ClientHello per tunnel to a listed port (docs/performance.rst).
DEFAULT_TLS_NAME_CHECK = "report"
#: Squid's SSL_ports ACL: 443 is the port whose tunnels are TLS.
DEFAULT_TLS_NAME_CHECK_PORTS = ((443, 443),)
TLS_NAME_CHECK_MODES = ("off", "report", "enforce")
#: The open-file limit here is 20,000 and a tunnel holds two descriptors.
DEFAULT_MAX_CLIENTS = 9_900
#: Splice pipe capacity and copy-relay read size. Measured (bench/loadgen bulk, one
#: tunnel, proxy pinned): 64 KiB (the Linux pipe default) cost 0.40-0.45 proxy CPU
#: s/GiB, 256 KiB 0.25-0.29, 512 KiB 0.23-0.26, 1 MiB (pipe-max-size) 0.22-0.24.
#: Pipe pages are only allocated while bytes sit in them.
DEFAULT_CHUNK_BYTES = 512 * 1024
#: RFC 8305 §5: "A recommended value for the Connection Attempt Delay is 250 ms".
DEFAULT_ATTEMPT_DELAY = 0.25
#: Clamp DNS TTLs: Chromium's host cache caps at 1 min for its own resolver; unbound
#: cache-max-ttl is 1 day. We keep a day's ceiling and let zero-TTL answers live 1 s
#: so a burst of tunnels to one name shares a lookup.
DEFAULT_DNS_MIN_TTL = 1.0
DEFAULT_DNS_MAX_TTL = 86_400.0
#: Failed lookups are remembered briefly (RFC 2308 negative caching; unbound's
#: cache-min-negative-ttl style), so a flood to a dead name costs one query.
DEFAULT_DNS_NEGATIVE_TTL = 5.0
#: How long a new worker may take to check itself and start accepting. One is
#: ready in well under a second here (bench/listeners.py); the margin is for a
#: loaded machine, and a start must fit in systemd's DefaultTimeoutStartSec (90 s).
DEFAULT_READY_TIMEOUT = 20.0
#: How bytes are moved. copy, measured against auto and splice (docs/performance.rst):
#: one tunnel's bulk moved faster for less core time, softirq counted, and other
#: tunnels' echoes stayed fast in the bursts after a start where auto and splice
#: stalled them; handshakes and held tunnels alike. splice may still lead with many
#: bulk tunnels on a CPU-bound proxy: --relay splice.
DEFAULT_RELAY = "copy"
#: Pipes kept for the splice relay: a pipe is held only while bytes are in flight.
DEFAULT_PIPE_POOL_SIZE = 256
#: The access log's format: Squid and nginx default to one human-readable line;
#: "json" (open and close lines) is what log shippers (Vector, Fluent Bit) parse.
DEFAULT_LOG_FORMAT = "text"
#: No metrics listener unless asked: node_exporter and HAProxy's Prometheus
#: endpoint are opt-in too, and an open port is an operator's decision.
DEFAULT_METRICS_LISTEN: tuple[str, int] | None = None
#: HAProxy's "accept-proxy" trusts whoever connects; we trust no one unless named,
#: as nginx's set_real_ip_from does.
DEFAULT_PROXY_PROTOCOL_FROM: tuple[IPNetwork, ...] = ()
#: Per-address concurrent clients, 0 = no limit. nginx limit_conn and Squid's
#: maxconn ACL are both opt-in: many users share one address behind NAT.
DEFAULT_MAX_CLIENTS_PER_IP = 0
#: 0 = tunnels may live for ever (as in Squid, HAProxy "timeout tunnel" bounds idleness only).
DEFAULT_MAX_TUNNEL_LIFETIME = 0.0
#: RFC 7617 §2: the realm names the protection space; the program's name by default.
DEFAULT_AUTH_REALM = "gconnect"
#: A successful check is remembered this long. Squid's auth_param basic
#: credentialsttl is 2 hours; 5 minutes bounds how long a removed user keeps working
#: when the file is not reloaded (a reload clears the cache at once).
DEFAULT_AUTH_CACHE_TTL = 300.0
#: Failed logins allowed per client address per minute (a token bucket, this many
#: in a burst). sshd's MaxAuthTries is 6 per connection, fail2ban's maxretry 5 per
#: 10 minutes; 10 a minute lets a mistyped password be retried, not guessed.
DEFAULT_AUTH_FAILURES_PER_MINUTE = 10
#: The providers --auth-chain may name, and the order they are tried in when it
#: is not given (each only if configured): a client certificate costs nothing
#: more once the handshake verified it; a token says by its shape whether it is
#: one; the file knows its users; a helper answers for every name, so it goes last.
AUTH_PROVIDERS = ("cert", "jwt", "htpasswd", "helper")
#: Squid's ``auth_param basic children 5`` (its suggested config, and the default).
DEFAULT_AUTH_HELPER_CHILDREN = 5
#: Squid's helpers are serial unless ``concurrency=N`` is given: 0 (no channel IDs).
DEFAULT_AUTH_HELPER_CONCURRENCY = 0
#: Squid's ``auth_param basic credentialsttl 2 hours``.
DEFAULT_AUTH_HELPER_TTL = 7200.0
#: Squid's Basic scheme remembers no failed login (Auth::Basic::User::ttl() is -1
#: for anything but OK): every retry asks the helper again; the failure limiter
#: bounds how often.
DEFAULT_AUTH_HELPER_NEGATIVE_TTL = 0.0
#: How long a helper may take to answer before it is taken for hung, killed and
#: restarted. LDAP and RADIUS helpers answer in milliseconds (pam_radius's own
#: timeout is 3 s); well inside --header-timeout's 20 s so the 503 reaches the client.
DEFAULT_AUTH_HELPER_TIMEOUT = 10.0
#: Squid's external_acl_type ``ttl=3600``, and ``negative_ttl`` defaults to ttl.
DEFAULT_EXTERNAL_ACL_TTL = 3600.0
DEFAULT_EXTERNAL_ACL_NEGATIVE_TTL = 3600.0
#: Squid's external_acl_type ``children-max=5``.
DEFAULT_EXTERNAL_ACL_CHILDREN = 5
#: A client certificate is asked for; without one the next provider decides.
DEFAULT_TLS_CLIENT_CERT = "optional"
#: Which part of a client certificate names the user: subject CN, the first
#: subject OU (Smokescreen's role), or the first SAN URI (a SPIFFE ID).
TLS_CLIENT_IDENTITIES = ("cn", "ou", "uri")
DEFAULT_TLS_CLIENT_IDENTITY = "cn"
#: The claim naming the user: RFC 7519 §4.1.2 "sub".
DEFAULT_AUTH_JWT_CLAIM = "sub"
#: Asymmetric algorithms only by default: the JWKS file then holds public keys,
#: which may be read by anyone. "none" is never accepted, whatever is listed.
DEFAULT_AUTH_JWT_ALGORITHMS = ("RS256", "ES256")
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
)  # fmt: skip

#: How a pool of parents spreads tunnels: nginx's upstream default, and gost's.
DEFAULT_STRATEGY = "round-robin"
STRATEGIES = ("round-robin", "least-connections", "first", "hash")
#: Failures in a row that take a parent out, and for how long: nginx's
#: max_fails=1 fail_timeout=10s (Squid's dead_peer_timeout is 10 s too).
DEFAULT_MAX_FAILS = 1
DEFAULT_FAIL_TIMEOUT = 10.0
#: The active check's interval: HAProxy's default "inter 2s".
DEFAULT_CHECK_INTERVAL = 2.0
#: The pool that --upstream URLs form; routes name it like any other.
DEFAULT_POOL = "default"
#: What a route's ``via`` says to skip every parent.
DIRECT = "direct"
#: SETTINGS_MAX_CONCURRENT_STREAMS on an HTTP/2 connection: 100 is the value RFC
#: 9113 §6.5.2 recommends as a floor and what nginx, h2o and Envoy's default
#: listeners advertise.
DEFAULT_H2_MAX_STREAMS = 100
#: The receive window of one HTTP/2 stream: what a client may send on it before
#: the target has taken it (so the memory one stream can hold toward its target).
#: 1 MiB is a loopback-to-LAN bandwidth-delay product at 1-10 Gbit/s and more than
#: one --chunk-bytes; nghttpx defaults to 64 KiB, Chromium opens 6 MiB, Envoy 256 MiB.
DEFAULT_H2_WINDOW_BYTES = 1024 * 1024


def hostport(host: str, port: int | str) -> str:
    """``host:port``, with brackets around an IPv6 address (RFC 3986 §3.2.2): the
    one way gconnect writes an authority."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class ParentProxy:
    """A parent proxy reached with CONNECT: ``http://[user:pass@]host:port``."""

    host: str
    port: int
    username: str = ""
    password: str = ""

    def __str__(self) -> str:
        # The password never reaches a log line or check-config's output.
        auth = f"{self.username}:***@" if self.username else ""
        return f"http://{auth}{hostport(self.host, self.port)}"


#: Keys of a pool's settings (config file, --upstreams text) -> the UpstreamPool fields they set.
POOL_KEYS = {
    "strategy": "strategy",
    "max-fails": "max_fails",
    "fail-timeout": "fail_timeout",
    "check": "check",
    "check-interval": "check_interval",
}


@dataclasses.dataclass(frozen=True)
class UpstreamPool:
    """``[upstreams.NAME]``: parents sharing the tunnels of the routes that name the pool."""

    name: str
    urls: tuple[ParentProxy, ...]
    strategy: str = DEFAULT_STRATEGY
    #: Failures in a row (refused, silent, no HTTP answer) that take a parent out.
    max_fails: int = DEFAULT_MAX_FAILS
    #: Seconds a parent stays out before one probe tunnel may try it again.
    fail_timeout: float = DEFAULT_FAIL_TIMEOUT
    #: "" (passive only) or "connect": a TCP connect to each parent that is out, every check_interval.
    check: str = ""
    check_interval: float = DEFAULT_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if not self.name or self.name == DIRECT or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"upstream pool name {self.name!r}: letters, digits, '-', '_', '.'; not 'direct'")
        if not self.urls:
            raise ValueError(f"upstream pool {self.name!r} has no urls")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"upstream pool {self.name!r}: strategy must be one of {', '.join(STRATEGIES)}")
        if self.max_fails < 1 or self.fail_timeout < 0 or self.check_interval <= 0:
            raise ValueError(f"upstream pool {self.name!r}: max-fails >= 1, fail-timeout >= 0, check-interval > 0")
        if self.check not in ("", "connect"):
            raise ValueError(f'upstream pool {self.name!r}: check must be "connect" or empty')


@dataclasses.dataclass(frozen=True)
class Route:
    """``[[routes]]``: tunnels to targets matching ``patterns`` (host globs, CIDRs) go ``via`` a pool or direct."""

    patterns: tuple[str, ...]
    via: str

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError(f"a route via {self.via!r} needs at least one pattern in 'for'")


@dataclasses.dataclass(frozen=True)
class UserRules:
    """One ``[users.NAME]`` table of the config file. An ``allow_*`` given
    (not None) replaces the global value for that user; a ``deny_*`` adds to
    the global one (a global deny always holds)."""

    name: str
    allow_host: tuple[str, ...] | None = None
    deny_host: tuple[str, ...] = ()
    allow_port: tuple[tuple[int, int], ...] | None = None
    allow_dest: tuple[IPNetwork, ...] | None = None
    deny_dest: tuple[IPNetwork, ...] = ()
    tls_name_check: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """The proxy's whole configuration. Field names equal the CLI option names."""

    listen: tuple[tuple[str, int], ...] = (DEFAULT_LISTEN,)
    allow_port: tuple[tuple[int, int], ...] = DEFAULT_ALLOW_PORTS
    allow_dest: tuple[IPNetwork, ...] = ()
    deny_dest: tuple[IPNetwork, ...] = ()
    #: Destination name patterns (canonical text, see tunnel/names.py), decided before DNS.
    allow_host: tuple[str, ...] = ()
    deny_host: tuple[str, ...] = ()
    #: "enforce" refuses what the name rules refuse; "report" only marks and counts it.
    host_rules_mode: str = DEFAULT_HOST_RULES_MODE
    #: off | report | enforce: the ClientHello's server name against the CONNECT host.
    tls_name_check: str = DEFAULT_TLS_NAME_CHECK
    #: The destination ports whose tunnels the name check reads.
    tls_name_check_ports: tuple[tuple[int, int], ...] = DEFAULT_TLS_NAME_CHECK_PORTS
    #: Per-user policy tables; only the config file sets them (no option).
    users: tuple[UserRules, ...] = ()
    #: Per-group policy tables ([groups.NAME]), chosen by the group a provider
    #: names (a helper's group= or tag=, a token's group claim); only the config file sets them.
    groups: tuple[UserRules, ...] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    dns_timeout: float = DEFAULT_DNS_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    half_close_timeout: float = DEFAULT_HALF_CLOSE_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: (host, port) of DNS servers; empty means the system's resolv.conf.
    dns_server: tuple[tuple[str, int], ...] = ()
    hosts_file: str = "/etc/hosts"
    dns_min_ttl: float = DEFAULT_DNS_MIN_TTL
    dns_max_ttl: float = DEFAULT_DNS_MAX_TTL
    dns_negative_ttl: float = DEFAULT_DNS_NEGATIVE_TTL
    attempt_delay: float = DEFAULT_ATTEMPT_DELAY
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_clients: int = DEFAULT_MAX_CLIENTS
    relay: str = DEFAULT_RELAY
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    pipe_pool_size: int = DEFAULT_PIPE_POOL_SIZE
    #: Worker processes sharing the supervisor's listeners, each its own hub.
    workers: int = 1
    #: Run the supervisor even for one worker (it is what SIGUSR2 upgrades).
    supervise: bool = False
    #: How long a new worker may take to be ready; past it a start or an upgrade fails.
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    #: Bind with SO_REUSEPORT so several processes can share a port.
    reuse_port: bool = False
    #: "-" is stderr; "" turns the access log off.
    access_log: str = "-"
    log_level: str = "info"
    log_format: str = DEFAULT_LOG_FORMAT
    metrics_listen: tuple[str, int] | None = DEFAULT_METRICS_LISTEN
    #: Tunnels go through these parent proxies, the pool "default" (all of them, or those upstream_for picks).
    upstream: tuple[ParentProxy, ...] = ()
    #: Host-name globs and CIDRs choosing which destinations use the parent.
    upstream_for: tuple[str, ...] = ()
    #: Named pools of parents (the config file's [upstreams.NAME]).
    upstreams: tuple[UpstreamPool, ...] = ()
    #: Which targets go through which pool, first match wins (the config file's [[routes]]).
    routes: tuple[Route, ...] = ()
    #: Source addresses of dialled connections (direct and to parents), round-robin per family.
    bind_address: tuple[str, ...] = ()
    proxy_protocol: bool = False
    proxy_protocol_from: tuple[IPNetwork, ...] = DEFAULT_PROXY_PROTOCOL_FROM
    max_clients_per_ip: int = DEFAULT_MAX_CLIENTS_PER_IP
    max_tunnel_lifetime: float = DEFAULT_MAX_TUNNEL_LIFETIME
    #: htpasswd file; empty means no authentication.
    auth_file: str = ""
    auth_realm: str = DEFAULT_AUTH_REALM
    auth_cache_ttl: float = DEFAULT_AUTH_CACHE_TTL
    auth_failures_per_minute: int = DEFAULT_AUTH_FAILURES_PER_MINUTE
    allow_plaintext_passwords: bool = False
    #: Providers in the order tried (names of AUTH_PROVIDERS); empty: every configured one, in that order.
    auth_chain: tuple[str, ...] = ()
    #: A Squid basic auth helper's command line (shlex syntax); empty: none.
    auth_helper: str = ""
    auth_helper_children: int = DEFAULT_AUTH_HELPER_CHILDREN
    auth_helper_concurrency: int = DEFAULT_AUTH_HELPER_CONCURRENCY
    auth_helper_ttl: float = DEFAULT_AUTH_HELPER_TTL
    auth_helper_negative_ttl: float = DEFAULT_AUTH_HELPER_NEGATIVE_TTL
    auth_helper_timeout: float = DEFAULT_AUTH_HELPER_TIMEOUT
    #: A Squid external_acl_type helper asked per tunnel (user, client, host, port); empty: none.
    external_acl_helper: str = ""
    external_acl_children: int = DEFAULT_EXTERNAL_ACL_CHILDREN
    external_acl_ttl: float = DEFAULT_EXTERNAL_ACL_TTL
    external_acl_negative_ttl: float = DEFAULT_EXTERNAL_ACL_NEGATIVE_TTL
    #: JWKS file of the keys tokens are verified with; empty: no tokens.
    auth_jwks: str = ""
    auth_jwt_issuer: str = ""
    auth_jwt_audience: str = ""
    auth_jwt_claim: str = DEFAULT_AUTH_JWT_CLAIM
    #: A claim naming the user's group (a [groups.NAME] table); empty: none.
    auth_jwt_group_claim: str = ""
    auth_jwt_algorithms: tuple[str, ...] = DEFAULT_AUTH_JWT_ALGORITHMS
    #: PEM certificate chain and key: every listener speaks TLS (an "HTTPS proxy").
    tls_cert: str = ""
    tls_key: str = ""
    #: HTTP/2 on the TLS listener (ALPN h2): streams per connection, and each stream's window.
    h2_max_streams: int = DEFAULT_H2_MAX_STREAMS
    h2_window_bytes: int = DEFAULT_H2_WINDOW_BYTES
    #: CA bundle client certificates are verified against (and a CRL); empty: none asked for.
    tls_client_ca: str = ""
    tls_client_crl: str = ""
    #: "optional": a client without a certificate goes to the next provider; "required": refused.
    tls_client_cert: str = DEFAULT_TLS_CLIENT_CERT
    tls_client_identity: str = DEFAULT_TLS_CLIENT_IDENTITY
    #: Plain HTTP forwarding of absolute-form http:// requests: "on" or "off" (405, as for any non-CONNECT).
    forward_http: str = "on"
    #: Destination ports forwarded http:// requests may use (CONNECT uses allow_port).
    forward_port: tuple[tuple[int, int], ...] = DEFAULT_FORWARD_PORTS
    #: The pseudonym in the Via field added to forwarded messages.
    via_name: str = DEFAULT_VIA_NAME
    #: Add "Forwarded: for=<client address>" to forwarded requests.
    forwarded_for: bool = False
    #: Write forwarded requests' paths (which may carry secrets) to the access log.
    log_path: bool = False
    #: Serve /proxy.pac (a PAC file naming this proxy) to origin-form requests.
    proxy_pac: bool = False
    #: Idle connections to origins: seconds kept for reuse (0: none kept), and the most per destination.
    forward_idle_timeout: float = DEFAULT_FORWARD_IDLE_TIMEOUT
    forward_max_idle: int = DEFAULT_FORWARD_MAX_IDLE

    def __post_init__(self) -> None:
        for name in ("header_timeout", "dns_timeout", "connect_timeout", "ready_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("idle_timeout", "half_close_timeout", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off)")
        if self.relay not in ("auto", "splice", "copy"):
            raise ValueError("relay must be auto, splice or copy")
        if self.max_header_bytes < 256:
            raise ValueError("max_header_bytes must be >= 256")
        if self.max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if not self.listen:
            raise ValueError("at least one listen address is needed")
        if self.host_rules_mode not in ("enforce", "report"):
            raise ValueError("host_rules_mode must be enforce or report")
        if self.tls_name_check not in TLS_NAME_CHECK_MODES or any(
            rules.tls_name_check not in (None, *TLS_NAME_CHECK_MODES) for rules in (*self.users, *self.groups)
        ):
            raise ValueError("tls_name_check must be off, report or enforce")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.upstream_for and not self.upstream:
            raise ValueError("upstream_for needs upstream (the parent proxy to send those tunnels to)")
        self._check_routes()
        if self.proxy_protocol and not self.proxy_protocol_from:
            raise ValueError("proxy_protocol needs proxy_protocol_from (the load balancers' networks to trust)")
        if self.max_clients_per_ip < 0:
            raise ValueError("max_clients_per_ip must be >= 0 (0 turns it off)")
        if self.forward_http not in ("on", "off"):
            raise ValueError("forward_http must be on or off")
        if not _TOKEN.fullmatch(self.via_name):
            raise ValueError("via_name must be a token (letters, digits, !#$%&'*+-.^_`|~)")
        if self.forward_idle_timeout < 0 or self.forward_max_idle < 0:
            raise ValueError("forward_idle_timeout and forward_max_idle must be >= 0")
        if self.max_tunnel_lifetime < 0 or self.auth_cache_ttl < 0:
            raise ValueError("max_tunnel_lifetime and auth_cache_ttl must be >= 0")
        if self.auth_failures_per_minute < 1:
            raise ValueError("auth_failures_per_minute must be >= 1")
        # RFC 9110 §11.2: the realm is a quoted-string; keep it to printable ASCII without quotes.
        if not self.auth_realm or any(ch in '"\\' or not " " <= ch <= "~" for ch in self.auth_realm):
            raise ValueError("auth_realm must be printable ASCII without quotes or backslashes")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert and self.proxy_protocol:
            # The PROXY header comes before the handshake, in the clear; not supported together yet.
            raise ValueError("tls_cert cannot be combined with proxy_protocol")
        self._check_auth()
        if self.h2_max_streams < 1:
            raise ValueError("h2_max_streams must be >= 1")
        # RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE is at least 65,535 and below 2**31.
        if not 65_535 <= self.h2_window_bytes < 2**31:
            raise ValueError("h2_window_bytes must be in 65535 .. 2147483647")

    def auth_providers(self) -> tuple[str, ...]:
        """The providers in the order they are tried: --auth-chain, or every configured one."""
        configured = {
            "cert": bool(self.tls_client_ca),
            "jwt": bool(self.auth_jwks),
            "htpasswd": bool(self.auth_file),
            "helper": bool(self.auth_helper),
        }
        return self.auth_chain or tuple(name for name in AUTH_PROVIDERS if configured[name])

    def _check_auth(self) -> None:
        for name in self.auth_chain:
            if name not in AUTH_PROVIDERS:
                raise ValueError(f"auth_chain: unknown provider {name!r} (one of {', '.join(AUTH_PROVIDERS)})")
        if len(set(self.auth_chain)) != len(self.auth_chain):
            raise ValueError("auth_chain names a provider twice")
        needs = {"cert": "tls_client_ca", "jwt": "auth_jwks", "htpasswd": "auth_file", "helper": "auth_helper"}
        for name in self.auth_chain:
            if not getattr(self, needs[name]):
                raise ValueError(f"auth_chain names {name!r} but {needs[name]} is not set")
        if self.auth_helper_children < 1 or self.external_acl_children < 1 or self.auth_helper_concurrency < 0:
            raise ValueError("auth_helper_children and external_acl_children >= 1, auth_helper_concurrency >= 0")
        for name in ("auth_helper_ttl", "auth_helper_negative_ttl", "external_acl_ttl", "external_acl_negative_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: not cached)")
        if self.auth_helper_timeout <= 0:
            raise ValueError("auth_helper_timeout must be > 0")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert (client certificates are asked for on the TLS listener)")
        if self.tls_client_crl and not self.tls_client_ca:
            raise ValueError("tls_client_crl needs tls_client_ca")
        if self.tls_client_cert not in ("optional", "required"):
            raise ValueError("tls_client_cert must be optional or required")
        if self.tls_client_identity not in TLS_CLIENT_IDENTITIES:
            raise ValueError(f"tls_client_identity must be one of {', '.join(TLS_CLIENT_IDENTITIES)}")
        if not self.auth_jwt_algorithms or any(a not in JWT_ALGORITHMS for a in self.auth_jwt_algorithms):
            raise ValueError(f"auth_jwt_algorithms: one or more of {', '.join(JWT_ALGORITHMS)} ('none' never)")
        if self.auth_jwks and not (self.auth_jwt_issuer and self.auth_jwt_audience):
            raise ValueError("auth_jwks needs auth_jwt_issuer and auth_jwt_audience (tokens are checked against both)")

    def for_user(self, rules: UserRules) -> Config:
        """This configuration's policy as it applies to the user of *rules*."""
        return dataclasses.replace(
            self,
            allow_host=self.allow_host if rules.allow_host is None else rules.allow_host,
            deny_host=self.deny_host + tuple(p for p in rules.deny_host if p not in self.deny_host),
            allow_port=self.allow_port if rules.allow_port is None else rules.allow_port,
            allow_dest=self.allow_dest if rules.allow_dest is None else rules.allow_dest,
            deny_dest=self.deny_dest + tuple(n for n in rules.deny_dest if n not in self.deny_dest),
            tls_name_check=self.tls_name_check if rules.tls_name_check is None else rules.tls_name_check,
            users=(),
            groups=(),
        )

    def _check_routes(self) -> None:
        names = [pool.name for pool in self.upstreams]
        if len(set(names)) != len(names) or (DEFAULT_POOL in names and self.upstream):
            raise ValueError("upstream pool names must be unique (--upstream URLs are the pool 'default')")
        known = {*names, DIRECT, *((DEFAULT_POOL,) if self.upstream else ())}
        for route in self.routes:
            if route.via not in known:
                raise ValueError(f"route via {route.via!r}: no such upstream pool (known: {', '.join(sorted(known))})")
