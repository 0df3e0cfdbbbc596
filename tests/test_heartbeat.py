"""gateway.monitor.heartbeat: the last finished tick of each worker loop."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.monitor import heartbeat


def test_beat_last_and_forget() -> None:
    name = "test-loop"
    heartbeat.forget(name)
    assert heartbeat.last(name) is None
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    heartbeat.beat(name, at)
    assert heartbeat.last(name) == at
    assert heartbeat.all_beats()[name] == at
    heartbeat.beat(name)
    later = heartbeat.last(name)
    assert later is not None and later > at
    heartbeat.forget(name)
    assert name not in heartbeat.all_beats()
