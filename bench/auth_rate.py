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
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
from pathlib import Path

import bcrypt

from bench.harness.build import build_loadgen
from bench.harness.loadgen import LoadGen
from gconnect.testing.process import ProxyProcess, cpu_list
from gconnect.testing.procfs import cpu_seconds

#: The proxy as a user runs it, minus the access log (its writes would be measured too).
SERVE_ARGS = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
SERVE_ARGS += ["--access-log", "", "--log-level", "warning"]


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
    args = parser.parse_args()
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
