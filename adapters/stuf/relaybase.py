"""What both sides of the relay share: its errors, its context, its log rows.

The sending side (:mod:`adapters.stuf.sending`), the receiving side
(:mod:`adapters.stuf.receiving`) and the message-log upkeep
(:mod:`adapters.stuf.upkeep`) each hold a :class:`RelayContext`, the one
gateway's ``[stuf]`` role with its rule settings; :class:`RelayPart` gives them
the store's connection, the clock, the relay's log line, and the two steps both
sides take: queueing an envelope as an ebMS message, and writing a file to a
care provider's outbox folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from adapters.filedrop.files import atomic_write, ensure_folder, fsync_folder, safe_name
from adapters.stuf import codes
from adapters.stuf.envelope import GGK_NS, STUF_NS, Envelope, Stuurgegevens, Systeem
from adapters.stuf.fo01 import FO01_ROOT
from adapters.stuf.rules import Settings, Verdict
from adapters.stuf.store import LogEntry, StufDirection, StufStatus
from cpa.model import PartyId, parse_party
from gateway.config import StufConfig
from gateway.logfmt import log_event
from gateway.msh.security import MessageSecurity
from gateway.msh.service import Addressing, Payload, Refusal, SendError, queue
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.messages import StoredMessage
from gateway.store.timeutil import utcnow

log = logging.getLogger("dkgw.stuf")


#: The sender identity of the back office in the authorisation table.
BACK_OFFICE = "backoffice"
#: ... and of the node, for what a gemeente receives.
NODE = "node"
#: zender of the Fo01s this gateway makes as the node: organisatie ``IB`` [GGk21 §3.1],
#: applicatie ``GGK`` as in the published sample ``tests/fixtures/stuf/envelopes/Fo01.xml``.
NODE_SYSTEEM = Systeem("IB", "GGK")
GEMEENTECODE = re.compile(r"[0-9]{4}")


class Refused(SendError):
    """The message is refused; nothing was sent.  ``code`` is the chain's or ours.

    A :class:`~gateway.msh.outbound.SendError`, so the file drop treats it as
    any refusal: the file goes to ``failed/`` with the reason.
    """

    def __init__(self, code: str, reason: str, envelope: Envelope | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.envelope = envelope


@dataclass(frozen=True)
class Sent:
    """A message checked, logged and queued."""

    referentienummer: str
    functie: str
    berichtcode: str
    message_id: str
    log_id: int


def verdict_reasons(verdict: Verdict) -> str:
    """The first rejection (its code is shown apart), and the codes of the others."""
    if not verdict.rejections:
        return "refused"
    first, *others = verdict.rejections
    text = first.text + (f" ({first.location})" if first.location else "")
    if others:
        text += "; also " + ", ".join(dict.fromkeys(r.code for r in others))
    return text


def _root_name(data: bytes) -> tuple[str | None, str]:
    """(namespace, local name) of the root element, without parsing the whole document."""
    m = re.search(rb"<(?!\?|!)([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)", data[:4096])
    if m is None:
        return None, ""
    prefix, local = m.group(1), m.group(2).decode("ascii", "replace")
    if prefix is None:
        return None, local
    p = prefix[:-1].decode("ascii", "replace")
    ns = re.search(rf'xmlns:{re.escape(p)}\s*=\s*"([^"]*)"'.encode(), data[:8192])
    return (ns.group(1).decode("ascii", "replace") if ns else None), local


def is_envelope(data: bytes) -> bool:
    """Whether ``data`` is a ggk0210 envelope (rather than a bare iStandaarden message)."""
    ns, local = _root_name(data)
    return ns == GGK_NS or local.startswith("envelop")


def is_fo01(data: bytes) -> bool:
    """Whether ``data`` is a StUF Fo01Bericht."""
    ns, local = _root_name(data)
    return local == FO01_ROOT and ns in (STUF_NS, None)


@dataclass(frozen=True)
class RelayContext:
    """One gateway's relay, in its ``[stuf]`` role, with the rule settings of both ways."""

    db: Database
    registry: CpaRegistry
    config: StufConfig
    security: MessageSecurity | None = None
    own_parties: tuple[PartyId, ...] = ()
    node_id: str = ""
    clock: Callable[[], datetime] = utcnow
    outbound_settings: Settings = field(init=False)
    inbound_settings: Settings = field(init=False)
    per_cpa: dict[str, Settings] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        if self.gemeente:
            table = {BACK_OFFICE: frozenset(config.gemeentecodes)}
            inbound = {NODE: frozenset(config.gemeentecodes)}
        else:
            table = {g.cpa_id: frozenset(g.gemeentecodes) for g in config.gemeenten}
            inbound = table
        outbound_settings = Settings(
            max_bytes=config.max_envelope_bytes,
            releases=frozenset(config.releases) | {"ieb/1.0"},
            gemeentecodes=table,
            require_payload_schema=config.require_payload_schema,
        )
        inbound_settings = replace(outbound_settings, gemeentecodes=inbound)
        object.__setattr__(self, "outbound_settings", outbound_settings)
        object.__setattr__(self, "inbound_settings", inbound_settings)
        # At the node each municipality may be on its own release (the GGk's
        # per-exchange setting); a message from it is checked against those.
        object.__setattr__(self, "per_cpa", {
            g.cpa_id: replace(inbound_settings, releases=frozenset(g.releases) | {"ieb/1.0"})
            for g in config.gemeenten
            if g.releases
        })  # fmt: skip

    @property
    def gemeente(self) -> bool:
        """Whether this gateway is a municipality's (else it is the node)."""
        return self.config.role == "gemeente"


class RelayPart:
    """A part of the relay: the context's values, and the steps both sides take."""

    def __init__(self, ctx: RelayContext) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.registry = ctx.registry
        self.config = ctx.config
        self.security = ctx.security
        self.own_parties = ctx.own_parties
        self.node_id = ctx.node_id
        self.clock = ctx.clock
        self.gemeente = ctx.gemeente
        self.outbound_settings = ctx.outbound_settings
        self.inbound_settings = ctx.inbound_settings
        self._per_cpa = ctx.per_cpa

    def _queue_ebms(
        self,
        cur: Cursor,
        cpa_id: str,
        standard: str,
        action: str,
        env_bytes: bytes,
        referentienummer: str,
        *,
        reply_to: StoredMessage | None = None,
    ) -> str:
        """Queue ``env_bytes`` as the one payload of an ebMS message; its message id.

        A new message goes from our party (of ``own_parties``, if the CPA lets
        one of them send) to the other; an answer goes back the way the message
        came, over the same CPA.  The roles are those the parties play for the
        action (:mod:`gateway.msh.addressing`).
        """
        if reply_to is not None:
            from_party: PartyId | None = parse_party(reply_to.to_party.split(",")[0])
            to_party: PartyId | None = parse_party(reply_to.from_party.split(",")[0])
        else:
            from_party = to_party = None
        try:
            queued = queue(
                cur,
                self.registry,
                Addressing(
                    cpa_id=cpa_id,
                    service=self.config.service_for(standard),
                    action=action,
                    from_party=from_party,
                    to_party=to_party,
                    prefer=self.own_parties,
                ),
                payloads=(Payload(env_bytes, "application/xml", f"{referentienummer}.xml"),),
                correlation_id=f"stuf:{referentienummer}",
                security=self.security,
                clock=self.clock,
            )
        except SendError as exc:
            raise Refused(codes.NO_CPA, refusal_text(exc, cpa_id)) from None
        return queued.message_id

    def _deliver_to_provider(self, organisatie: str, file_name: str, data: bytes) -> None:
        """Write ``data`` to ``provider_outbox/<organisatie>/<file_name>`` (if configured)."""
        outbox = self.config.provider_outbox
        if outbox is None:
            return
        folder = outbox / safe_name(organisatie)
        ensure_folder(folder)
        atomic_write(folder, file_name, data)
        fsync_folder(folder)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: str | None) -> None:
        log_event(log, level, {"event": event, "node": self.node_id or None, **fields})


def failure_reason(exc: Exception) -> str:
    """The one sentence stored for an item the relay could not process because of ``exc``.

    Never the message's content: texts of our own making, or the kind of error only.
    """
    if isinstance(exc, Refused):
        return f"{exc.code}: {exc.reason}"
    if isinstance(exc, CpaNotFound):
        return f"The CPA of this message no longer exists ({exc})."
    if isinstance(exc, OSError):
        return f"A file could not be read or written ({exc.strerror or type(exc).__name__})."
    if isinstance(exc, LookupError):
        return f"The stored message is inconsistent ({type(exc).__name__})."
    return f"The relay could not process this message ({type(exc).__name__})."


def log_row(
    direction: StufDirection, status: StufStatus, sg: Stuurgegevens | None, **fields: Any
) -> LogEntry:
    """A message-log row with the envelope's routing fields (None where it was unreadable)."""
    envelope: dict[str, Any] = {}
    if sg is not None:
        envelope = {
            "referentienummer": sg.referentienummer,
            "cross_ref": sg.cross_refnummer,
            "berichtcode": sg.berichtcode,
            "functie": sg.functie or None,  # an Fo01 has none
            "sender_org": sg.zender.organisatie,
            "receiver_org": sg.ontvanger.organisatie,
        }
    return LogEntry(direction=direction, status=status, **{**envelope, **fields})


def bericht_id_of(env: Envelope) -> str | None:
    """The payload's BerichtIdentificatie/Identificatie (header only; never client data)."""
    if env.bestandsnaam is not None:
        return None
    m = re.search(rb"<(?:\w+:)?Identificatie>\s*([^<\s]{1,40})\s*<", env.payload[:65536])
    return m.group(1).decode("utf-8", "replace") if m else None


def refusal_text(exc: SendError, cpa_id: str) -> str:
    """The relay's wording of a refusal by the MSH (a Fo01's text, docs/stuf.md)."""
    if exc.refusal is Refusal.NO_CPA:
        return f"CPA {cpa_id} is not imported"
    if exc.refusal in (Refusal.CANNOT_SEND, Refusal.CANNOT_RECEIVE):
        verb = "send" if exc.refusal is Refusal.CANNOT_SEND else "receive"
        return f"CPA {cpa_id}: {exc.party} cannot {verb} {exc.action}"
    return str(exc)
