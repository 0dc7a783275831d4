"""A Squid helper for the tests, speaking the protocol from the helper's side.

    python tests/authhelper.py [--concurrent] [--log FILE] [--acl]

Basic auth mode (default), by user name (the password must be "pw" unless said):
  alice     OK group=staff            dave    OK
  bob       ERR message="no such user"
  carol     OK user=carol@corp tag=ops  slow   OK after 3 s
  hang      never answers            crash   exits at once (status 3)
  bh        BH message="backend down"  junk  a line that is not the protocol
External ACL mode (--acl): fields ``user client host port``; OK unless the host
starts with "deny" (ERR), "slow" (OK after 3 s) or "crash".

With --concurrent the first field is a channel ID and each request is answered
from its own thread, so a slow one does not hold the others (as a concurrent
Squid helper may). --log appends each request line, decoded, to FILE.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.parse

SLOW_SECONDS = 3.0


def answer_auth(user: str, password: str) -> str | None:
    if user == "crash":
        sys.stdout.flush()
        import os

        os._exit(3)
    if user == "hang":
        return None
    if user == "slow":
        time.sleep(SLOW_SECONDS)
    if user == "bh":
        return 'BH message="backend down"'
    if user == "junk":
        return "MAYBE"
    if password != "pw":
        return 'ERR message="wrong password"'
    return {
        "alice": "OK group=staff",
        "carol": "OK user=carol@corp tag=ops",
        "slow": "OK",
        "dave": "OK",
    }.get(user, 'ERR message="no such user"')


def answer_acl(user: str, client: str, host: str, port: str) -> str | None:
    if host.startswith("crash"):
        import os

        os._exit(3)
    if host.startswith("slow"):
        time.sleep(SLOW_SECONDS)
    return "ERR" if host.startswith("deny") else "OK"


def command(*args: str) -> str:
    """This helper's command line for ``--auth-helper`` or ``--external-acl-helper``."""
    import shlex

    return shlex.join([sys.executable, __file__, *args])


def main() -> None:
    args = sys.argv[1:]
    concurrent = "--concurrent" in args
    acl = "--acl" in args
    log = args[args.index("--log") + 1] if "--log" in args else None
    lock = threading.Lock()

    def handle(line: str) -> None:
        words = line.split(" ")
        channel = words.pop(0) + " " if concurrent else ""
        fields = [urllib.parse.unquote(w) for w in words]
        if log:
            with lock, open(log, "a") as f:
                f.write(" ".join(fields) + "\n")
        reply = answer_acl(*fields) if acl else answer_auth(*fields)
        if reply is not None:
            with lock:
                sys.stdout.write(channel + reply + "\n")
                sys.stdout.flush()

    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if concurrent:
            threading.Thread(target=handle, args=(line,), daemon=True).start()
        else:
            handle(line)


if __name__ == "__main__":
    main()
