"""Handshake rate with --auth-file against without, on a pinned proxy.

    python -m bench.auth_rate [--seconds 10] [--conns 64] [--rounds 10] [--repeat 3]

The proxy runs on CPU 0, the C load generator and its echo server on CPU 1
(``--proxy-cpu``, ``--load-cpu``). Each run is loadgen's ``rate`` workload: CONNECT, a 64-byte echo, close,
at a fixed concurrency. With auth every CONNECT carries the same
Proxy-Authorization, as a browser or curl does, so after the first bcrypt check
the cache answers. Prints one JSON line per run and a summary line with the
ratio; needs gcc. Runs alternate (off, on, on, off, ...) and the summary
takes medians, so a neighbour's burst on a shared machine skews one run, not the
result. The proxy's own CPU time per tunnel (from /proc) is reported too: it does
not depend on how busy the rest of the machine was.

    python -m bench.auth_rate --checks [--seconds 3] [--clients 32]

measures login checks per second through a Squid helper instead, in this
process (the Authenticator the proxy uses, no sockets): uncached (every check a
new user name, so every one is a helper round trip) with serial children and
with one concurrent child, cached (the same credentials again), and Debian
squid's basic_ncsa_auth on an apr1 file when it is installed. One JSON line per
case; each runs for --seconds with --clients greenlets asking at once.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

from bench.harness.build import build_loadgen
from bench.harness.loadgen import LoadGen
from gconnect.testing.process import ProxyProcess, cpu_list
from gconnect.testing.procfs import cpu_seconds

#: The proxy as a user runs it, minus the access log (its writes would be measured too).
SERVE_ARGS = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
SERVE_ARGS += ["--access-log", "", "--log-level", "warning"]


#: A helper that says OK to everyone: the protocol's own cost, nothing behind it.
OK_HELPER = """
import sys
concurrent = len(sys.argv) > 1
for line in sys.stdin:
    channel = line.split(" ", 1)[0] + " " if concurrent else ""
    sys.stdout.write(channel + "OK\\n")
    sys.stdout.flush()
"""
NCSA = "/usr/lib/squid/basic_ncsa_auth"
#: apr1 of "builder" (htpasswd -nbm): what basic_ncsa_auth checks per request.
APR1 = "$apr1$Bx.2ZQel$cC3gLj3Vow.skxUASM5HF1"


#: User names the uncached cases cycle through (in basic_ncsa_auth's file, all with APR1).
NCSA_USERS = 10_000


def check_rate(extra: dict, *, seconds: float, clients: int, cached: bool, password: bytes) -> dict:
    """Login checks per second through an Authenticator configured by *extra*:
    uncached, every check names another user (and nothing is remembered);
    cached, every check carries the same credentials."""
    import gevent

    from gconnect.auth.authenticator import Authenticator
    from gconnect.config import Config

    ttl = {} if cached else {"auth_helper_ttl": 0, "auth_helper_negative_ttl": 0}
    auth = Authenticator(Config(auth_failures_per_minute=10**9, **ttl, **extra))
    auth.start()
    done = 0
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            user = "user0" if cached else f"user{done % NCSA_USERS}"
            auth.identify([b"Basic " + base64.b64encode(user.encode() + b":" + password)], "10.0.0.1")
            done += 1

    started = time.monotonic()
    workers = [gevent.spawn(client) for _ in range(clients)]
    gevent.joinall(workers, raise_error=True)
    elapsed = time.monotonic() - started
    failures = sum(sum(pool.failures.values()) for pool in auth.helper_pools())
    auth.stop()
    return {"checks": done, "checks_per_s": round(done / elapsed, 1), "helper_failures": failures}


def checks_main(args: argparse.Namespace) -> None:
    ok = shlex.join([sys.executable, "-c", OK_HELPER])
    cases = {
        "ok_helper_uncached_5_children": ({"auth_helper": ok, "auth_helper_children": 5}, False),
        "ok_helper_uncached_1_child_concurrency_32": (
            {"auth_helper": ok + " concurrent", "auth_helper_children": 1, "auth_helper_concurrency": 32},
            False,
        ),
        "ok_helper_cached": ({"auth_helper": ok, "auth_helper_children": 5}, True),
    }
    if os.access(NCSA, os.X_OK):
        users = Path(tempfile.mkdtemp(prefix="gconnect-auth-rate-")) / "squid.htpasswd"
        users.write_text("".join(f"user{i}:{APR1}\n" for i in range(NCSA_USERS)))
        ncsa = {"auth_helper": shlex.join([NCSA, str(users)]), "auth_helper_children": 5}
        cases["basic_ncsa_auth_apr1_uncached_5_children"] = (ncsa, False)
        cases["basic_ncsa_auth_apr1_cached"] = (ncsa, True)
    for name, (extra, cached) in cases.items():
        password = b"builder" if "ncsa" in name else b"pw"
        result = check_rate(extra, seconds=args.seconds, clients=args.clients, cached=cached, password=password)
        print(json.dumps({"case": name, "clients": args.clients, "seconds": args.seconds, **result}), flush=True)


def run(lg: LoadGen, proxy: ProxyProcess, echo: str, args: argparse.Namespace, header: str | None) -> dict:
    """One loadgen ``rate`` run through *proxy*, with the proxy's CPU per tunnel added."""
    options: dict[str, object] = {"conns": args.conns, "seconds": args.seconds}
    if header:
        options["header"] = header
    cpu_before = sum(cpu_seconds(proxy.pid))
    result = lg.run("rate", proxy.address, echo, args.seconds, **options)
    cpu = sum(cpu_seconds(proxy.pid)) - cpu_before
    result["proxy_cpu_us_per_tunnel"] = round(cpu * 1e6 / max(1, result["tunnels"]), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="bcrypt cost of the user's entry")
    parser.add_argument("--proxy-cpu", type=cpu_list, default=frozenset({0}))
    parser.add_argument("--load-cpu", type=cpu_list, default=frozenset({1}))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--checks", action="store_true", help="login checks per second through a helper instead")
    parser.add_argument("--clients", type=int, default=32, help="--checks: greenlets asking at once")
    args = parser.parse_args()
    if args.checks:
        checks_main(args)
        return
    work = Path(tempfile.mkdtemp(prefix="gconnect-auth-rate-"))
    lg = LoadGen(build_loadgen(Path(tempfile.gettempdir()) / "gconnect-bench-build"), args.load_cpu)
    users = work / "users"
    users.write_text("bench:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(args.rounds)).decode() + "\n")
    header = "Proxy-Authorization: Basic " + base64.b64encode(b"bench:secret").decode()
    runs: dict[str, list[dict]] = {"auth_off": [], "auth_on": []}
    modes = {"auth_off": ([], None), "auth_on": (["--auth-file", str(users)], header)}
    order = []
    for i in range(args.repeat):
        order += ["auth_off", "auth_on"] if i % 2 == 0 else ["auth_on", "auth_off"]
    with lg.server() as ports:
        for name in order:
            extra, head = modes[name]
            with ProxyProcess([*SERVE_ARGS, *extra], cpus=args.proxy_cpu) as proxy:
                result = run(lg, proxy, ports.target("echo"), args, head)
            runs[name].append(result)
            print(json.dumps({"run": name, **result}), flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    off, on = median("auth_off", "tunnels_per_s"), median("auth_on", "tunnels_per_s")
    summary = {
        "auth_off_tunnels_per_s": off,
        "auth_on_tunnels_per_s": on,
        "ratio_on_over_off": round(on / off, 3) if off else None,
        "auth_off_proxy_cpu_us_per_tunnel": median("auth_off", "proxy_cpu_us_per_tunnel"),
        "auth_on_proxy_cpu_us_per_tunnel": median("auth_on", "proxy_cpu_us_per_tunnel"),
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
        "conns": args.conns,
        "seconds": args.seconds,
        "repeat": args.repeat,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
