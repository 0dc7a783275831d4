"""The defaults of every tunable, each with the precedent it follows.

:class:`gconnect.config.Config` takes its field defaults from here; the
command line and the config file show them. Values only: nothing here reads
the environment or runs at import.
"""

from __future__ import annotations

import ipaddress
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Squid's default http_port, the port proxy clients expect.
DEFAULT_LISTEN = ("127.0.0.1", 3128)
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
#: server_idle_pconn_timeout 1 minute). Squid and Traffic Server cap idle
#: connections per destination at nothing by default; a cap below the requests
#: in flight to one origin dials and closes a connection for most requests
#: (Go's MaxIdleConnsPerHost of 2 is for one client's own requests, not a proxy's).
DEFAULT_FORWARD_IDLE_TIMEOUT = 60.0
DEFAULT_FORWARD_MAX_IDLE = 32
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

#: Bandwidth limits: a bucket's burst when none is given is one second of its
#: rate (Squid's delay pools are usually written restore/max with max = restore;
#: golang.org/x/time/rate, gost's limiter, is mostly used with burst = rate).
DEFAULT_BURST_SECONDS = 1.0
#: What a new bucket holds, as a fraction of its burst: empty, so the first
#: second moves at most the rate (a bucket that starts full let a whole burst
#: through at once: go-gost/gost#555); whatever it is, at most rate + burst.
DEFAULT_BUCKET_INITIAL = 0.0
#: Quota periods (UTC) and the default: a month, as providers bill.
QUOTA_PERIODS = ("day", "month")
DEFAULT_QUOTA_PERIOD = "month"

#: Slots of each shared-memory table row (gauges and totals, per worker): a
#: power of two. 8192 keys live at once per worker (addresses with clients open,
#: users' quota periods, addresses' failure windows) at 3/4 load; nginx's
#: limit_conn_zone of 1 MiB holds about 8,000 addresses (its docs' figure).
DEFAULT_STATE_TABLE_SLOTS = 8192
#: --shared-state: how often an instance pushes its deltas and reads the fleet's
#: sums, the bound of the fleet's error. A second is what the issue asks for
#: bandwidth shares, and one small Redis exchange a second per instance is nothing.
DEFAULT_SHARED_STATE_PERIOD = 1.0
#: How often the totals are written to --state-dir (and at stop): a crash loses
#: at most this much counting, as a quota that counts a few seconds short.
STATE_FLUSH_SECONDS = 5.0
#: The failed-login limiter's window: --auth-failures-per-minute is counted in
#: a sliding window of a minute (two fixed windows, the previous one weighted by
#: how much of it still overlaps: Cloudflare's and nginx-plus's approximation).
AUTH_FAILURE_WINDOW_SECONDS = 60
