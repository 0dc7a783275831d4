"""The command line. Builds the one Config, sets up logging and signals, runs.

Option names equal Config field names (a test checks the parity) and every
option can also come from a ``GCONNECT_<NAME>`` environment variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import urllib.parse
from typing import Any

import click
import gevent

from .. import __version__
from .. import config as cfg
from . import accesslog
from .configfile import ConfigFileError
from .supervisor import METRICS_DIR_ENV, PARENT_FD_ENV, READY_FD_ENV, WORKER_INDEX_ENV, watch_parent

log = logging.getLogger("gconnect")

EXAMPLES = """\b
Examples:
  gconnect serve                                  # 127.0.0.1:3128, port 443 only
  gconnect serve --listen 0.0.0.0:3128 --allow-port 443 --allow-port 8443
  gconnect serve --allow-port 1-65535 --allow-dest 127.0.0.0/8 --dns-server 127.0.0.1:5353
  curl -x http://127.0.0.1:3128 https://example.com/
"""


def parse_hostport(text: str, *, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` (or a bare host when *default_port* is set)."""
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise click.BadParameter(f"{text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise click.BadParameter(f"{text!r}: expected [V6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text and default_port is None:
        raise click.BadParameter(f"{text!r}: write IPv6 addresses as [V6]:PORT")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise click.BadParameter(f"{text!r}: {host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise click.BadParameter(f"{text!r}: the port is required (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{text!r}: bad port {port_text!r}")
    return host, int(port_text)


def parse_port_range(text: str) -> tuple[int, int]:
    """``443`` or ``8000-8999``."""
    low_text, dash, high_text = text.partition("-")
    if not dash:
        high_text = low_text
    if not (low_text.isdigit() and high_text.isdigit()):
        raise click.BadParameter(f"{text!r}: expected PORT or LOW-HIGH")
    low, high = int(low_text), int(high_text)
    if not (1 <= low <= high <= 65535):
        raise click.BadParameter(f"{text!r}: ports are 1-65535, low <= high")
    return low, high


def parse_network(text: str) -> cfg.IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None


def parse_metrics_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of the metrics listener, or None for ``""`` (off)."""
    return parse_hostport(text, what="metrics address") if text else None


def parse_upstream(text: str) -> cfg.ParentProxy | None:
    """``http://[user:pass@]host:port`` (the port is required), or None for ``""``."""
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http":
        raise click.BadParameter(f"{text!r}: only http:// parent proxies are supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise click.BadParameter(f"{text!r}: expected http://[user:pass@]host:port and nothing after")
    try:
        port = parts.port
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise click.BadParameter(f"{text!r}: the host and port are required (http://host:port)")
    return cfg.ParentProxy(
        parts.hostname,
        port,
        urllib.parse.unquote(parts.username or ""),
        urllib.parse.unquote(parts.password or ""),
    )


def parse_upstream_for(text: str) -> str:
    """A CIDR or IP (matches IP-literal targets) or a host-name glob such as
    ``*.example.com`` (matches names, case-insensitively); returned normalised."""
    text = text.strip().lower()
    if not text:
        raise click.BadParameter("empty pattern")
    if "/" in text or ":" in text or text.replace(".", "").isdigit():
        return str(parse_network(text))
    if not all(c.isalnum() or c in "-._*?[]" for c in text):
        raise click.BadParameter(f"{text!r}: expected a host-name glob (*.example.com) or a CIDR")
    return text


def _env(name: str) -> str:
    return "GCONNECT_" + name.upper()


def _opt(name: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    flag = "--" + name.replace("_", "-")
    return click.option(flag, name, envvar=_env(name), show_envvar=True, **kwargs)


def _seconds(name: str, default: float, help_text: str):  # type: ignore[no-untyped-def]
    return _opt(name, type=click.FloatRange(min=0), default=default, show_default=True, help=help_text)


def build_config(**options: Any) -> cfg.Config:
    """Turn the serve command's options into the Config (click has parsed them)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cfg.Config):
        if field.name not in options:
            continue
        value = options[field.name]
        if field.name == "listen":
            value = tuple(parse_hostport(v, what="listen address") for v in value) or (cfg.DEFAULT_LISTEN,)
        elif field.name == "allow_port":
            value = tuple(parse_port_range(v) for v in value) or cfg.DEFAULT_ALLOW_PORTS
        elif field.name in ("allow_dest", "deny_dest"):
            value = tuple(parse_network(v) for v in value)
        elif field.name == "dns_server":
            value = tuple(parse_hostport(v, default_port=53) for v in value)
        elif field.name == "metrics_listen":
            value = parse_metrics_listen(value or "")
        elif field.name == "upstream":
            value = parse_upstream(value or "")
        elif field.name == "upstream_for":
            value = tuple(parse_upstream_for(v) for v in value)
        elif field.name == "proxy_protocol_from":
            value = tuple(parse_network(v) for v in value)
        values[field.name] = value
    try:
        return cfg.Config(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _announce(bound: list[tuple[str, int]]) -> None:
    for host, port in bound:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # Scripts and tests read this line for the real port when listening on port 0.
        click.echo(f"gconnect listening on {shown}", err=True)


def worker_arguments(given: dict[str, Any], config_path: str | None) -> list[str]:
    """The ``serve`` arguments that start a worker like this process: ``--config``
    and the options set on the command line or by GCONNECT_* (as given, so a
    worker's SIGHUP reload treats file and command line exactly as ours would),
    less the listeners and worker settings, which the supervisor sets."""
    args: list[str] = ["--config", config_path] if config_path else []
    for name, value in given.items():
        if name in ("config", "listen", "workers", "reuse_port", "metrics_listen"):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif isinstance(value, (tuple, list)):
            args += [a for item in value for a in (flag, str(item))]
        elif value is not None:
            args += [flag, str(value)]
    return args


def setup_logging(config: cfg.Config) -> None:
    """The diagnostic log on stderr. (The access log is server.Proxy's LogFile.)"""
    # Records need no thread or process names here, and looking them up is not free.
    logging.logThreads = False
    logging.logMultiprocessing = False
    level = getattr(logging, config.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@click.group(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gconnect")
def main() -> None:
    """gconnect: a high-concurrency HTTP CONNECT tunnelling proxy."""


@main.command(epilog=EXAMPLES)
@_opt(
    "listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Address to listen on, repeatable; IPv6 as [::1]:3128.  [default: 127.0.0.1:3128]",
)
@_opt(
    "allow_port",
    multiple=True,
    metavar="SPEC",
    help="Destination port or range (8000-8999) to allow, repeatable.  [default: 443]",
)
@_opt(
    "allow_dest",
    multiple=True,
    metavar="CIDR",
    help="Allow destinations in this network even if private or loopback, repeatable.",
)
@_opt(
    "deny_dest",
    multiple=True,
    metavar="CIDR",
    help="Deny destinations in this network (wins over --allow-dest), repeatable.",
)
@_seconds("header_timeout", cfg.DEFAULT_HEADER_TIMEOUT, "Deadline for the whole request head.")
@_seconds("dns_timeout", cfg.DEFAULT_DNS_TIMEOUT, "Deadline for resolving the target's name.")
@_seconds("connect_timeout", cfg.DEFAULT_CONNECT_TIMEOUT, "Deadline for connecting to the target.")
@_seconds("idle_timeout", cfg.DEFAULT_IDLE_TIMEOUT, "Close a tunnel with no bytes either way for this long (0: never).")
@_seconds(
    "half_close_timeout",
    cfg.DEFAULT_HALF_CLOSE_TIMEOUT,
    "Idle limit once one side has closed its sending half (0: only --idle-timeout).",
)
@_seconds("drain_timeout", cfg.DEFAULT_DRAIN_TIMEOUT, "On SIGTERM/SIGINT, wait this long for open tunnels.")
@_opt(
    "dns_server",
    multiple=True,
    metavar="HOST[:PORT]",
    help="DNS server to ask, repeatable.  [default: from /etc/resolv.conf]",
)
@_opt(
    "hosts_file",
    default="/etc/hosts",
    show_default=True,
    metavar="PATH",
    help="hosts(5) file consulted before DNS; empty to skip.",
)
@_seconds("dns_min_ttl", cfg.DEFAULT_DNS_MIN_TTL, "Shortest time an answer is cached.")
@_seconds("dns_max_ttl", cfg.DEFAULT_DNS_MAX_TTL, "Longest time an answer is cached.")
@_seconds("dns_negative_ttl", cfg.DEFAULT_DNS_NEGATIVE_TTL, "How long a failed lookup is cached.")
@_seconds("attempt_delay", cfg.DEFAULT_ATTEMPT_DELAY, "Happy Eyeballs delay between connection attempts.")
@_opt(
    "max_header_bytes",
    type=click.IntRange(min=256),
    default=cfg.DEFAULT_MAX_HEADER_BYTES,
    show_default=True,
    help="Largest request head accepted (431 beyond).",
)
@_opt(
    "max_clients",
    type=click.IntRange(min=1),
    default=cfg.DEFAULT_MAX_CLIENTS,
    show_default=True,
    help="Most clients served at once; past it the proxy stops accepting until one ends.",
)
@_opt(
    "relay",
    type=click.Choice(["auto", "splice", "copy"]),
    default="auto",
    show_default=True,
    help="How bytes are moved: splice(2) zero-copy, or a copy loop.",
)
@_opt(
    "chunk_bytes",
    type=click.IntRange(min=4096),
    default=cfg.DEFAULT_CHUNK_BYTES,
    show_default=True,
    help="Most bytes moved per read (and splice pipe size).",
)
@_opt(
    "pipe_pool_size",
    type=click.IntRange(min=0),
    default=cfg.DEFAULT_PIPE_POOL_SIZE,
    show_default=True,
    help="Spare splice pipes kept for reuse.",
)
@_opt(
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes sharing the listeners (SO_REUSEPORT), supervised by this one.",
)
@_opt("reuse_port", is_flag=True, default=False, help="Bind with SO_REUSEPORT so several processes can share the port.")
@_opt(
    "access_log", default="-", show_default=True, metavar="PATH|-", help="Access log file, '-' for stderr, '' for none."
)
@_opt(
    "log_level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Level of the diagnostic log (stderr).",
)
@_opt(
    "log_format",
    type=click.Choice(["text", "json"]),
    default=cfg.DEFAULT_LOG_FORMAT,
    show_default=True,
    help="Access log format: text (one key=value line per tunnel) or json (a line at open and at close).",
)
@_opt(
    "metrics_listen",
    default="",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the 'metrics' extra).",
)
@_opt(
    "upstream",
    default="",
    metavar="URL",
    help="Send tunnels through this parent proxy: http://[user:pass@]host:port.",
)
@_opt(
    "upstream_for",
    multiple=True,
    metavar="PATTERN",
    help="Only destinations matching this host glob (*.corp.example) or CIDR use --upstream, repeatable.",
)
@_opt(
    "proxy_protocol",
    is_flag=True,
    default=False,
    help="Accept a PROXY protocol v1/v2 header (HAProxy send-proxy) from --proxy-protocol-from sources.",
)
@_opt(
    "proxy_protocol_from",
    multiple=True,
    metavar="CIDR",
    help="Load balancers whose PROXY header is trusted, repeatable; others are served as direct clients.",
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=True,
    callback=lambda ctx, param, value: _use_config_file(ctx, value),
    envvar="GCONNECT_CONFIG",
    show_envvar=True,
    metavar="FILE",
    help="TOML file of option values (keys are the option names); options given here override it.",
)
@_opt(
    "max_clients_per_ip",
    type=click.IntRange(min=0),
    default=cfg.DEFAULT_MAX_CLIENTS_PER_IP,
    show_default=True,
    help="Most clients served at once from one address; past it 429 (0: no limit).",
)
@_seconds("max_tunnel_lifetime", cfg.DEFAULT_MAX_TUNNEL_LIFETIME, "Close any tunnel this old (0: never).")
@_opt(
    "auth_file",
    default="",
    metavar="PATH",
    help="htpasswd file (bcrypt; 'gconnect passwd' writes one): require Basic proxy authentication.",
)
@_opt("auth_realm", default=cfg.DEFAULT_AUTH_REALM, show_default=True, help="Realm in Proxy-Authenticate.")
@_seconds("auth_cache_ttl", cfg.DEFAULT_AUTH_CACHE_TTL, "Remember a successful login this long (0: never).")
@_opt(
    "auth_failures_per_minute",
    type=click.IntRange(min=1),
    default=cfg.DEFAULT_AUTH_FAILURES_PER_MINUTE,
    show_default=True,
    help="Failed logins allowed per client address per minute; past it 429 without checking.",
)
@_opt(
    "allow_plaintext_passwords",
    is_flag=True,
    default=False,
    help="Accept plaintext entries in --auth-file (refused by default).",
)
@_opt("tls_cert", default="", metavar="PEM", help="Certificate chain: every listener speaks TLS (HTTPS proxy).")
@_opt("tls_key", default="", metavar="PEM", help="Private key for --tls-cert.")
def serve(**options: Any) -> None:
    """Run the proxy until SIGTERM or SIGINT; SIGHUP reloads the policy from
    --config, SIGUSR1 reopens the access log."""
    config = build_config(**options)
    setup_logging(config)
    if config.workers > 1:
        from . import supervisor

        # Workers do not listen for scrapes: they write snapshots that this
        # process sums (workermetrics). The explicit empty value also wins over
        # a config file's metrics-listen when a worker reloads on SIGHUP.
        given = _given_on_command_line(click.get_current_context(), options)
        worker_args = [*worker_arguments(given, options.get("config")), "--metrics-listen", ""]
        metrics = None
        try:
            if config.metrics_listen is not None:
                from .workermetrics import SupervisorMetrics

                metrics = SupervisorMetrics(config.workers, config.metrics_listen)
                # Before the listening lines: whoever waits for those finds this one too.
                click.echo(f"gconnect metrics on {accesslog.fmt_addr(metrics.address)}", err=True)
            code = supervisor.run(
                config,
                worker_args,
                _announce,
                metrics_dir=metrics.directory if metrics else None,
                on_worker_exit=metrics.collector.retire if metrics else None,
            )
        except (OSError, RuntimeError) as exc:
            raise click.ClickException(f"cannot start: {exc}") from None
        finally:
            if metrics is not None:
                metrics.close()
        sys.exit(code)
    from ..server import Proxy  # imports dnspython: after the CLI has parsed

    try:
        proxy = Proxy(config)
        bound = proxy.start()
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None

    def request_stop(signum: int) -> None:
        log.info("signal %d: stopping", signum)
        gevent.spawn(proxy.stop)

    gevent.signal_handler(signal.SIGTERM, request_stop, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, request_stop, signal.SIGINT)
    if proxy.access_log is not None:
        # logrotate's postrotate: kill -USR1 (moving the file is also noticed within a second).
        gevent.signal_handler(signal.SIGUSR1, proxy.access_log.reopen)
    command_line = _given_on_command_line(click.get_current_context(), options)
    gevent.signal_handler(signal.SIGHUP, _reload, proxy, options.get("config"), command_line)
    if proxy.metrics_address is not None:
        # Before the listening lines: whoever waits for those finds this one too.
        click.echo(f"gconnect metrics on {accesslog.fmt_addr(proxy.metrics_address)}", err=True)
    snapshots = None
    metrics_dir = os.environ.pop(METRICS_DIR_ENV, None)
    worker_index = os.environ.pop(WORKER_INDEX_ENV, "0")
    if metrics_dir is not None:
        # We are a worker of a supervisor that serves /metrics for all of us.
        from .workermetrics import SnapshotWriter

        snapshots = SnapshotWriter(proxy, metrics_dir, int(worker_index))
        snapshots.start()
    parent_fd = os.environ.pop(PARENT_FD_ENV, None)
    if parent_fd is not None:
        watch_parent(int(parent_fd), proxy.stop)
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    if ready_fd is not None:
        # We are a worker: tell the supervisor we listen; it announces the port.
        os.write(int(ready_fd), b"r")
        os.close(int(ready_fd))
    else:
        _announce(bound)
    log.info("relay=%s max_clients=%d", proxy.relay_mode, config.max_clients)
    proxy.stopped.wait()
    if snapshots is not None:
        snapshots.stop()
    log.info("stopped")


def _option(name: str) -> click.Option:
    return next(p for p in serve.params if isinstance(p, click.Option) and p.name == name)


def _check_file_value(name: str, value: Any) -> None:
    """Convert one config-file value the way its option would; ValueError if it cannot."""
    ctx = click.Context(serve)
    try:
        converted = _option(name).type_cast_value(ctx, value)
        # Only this field's parsing: a rule between fields is judged on the whole config.
        build_config(**{name: converted})
    except click.BadParameter as exc:
        raise ValueError(exc.format_message()) from None
    except click.UsageError:
        pass


def read_config_file(path: str) -> dict[str, Any]:
    """The file's values by option name, checked; raises ConfigFileError."""
    from . import configfile

    names = [p.name for p in serve.params if isinstance(p, click.Option) and p.name and p.name != "config"]
    multiple = [p.name for p in serve.params if isinstance(p, click.Option) and p.multiple and p.name]
    return configfile.read(path, names, multiple, _check_file_value)


def _use_config_file(ctx: click.Context, path: str | None) -> str | None:
    # Eager: runs before the other options are read, so their defaults come from the file.
    if path:
        try:
            values = read_config_file(path)
        except ConfigFileError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--config'") from None
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def _given_on_command_line(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Options set on the command line or by GCONNECT_*: they keep winning over the file on reload."""
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return {name: value for name, value in options.items() if ctx.get_parameter_source(name) in sources}


def config_from_file(path: str, overrides: dict[str, Any]) -> cfg.Config:
    """The Config *path* gives with *overrides* (option name -> parsed CLI value) on top.

    Raises ConfigFileError or click.ClickException.
    """
    values = read_config_file(path)
    params = serve.make_context("serve", [], default_map=values).params
    params.update(overrides)
    return build_config(**params)


def _reload(proxy: Any, path: str | None, command_line: dict[str, Any]) -> None:
    # The auth file is re-read on every SIGHUP, with or without a config file.
    proxy.reload_auth()
    if not path:
        if proxy.auth is None:
            log.warning("SIGHUP: nothing to reload (no --config file)")
        return
    try:
        new = config_from_file(path, command_line)
    except (ConfigFileError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        log.error("SIGHUP: keeping the current configuration: %s", message)
        return
    proxy.reload(new)


@main.command("check-config")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Check a config file and print the effective configuration (with GCONNECT_* applied)."""
    from . import configfile

    try:
        config = config_from_file(path, {})
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(configfile.render(config), nl=False)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("user")
@click.option(
    "--rounds",
    type=click.IntRange(4, 31),
    default=10,
    show_default=True,
    help="bcrypt cost (2**rounds iterations). OWASP asks for 10 or more; htpasswd -B defaults to 5.",
)
def passwd(path: str, user: str, rounds: int) -> None:
    """Add USER to the htpasswd file PATH, or change their password (bcrypt).

    The password is prompted for twice (or read as two lines from stdin), never
    taken from the command line where ps(1) would show it. The file is created
    (mode 0600) if missing and replaced atomically, so a running proxy reloads
    either the old file or the new one, never half of it.
    """
    from ..auth.passwd import set_password

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        created = set_password(path, user, password, rounds=rounds)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"{'added' if created else 'updated'} {user} in {path}", err=True)
