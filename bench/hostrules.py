"""Name rules: matching cost against the number of rules, and the handshake's CPU.

Two measurements (issue 10), one run, written to ``bench/results/hostrules.json``
and ``.md``:

1. ``HostRules.judge`` in-process (timeit, median of repetitions) with 10 to
   10,000 (and 100,000) ``--allow-host`` patterns, for targets of 2 to 8
   labels, allowed and refused: the cost follows the labels, not the rules.
2. The proxy's CPU per tunnel (user and kernel separately, from
   ``/proc/PID/stat``), proxy pinned to CPU 0 and the client loop to CPU 1:
   CONNECT to a name from the hosts file, read the 200, close; variants run
   interleaved, repetitions' medians reported:

   * ``before``: the code before the name rules (``--base COMMIT``, extracted with
     ``git archive``, or ``--base DIR``), no rules;
   * ``none``: this code, no name rules (what a proxy without them pays);
   * ``rules-10`` / ``rules-10000``: this code with that many allow-host patterns,
     the target among them.

Run from the repository root (nothing else busy on the two CPUs)::

    python -m bench.hostrules --base 8a62e96 --tunnels 4000 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import timeit
from pathlib import Path

from bench.harness.trees import extract
from gconnect.testing.process import ProxyProcess, pin_to
from gconnect.testing.procfs import cpu_seconds
from gconnect.tunnel.hostrules import HostRules
from gconnect.tunnel.names import parse_pattern

ROOT = Path(__file__).resolve().parent.parent
TARGET = "api.bench.test"


def patterns(count: int) -> list[str]:
    """*count* distinct patterns of every form; ``.bench.test`` is always one."""
    forms = ("svc{}.example{}.com", ".corp{}.example{}.net", "*.cdn{}.example{}.org")
    out = [".bench.test"]
    i = 0
    while len(out) < count:
        out.append(forms[i % 3].format(i, i % 97))
        i += 1
    return out[:count]


def matching(reps: int) -> list[dict]:
    """ns per judge() call for each rule count and target."""
    targets = {
        "2 labels, allowed": "bench.test",
        "4 labels, allowed": "a.b.bench.test",
        "8 labels, allowed": "a.b.c.d.e.f.bench.test",
        "4 labels, refused": "a.b.nowhere.test",
        "8 labels, refused": "a.b.c.d.e.f.nowhere.test",
    }
    rows = []
    for count in (10, 100, 1_000, 10_000, 100_000):
        rules = HostRules([parse_pattern(p) for p in patterns(count)], [])
        for label, host in targets.items():
            timer = timeit.Timer(lambda rules=rules, host=host: rules.judge(host, 0))
            loops = 20_000
            timer.timeit(loops)  # warm-up: the first run also pays for caches and allocation
            samples = [timer.timeit(loops) / loops * 1e9 for _ in range(reps)]
            rows.append({"rules": count, "target": label, "ns_per_call": round(statistics.median(samples), 1)})
    return rows


#: Times Tunnel.check (the handshake step the name rules live in) in the tree on
#: PYTHONPATH, for a name target: the tunnel is built on TunnelServices made from
#: the Config in one call, with a client side that only has an address (check
#: reads nothing of it). A tree from before TunnelServices is timed on the fake
#: tunnel it needed then, so "before" rows stay comparable.
CHECK_LOOP = """
import statistics, sys, timeit, types
from gconnect.config import Config
from gconnect.tunnel.head import ConnectRequest
from gconnect.tunnel.tunnel import Tunnel
extra = {}
if len(sys.argv) > 1:
    from gconnect.tunnel.names import parse_pattern
    with open(sys.argv[1]) as f:
        extra["allow_host"] = tuple(parse_pattern(line) for line in f.read().split())
config = Config(allow_port=((1, 65535),), **extra)
try:
    from gconnect.tunnel.services import TunnelServices
except ImportError:
    from gconnect.tunnel.policy import Policy
    tunnel = Tunnel.__new__(Tunnel)
    tunnel._policy = Policy(config)
    tunnel.proxy = types.SimpleNamespace(chain=None, router=None, stats=None)
else:
    tunnel = Tunnel(TunnelServices.from_config(config), types.SimpleNamespace(address=("127.0.0.1", 1)))
request = ConnectRequest("api.bench.test", 443, 0, "1.1", [])
timer = timeit.Timer(lambda: tunnel.check(request))
timer.timeit(100_000)
print(statistics.median(timer.timeit(200_000) / 200_000 * 1e9 for _ in range(15)))
"""


def check_cost(base: Path | None) -> dict[str, float]:
    """ns per Tunnel.check call, before and after, each in its own process on CPU 0."""
    rules = Path(tempfile.mkdtemp(prefix="gconnect-hostrules-")) / "rules"
    rules.write_text("\n".join(patterns(10_000)) + "\n")
    variants: dict[str, tuple[Path, list[str]]] = {"none": (ROOT, []), "rules-10000": (ROOT, [str(rules)])}
    if base is not None:
        variants = {"before": (base, []), **variants}
    result = {}
    for name, (code, args) in variants.items():
        argv = [sys.executable, "-c", CHECK_LOOP, *args]
        # cwd too: python -c and -m put the working directory first on sys.path,
        # so from the repository root PYTHONPATH alone would run this tree.
        env = {**os.environ, "PYTHONPATH": str(code)}
        done = subprocess.run(argv, env=env, cwd=code, capture_output=True, text=True, preexec_fn=pin_to({0}))
        if done.returncode:
            raise RuntimeError(f"check loop for {name} failed: {done.stderr[-500:]}")
        result[name] = round(float(done.stdout.split()[-1]), 1)
    return result


class Target:
    """A loopback server that accepts and closes, in a thread of this (CPU 1) process."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


def tunnels(port: int, target_port: int, count: int) -> None:
    head = f"CONNECT {TARGET}:{target_port} HTTP/1.1\r\nHost: {TARGET}:{target_port}\r\n\r\n".encode()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head)
            answer = sock.recv(4096)
            if not answer.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"proxy answered {answer[:60]!r}")


def write_config(path: Path, hosts: Path, rules: int) -> None:
    lines = [
        'listen = "127.0.0.1:0"',
        'allow-port = ["1-65535"]',
        'allow-dest = ["127.0.0.0/8"]',
        f'hosts-file = "{hosts}"',
        'dns-server = ["127.0.0.1:9"]',
        'access-log = ""',
        "drain-timeout = 1",
    ]
    if rules:
        lines.append("allow-host = [" + ", ".join(f'"{p}"' for p in patterns(rules)) + "]")
    path.write_text("\n".join(lines) + "\n")


def handshake(base: Path | None, count: int, reps: int, warmup: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="gconnect-hostrules-"))
    hosts = work / "hosts"
    hosts.write_text(f"127.0.0.1 {TARGET}\n")
    target = Target()
    variants: dict[str, tuple[Path, int]] = {"none": (ROOT, 0), "rules-10": (ROOT, 10), "rules-10000": (ROOT, 10_000)}
    if base is not None:
        variants = {"before": (base, 0), **variants}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, (code, rules) in variants.items():
            config = work / f"{name}.toml"
            write_config(config, hosts, rules)
            # cwd=code: -m puts the working directory first on sys.path (see check_cost).
            with ProxyProcess(["--config", str(config)], cpus={0}, cwd=code, env={"PYTHONPATH": str(code)}) as proxy:
                tunnels(proxy.port, target.port, warmup)
                user0, sys0 = cpu_seconds(proxy.pid)
                tunnels(proxy.port, target.port, count)
                user1, sys1 = cpu_seconds(proxy.pid)
            samples[name].append(((user1 - user0) / count * 1e6, (sys1 - sys0) / count * 1e6))
    result = {}
    for name, values in samples.items():
        users = [u for u, _ in values]
        kernels = [k for _, k in values]
        result[name] = {
            "user_us_per_tunnel": round(statistics.median(users), 1),
            "kernel_us_per_tunnel": round(statistics.median(kernels), 1),
            "user_min_max": [round(min(users), 1), round(max(users), 1)],
            "kernel_min_max": [round(min(kernels), 1), round(max(kernels), 1)],
        }
    return result


def markdown(data: dict) -> str:
    lines = ["# Name rules: matching cost and handshake CPU", "", f"Command: `{data['command']}`", ""]
    lines += ["## `HostRules.judge`, ns per call (median)", ""]
    targets = list(dict.fromkeys(row["target"] for row in data["matching"]))
    counts = list(dict.fromkeys(row["rules"] for row in data["matching"]))
    lines.append("| rules | " + " | ".join(targets) + " |")
    lines.append("|---:|" + "---:|" * len(targets))
    for count in counts:
        cells = [f"{row['ns_per_call']:.0f}" for row in data["matching"] if row["rules"] == count]
        lines.append(f"| {count:,} | " + " | ".join(cells) + " |")
    lines += ["", "## `Tunnel.check` alone, ns per call (median of 15 x 200,000, pinned to CPU 0)", ""]
    lines += ["| variant | ns |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in data["check_ns"].items()]
    lines += ["", f"## Proxy CPU per tunnel, µs (median of {data['reps']} × {data['tunnels']} tunnels; min-max)", ""]
    lines.append("| variant | user | kernel |")
    lines.append("|---|---:|---:|")
    for name, row in data["handshake"].items():
        user, kernel = row["user_min_max"], row["kernel_min_max"]
        lines.append(
            f"| {name} | {row['user_us_per_tunnel']} ({user[0]}-{user[1]}) "
            f"| {row['kernel_us_per_tunnel']} ({kernel[0]}-{kernel[1]}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the code before the name rules: a commit, or a directory with gconnect/ in it")
    parser.add_argument("--tunnels", type=int, default=4000, help="tunnels per measurement")
    parser.add_argument("--warmup", type=int, default=300, help="tunnels before each measurement")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    options = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the client loop and the target; the proxies get CPU 0
    base = extracted = None
    if options.base is not None:
        base = Path(options.base) if Path(options.base).is_dir() else (extracted := extract(options.base))
    try:
        data = {
            "command": " ".join(["python", "-m", "bench.hostrules", *sys.argv[1:]]),
            "tunnels": options.tunnels,
            "reps": options.reps,
            "matching": matching(options.reps),
            "check_ns": check_cost(base),
            "handshake": handshake(base, options.tunnels, options.reps, options.warmup),
        }
    finally:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "hostrules.json").write_text(json.dumps(data, indent=1) + "\n")
    (options.out / "hostrules.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
