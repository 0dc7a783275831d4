"""The command line: ``serve``, ``upgrade``, ``check-config``, ``passwd``, ``loadtest``.

The options are one table (``options``) of click parameter types
(``paramtypes``); ``serve`` builds the one Config from them and runs the proxy
in one of three ways: as a supervisor's worker (``run.serve_worker``), as the
supervisor (``supervisor``), or alone (``run.serve_alone``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .. import config as cfg
from . import run, signals, sockets
from .configfile import ConfigFileError
from .notify import Notifier, UpgradeListener
from .options import (
    GROUPS_META_KEY,
    USERS_META_KEY,
    build_config,
    config_from_file,
    given_on_command_line,
    params,
    worker_arguments,
)
from .workerlink import WorkerLink

log = logging.getLogger("gconnect")

EXAMPLES = """\b
Examples:
  gconnect serve                                  # 127.0.0.1:3128, port 443 only
  gconnect serve --listen 0.0.0.0:3128 --allow-port 443 --allow-port 8443
  gconnect serve --allow-port 1-65535 --allow-dest 127.0.0.0/8 --dns-server 127.0.0.1:5353
  gconnect serve --supervise --config /etc/gconnect/gconnect.toml   # then: gconnect upgrade PID
  curl -x http://127.0.0.1:3128 https://example.com/
  gconnect loadtest --users 200 --run-time 10s    # locust through a gconnect of its own
"""

#: How long ``gconnect upgrade`` waits by default: the new workers' --ready-timeout (20 s) and a margin.
UPGRADE_WAIT_SECONDS = 60.0


def setup_logging(config: cfg.Config) -> None:
    """The diagnostic log on stderr. (The access log is ops/accesslog.py's.)"""
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


@main.command(epilog=EXAMPLES, params=params())
def serve(**options: Any) -> None:
    """Run the proxy until SIGTERM, SIGINT or SIGQUIT; SIGHUP reloads the policy
    from --config, SIGUSR1 reopens the access log, SIGUSR2 upgrades a
    supervisor (--supervise, --workers) in place."""
    signals.ignore_unused()  # first: no stray signal may end us while we start
    ctx = click.get_current_context()
    config = build_config(**options, users=ctx.meta.get(USERS_META_KEY, ()), groups=ctx.meta.get(GROUPS_META_KEY, ()))
    setup_logging(config)
    command_line = given_on_command_line(ctx, options)
    config_path = options.get("config")
    link = WorkerLink.from_environ(os.environ)
    # sd_notify is for the process systemd started; workers must not inherit it.
    notifier = Notifier(os.environ.pop("NOTIFY_SOCKET", None))
    workers_given = ctx.get_parameter_source("workers") != click.core.ParameterSource.DEFAULT
    try:
        if link is not None:
            run.serve_worker(config, link, config_path=config_path, command_line=command_line)
        elif config.supervise or workers_given or config.workers > 1:
            _supervise(config, config_path, command_line, notifier)
        else:
            inherited = sockets.from_systemd(os.environ)
            run.serve_alone(
                config, config_path=config_path, command_line=command_line, notifier=notifier, listeners=inherited
            )
    except (OSError, RuntimeError, ValueError, sockets.ListenerError, run.SelfCheckError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


def _supervise(config: cfg.Config, config_path: str | None, command_line: dict[str, Any], notifier: Notifier) -> None:
    from . import supervisor
    from .state import ServiceState, StateCollector

    activated = sockets.from_systemd(os.environ)
    socks = activated or sockets.bind(config.listen, reuse_port=config.reuse_port)
    metrics = None
    state = None
    try:
        state = ServiceState(config, workers=config.workers)
        if config.metrics_listen is not None:
            from .workermetrics import SupervisorMetrics

            metrics = SupervisorMetrics(config.workers, config.metrics_listen)
            metrics.server.registry.register(StateCollector(state.region))
            # Before the listening lines: whoever waits for those finds this one too.
            click.echo(f"gconnect metrics on {sockets.fmt(metrics.address)}", err=True)
        boss = supervisor.Supervisor(
            config,
            worker_arguments(command_line, config_path),
            socks,
            notifier=notifier,
            activated=activated is not None,
            config_path=config_path,
            command_line=command_line,
            metrics_dir=metrics.directory if metrics else None,
            on_worker_exit=metrics.collector.retire if metrics else None,
            state=state,
        )
        state.start()
        supervisor.run(boss, lambda: run.announce(sockets.addresses(socks)))
    finally:
        if state is not None:
            state.stop()  # every worker has exited: their totals are in the base row
        if metrics is not None:
            metrics.close()
        for sock in socks:
            sock.close()


@main.command()
@click.argument("pid", type=click.IntRange(min=1))
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=UPGRADE_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for the supervisor's answer.",
)
def upgrade(pid: int, timeout: float) -> None:
    """Upgrade the gconnect supervisor PID in place and wait for the outcome.

    Sends SIGUSR2: the supervisor starts new workers from the program and config
    file on disk, and the old workers drain once the new ones accept. Prints
    the outcome; exits 0 when the new workers serve, 1 when the upgrade was
    rolled back (the old workers keep serving) or no answer came. Under
    systemd: gconnect upgrade "$(systemctl show -p MainPID --value gconnect)".
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        raise click.ClickException(f"no process {pid}") from None
    if b"gconnect" not in cmdline:
        shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        raise click.ClickException(f"process {pid} is not gconnect ({shown!r}): no signal sent")
    try:
        answer = UpgradeListener(pid)
    except OSError as exc:
        raise click.ClickException(f"cannot wait for the answer (another upgrade of {pid} running?): {exc}") from None
    try:
        os.kill(pid, signal.SIGUSR2)
        outcome = answer.wait(timeout)
    finally:
        answer.close()
    if outcome is None:
        raise click.ClickException(f"no answer from {pid} within {timeout:g} s; see its log")
    upgraded, message = outcome
    click.echo(message, err=True)
    sys.exit(0 if upgraded else 1)


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
    if config.users or config.groups:
        click.echo(configfile.render_user_policies(config), nl=False)
    click.echo(configfile.render_auth_chain(config, _auth_chain(config)), nl=False)
    for warning in configfile.user_table_warnings(config):
        click.echo(f"warning: {warning}", err=True)


def _auth_chain(config: cfg.Config) -> list[str]:
    """The chain as the proxy would build it (its files loaded, no helper started)."""
    if not config.auth_providers():
        return []
    from ..auth.authenticator import Authenticator

    try:
        return Authenticator(config).describe()
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"the authentication chain cannot be built: {exc}") from None


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


def _print_locustfile(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from ..loadtest.run import LOCUSTFILE

        click.echo(str(LOCUSTFILE))
        ctx.exit()


@main.command(context_settings={"show_default": True})
@click.option("--users", type=click.IntRange(min=1), default=5000, help="Concurrent tunnels.")
@click.option(
    "--spawn-rate", type=click.FloatRange(min=0, min_open=True), default=500.0, help="Users started per second."
)
@click.option("--run-time", default="60s", metavar="DURATION", help="The whole run, ramp-up included: 90, 60s, 1m30s.")
@click.option("--locust-workers", type=click.IntRange(min=0), default=0, help="0 runs one locust process.")
@click.option("--message-bytes", type=click.IntRange(min=1), default=64, help="Bytes per echo.")
@click.option("--think-time", type=click.FloatRange(min=0), default=1.0, help="Seconds between messages per tunnel.")
@click.option("--hold-time", type=click.FloatRange(min=0), default=0.0, help="Reopen tunnels after this; 0: never.")
@click.option("--reopen-ratio", type=click.FloatRange(0, 1), default=0.0, help="Chance to reopen after each echo.")
@click.option("--credentials", default="", metavar="USER:PASSWORD", help="Proxy Basic credentials.")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Default: loadtest-results/<UTC time>.",
)
@click.option(
    "--proxy", default=None, metavar="HOST:PORT", help="Load this running proxy instead of starting a gconnect."
)
@click.option("--proxy-pid", type=click.IntRange(min=1), default=None, help="Sample this process as the proxy.")
@click.option(
    "--proxy-arg",
    "proxy_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for the gconnect serve this starts, repeatable (--proxy-arg=--idle-timeout=30).",
)
@click.option(
    "--target", default=None, metavar="HOST:PORT", help="Use this running echo target instead of starting one."
)
@click.option(
    "--source-addresses",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Spread tunnels over 127.0.0.2..N+1; default: only if ephemeral ports run short.",
)
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, help="Seconds.")
@click.option("--io-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, help="Seconds.")
@click.option(
    "--locustfile",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_locustfile,
    help="Print the locustfile's path (for locust -f) and exit.",
)
def loadtest(run_time: str, proxy: str | None, target: str | None, **options: Any) -> None:
    """Load a CONNECT proxy with locust: each user holds one tunnel to an echo
    target and checks an echo through it every --think-time seconds.

    Starts the echo target, a gconnect (unless --proxy names any running CONNECT
    proxy) and locust on this machine; prints progress and a summary, and writes
    locust's CSV and HTML, the proxy's access log and summary.json/summary.txt to
    --results. Exits 0 when every CONNECT and echo succeeded, 1 when any failed,
    2 when the test could not be set up. Needs locust: pip install 'gconnect[load]'.
    """
    if importlib.util.find_spec("locust") is None:
        click.echo("gconnect loadtest needs locust, which is not installed: pip install 'gconnect[load]'", err=True)
        sys.exit(2)
    from ..loadtest import run as loadtest_run

    try:
        plan = loadtest_run.LoadTestOptions.from_text(run_time, proxy, target, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(loadtest_run.main(plan))
