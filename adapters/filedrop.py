"""File-drop folders: an outbox sent over ebMS, an inbox of received messages (``[[filedrop]]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from cpa.registry import CpaRegistry
from gateway.config import FileDropConfig
from gateway.msh.security import MessageSecurity
from gateway.store.database import Database


class FileDrop:
    """One exchange's outbox and inbox folders."""

    def __init__(
        self,
        reactor: Any,
        db: Database,
        registry: CpaRegistry,
        run_in_thread: Any,
        exchange: FileDropConfig,
        *,
        node_id: str,
        security: MessageSecurity | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.db = db
        self.registry = registry
        self.run_in_thread = run_in_thread
        self.exchange = exchange
        self.node_id = node_id
        self.security = security
        self.wake = wake

    def start(self) -> None:
        """Begin watching the folders."""

    def stop(self) -> Deferred[None]:
        """Stop watching; a file being sent is finished first."""
        return defer.succeed(None)
