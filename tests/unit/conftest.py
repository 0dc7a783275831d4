"""The unit tests' one rule, enforced: no test here starts a process.

An audit hook (PEP 578) turns every way of starting one (subprocess, os.system, fork, exec,
posix_spawn) into an error while a unit test runs; tests elsewhere are unaffected. Nothing is
replaced or mocked: the hook only refuses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

STARTS_A_PROCESS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "pty.spawn"}
)
_refusing = False


def _refuse_processes(event: str, args: tuple[object, ...]) -> None:
    if _refusing and event in STARTS_A_PROCESS:
        raise RuntimeError(f"a unit test may not start a process ({event} {args[:2]!r}): move it to tests/e2e/")


sys.addaudithook(_refuse_processes)


@pytest.fixture(autouse=True)
def no_processes() -> Iterator[None]:
    global _refusing
    _refusing = True
    try:
        yield
    finally:
        _refusing = False
