"""Every tunable in one frozen object, built once (by the CLI or a test) and
passed down explicitly. No module reads the environment.

The defaults, each with its precedent, are :mod:`gconnect.defaults`.
"""

from __future__ import annotations

import dataclasses
import re

from . import defaults as d
from .defaults import IPNetwork

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
    strategy: str = d.DEFAULT_STRATEGY
    #: Failures in a row (refused, silent, no HTTP answer) that take a parent out.
    max_fails: int = d.DEFAULT_MAX_FAILS
    #: Seconds a parent stays out before one probe tunnel may try it again.
    fail_timeout: float = d.DEFAULT_FAIL_TIMEOUT
    #: "" (passive only) or "connect": a TCP connect to each parent that is out, every check_interval.
    check: str = ""
    check_interval: float = d.DEFAULT_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if not self.name or self.name == d.DIRECT or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"upstream pool name {self.name!r}: letters, digits, '-', '_', '.'; not 'direct'")
        if not self.urls:
            raise ValueError(f"upstream pool {self.name!r} has no urls")
        if self.strategy not in d.STRATEGIES:
            raise ValueError(f"upstream pool {self.name!r}: strategy must be one of {', '.join(d.STRATEGIES)}")
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


#: The limits a ``[users.NAME]`` or ``[groups.NAME]`` table may set for its users, replacing the global value.
USER_LIMITS = ("rate_per_user", "burst_per_user", "quota_bytes")


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
    #: Bandwidth limit (bytes/s each way) and its burst, and the byte quota; None: the global value.
    rate_per_user: int | None = None
    burst_per_user: int | None = None
    quota_bytes: int | None = None
    #: Replaces --forward-port (the ports of forwarded http:// requests) for this user.
    forward_port: tuple[tuple[int, int], ...] | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """The proxy's whole configuration. Field names equal the CLI option names."""

    listen: tuple[tuple[str, int], ...] = (d.DEFAULT_LISTEN,)
    allow_port: tuple[tuple[int, int], ...] = d.DEFAULT_ALLOW_PORTS
    allow_dest: tuple[IPNetwork, ...] = ()
    deny_dest: tuple[IPNetwork, ...] = ()
    #: Destination name patterns (canonical text, see tunnel/names.py), decided before DNS.
    allow_host: tuple[str, ...] = ()
    deny_host: tuple[str, ...] = ()
    #: "enforce" refuses what the name rules refuse; "report" only marks and counts it.
    host_rules_mode: str = d.DEFAULT_HOST_RULES_MODE
    #: off | report | enforce: the ClientHello's server name against the CONNECT host.
    tls_name_check: str = d.DEFAULT_TLS_NAME_CHECK
    #: The destination ports whose tunnels the name check reads.
    tls_name_check_ports: tuple[tuple[int, int], ...] = d.DEFAULT_TLS_NAME_CHECK_PORTS
    #: Per-user policy tables; only the config file sets them (no option).
    users: tuple[UserRules, ...] = ()
    #: Per-group policy tables ([groups.NAME]), chosen by the group a provider
    #: names (a helper's group= or tag=, a token's group claim); only the config file sets them.
    groups: tuple[UserRules, ...] = ()
    header_timeout: float = d.DEFAULT_HEADER_TIMEOUT
    dns_timeout: float = d.DEFAULT_DNS_TIMEOUT
    connect_timeout: float = d.DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = d.DEFAULT_IDLE_TIMEOUT
    half_close_timeout: float = d.DEFAULT_HALF_CLOSE_TIMEOUT
    drain_timeout: float = d.DEFAULT_DRAIN_TIMEOUT
    #: (host, port) of DNS servers; empty means the system's resolv.conf.
    dns_server: tuple[tuple[str, int], ...] = ()
    hosts_file: str = "/etc/hosts"
    dns_min_ttl: float = d.DEFAULT_DNS_MIN_TTL
    dns_max_ttl: float = d.DEFAULT_DNS_MAX_TTL
    dns_negative_ttl: float = d.DEFAULT_DNS_NEGATIVE_TTL
    attempt_delay: float = d.DEFAULT_ATTEMPT_DELAY
    max_header_bytes: int = d.DEFAULT_MAX_HEADER_BYTES
    max_clients: int = d.DEFAULT_MAX_CLIENTS
    relay: str = d.DEFAULT_RELAY
    chunk_bytes: int = d.DEFAULT_CHUNK_BYTES
    pipe_pool_size: int = d.DEFAULT_PIPE_POOL_SIZE
    #: Worker processes sharing the supervisor's listeners, each its own hub.
    workers: int = 1
    #: Run the supervisor even for one worker (it is what SIGUSR2 upgrades).
    supervise: bool = False
    #: How long a new worker may take to be ready; past it a start or an upgrade fails.
    ready_timeout: float = d.DEFAULT_READY_TIMEOUT
    #: Bind with SO_REUSEPORT so several processes can share a port.
    reuse_port: bool = False
    #: Where totals (quota counts) are kept across restarts, as SQLite; empty: in memory only.
    state_dir: str = ""
    #: A redis:// (or rediss://, unix://) URL the fleet's instances share their counters through.
    shared_state: str = ""
    #: How often an instance synchronises with --shared-state (the bound of the fleet's error).
    shared_state_period: float = d.DEFAULT_SHARED_STATE_PERIOD
    #: Slots of each shared table (a power of two).
    state_table_slots: int = d.DEFAULT_STATE_TABLE_SLOTS
    #: "-" is stderr; "" turns the access log off.
    access_log: str = "-"
    log_level: str = "info"
    log_format: str = d.DEFAULT_LOG_FORMAT
    metrics_listen: tuple[str, int] | None = d.DEFAULT_METRICS_LISTEN
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
    proxy_protocol_from: tuple[IPNetwork, ...] = d.DEFAULT_PROXY_PROTOCOL_FROM
    max_clients_per_ip: int = d.DEFAULT_MAX_CLIENTS_PER_IP
    max_tunnel_lifetime: float = d.DEFAULT_MAX_TUNNEL_LIFETIME
    #: htpasswd file; empty means no authentication.
    auth_file: str = ""
    auth_realm: str = d.DEFAULT_AUTH_REALM
    auth_cache_ttl: float = d.DEFAULT_AUTH_CACHE_TTL
    auth_failures_per_minute: int = d.DEFAULT_AUTH_FAILURES_PER_MINUTE
    allow_plaintext_passwords: bool = False
    #: Providers in the order tried (names of d.AUTH_PROVIDERS); empty: every configured one, in that order.
    auth_chain: tuple[str, ...] = ()
    #: A Squid basic auth helper's command line (shlex syntax); empty: none.
    auth_helper: str = ""
    auth_helper_children: int = d.DEFAULT_AUTH_HELPER_CHILDREN
    auth_helper_concurrency: int = d.DEFAULT_AUTH_HELPER_CONCURRENCY
    auth_helper_ttl: float = d.DEFAULT_AUTH_HELPER_TTL
    auth_helper_negative_ttl: float = d.DEFAULT_AUTH_HELPER_NEGATIVE_TTL
    auth_helper_timeout: float = d.DEFAULT_AUTH_HELPER_TIMEOUT
    #: A Squid external_acl_type helper asked per tunnel (user, client, host, port); empty: none.
    external_acl_helper: str = ""
    external_acl_children: int = d.DEFAULT_EXTERNAL_ACL_CHILDREN
    external_acl_ttl: float = d.DEFAULT_EXTERNAL_ACL_TTL
    external_acl_negative_ttl: float = d.DEFAULT_EXTERNAL_ACL_NEGATIVE_TTL
    #: JWKS file of the keys tokens are verified with; empty: no tokens.
    auth_jwks: str = ""
    auth_jwt_issuer: str = ""
    auth_jwt_audience: str = ""
    auth_jwt_claim: str = d.DEFAULT_AUTH_JWT_CLAIM
    #: A claim naming the user's group (a [groups.NAME] table); empty: none.
    auth_jwt_group_claim: str = ""
    auth_jwt_algorithms: tuple[str, ...] = d.DEFAULT_AUTH_JWT_ALGORITHMS
    #: PEM certificate chain and key: every listener speaks TLS (an "HTTPS proxy").
    tls_cert: str = ""
    tls_key: str = ""
    #: HTTP/2 on the TLS listener (ALPN h2): streams per connection, and each stream's window.
    h2_max_streams: int = d.DEFAULT_H2_MAX_STREAMS
    h2_window_bytes: int = d.DEFAULT_H2_WINDOW_BYTES
    #: CA bundle client certificates are verified against (and a CRL); empty: none asked for.
    tls_client_ca: str = ""
    tls_client_crl: str = ""
    #: "optional": a client without a certificate goes to the next provider; "required": refused.
    tls_client_cert: str = d.DEFAULT_TLS_CLIENT_CERT
    tls_client_identity: str = d.DEFAULT_TLS_CLIENT_IDENTITY
    #: Plain HTTP forwarding of absolute-form http:// requests: "on" or "off" (405, as for any non-CONNECT).
    forward_http: str = "on"
    #: Destination ports forwarded http:// requests may use (CONNECT uses allow_port).
    forward_port: tuple[tuple[int, int], ...] = d.DEFAULT_FORWARD_PORTS
    #: The pseudonym in the Via field added to forwarded messages.
    via_name: str = d.DEFAULT_VIA_NAME
    #: Add "Forwarded: for=<client address>" to forwarded requests.
    forwarded_for: bool = False
    #: Write forwarded requests' paths (which may carry secrets) to the access log.
    log_path: bool = False
    #: Serve /proxy.pac (a PAC file naming this proxy) to origin-form requests.
    proxy_pac: bool = False
    #: Idle connections to origins: seconds kept for reuse (0: none kept), and the most per destination.
    forward_idle_timeout: float = d.DEFAULT_FORWARD_IDLE_TIMEOUT
    forward_max_idle: int = d.DEFAULT_FORWARD_MAX_IDLE
    #: Bandwidth limits in bytes per second, each direction (0: none): one bucket per
    #: user, per client address (an IPv6 /64) and for the service; bursts in bytes
    #: (0: one second of the rate); what a new bucket holds, as a fraction of its burst.
    rate_per_user: int = 0
    rate_per_client: int = 0
    rate_total: int = 0
    burst_per_user: int = 0
    burst_per_client: int = 0
    burst_total: int = 0
    bucket_initial: float = d.DEFAULT_BUCKET_INITIAL
    #: Bytes a user may move (both ways) per UTC day or month (0: no quota); close open tunnels when spent.
    quota_bytes: int = 0
    quota_period: str = d.DEFAULT_QUOTA_PERIOD
    quota_close: bool = False
    #: Seconds between accounting records per user in the access log (0: none).
    accounting_interval: float = 0.0
    #: Per-user metrics (bytes, tunnels) with a ``user`` label.
    metrics_user_label: bool = False

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
        self._check_state()
        if not self.listen:
            raise ValueError("at least one listen address is needed")
        if self.host_rules_mode not in ("enforce", "report"):
            raise ValueError("host_rules_mode must be enforce or report")
        if self.tls_name_check not in d.TLS_NAME_CHECK_MODES or any(
            rules.tls_name_check not in (None, *d.TLS_NAME_CHECK_MODES) for rules in (*self.users, *self.groups)
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
        if self.quota_period not in d.QUOTA_PERIODS or not 0 <= self.bucket_initial <= 1:
            raise ValueError("quota_period must be day or month, bucket_initial in 0 .. 1")

    def auth_providers(self) -> tuple[str, ...]:
        """The providers in the order they are tried: --auth-chain, or every configured one."""
        configured = {
            "cert": bool(self.tls_client_ca),
            "jwt": bool(self.auth_jwks),
            "htpasswd": bool(self.auth_file),
            "helper": bool(self.auth_helper),
        }
        return self.auth_chain or tuple(name for name in d.AUTH_PROVIDERS if configured[name])

    def _check_auth(self) -> None:
        for name in self.auth_chain:
            if name not in d.AUTH_PROVIDERS:
                raise ValueError(f"auth_chain: unknown provider {name!r} (one of {', '.join(d.AUTH_PROVIDERS)})")
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
        if self.tls_client_identity not in d.TLS_CLIENT_IDENTITIES:
            raise ValueError(f"tls_client_identity must be one of {', '.join(d.TLS_CLIENT_IDENTITIES)}")
        if not self.auth_jwt_algorithms or any(a not in d.JWT_ALGORITHMS for a in self.auth_jwt_algorithms):
            raise ValueError(f"auth_jwt_algorithms: one or more of {', '.join(d.JWT_ALGORITHMS)} ('none' never)")
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
            **{key: getattr(rules, key) for key in USER_LIMITS if getattr(rules, key) is not None},
            forward_port=self.forward_port if rules.forward_port is None else rules.forward_port,
            users=(),
            groups=(),
        )

    def _check_state(self) -> None:
        slots = self.state_table_slots
        if slots < 64 or slots & (slots - 1):
            raise ValueError("state_table_slots must be a power of two >= 64")
        if self.shared_state and not self.shared_state.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("shared_state must be a redis://, rediss:// or unix:// URL")
        if self.shared_state_period <= 0:
            raise ValueError("shared_state_period must be > 0")

    def _check_routes(self) -> None:
        names = [pool.name for pool in self.upstreams]
        if len(set(names)) != len(names) or (d.DEFAULT_POOL in names and self.upstream):
            raise ValueError("upstream pool names must be unique (--upstream URLs are the pool 'default')")
        known = {*names, d.DIRECT, *((d.DEFAULT_POOL,) if self.upstream else ())}
        for route in self.routes:
            if route.via not in known:
                raise ValueError(f"route via {route.via!r}: no such upstream pool (known: {', '.join(sorted(known))})")
