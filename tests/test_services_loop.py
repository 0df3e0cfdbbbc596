"""The loop driver (gateway/services/loop.py) and the ordered services, on a fake clock.

Each test drives a :class:`LoopService` with ``task.Clock`` and ticks that are
plain Deferreds the test fires by hand: no threads, no sockets, no sleeping.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.errors import StartupError
from gateway.monitor.heartbeat import Heartbeats
from gateway.services.listener import ListenerService
from gateway.services.loop import LoopService
from gateway.services.ordered import OnStop, OrderedServices


class Ticks:
    """A tick whose rounds end when the test says so (or at once, with ``sync``)."""

    def __init__(self, *, sync: bool = False) -> None:
        self.sync = sync
        self.started = 0
        self.pending: list[Deferred[None]] = []
        self.raise_next: Exception | None = None

    def __call__(self) -> Deferred[None] | None:
        self.started += 1
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        if self.sync:
            return None
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def end(self, result: Exception | None = None) -> None:
        d = self.pending.pop(0)
        if result is None:
            d.callback(None)
        else:
            d.errback(Failure(result))


def make_loop(
    tick: Callable[[], Any],
    clock: Clock,
    *,
    interval: float = 1.0,
    min_gap: float = 0.0,
    failures: list[Failure] | None = None,
    beats: list[float] | None = None,
) -> LoopService:
    failed = failures if failures is not None else []
    loop = LoopService(
        tick, reactor=clock, interval=interval, on_failure=failed.append, min_gap=min_gap
    )
    if beats is not None:
        loop.heartbeat = lambda: beats.append(clock.seconds())
    return loop


# -- timing ---------------------------------------------------------------------------


def test_first_tick_at_start_then_one_interval_after_each_end() -> None:
    clock, ticks = Clock(), Ticks()
    loop = make_loop(ticks, clock, interval=2.0)
    loop.startService()
    assert ticks.started == 1
    clock.advance(5)  # the first tick has not ended: nothing piles up
    assert ticks.started == 1
    ticks.end()
    clock.advance(1.9)
    assert ticks.started == 1
    clock.advance(0.1)
    assert ticks.started == 2
    assert loop.ticks == 1 and loop.last_tick == 5.0


@pytest.mark.parametrize(
    ("wakes_during_tick", "ticks_after"),
    [(0, 1), (1, 2), (5, 2)],  # wakes during a tick coalesce into one more tick
)
def test_wake_runs_now_or_once_right_after_the_running_tick(
    wakes_during_tick: int, ticks_after: int
) -> None:
    clock, ticks = Clock(), Ticks()
    loop = make_loop(ticks, clock, interval=60.0)
    loop.startService()
    for _ in range(wakes_during_tick):
        loop.wake()
    ticks.end()
    assert ticks.started == ticks_after
    assert loop.ticking == (ticks_after == 2)


def test_wake_when_idle_ticks_at_once_and_restarts_the_interval() -> None:
    clock, ticks = Clock(), Ticks(sync=True)
    loop = make_loop(ticks, clock, interval=10.0)
    loop.startService()
    clock.advance(4)
    loop.wake()
    assert ticks.started == 2
    clock.advance(9.9)
    assert ticks.started == 2
    clock.advance(0.1)
    assert ticks.started == 3


def test_wakes_within_min_gap_share_one_tick() -> None:
    clock, ticks = Clock(), Ticks(sync=True)
    loop = make_loop(ticks, clock, interval=60.0, min_gap=0.5)
    loop.startService()
    for _ in range(3):
        clock.advance(0.1)
        loop.wake()
    assert ticks.started == 1  # held back until 0.5 s after the first tick ended
    clock.advance(0.2)
    assert ticks.started == 2
    clock.advance(0.1)
    loop.wake()
    assert ticks.started == 2
    clock.advance(0.4)
    assert ticks.started == 3


def test_a_stopped_loop_neither_ticks_nor_wakes() -> None:
    clock, ticks = Clock(), Ticks(sync=True)
    loop = make_loop(ticks, clock)
    loop.startService()
    stopped = loop.stopService()
    assert stopped.called
    loop.wake()
    clock.advance(100)
    assert ticks.started == 1
    assert clock.getDelayedCalls() == []


# -- stop during a tick ---------------------------------------------------------------


def test_stop_waits_for_the_running_tick_and_ticks_no_more() -> None:
    clock, ticks = Clock(), Ticks()
    loop = make_loop(ticks, clock)
    loop.startService()
    loop.wake()  # asks for one more tick, which the stop cancels
    stopped = loop.stopService()
    assert not stopped.called
    clock.advance(10)
    ticks.end()
    assert stopped.called and stopped.result is None
    clock.advance(10)
    assert ticks.started == 1
    assert clock.getDelayedCalls() == []


def test_a_loop_that_need_not_be_waited_for_stops_at_once() -> None:
    clock, ticks = Clock(), Ticks()
    loop = LoopService(
        ticks, reactor=clock, interval=1.0, on_failure=lambda _: None, wait_on_stop=False
    )
    loop.startService()
    assert loop.stopService().called  # the tick in progress ends on its own
    ticks.end()
    clock.advance(10)
    assert ticks.started == 1 and loop.ticks == 1


def test_restarted_while_the_last_tick_ends_ticks_again_once_it_has() -> None:
    clock, ticks = Clock(), Ticks()
    loop = make_loop(ticks, clock)
    loop.startService()
    stopped = loop.stopService()
    loop.startService()
    assert ticks.started == 1  # never two ticks at once
    ticks.end()
    assert stopped.called
    assert ticks.started == 2


# -- failures are isolated ------------------------------------------------------------


@pytest.mark.parametrize("how", ["raises", "fails-later"])
def test_a_failing_tick_is_reported_and_the_loop_goes_on(how: str) -> None:
    clock, ticks = Clock(), Ticks()
    failures: list[Failure] = []
    beats: list[float] = []
    loop = make_loop(ticks, clock, interval=1.0, failures=failures, beats=beats)
    if how == "raises":
        ticks.raise_next = RuntimeError("the store is down")
        loop.startService()
    else:
        loop.startService()
        ticks.end(RuntimeError("the store is down"))
    assert [f.getErrorMessage() for f in failures] == ["the store is down"]
    assert beats == [] and loop.last_tick is None  # a failed tick is no heartbeat
    clock.advance(1)
    assert ticks.started == 2
    ticks.end()
    assert beats == [1.0] and loop.ticks == 1


def test_a_failing_failure_handler_or_heartbeat_does_not_stop_the_loop() -> None:
    clock, ticks = Clock(), Ticks()

    def broken(_: object = None) -> None:
        raise ValueError("bug in a handler")

    loop = LoopService(ticks, reactor=clock, interval=1.0, on_failure=broken, heartbeat=broken)
    loop.startService()
    ticks.end(RuntimeError("tick failed"))
    clock.advance(1)
    ticks.end()
    clock.advance(1)
    assert ticks.started == 3


# -- a stuck loop is reported ---------------------------------------------------------


def test_a_loop_whose_tick_hangs_goes_stale_for_ready() -> None:
    clock, ticks = Clock(), Ticks()
    beats = Heartbeats(clock=clock.seconds)
    loop = make_loop(ticks, clock, interval=1.0)
    loop.heartbeat = beats.beater("delivery", loop.interval)
    loop.startService()
    ticks.end()
    clock.advance(1)  # the second tick starts and hangs (a store that does not answer)
    assert loop.ticking and beats.stale() == []
    clock.advance(3.5)
    assert beats.stale() == ["delivery: no tick for 4.5 s (interval 1 s)"]
    assert loop.last_tick == 0.0
    ticks.end()
    assert beats.stale() == [] and loop.last_tick == 4.5


# -- ordered services -----------------------------------------------------------------


class Recorded(Service):
    """Records its start and stop in ``log``; its stop ends when the test says so."""

    def __init__(self, name: str, log: list[str], *, fail_stop: bool = False) -> None:
        self.label = name
        self.log = log
        self.fail_stop = fail_stop
        self.stopping: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.label}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(f"stop {self.label}")
        if self.fail_stop:
            return defer.fail(RuntimeError(f"{self.label} would not stop"))
        self.stopping = Deferred()
        return self.stopping


def test_services_stop_one_by_one_in_the_reverse_of_their_start() -> None:
    log: list[str] = []
    services = OrderedServices()
    parts = [Recorded(name, log) for name in ("worker", "listener", "loop")]
    for part in parts:
        services.add(part)
    services.startService()
    assert log == ["start worker", "start listener", "start loop"]
    stopped = services.stopService()
    assert log[3:] == ["stop loop"]  # the listener waits for the loop to have stopped
    assert parts[2].stopping is not None
    parts[2].stopping.callback(None)
    assert log[3:] == ["stop loop", "stop listener"]
    assert parts[1].stopping is not None
    parts[1].stopping.callback(None)
    assert parts[0].stopping is not None
    parts[0].stopping.callback(None)
    assert log[3:] == ["stop loop", "stop listener", "stop worker"]
    assert stopped.called


def test_a_service_that_fails_to_stop_does_not_keep_the_others_running() -> None:
    log: list[str] = []
    closed: list[str] = []
    services = OrderedServices()
    services.add(OnStop(lambda: closed.append("store")))
    services.add(Recorded("broken", log, fail_stop=True))
    stopped = services.stopService()  # never started: every child is stopped anyway
    assert closed == ["store"]
    assert isinstance(stopped.result, Failure)
    assert stopped.result.getErrorMessage() == "broken would not stop"
    stopped.addErrback(lambda _: None)


def test_a_port_in_use_is_one_sentence_and_nothing_listens() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        from twisted.internet.protocol import Factory

        listener = ListenerService(
            "127.0.0.1",
            taken,
            lambda: reactor.listenTCP(taken, Factory(), interface="127.0.0.1"),  # type: ignore[attr-defined]
        )
        with pytest.raises(StartupError) as refused:
            listener.startService()
    assert str(refused.value) == f"cannot listen on 127.0.0.1:{taken}: address already in use"
    assert not listener.running and listener.port is None and listener.bound_port == 0
    assert listener.stopService().called
