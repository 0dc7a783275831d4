"""The life cycle every relay shares: its deadlines and its end.

:class:`RelayLimits` is the deadlines in seconds, one object for a process;
:class:`Deadlines` keeps one tunnel's idle, half-close and lifetime deadlines
on one timer, records the end reason once, and knows which side ended first.
The callback relay (:class:`~gconnect.tunnel.relay.Relay`) and the HTTP/2
stream relay (:class:`~gconnect.tunnel.h2.relay.StreamRelay`) are built on
it; its docstring is the contract they keep. Sans I/O but for the loop's timer.
"""

from __future__ import annotations

from typing import Any

from .movers import Direction

#: libev timers may fire a hair early relative to loop.now().
_TIMER_SLACK = 0.001


class RelayLimits:
    """The relay's deadlines in seconds; 0 turns one off. One object serves
    every relay of a process."""

    __slots__ = ("first_deadline", "half_close_timeout", "idle_timeout", "max_lifetime")

    def __init__(self, idle_timeout: float, half_close_timeout: float, max_lifetime: float = 0.0) -> None:
        self.idle_timeout = idle_timeout
        self.half_close_timeout = half_close_timeout
        self.max_lifetime = max_lifetime
        #: Seconds from the start of relaying to the first timer (0: none): the
        #: earlier of the idle and lifetime limits, as :meth:`Deadlines._next_deadline`
        #: finds it then, and no later than the half-close limit, which a half-close
        #: may start at once: a short tunnel's half-close then finds its deadline
        #: covered and makes no second timer (a timer that fires early is only
        #: re-armed). Computed once, as every relay starts its timer with it.
        first = min(idle_timeout or max_lifetime, max_lifetime or idle_timeout)
        if first and half_close_timeout:
            first = min(first, half_close_timeout)
        self.first_deadline = first


class Deadlines:
    """The idle, half-close and lifetime deadlines of one tunnel on one timer,
    the end reason, and which side ended first: the life cycle every relay
    shares (:class:`Relay`, and the HTTP/2 stream relay).

    The contract for a relay built on it: keep ``limits`` (a
    :class:`RelayLimits`), ``loop`` (the hub's loop) and halves ``up`` and
    ``down``; call :meth:`start_clock` when relaying starts and :meth:`touch`
    when bytes move; call :meth:`side_done` when a side's EOF has been passed
    on and :meth:`half_closed` when a side is known to be finishing; end the
    tunnel only in its own ``end(reason)``, which must begin with
    ``if not self.settle(reason): return``. The timer calls ``end`` with the
    deadline that fired: ``idle``, ``half_close_timeout`` or ``lifetime``.
    A relay may start its first timer itself, for ``limits.first_deadline``
    seconds with :meth:`on_timer` as its callback, as :meth:`start_clock` does.
    """

    limits: RelayLimits
    loop: Any
    up: Direction
    down: Direction
    #: Why the tunnel ended; "" while it runs (see the module docstring).
    end_reason = ""
    _timer: Any = None
    #: When the timer fires (loop time).
    _timer_at = 0.0
    _half_closed = False
    _first_eof = ""
    _started = 0.0
    _last_activity = 0.0

    def end(self, reason: str) -> None:
        """End the tunnel with *reason* (the relay's own; starts with :meth:`settle`)."""
        raise NotImplementedError

    def hung_up(self, half: Direction, error: int) -> None:
        """The source of *half* hung up while its reader was stopped (:class:`HangupWatch`):
        *error* is its socket error (a reset), 0 for a FIN."""
        raise NotImplementedError

    def start_clock(self) -> None:
        """Relaying starts now: the lifetime counts from here, and the idle limit too."""
        self._started = self._last_activity = self.loop.now()
        first = self.limits.first_deadline
        if first and not self.end_reason:
            self._timer = timer = self.loop.timer(first)
            timer.start(self.on_timer)
            self._timer_at = self._started + first

    def touch(self) -> None:
        """Bytes moved: the idle deadline starts again (no timer is re-armed for it)."""
        self._last_activity = self.loop.now()

    def settle(self, reason: str) -> bool:
        """Record the end *reason* once and stop the timer; False if it had ended already."""
        if self.end_reason:
            return False
        self.end_reason = reason
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        return True

    def side_done(self, side: str) -> None:
        """*side*'s EOF was passed on: the tunnel ends once both directions are
        done, named after the side that ended first; until then the half-close
        limit applies."""
        if not self._first_eof:
            self._first_eof = side
        if self.up.done and self.down.done:
            self.end("client_eof" if self._first_eof == "client" else "upstream_eof")
        else:
            self._half_closed = True
            if self.limits.half_close_timeout:
                self.arm_timer()

    def half_closed(self, side: str) -> None:
        """*side* sent its EOF behind bytes not yet read: the tunnel is half-closed
        from here on, and the shorter half-close limit applies."""
        if not self._first_eof:
            self._first_eof = side
        self._half_closed = True
        self.arm_timer()

    def arm_timer(self) -> None:
        """(Re)arm the one timer at the earliest deadline now; only when it fires
        or a limit changes: traffic just moves the idle clock (:meth:`touch`).
        A timer that fires no later than that deadline is kept: :meth:`on_timer`
        looks again when it fires."""
        at, kind = self._next_deadline()
        timer = self._timer
        if timer is not None:
            if kind and self._timer_at <= at:
                return
            timer.close()
            self._timer = None
        if kind:
            now = self.loop.now()
            self._timer = timer = self.loop.timer(max(0.0, at - now))
            timer.start(self.on_timer)
            self._timer_at = max(at, now)

    def on_timer(self) -> None:
        """The timer's callback (a relay that starts its timer itself passes it):
        end the tunnel if a deadline is due, else arm the timer for the next."""
        self._timer = None
        at, kind = self._next_deadline()
        if kind and self.loop.now() >= at - _TIMER_SLACK:
            self.end(kind)
        else:
            self.arm_timer()

    def _next_deadline(self) -> tuple[float, str]:
        """The earliest deadline now and the end reason it stands for ("" if none)."""
        limits = self.limits
        idle, kind = limits.idle_timeout, "idle"
        close = limits.half_close_timeout
        if self._half_closed and close and (not idle or close < idle):
            idle, kind = close, "half_close_timeout"
        lifetime = limits.max_lifetime
        if lifetime:
            end = self._started + lifetime
            if not idle or end <= self._last_activity + idle:
                return end, "lifetime"
        if idle:
            return self._last_activity + idle, kind
        return 0.0, ""
