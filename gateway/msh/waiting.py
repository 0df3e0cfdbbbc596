"""Waiting for the partner's answer: the one polling loop, blocking or on the reactor.

Both drivers look with ``check`` (one read of the store and a
:func:`gateway.msh.answers.verdict`) on :func:`gateway.msh.answers.next_delay`'s
schedule until it gives an answer or ``timeout`` seconds pass.  The CLI blocks
(:func:`wait`); the back-office APIs wait on the reactor with ``check`` in the
store's threads (:func:`await_answer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.msh.answers import next_delay

__all__ = ["await_answer", "wait"]

T = TypeVar("T")


def wait(check: Callable[[], T | None], timeout: float) -> T | None:
    """Look with ``check`` until it gives an answer or ``timeout`` seconds pass (blocking)."""
    deadline = time.monotonic() + timeout
    delay: float | None = None
    while True:
        answer = check()
        remaining = deadline - time.monotonic()
        if answer is not None or remaining <= 0:
            return answer
        delay = next_delay(delay, remaining)
        time.sleep(delay)


async def await_answer(
    run_in_thread: Any, reactor: Any, check: Callable[[], T | None], timeout: float
) -> T | None:
    """:func:`wait` on the reactor: ``check`` runs in the store's threads."""
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    delay: float | None = None
    while True:
        answer = await run_in_thread(check)
        remaining = deadline - time.monotonic()
        if answer is not None or remaining <= 0:
            return answer  # type: ignore[no-any-return]
        delay = next_delay(delay, remaining)
        await deferLater(reactor, delay)
