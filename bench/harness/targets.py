"""The benchmark's targets: how each is installed, configured, started, checked and stopped.

A target that cannot be installed or started raises TargetUnavailable with the reason; the run
reports it as skipped and goes on with the others.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import debian
from bench.harness.debian import PEERS, PEERS_DIR, InstallFailed
from gconnect.testing.process import free_port, listening_address, pin_to
from gconnect.testing.procfs import process_tree

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent

#: gconnect-base is the default gconnect from another commit (--baseline): before and after in one run.
#: gconnect-namecheck reads the TLS name check on every port (the echo target is not on 443, where
#: the default checks), to measure the check beside a gconnect whose tunnels it leaves alone.
GCONNECT_TARGETS = (
    "gconnect",
    "gconnect-splice",
    "gconnect-copy",
    "gconnect-2w",
    "gconnect-base",
    "gconnect-namecheck",
)
#: ats-2t is Traffic Server with two event threads, unpinned: the peer of gconnect-2w.
PEER_TARGETS = (*PEERS, "proxy.py", "pproxy")
#: floor is bench/floor.py, the least a gevent CONNECT proxy does: what gevent itself costs;
#: floor-cb the same in callbacks alone (no greenlet), floor-cb1 that accepting one client per wake-up.
FLOOR_TARGETS = {"floor": [], "floor-cb": ["--callbacks"], "floor-cb1": ["--callbacks", "--accept-one"]}
ALL_TARGETS = ("direct", *FLOOR_TARGETS, *GCONNECT_TARGETS, *PEER_TARGETS)
#: Targets that run unpinned, their threads or workers free to use every core.
UNPINNED_TARGETS = ("gconnect-2w", "ats-2t")

PIP_TIMEOUT_S = 600.0
START_TIMEOUT_S = 20.0
# Squid finishes open transactions before it exits; shutdown_lifetime 0 keeps that short.
STOP_TIMEOUT_S = 8.0
PROBE_TIMEOUT_S = 2.0
# click exits with 2 on an unknown option: the target's feature has not landed yet.
CLICK_USAGE_ERROR = 2


class TargetUnavailable(Exception):
    """This target cannot be measured in this run; the message says why."""


@dataclass(frozen=True)
class Environment:
    """Where the harness finds and puts things, and how it pins processes."""

    venv: Path
    python: str = sys.executable
    proxy_cpus: frozenset[int] | None = frozenset({0})
    #: The tree gconnect-base runs (--baseline, extracted); None without one.
    baseline: Path | None = None


@dataclass
class LaunchPlan:
    """How to start one target: argv, where its port comes from, which CPUs it may use."""

    argv: list[str]
    port: int | None  # None: the target prints its port (gconnect --listen 127.0.0.1:0)
    cpus: frozenset[int] | None
    cwd: Path = REPO_DIR
    run_as: str | None = None  # the rundir is given to this user (Squid drops root)
    notes: list[str] = field(default_factory=list)


def _read_args(name: str) -> list[str]:
    lines = (PEERS_DIR / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _run(argv: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


def ensure_python_peers(venv: Path) -> None:
    """Install proxy.py and pproxy into their own venv, pinned by bench/peers/requirements.txt."""
    if (venv / "bin" / "proxy").exists() and (venv / "bin" / "pproxy").exists():
        return
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(PEERS_DIR / "requirements.txt")],
    ]
    for argv in steps:
        done = _run(argv, PIP_TIMEOUT_S)
        if done.returncode != 0:
            raise TargetUnavailable(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-300:]}")


def prepare(name: str, env: Environment) -> str:
    """Install what the target needs and return its version string."""
    if name == "direct":
        return "no proxy"
    if name in GCONNECT_TARGETS:
        if name == "gconnect-base" and env.baseline is None:
            raise TargetUnavailable("gconnect-base needs --baseline COMMIT")
        where = env.baseline if name == "gconnect-base" else REPO_DIR
        done = _run([env.python, "-c", "import gconnect; print(gconnect.__version__)"], 30, cwd=where)
        if done.returncode != 0:
            raise TargetUnavailable(f"gconnect is not importable: {done.stderr.strip()[-200:]}")
        return f"gconnect {done.stdout.strip()}" + (f" ({where.name})" if name == "gconnect-base" else "")
    if name in FLOOR_TARGETS:
        done = _run([env.python, "-c", "import gevent; print(gevent.__version__)"], 30, cwd=REPO_DIR)
        if done.returncode != 0:
            raise TargetUnavailable(f"gevent is not importable: {done.stderr.strip()[-200:]}")
        return f"bench/floor.py {' '.join(FLOOR_TARGETS[name])}".rstrip() + f", gevent {done.stdout.strip()}"
    if name in PEERS:
        try:
            return debian.version(name)
        except InstallFailed as exc:
            raise TargetUnavailable(str(exc)) from exc
    ensure_python_peers(env.venv)
    package = {"proxy.py": "proxy.py", "pproxy": "pproxy"}[name]
    done = _run([str(env.venv / "bin" / "pip"), "show", package], 60)
    match = re.search(r"^Version: (\S+)", done.stdout, re.M)
    return f"{package} {match.group(1) if match else 'unknown'}"


def launch_plan(name: str, rundir: Path, env: Environment) -> LaunchPlan:
    """The command line for one target, its config rendered into rundir."""
    if name in GCONNECT_TARGETS:
        argv = [env.python, "-m", "gconnect", "serve", "--listen", "127.0.0.1:0", "--allow-port", "1-65535"]
        argv += ["--allow-dest", "127.0.0.0/8", "--access-log", "/dev/null", "--log-level", "warning"]
        argv += ["--idle-timeout", "0"]
        # "gconnect" is the default (--relay copy since the issue 9 figures), as a user runs it.
        extra = {
            "gconnect": [],
            "gconnect-splice": ["--relay", "splice"],
            "gconnect-copy": ["--relay", "copy"],
            "gconnect-namecheck": ["--tls-name-check", "report", "--tls-name-check-ports", "1-65535"],
        }
        if name == "gconnect-base":
            # cwd: python -m puts the working directory first on sys.path.
            assert env.baseline is not None
            return LaunchPlan(argv, None, env.proxy_cpus, cwd=env.baseline, notes=[f"tree {env.baseline.name}"])
        if name == "gconnect-2w":
            # Issue 4: 1 vs 2 workers is measured unpinned, the workers free to use both cores.
            return LaunchPlan([*argv, "--workers", "2"], None, None, notes=["proxy unpinned (2 workers)"])
        return LaunchPlan(argv + extra[name], None, env.proxy_cpus)
    port = free_port()
    if name in FLOOR_TARGETS:
        return LaunchPlan([env.python, "-m", "bench.floor", *FLOOR_TARGETS[name], str(port)], port, env.proxy_cpus)
    if name in PEERS:
        argv, run_as = debian.command(name, port, rundir)
        if name in UNPINNED_TARGETS:
            notes = [f"proxy unpinned ({PEERS[name].threads} threads)"]
            return LaunchPlan(argv, port, None, run_as=run_as, notes=notes)
        return LaunchPlan(argv, port, env.proxy_cpus, run_as=run_as)
    if name == "proxy.py":
        argv = [str(env.venv / "bin" / "proxy"), *_read_args("proxy.py.args")]
        return LaunchPlan([*argv, "--hostname", "127.0.0.1", "--port", str(port)], port, env.proxy_cpus)
    if name == "pproxy":
        argv = [str(env.venv / "bin" / "pproxy"), *_read_args("pproxy.args")]
        return LaunchPlan([*argv, "-l", f"http://127.0.0.1:{port}"], port, env.proxy_cpus)
    raise ValueError(f"unknown target {name!r}")


def _limits_and_affinity(cpus: frozenset[int] | None):
    """preexec_fn: every target gets the same descriptor limit (soft raised to hard) and its CPUs."""
    pin = pin_to(cpus) if cpus is not None else None

    def apply() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if pin is not None:
            pin()

    return apply


def connect_probe(proxy: str, target: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One CONNECT and a 64-byte echo through the proxy; raises OSError or ValueError on failure."""
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ValueError(f"closed after {head!r}")
            head += chunk
        if not re.match(rb"HTTP/1\.[01] 200", head):
            raise ValueError(f"answered {head.splitlines()[0]!r}")
        s.sendall(b"x" * 64)
        echoed = b""
        while len(echoed) < 64:
            chunk = s.recv(64 - len(echoed))
            if not chunk:
                raise ValueError("closed before the echo")
            echoed += chunk


class RunningProxy:
    """One started target process; a context manager that always stops what it started."""

    def __init__(self, name: str, plan: LaunchPlan, rundir: Path) -> None:
        self.name = name
        self.plan = plan
        self.rundir = rundir
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log_path = rundir / "stderr.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, echo_target: str) -> str:
        """Start the target, wait until a CONNECT through it works, return its address."""
        if self.plan.run_as:
            shutil.chown(self.rundir, self.plan.run_as, self.plan.run_as)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.plan.argv,
                cwd=self.plan.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_limits_and_affinity(self.plan.cpus),
                start_new_session=True,  # its own process group, so leftovers can be found and stopped
            )
        port = self.plan.port if self.plan.port is not None else self._wait_for_printed_port()
        self.address = f"127.0.0.1:{port}"
        self._wait_until_tunnelling(echo_target)
        return self.address

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-400:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise TargetUnavailable, with its last output, if the target process has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        if code == CLICK_USAGE_ERROR and self.name in GCONNECT_TARGETS:
            # click's last line names the rejected option ("Error: No such option '--workers'.").
            lines = [line for line in self._log_tail().splitlines() if line.strip()]
            raise TargetUnavailable(f"option rejected (exit 2): {lines[-1] if lines else 'no output'}")
        raise TargetUnavailable(f"exited with {code}: {self._log_tail()}")

    def _wait_for_printed_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                address = listening_address(line)
                if address is not None:
                    return address[1]
            self.check_alive()
            time.sleep(0.05)
        raise TargetUnavailable(f"no 'gconnect listening on' line within {START_TIMEOUT_S:.0f} s")

    def _wait_until_tunnelling(self, echo_target: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                connect_probe(self.address, echo_target)
                return
            except (OSError, ValueError) as exc:
                last_error = exc
                time.sleep(0.1)
        raise TargetUnavailable(f"no working CONNECT within {START_TIMEOUT_S:.0f} s: {last_error}")

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; leftovers of its own process group are killed by PID."""
        if self.process is None:
            return
        leader = self.process.pid
        tree = process_tree(leader) if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        for pid in tree:
            if pid == leader:
                continue
            try:
                if os.getpgid(pid) == leader:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
