"""The iWmo/iJw relay over the store: both sides of the node.

Blocking code for the store's thread pool (:mod:`adapters.stuf.service` is the
Twisted edge).  What comes in, and what happens to it:

* **gemeente role**, from the back office (REST, the ``[stuf] outbox`` folder,
  ``dkgw upload``): a bare iWmo/iJw message, or an envelope.  It is wrapped
  (:mod:`adapters.stuf.bare`), checked (:mod:`adapters.stuf.rules`,
  docs/stuf.md), logged and queued to the node over ``[stuf] cpa_id`` in one
  transaction, with the CPA service of its standard and its type as action.
* **gemeente role**, from the node (a received ebMS message): unwrapped and
  written to the ``[stuf] inbox`` folder with a JSON sidecar; a payload that
  fails its XSD is answered with an Fo01 ``StUF055``; an Fo01 from the chain
  marks the message it refuses failed, with a FAILED event the back office sees.
* **node role**, from a gemeente (received over that gemeente's CPA): checked
  as the GGk checks it; refused with an Fo01 back over the same CPA, or
  routed to the care provider: written to ``provider_outbox/<AGB>/``.
* **node role**, from care providers (envelopes or bare messages in
  ``provider_inbox``): checked and routed by gemeentecode to that gemeente's
  CPA; a refusal is an Fo01 in the provider's outbox folder.

Every step that must not happen twice is one transaction: the log row (whose
unique sender + referentienummer is the duplicate check, race-free across
nodes) and the ebMS message with its delivery task, or the log row and the
ebMS message marked processed.  Files are written before that transaction
commits, under names derived from the referentienummer, so a crash in
between rewrites the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from adapters.stuf.receiving import Receiver
from adapters.stuf.relaybase import (
    BACK_OFFICE,
    NODE,
    NODE_SYSTEEM,
    Refused,
    RelayContext,
    RelayPart,
    Sent,
    failure_reason,
    is_envelope,
    is_fo01,
    refusal_text,
)
from adapters.stuf.sending import Sender
from adapters.stuf.store import PurgeCounts
from adapters.stuf.upkeep import Upkeep
from adapters.stuf.upload_cli import upload_handler
from cpa.model import PartyId
from gateway.config import StufConfig
from gateway.msh.security import MessageSecurity
from gateway.msh.service import SendError
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.timeutil import utcnow

__all__ = [
    "BACK_OFFICE",
    "NODE",
    "NODE_SYSTEEM",
    "Refused",
    "Relay",
    "Sent",
    "failure_reason",
    "is_envelope",
    "is_fo01",
    "upload_handler",
]

#: The relay's wording of a refusal by the MSH (kept under its old name).
_refusal_text = refusal_text


class Relay(RelayPart):
    """One gateway's relay, in its ``[stuf]`` role: the three parts, composed.

    :attr:`sending` (:mod:`adapters.stuf.sending`), :attr:`receiving`
    (:mod:`adapters.stuf.receiving`) and :attr:`upkeep`
    (:mod:`adapters.stuf.upkeep`) share one :class:`RelayContext`.
    """

    def __init__(
        self,
        db: Database,
        registry: CpaRegistry,
        config: StufConfig,
        *,
        security: MessageSecurity | None = None,
        own_parties: tuple[PartyId, ...] = (),
        node_id: str = "",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        ctx = RelayContext(
            db,
            registry,
            config,
            security=security,
            own_parties=own_parties,
            node_id=node_id,
            clock=clock,
        )
        super().__init__(ctx)
        self.sending = Sender(ctx)
        self.receiving = Receiver(ctx)
        self.upkeep = Upkeep(ctx)

    # -- sending: from the back office, an upload, or a care provider ----------------

    def send(self, data: bytes, *, file_name: str | None = None, batch_id: int | None = None,
             record_refusal: bool = True) -> Sent:  # fmt: skip
        """Check, log and queue one message in a transaction of its own (:class:`Sender`)."""
        return self.sending.send(data, file_name=file_name, batch_id=batch_id,
                                 record_refusal=record_refusal)  # fmt: skip

    def queue(self, cur: Cursor, data: bytes, *, file_name: str | None = None,
              batch_id: int | None = None) -> Sent:  # fmt: skip
        """:meth:`send` inside the caller's transaction (the file drop records its token)."""
        return self.sending.queue(cur, data, file_name=file_name, batch_id=batch_id)

    def record_refusal(self, refused: Refused, data: bytes, *, file_name: str | None = None,
                       batch_id: int | None = None) -> None:  # fmt: skip
        """Log a refused message (its own transaction)."""
        self.sending.record_refusal(refused, data, file_name=file_name, batch_id=batch_id)

    # -- the outbox folders (adapters.filedrop.outbox.OutboxSender) ------------------------

    def queue_file(self, cur: Cursor, name: str, content: bytes) -> str:
        """Queue a file of the gemeente outbox or the node's provider inbox."""
        return self.sending.queue_file(cur, name, content)

    def file_refused(self, name: str, content: bytes, error: SendError) -> None:
        """Log a refused file; at the node, answer the care provider with an Fo01."""
        self.sending.file_refused(name, content, error)

    # -- receiving: what arrived over ebMS ---------------------------------------------

    def stuf_actions(self) -> tuple[str, ...]:
        """The ebMS actions StUF messages travel with: every message type, and Fo01."""
        return self.receiving.stuf_actions()

    @property
    def fo01_action(self) -> str:
        """The ebMS action of an Fo01."""
        return self.receiving.fo01_action

    def process_received(self, limit: int = 50) -> int:
        """Relay the received ebMS messages of the StUF CPAs; returns how many."""
        return self.receiving.process_received(limit)

    def _process_one(self, cur: Cursor, message_id: str) -> None:
        self.receiving._process_one(cur, message_id)

    # -- housekeeping -------------------------------------------------------------------

    def sync_statuses(self) -> int:
        """Carry ebMS outcomes (acknowledged, failed, expired) into the message log."""
        return self.upkeep.sync_statuses()

    def detect_read(self) -> int:
        """Mark delivered items whose file the recipient has taken away as read."""
        return self.upkeep.detect_read()

    def purge(self) -> PurgeCounts:
        """Apply retention (``read_retention_hours``, ``max_age_days``)."""
        return self.upkeep.purge()
