"""The ``serve`` options, in one table, and what is built from them: the
Config, the config file's values, a worker's arguments.

Option names equal Config field names (a test checks the parity); every option
can also come from a ``GCONNECT_<NAME>`` environment variable and from the
``--config`` file, whose values override the defaults and are overridden by
the command line and the environment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from .. import config as cfg
from .. import defaults as d
from . import configfile
from .configfile import ConfigFileError
from .paramtypes import (
    ByteCount,
    HostPattern,
    HostPort,
    Network,
    PortRange,
    RouteSpec,
    SourceAddress,
    UpstreamPattern,
    UpstreamPoolSpec,
    UpstreamURL,
    to_text,
)


@dataclasses.dataclass(frozen=True)
class Opt:
    """One row of the table: a Config field's option."""

    name: str
    type: Any = None
    default: Any = None
    help: str = ""
    multiple: bool = False
    metavar: str | None = None
    is_flag: bool = False
    show_default: bool = True

    def option(self) -> click.Option:
        return click.Option(
            ["--" + self.name.replace("_", "-"), self.name],
            type=self.type,
            default=False if self.is_flag else self.default,
            help=self.help,
            multiple=self.multiple,
            metavar=self.metavar,
            is_flag=self.is_flag,
            show_default=self.show_default and not self.is_flag and not self.multiple,
            envvar="GCONNECT_" + self.name.upper(),
            show_envvar=True,
        )


def _seconds(name: str, default: float, help_text: str) -> Opt:
    return Opt(name, click.FloatRange(min=0), default, help_text)


def _count(name: str, low: int, default: int, help_text: str) -> Opt:
    return Opt(name, click.IntRange(min=low), default, help_text)


def _flag(name: str, help_text: str) -> Opt:
    return Opt(name, help=help_text, is_flag=True)


def _text(name: str, default: str, help_text: str, metavar: str | None = None, show: bool = True) -> Opt:
    return Opt(name, click.STRING, default, help_text, metavar=metavar, show_default=show)


def _many(name: str, param_type: click.ParamType, metavar: str, help_text: str, default: tuple = ()) -> Opt:
    return Opt(name, param_type, default, help_text, multiple=True, metavar=metavar)


def _bytes(name: str, help_text: str) -> Opt:
    return Opt(name, ByteCount(), 0, help_text, metavar="BYTES")


def _choice(name: str, choices: list[str], default: str, help_text: str) -> Opt:
    return Opt(name, click.Choice(choices), default, help_text)


# fmt: off
OPTIONS: tuple[Opt, ...] = (
    _many("listen", HostPort(), "HOST:PORT",
          "Address to listen on, repeatable; IPv6 as [::1]:3128.  [default: 127.0.0.1:3128]", (d.DEFAULT_LISTEN,)),
    _many("allow_port", PortRange(), "SPEC",
          "Destination port or range (8000-8999) to allow, repeatable.  [default: 443]", d.DEFAULT_ALLOW_PORTS),
    _many("allow_dest", Network(), "CIDR",
          "Allow destinations in this network even if private or loopback, repeatable."),
    _many("deny_dest", Network(), "CIDR", "Deny destinations in this network (wins over --allow-dest), repeatable."),
    _many("allow_host", HostPattern(), "PATTERN",
          "Allow only targets matching: name, .suffix (name and below), *.suffix (below) or IP; repeatable."),
    _many("deny_host", HostPattern(), "PATTERN",
          "Refuse targets matching this pattern (wins over --allow-host), repeatable; checked before DNS."),
    _choice("host_rules_mode", ["enforce", "report"], d.DEFAULT_HOST_RULES_MODE,
            "report: tunnels the name rules refuse go ahead, marked in the access log and counted."),
    _choice("tls_name_check", list(d.TLS_NAME_CHECK_MODES), d.DEFAULT_TLS_NAME_CHECK,
            "Check the TLS ClientHello's server name against the CONNECT host: report marks and counts a "
            "mismatch, enforce closes the tunnel."),
    _many("tls_name_check_ports", PortRange(), "SPEC",
          "Destination port or range whose tunnels --tls-name-check reads, repeatable.  [default: 443]",
          d.DEFAULT_TLS_NAME_CHECK_PORTS),
    _seconds("header_timeout", d.DEFAULT_HEADER_TIMEOUT, "Deadline for the whole request head."),
    _seconds("dns_timeout", d.DEFAULT_DNS_TIMEOUT, "Deadline for resolving the target's name."),
    _seconds("connect_timeout", d.DEFAULT_CONNECT_TIMEOUT, "Deadline for connecting to the target."),
    _seconds("idle_timeout", d.DEFAULT_IDLE_TIMEOUT,
             "Close a tunnel with no bytes either way for this long (0: never)."),
    _seconds("half_close_timeout", d.DEFAULT_HALF_CLOSE_TIMEOUT,
             "Idle limit once one side has closed its sending half (0: only --idle-timeout)."),
    _seconds("drain_timeout", d.DEFAULT_DRAIN_TIMEOUT,
             "On SIGTERM/SIGINT, and for the old workers of an upgrade, wait this long for open tunnels."),
    _many("dns_server", HostPort(default_port=53), "HOST[:PORT]",
          "DNS server to ask, repeatable.  [default: from /etc/resolv.conf]"),
    _text("hosts_file", "/etc/hosts", "hosts(5) file consulted before DNS; empty to skip.", "PATH"),
    _seconds("dns_min_ttl", d.DEFAULT_DNS_MIN_TTL, "Shortest time an answer is cached."),
    _seconds("dns_max_ttl", d.DEFAULT_DNS_MAX_TTL, "Longest time an answer is cached."),
    _seconds("dns_negative_ttl", d.DEFAULT_DNS_NEGATIVE_TTL, "How long a failed lookup is cached."),
    _seconds("attempt_delay", d.DEFAULT_ATTEMPT_DELAY, "Happy Eyeballs delay between connection attempts."),
    _count("max_header_bytes", 256, d.DEFAULT_MAX_HEADER_BYTES, "Largest request head accepted (431 beyond)."),
    _count("max_clients", 1, d.DEFAULT_MAX_CLIENTS,
           "Most clients served at once; past it the proxy stops accepting until one ends."),
    _choice(
        "relay",
        ["copy", "splice", "auto"],
        d.DEFAULT_RELAY,
        "How bytes are moved: a copy loop, splice(2) zero-copy, or copy turning to splice for bulk.",
    ),
    _count("chunk_bytes", 4096, d.DEFAULT_CHUNK_BYTES, "Most bytes moved per read (and splice pipe size)."),
    _count("pipe_pool_size", 0, d.DEFAULT_PIPE_POOL_SIZE, "Spare splice pipes kept for reuse."),
    _count("workers", 1, 1, "Worker processes sharing the listeners, under a supervisor (also for 1 when given)."),
    _flag("supervise", "Run a supervisor even for one worker, so SIGUSR2 can upgrade it in place."),
    _seconds("ready_timeout", d.DEFAULT_READY_TIMEOUT,
             "How long a new worker may take to check itself and accept; past it a start or upgrade fails."),
    _flag("reuse_port", "Bind with SO_REUSEPORT so several processes can share the port."),
    _text("state_dir", "", "Keep totals (quota counts) across restarts in SQLite in this directory; empty: in "
          "memory only.", "DIR", show=False),
    _text("shared_state", "", "redis://HOST:PORT/DB (Redis or Valkey): share limits and totals with the other "
          "instances of a fleet (needs the 'redis' extra).", "URL", show=False),
    _seconds("shared_state_period", d.DEFAULT_SHARED_STATE_PERIOD,
             "How often --shared-state is synchronised: the fleet's counts lag by at most this."),
    _count("state_table_slots", 64, d.DEFAULT_STATE_TABLE_SLOTS,
           "Keys each worker's shared table holds (a power of two); past it a key counts per process."),
    _text("access_log", "-", "Access log file, '-' for stderr, '' for none.", "PATH|-"),
    _choice("log_level", ["debug", "info", "warning", "error"], "info", "Level of the diagnostic log (stderr)."),
    _choice("log_format", ["text", "json"], d.DEFAULT_LOG_FORMAT,
            "Access log format: text (one key=value line per tunnel) or json (a line at open and at close)."),
    Opt("metrics_listen", HostPort(optional=True), "", metavar="HOST:PORT", show_default=False,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the 'metrics' extra)."),
    _many("upstream", UpstreamURL(optional=True), "URL",
          "Send tunnels through this parent proxy, http://[user:pass@]host:port; repeatable: the pool 'default'."),
    _many("upstream_for", UpstreamPattern(), "PATTERN",
          "Only destinations matching this host glob (*.corp.example) or CIDR use --upstream, repeatable."),
    _many("upstreams", UpstreamPoolSpec(), "POOL",
          "A named pool of parents, 'NAME URL... [strategy=round-robin|least-connections|first|hash] "
          "[max-fails=N] [fail-timeout=S] [check=connect] [check-interval=S]', repeatable ([upstreams.NAME]; "
          "';' between pools in the variable)."),
    _many("routes", RouteSpec(), "ROUTE",
          "'PATTERN[,PATTERN...]=POOL|direct': targets matching a glob or CIDR go that way; first match wins "
          "([[routes]])."),
    _many("bind_address", SourceAddress(), "ADDR",
          "Source address of dialled connections, repeatable: one per family, or several taken in turn."),
    _flag("proxy_protocol",
          "Accept a PROXY protocol v1/v2 header (HAProxy send-proxy) from --proxy-protocol-from sources."),
    _many("proxy_protocol_from", Network(), "CIDR",
          "Load balancers whose PROXY header is trusted, repeatable; others are served as direct clients."),
    _count("max_clients_per_ip", 0, d.DEFAULT_MAX_CLIENTS_PER_IP,
           "Most clients served at once from one address; past it 429 (0: no limit)."),
    _seconds("max_tunnel_lifetime", d.DEFAULT_MAX_TUNNEL_LIFETIME, "Close any tunnel this old (0: never)."),
    _text("auth_file", "", "htpasswd file (bcrypt; 'gconnect passwd' writes one): require Basic proxy authentication.",
          "PATH", show=False),
    _text("auth_realm", d.DEFAULT_AUTH_REALM, "Realm in Proxy-Authenticate."),
    _seconds("auth_cache_ttl", d.DEFAULT_AUTH_CACHE_TTL, "Remember a successful login this long (0: never)."),
    _count("auth_failures_per_minute", 1, d.DEFAULT_AUTH_FAILURES_PER_MINUTE,
           "Failed logins allowed per client address per minute; past it 429 without checking."),
    _flag("allow_plaintext_passwords", "Accept plaintext entries in --auth-file (refused by default)."),
    _many("auth_chain", click.Choice(list(d.AUTH_PROVIDERS)), "PROVIDER",
          "Providers to try, in order, repeatable: cert, jwt, htpasswd, helper; the first that knows the user "
          "decides.  [default: every configured one, in that order]"),
    _text("auth_helper", "", "Squid basic auth helper command line (auth_param basic program), e.g. "
          "'/usr/lib/squid/basic_ncsa_auth /etc/squid/passwd'.", "CMD", show=False),
    _count("auth_helper_children", 1, d.DEFAULT_AUTH_HELPER_CHILDREN, "Auth helper processes to run."),
    _count("auth_helper_concurrency", 0, d.DEFAULT_AUTH_HELPER_CONCURRENCY,
           "Requests each auth helper takes at once, with channel IDs (0: one at a time, no IDs)."),
    _seconds("auth_helper_ttl", d.DEFAULT_AUTH_HELPER_TTL, "Remember a helper's OK this long (credentialsttl)."),
    _seconds("auth_helper_negative_ttl", d.DEFAULT_AUTH_HELPER_NEGATIVE_TTL,
             "Remember a helper's ERR this long (0: ask again every time)."),
    Opt("auth_helper_timeout", click.FloatRange(min=0, min_open=True), d.DEFAULT_AUTH_HELPER_TIMEOUT,
        "A helper that takes longer is killed and restarted; the client gets 503."),
    _text("external_acl_helper", "", "Squid external ACL helper command line, asked 'user client host port' per "
          "tunnel after the rules; ERR refuses (403).", "CMD", show=False),
    _count("external_acl_children", 1, d.DEFAULT_EXTERNAL_ACL_CHILDREN, "External ACL helper processes to run."),
    _seconds("external_acl_ttl", d.DEFAULT_EXTERNAL_ACL_TTL, "Remember the external ACL's OK this long."),
    _seconds("external_acl_negative_ttl", d.DEFAULT_EXTERNAL_ACL_NEGATIVE_TTL,
             "Remember the external ACL's ERR this long."),
    _text("auth_jwks", "", "JWKS file of the keys signed tokens (JWT) are verified with; tokens come as "
          "Proxy-Authorization: Bearer or as the Basic password (needs the 'jwt' extra).", "PATH", show=False),
    _text("auth_jwt_issuer", "", "The iss every token must carry.", show=False),
    _text("auth_jwt_audience", "", "The aud every token must carry.", show=False),
    _text("auth_jwt_claim", d.DEFAULT_AUTH_JWT_CLAIM, "The claim naming the user."),
    _text("auth_jwt_group_claim", "", "A claim naming the user's group ([groups.NAME] rules).", show=False),
    _many("auth_jwt_algorithms", click.Choice(list(d.JWT_ALGORITHMS)), "ALG",
          "Signature algorithms accepted, repeatable ('none' never).  [default: RS256, ES256]",
          d.DEFAULT_AUTH_JWT_ALGORITHMS),
    _text("tls_cert", "", "Certificate chain: every listener speaks TLS (HTTPS proxy).", "PEM", show=False),
    _text("tls_key", "", "Private key for --tls-cert.", "PEM", show=False),
    _text("tls_client_ca", "", "CA bundle client certificates are verified against: a certificate names "
          "the user (the provider 'cert').", "PEM", show=False),
    _text("tls_client_crl", "", "CRL file (PEM) for --tls-client-ca: revoked certificates fail the handshake.",
          "PEM", show=False),
    _choice("tls_client_cert", ["optional", "required"], d.DEFAULT_TLS_CLIENT_CERT,
            "optional: a client without a certificate goes to the next provider; required: it is refused."),
    _choice("tls_client_identity", list(d.TLS_CLIENT_IDENTITIES), d.DEFAULT_TLS_CLIENT_IDENTITY,
            "The certificate's user: subject CN, first subject OU, or first SAN URI (a SPIFFE ID)."),
    _count("h2_max_streams", 1, d.DEFAULT_H2_MAX_STREAMS,
           "Concurrent CONNECT streams per HTTP/2 client connection (SETTINGS_MAX_CONCURRENT_STREAMS)."),
    Opt("h2_window_bytes", click.IntRange(min=65_535, max=2**31 - 1), d.DEFAULT_H2_WINDOW_BYTES,
        "HTTP/2 receive window per stream: bytes a client may send ahead of its target."),
    _choice("forward_http", ["on", "off"], "on",
            "Forward plain http:// requests (absolute-form) through the same policy; off: 405 as for any non-CONNECT."),
    _many("forward_port", PortRange(), "SPEC",
          "Destination port or range forwarded http:// requests may use, repeatable.  [default: 80]",
          d.DEFAULT_FORWARD_PORTS),
    _text("via_name", d.DEFAULT_VIA_NAME, "Pseudonym in the Via field of forwarded messages (a token)."),
    _flag("forwarded_for", "Add 'Forwarded: for=<client address>' to forwarded requests (off: no client address)."),
    _flag("log_path", "Write forwarded requests' paths to the access log (they can carry secrets)."),
    _flag("proxy_pac", "Serve a PAC file naming this proxy at http://<listener>/proxy.pac."),
    _seconds("forward_idle_timeout", d.DEFAULT_FORWARD_IDLE_TIMEOUT,
             "Keep idle connections to origins this long for reuse by the same user (0: none kept)."),
    _count("forward_max_idle", 0, d.DEFAULT_FORWARD_MAX_IDLE,
           "Most idle connections kept per destination, user, source address and parent."),
    _bytes("rate_per_user", "Bandwidth per user, bytes/s each way (2M, 500k, 10MiB), shared by all of a user's "
           "tunnels; [users.NAME] may set its own (0: no limit)."),
    _bytes("rate_per_client", "Bandwidth per client address (IPv6: per /64), bytes/s each way (0: no limit)."),
    _bytes("rate_total", "Bandwidth of the whole service, bytes/s each way (0: no limit)."),
    _bytes("burst_per_user", "Bytes a user's bucket may save up beyond its rate (0: one second of the rate)."),
    _bytes("burst_per_client", "Bytes a client address's bucket may save up (0: one second of the rate)."),
    _bytes("burst_total", "Bytes the service's bucket may save up (0: one second of the rate)."),
    Opt("bucket_initial", click.FloatRange(0, 1), d.DEFAULT_BUCKET_INITIAL,
        "What a new bucket holds, as a fraction of its burst (the first second moves at most rate + this)."),
    _bytes("quota_bytes", "Bytes a user may move per --quota-period, both ways; past it 429 (0: no quota; "
           "[users.NAME] may set its own)."),
    _choice("quota_period", list(d.QUOTA_PERIODS), d.DEFAULT_QUOTA_PERIOD, "The quota's period, in UTC."),
    _flag("quota_close", "Close a user's open tunnels when their quota is spent (else only new ones are refused)."),
    _seconds("accounting_interval", 0.0,
             "Write an accounting record per active user to the access log this often (0: none)."),
    _flag("metrics_user_label", "Export per-user bytes and tunnels with a 'user' label (one series per user)."),
)
# fmt: on
BY_NAME = {opt.name: opt for opt in OPTIONS}
#: Config fields only the config file sets (its ``[users.NAME]`` and ``[groups.NAME]`` tables): no option.
FILE_ONLY = ("users", "groups")
#: Where the eager --config callback leaves the file's user and group tables for ``serve``.
USERS_META_KEY = "gconnect.users"
GROUPS_META_KEY = "gconnect.groups"


def _use_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    # Eager: runs before the other options are read, so their defaults come from the file.
    if path:
        try:
            values = read_config_file(path)
        except ConfigFileError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--config'") from None
        ctx.meta[USERS_META_KEY] = user_rules(values.pop("users", {}))
        ctx.meta[GROUPS_META_KEY] = user_rules(values.pop("groups", {}))
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def params() -> list[click.Parameter]:
    """Fresh click parameters for the ``serve`` command: the table, then ``--config``."""
    config = click.Option(
        ["--config", "config"],
        type=click.Path(dir_okay=False),
        is_eager=True,
        callback=_use_config_file,
        envvar="GCONNECT_CONFIG",
        show_envvar=True,
        metavar="FILE",
        help="TOML file of option values (keys are the option names); options given here override it.",
    )
    return [*(opt.option() for opt in OPTIONS), config]


#: For converting values outside a command line (config file, reload): the table without --config.
_PARAMS = {opt.name: opt.option() for opt in OPTIONS}
_COMMAND = click.Command("serve", params=list(_PARAMS.values()))


def build_config(**options: Any) -> cfg.Config:
    """The Config from the serve command's options (click has converted them),
    and ``users`` (the config file's tables, see :func:`user_rules`) if given."""
    values: dict[str, Any] = {name: options[name] for name in FILE_ONLY if options.get(name)}
    for field in dataclasses.fields(cfg.Config):
        if field.name in options and field.name not in FILE_ONLY:
            value = options[field.name]
            opt = BY_NAME[field.name]
            # An empty list (in a file, or GCONNECT_LISTEN="") means the default, as no option at all does.
            values[field.name] = value if value or not opt.multiple else opt.default
            if opt.multiple:
                # An empty URL (GCONNECT_UPSTREAM="", a file's "") is no parent.
                values[field.name] = tuple(v for v in values[field.name] if v is not None)
    try:
        return cfg.Config(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _check_file_value(name: str, value: Any) -> None:
    """Convert one config-file value the way its option would; ValueError if it cannot.
    (Rules between fields are judged on the whole config, by build_config.)"""
    try:
        _PARAMS[name].type_cast_value(click.Context(_COMMAND), value)
    except click.BadParameter as exc:
        raise ValueError(exc.message) from None  # the file names the key: no "--option (env var)" prefix


def read_config_file(path: str) -> dict[str, Any]:
    """The file's values by option name, checked; raises ConfigFileError."""
    multiple = [opt.name for opt in OPTIONS if opt.multiple]
    return configfile.read(path, list(BY_NAME), multiple, _check_file_value)


def user_rules(tables: dict[str, dict[str, list[Any]]]) -> tuple[cfg.UserRules, ...]:
    """:class:`~gconnect.config.UserRules` from the file's ``[users.NAME]`` (or
    ``[groups.NAME]``) tables (values checked by :func:`read_config_file` already)."""
    context = click.Context(_COMMAND)

    def cast(name: str, value: Any) -> Any:
        converted = _PARAMS[name].type_cast_value(context, value)
        return tuple(converted) if BY_NAME[name].multiple else converted

    return tuple(
        cfg.UserRules(user, **{name: cast(name, value) for name, value in table.items()})
        for user, table in tables.items()
    )


def config_from_file(path: str, overrides: dict[str, Any]) -> cfg.Config:
    """The Config *path* gives with *overrides* (option name -> converted value) on top.

    Raises ConfigFileError or click.ClickException.
    """
    values = read_config_file(path)
    users = user_rules(values.pop("users", {}))
    groups = user_rules(values.pop("groups", {}))
    converted = _COMMAND.make_context("serve", [], default_map=values).params
    converted.update(overrides)
    return build_config(**converted, users=users, groups=groups)


def given_on_command_line(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Options set on the command line or by GCONNECT_*: they keep winning over the file on reload."""
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return {name: value for name, value in options.items() if ctx.get_parameter_source(name) in sources}


#: Set by the supervisor for its workers, never passed on.
SUPERVISOR_ONLY = ("config", "listen", "workers", "supervise", "ready_timeout", "reuse_port", "metrics_listen")


def worker_arguments(given: dict[str, Any], config_path: str | None) -> list[str]:
    """The ``serve`` arguments that start a worker like this process: ``--config``
    and the options set on the command line or by GCONNECT_* (so a worker's
    SIGHUP reload treats file and command line exactly as ours would), less
    what only the supervisor uses."""
    args: list[str] = ["--config", config_path] if config_path else []
    for name, value in given.items():
        if name in SUPERVISOR_ONLY:
            continue
        opt = BY_NAME[name]
        flag = "--" + name.replace("_", "-")
        if opt.is_flag:
            args += [flag] if value else []
        elif opt.multiple:
            args += [a for item in value for a in (flag, to_text(opt.type, item))]
        elif value is not None:
            args += [flag, to_text(opt.type, value)]
    return args
