"""Which signals gconnect uses, and that no other one can kill it.

Used (each process installs its handlers with gevent):

=========================  ===================================================
SIGTERM, SIGINT, SIGQUIT   stop accepting, drain for --drain-timeout, exit 0
                           (SIGQUIT as nginx's graceful stop; not a core dump)
SIGHUP                     reload the config file's policy and the auth file
SIGUSR1                    reopen the access log (logrotate)
SIGUSR2                    the supervisor: upgrade in place; elsewhere ignored
=========================  ===================================================

Every other signal whose default action would end the process is ignored, so a
stray ``kill -ALRM`` or a real-time signal cannot take the listeners down. The
faults a program raises itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGSYS,
SIGTRAP, SIGABRT) keep their default: ignoring a real fault would loop on it,
and a worker that crashes is restarted by the supervisor.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
USED = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: Default action "terminate" or "core" (signal(7)), not used and not a fault.
_FATAL_BY_DEFAULT = (
    "SIGALRM", "SIGPIPE", "SIGPOLL", "SIGPROF", "SIGVTALRM", "SIGXCPU", "SIGXFSZ", "SIGPWR", "SIGSTKFLT",
)  # fmt: skip


def unused() -> list[int]:
    """The signals :func:`ignore_unused` ignores (the real-time ones are only numbers)."""
    named = [int(getattr(signal, name)) for name in _FATAL_BY_DEFAULT if hasattr(signal, name)]
    return [*named, *range(signal.SIGRTMIN, signal.SIGRTMAX + 1)]


def ignore_unused() -> None:
    """Ignore every signal that would otherwise end this process and that we do not use."""
    for signum in unused():
        signal.signal(signum, signal.SIG_IGN)
