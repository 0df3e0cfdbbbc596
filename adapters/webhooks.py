"""Event push: POST message events to back-office URLs (``[[webhook]]``)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from gateway.config import WebhookConfig
from gateway.store.database import Database


class WebhookDispatcher:
    """Pushes the store's message events to the configured webhooks."""

    def __init__(
        self,
        reactor: Any,
        db: Database,
        run_in_thread: Any,
        hooks: tuple[WebhookConfig, ...],
        *,
        node_id: str,
        poll_interval: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.db = db
        self.run_in_thread = run_in_thread
        self.hooks = hooks
        self.node_id = node_id
        self.poll_interval = poll_interval

    def start(self) -> None:
        """Begin pushing."""

    def wake(self) -> None:
        """Look for new events now."""

    def stop(self) -> Deferred[None]:
        """Stop; POSTs in flight are finished or abandoned (and retried later)."""
        return defer.succeed(None)
