"""Greenlets that run handshakes, kept for the next handshake when one is done.

A new greenlet costs more than its object: on Python 3.11 its first frame
takes a fresh chunk of the interpreter's frame stack (16 KiB, mmap'd, paged in
on first use) and its end gives the chunk back (munmap), so a greenlet per
client is an mmap, a munmap and their page faults per client. A runner that
has finished one handshake parks in the hub instead and serves the next
client, keeping its frame stack.

The contract for whoever runs a function in one (:class:`Runners`): the
function owns the runner until it returns, and nothing may switch into or
throw into the runner after that (a parked runner waits for its next
function only). A function that raises ends its runner; the runner is not
kept.

Ownership: :class:`Runners` holds the parked runners; a parked runner that is
never used again is freed with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenlet import getcurrent
from greenlet import greenlet as RawGreenlet

#: Parked runners kept at most: the handshakes in progress at once under the
#: benchmark's 64 concurrent clients fit (a burst past it makes new ones, which
#: end after their handshake). A parked runner holds its frame stack chunk and
#: its saved C stack: about 7 KiB measured, so at most ~0.5 MiB in all.
MAX_PARKED_RUNNERS = 64


class Runners:
    """The parked runners of one hub (see the module docstring)."""

    def __init__(self, max_parked: int = MAX_PARKED_RUNNERS) -> None:
        self._parked: list[Any] = []
        self._max_parked = max_parked

    def take(self, hub: Any) -> Any:
        """A runner whose parent is *hub*: a parked one, or a new one. Start it
        with ``runner.switch(function)``, from the hub or from a callback of its
        loop; it calls ``function()``."""
        parked = self._parked
        if parked:
            return parked.pop()
        return RawGreenlet(self._serve, hub)

    def _serve(self, function: Callable[[], None]) -> None:
        parked = self._parked
        while True:
            function()
            if len(parked) >= self._max_parked:
                return
            runner = getcurrent()
            parked.append(runner)
            # Parked: the next take() switches back here with the next function.
            function = runner.parent.switch()
