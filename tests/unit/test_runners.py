"""Handshake runners: a greenlet kept between handshakes, in process, on the real hub."""

from __future__ import annotations

import gevent
import pytest
from gevent import get_hub, getcurrent
from gevent.event import Event

from gconnect.tunnel.runners import Runners

pytestmark = pytest.mark.timeout(30)


def run_in_hub(function) -> None:
    """Call *function* from a loop callback (as the accept callback calls Tunnel.start)."""
    done = Event()

    def callback() -> None:
        function()
        done.set()

    get_hub().loop.run_callback(callback)
    assert done.wait(5)


def test_a_runner_that_finished_serves_the_next_function():
    runners = Runners()
    seen: list[object] = []
    hub = get_hub()
    first = runners.take(hub)
    run_in_hub(lambda: first.switch(lambda: seen.append(getcurrent())))
    second = runners.take(hub)
    run_in_hub(lambda: second.switch(lambda: seen.append(getcurrent())))
    assert second is first and seen == [first, first]
    assert not first.dead


def test_a_runner_waits_in_the_hub_like_any_greenlet():
    runners = Runners()
    finished = Event()

    def handshake() -> None:
        gevent.sleep(0.01)  # parks in the hub; the hub switches back
        finished.set()

    runner = runners.take(get_hub())
    run_in_hub(lambda: runner.switch(handshake))
    assert finished.wait(5)
    assert runners.take(get_hub()) is runner


def test_a_function_that_raises_ends_its_runner_which_is_not_kept():
    runners = Runners()
    runner = runners.take(get_hub())

    def killed() -> None:
        raise gevent.GreenletExit  # what abort() throws at a wait

    run_in_hub(lambda: runner.switch(killed))
    assert runner.dead
    assert runners.take(get_hub()) is not runner


def test_no_more_than_max_parked_are_kept():
    runners = Runners(max_parked=1)
    hub = get_hub()
    held = Event()
    started: list[object] = []

    def wait_for_release() -> None:
        started.append(getcurrent())
        held.wait()

    a, b = runners.take(hub), runners.take(hub)
    run_in_hub(lambda: a.switch(wait_for_release))
    run_in_hub(lambda: b.switch(wait_for_release))
    held.set()
    gevent.sleep(0.05)
    assert len(started) == 2
    assert sum(not g.dead for g in (a, b)) == 1, "one is kept, the other ended"
