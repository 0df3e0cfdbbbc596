"""The iWmo/iJw relay over the store: both sides of the node.

Blocking code for the store's thread pool (:mod:`adapters.stuf.service` is the
Twisted edge).  What comes in, and what happens to it:

* **gemeente role**, from the back office (REST, the ``[stuf] outbox`` folder,
  ``dkgw upload``): a bare iWmo/iJw message, or an envelope.  It is wrapped
  (:mod:`adapters.stuf.bare`), checked (:mod:`adapters.stuf.rules`, research
  §3), logged and queued to the node over ``[stuf] cpa_id`` in one
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

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.filedrop.files import atomic_write, ensure_folder, fsync_folder, safe_name
from adapters.stuf import codes
from adapters.stuf.bare import BareError, BareMessage, read_bare, wrap_bare
from adapters.stuf.catalogue import CATALOGUE, message_type
from adapters.stuf.envelope import (
    GGK_NS,
    STUF_NS,
    Envelope,
    EnvelopeError,
    Stuurgegevens,
    Systeem,
    wrap,
)
from adapters.stuf.fo01 import FO01_ROOT, fo01_for, parse_fo01
from adapters.stuf.rules import Role, Settings, Verdict, check
from adapters.stuf.store import (
    LogEntry,
    PurgeCounts,
    StufDirection,
    StufStatus,
    mark_by_ebms_id,
    purge,
    query_log,
    record_message,
    reference_used,
    update_status,
)
from adapters.upload import Accepted, Rejected
from cpa.model import PartyId, parse_party
from gateway.config import StufConfig
from gateway.logfmt import log_event
from gateway.msh.security import MessageSecurity
from gateway.msh.service import Addressing, Payload, Refusal, SendError, queue
from gateway.msh.states import OUTBOUND, InboundStatus, OutboundStatus
from gateway.store.backoffice import process_message
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.guards import in_states
from gateway.store.messages import (
    Direction,
    EventType,
    StoredMessage,
    add_event,
    fail_received,
    find_message,
    load_attachments,
)
from gateway.store.timeutil import to_db, utcnow

log = logging.getLogger("dkgw.stuf")

__all__ = ["Refused", "Relay", "Sent", "failure_reason", "upload_handler"]

#: The sender identity of the back office in the authorisation table.
BACK_OFFICE = "backoffice"
#: ... and of the node, for what a gemeente receives.
NODE = "node"
#: zender of the Fo01s this gateway makes as the node [research §1.6: IB / GGK].
NODE_SYSTEEM = Systeem("IB", "GGK")
_GEMEENTECODE = re.compile(r"[0-9]{4}")


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


def _reasons(verdict: Verdict) -> str:
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


class Relay:
    """One gateway's relay, in its ``[stuf]`` role."""

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
        self.db = db
        self.registry = registry
        self.config = config
        self.security = security
        self.own_parties = own_parties
        self.node_id = node_id
        self.clock = clock
        self.gemeente = config.role == "gemeente"
        if self.gemeente:
            table = {BACK_OFFICE: frozenset(config.gemeentecodes)}
            inbound = {NODE: frozenset(config.gemeentecodes)}
        else:
            table = {g.cpa_id: frozenset(g.gemeentecodes) for g in config.gemeenten}
            inbound = table
        self.outbound_settings = Settings(
            max_bytes=config.max_envelope_bytes,
            releases=frozenset(config.releases) | {"ieb/1.0"},
            gemeentecodes=table,
            require_payload_schema=config.require_payload_schema,
        )
        self.inbound_settings = replace(self.outbound_settings, gemeentecodes=inbound)
        # At the node each municipality may be on its own release (the GGk's
        # per-exchange setting); a message from it is checked against those.
        self._per_cpa = {
            g.cpa_id: replace(self.inbound_settings, releases=frozenset(g.releases) | {"ieb/1.0"})
            for g in config.gemeenten
            if g.releases
        }

    # -- sending: from the back office, an upload, or a care provider ----------------

    def send(self, data: bytes, *, file_name: str | None = None, batch_id: int | None = None,
             record_refusal: bool = True) -> Sent:  # fmt: skip
        """Check, log and queue one message in a transaction of its own.

        Raises :class:`Refused`; with ``record_refusal`` the refusal is logged too
        (``dkgw upload`` logs refusals itself, with the file).
        """
        try:
            with self.db.transaction() as cur:
                return self.queue(cur, data, file_name=file_name, batch_id=batch_id)
        except Refused as refused:
            if record_refusal:
                self.record_refusal(refused, data, file_name=file_name, batch_id=batch_id)
            raise

    def queue(self, cur: Cursor, data: bytes, *, file_name: str | None = None,
              batch_id: int | None = None) -> Sent:  # fmt: skip
        """:meth:`send` inside the caller's transaction (the file drop records its token)."""
        env_bytes, role, sender = self._envelope_for_sending(cur, data)
        verdict = check(
            env_bytes,
            role=role,
            settings=self.outbound_settings if self.gemeente else self.inbound_settings,
            sender=sender,
            seen=lambda org, ref: reference_used(cur, org, ref),
        )
        env = verdict.envelope
        if not verdict.ok or env is None:
            first = verdict.rejections[0].code if verdict.rejections else codes.ENVELOPE_INVALID
            raise Refused(first, _reasons(verdict), env)
        return self._queue_envelope(cur, env, env_bytes, file_name=file_name, batch_id=batch_id)

    def _envelope_for_sending(self, cur: Cursor, data: bytes) -> tuple[bytes, Role, str | None]:
        # The back office may hand over an envelope it made itself, or the bare message.
        if is_envelope(data):
            env_bytes = data
        else:
            try:
                bare = read_bare(data, max_bytes=self.config.max_envelope_bytes)
            except BareError as exc:
                raise Refused(exc.rejection.code, exc.rejection.text) from None
            env_bytes = wrap(
                wrap_bare(
                    bare,
                    applicatie=self.config.applicatie,
                    applicatie_versie=self.config.applicatie_versie,
                    applicatie_subversie=self.config.applicatie_subversie,
                    cross_ref=lambda b: self._cross_ref(cur, b),
                )
            )
        if self.gemeente:
            return env_bytes, Role.GEMEENTE, BACK_OFFICE
        # The node forwards what a care provider (or the CAK) sends.
        return env_bytes, Role.NODE, None

    def _cross_ref(self, cur: Cursor, bare: BareMessage) -> str | None:
        """The referentienummer of the Di01 that carried the heen this retour answers."""
        heen = bare.message_type.answers
        if heen is None or not bare.identificatie:
            return None
        row = cur.execute(
            "SELECT referentienummer FROM stuf_message WHERE gemeente = ? AND counterpart = ? "
            "AND bericht_id = ? AND functie = ? AND berichtcode = 'Di01' "
            "AND status <> 'rejected' ORDER BY id DESC LIMIT 1",
            (bare.gemeente, bare.counterpart, bare.identificatie, heen),
        ).fetchone()
        return str(row[0]) if row else None

    def _queue_envelope(self, cur: Cursor, env: Envelope, env_bytes: bytes, *,
                        file_name: str | None, batch_id: int | None) -> Sent:  # fmt: skip
        sg = env.stuurgegevens
        if self.gemeente:
            cpa_id = self.config.cpa_id
            gemeente, counterpart = sg.zender.organisatie, sg.ontvanger.organisatie
            if not _GEMEENTECODE.fullmatch(gemeente):  # a retour to an aanbieder's heen
                gemeente, counterpart = counterpart, gemeente
        else:
            gemeente, counterpart = sg.ontvanger.organisatie, sg.zender.organisatie
            cpa_id = self._cpa_of(gemeente)
        log_id = record_message(
            cur,
            _log_entry(
                StufDirection.OUT,
                StufStatus.ACCEPTED,
                sg,
                gemeente=gemeente,
                counterpart=counterpart,
                bericht_id=_bericht_id(env),
                cpa_id=cpa_id,
                file_name=file_name,
                size=len(env_bytes),
                batch_id=batch_id,
            ),
            now=self.clock(),
        )
        if log_id is None:
            raise Refused(
                codes.DUPLICATE,
                f"referentienummer {sg.referentienummer} was already used by "
                f"{sg.zender.organisatie} [IB216]",
                env,
            )
        mt = message_type(sg.functie)
        standard = mt.standard.value if mt else "iwmo"
        message_id = self._queue_ebms(
            cur,
            cpa_id,
            standard,
            self.config.action_for(sg.functie),
            env_bytes,
            sg.referentienummer,
        )
        update_status(
            cur, log_id, StufStatus.SENT, ebms_message_id=message_id, cpa_id=cpa_id,
            now=self.clock(),
        )  # fmt: skip
        self._log(
            "stuf-sent",
            referentienummer=sg.referentienummer,
            functie=sg.functie,
            berichtcode=sg.berichtcode,
            gemeente=gemeente,
            counterpart=counterpart,
            message_id=message_id,
            cpa=cpa_id,
            size=str(len(env_bytes)),
        )
        return Sent(sg.referentienummer, sg.functie, sg.berichtcode, message_id, log_id)

    def _cpa_of(self, gemeentecode: str) -> str:
        for g in self.config.gemeenten:
            if gemeentecode in g.gemeentecodes:
                return g.cpa_id
        raise Refused(codes.RECEIVER_UNKNOWN, f"no municipality {gemeentecode} is connected")

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
            raise Refused(codes.NO_CPA, _refusal_text(exc, cpa_id)) from None
        return queued.message_id

    def record_refusal(self, refused: Refused, data: bytes, *, file_name: str | None = None,
                       batch_id: int | None = None) -> None:  # fmt: skip
        """Log a refused message (its own transaction)."""
        sg = refused.envelope.stuurgegevens if refused.envelope else None
        with self.db.transaction() as cur:
            record_message(
                cur,
                _log_entry(
                    StufDirection.OUT,
                    StufStatus.REJECTED,
                    sg,
                    reason_code=refused.code[:20],
                    reason=refused.reason[:1000],
                    file_name=file_name,
                    size=len(data),
                    batch_id=batch_id,
                ),
                now=self.clock(),
            )
        self._log(
            "stuf-refused",
            level=logging.WARNING,
            referentienummer=sg.referentienummer if sg else None,
            functie=sg.functie if sg else None,
            code=refused.code,
            file=file_name,
            size=str(len(data)),
        )

    # -- the outbox folders (adapters.filedrop.outbox.OutboxSender) ------------------------

    def queue_file(self, cur: Cursor, name: str, content: bytes) -> str:
        """Queue a file of the gemeente outbox or the node's provider inbox."""
        return self.queue(cur, content, file_name=name).message_id

    def file_refused(self, name: str, content: bytes, error: SendError) -> None:
        """Log a refused file; at the node, answer the care provider with an Fo01."""
        refused = error if isinstance(error, Refused) else Refused(codes.NO_CPA, str(error))
        self.record_refusal(refused, content, file_name=name)
        env = refused.envelope
        if self.gemeente or env is None or self.config.provider_outbox is None:
            return
        code = refused.code if len(refused.code) <= 7 else codes.PAYLOAD_INVALID
        fo01 = fo01_for(env, code, refused.reason, zender=NODE_SYSTEEM)
        ref = parse_fo01(fo01).stuurgegevens.referentienummer
        self._deliver_to_provider(
            env.stuurgegevens.zender.organisatie, f"IB-{safe_name(ref)}.xml", fo01
        )

    # -- receiving: what arrived over ebMS ---------------------------------------------

    def stuf_actions(self) -> tuple[str, ...]:
        """The ebMS actions StUF messages travel with: every message type, and Fo01.

        Other traffic on the same CPAs (another service, another action) is not
        the relay's: it stays for the back office, as any received message.
        """
        return tuple(
            sorted({self.config.action_for(name) for name in CATALOGUE} | {self.fo01_action})
        )

    @property
    def fo01_action(self) -> str:
        """The ebMS action of an Fo01."""
        return self.config.action_for("Fo01")

    def process_received(self, limit: int = 50) -> int:
        """Relay the received ebMS messages of the StUF CPAs; returns how many."""
        cpas, actions = self.config.cpa_ids(), self.stuf_actions()
        services = sorted({value for _, value in self.config.services})
        with self.db.transaction() as cur:
            ids = [
                str(row[0])
                for row in cur.execute(
                    "SELECT message_id FROM ebms_message WHERE direction = 'in' "
                    f"AND {in_states('status', (InboundStatus.RECEIVED,))} "
                    f"AND cpa_id IN ({', '.join('?' for _ in cpas)}) "
                    f"AND service IN ({', '.join('?' for _ in services)}) "
                    f"AND action IN ({', '.join('?' for _ in actions)}) "
                    f"ORDER BY id LIMIT {int(limit)}",
                    (*cpas, *services, *actions),
                ).fetchall()
            ]
        for mid in ids:
            try:
                with self.db.transaction() as cur:
                    try:
                        with cur.savepoint():
                            self._process_one(cur, mid)
                    except Exception as exc:
                        # One message that cannot be processed fails alone, with its
                        # reason; it no longer takes a place in every later pass.
                        self._fail_received(cur, mid, failure_reason(exc))
            except Exception:
                # Not even failing it worked (the store): it stays RECEIVED and is
                # tried again on the next pass; the others still go on.
                log.exception("event=stuf-error message_id=%s", mid)
        return len(ids)

    def _fail_received(self, cur: Cursor, message_id: str, reason: str) -> None:
        """End a received message the relay cannot process: FAILED, logged, an event."""
        now = self.clock()
        message = fail_received(cur, message_id, reason, now=now, error_code=codes.RELAY_FAILED)
        if message is None:
            return
        record_message(
            cur,
            _log_entry(
                StufDirection.IN,
                StufStatus.REJECTED,
                None,
                ebms_message_id=message_id,
                cpa_id=message.cpa_id,
                reason_code=codes.RELAY_FAILED,
                reason=reason[:1000],
            ),
            now=now,
        )
        self._log("stuf-failed", level=logging.ERROR, message_id=message_id,
                  cpa_id=message.cpa_id, reason=reason)  # fmt: skip

    def _process_one(self, cur: Cursor, message_id: str) -> None:
        message = find_message(cur, message_id, Direction.IN)
        if message is None or message.status != InboundStatus.RECEIVED:
            return
        parts = load_attachments(cur, message.pk)
        try:
            data = parts[0].head(self.config.max_envelope_bytes + 1) if parts else b""
        finally:
            for p in parts:
                p.close()
        now = self.clock()
        if len(parts) != 1:
            self._log(
                "stuf-not-an-envelope", level=logging.WARNING, message_id=message_id,
                parts=str(len(parts)),
            )  # fmt: skip
            self._reject_inbound(cur, message, data, codes.ENVELOPE_INVALID,
                                 "a StUF message travels as one payload part")  # fmt: skip
        elif is_fo01(data):
            self._fo01_received(cur, message, data)
        else:
            self._envelope_received(cur, message, data)
        process_message(cur, message_id, now=now)

    def _envelope_received(self, cur: Cursor, message: StoredMessage, data: bytes) -> None:
        verdict = check(
            data,
            role=Role.NODE if self.gemeente else Role.GEMEENTE,
            settings=self._per_cpa.get(message.cpa_id, self.inbound_settings),
            sender=NODE if self.gemeente else message.cpa_id,
            seen=lambda org, ref: reference_used(cur, org, ref),
        )
        env = verdict.envelope
        if not verdict.ok or env is None:
            code = verdict.rejections[0].code if verdict.rejections else codes.ENVELOPE_INVALID
            self._reject_inbound(cur, message, data, code, _reasons(verdict), verdict)
            return
        sg = env.stuurgegevens
        entry = _log_entry(
            StufDirection.IN,
            StufStatus.RECEIVED,
            sg,
            bericht_id=_bericht_id(env),
            ebms_message_id=message.message_id,
            cpa_id=message.cpa_id,
            size=len(data),
        )
        # A referentienummer is unique per sender only: the sender is in the name.
        stem = f"{safe_name(sg.zender.organisatie)}-{safe_name(sg.referentienummer)}"
        if self.gemeente:
            gemeente, counterpart = sg.ontvanger.organisatie, sg.zender.organisatie
            if not _GEMEENTECODE.fullmatch(gemeente):
                gemeente, counterpart = counterpart, gemeente
            folder = self.config.inbox
            name = f"{stem}.xml" if folder is not None else None
        else:
            gemeente, counterpart = sg.zender.organisatie, sg.ontvanger.organisatie
            name = f"{safe_name(counterpart)}/{stem}.xml"
            if self.config.provider_outbox is None:
                name = None
        # The log row first: its unique (sender, referentienummer) is the last word
        # on duplicates (another node may have taken the same envelope a moment ago),
        # and no file is put in place for a duplicate.
        log_id = record_message(
            cur,
            replace(entry, gemeente=gemeente, counterpart=counterpart, file_name=name),
            now=self.clock(),
        )
        if log_id is None:
            self._reject_inbound(
                cur,
                message,
                data,
                codes.DUPLICATE,
                f"referentienummer {sg.referentienummer} was already used by "
                f"{sg.zender.organisatie} [IB216]",
                verdict,
            )
            return
        if name is not None:
            if self.gemeente:
                assert folder is not None
                self._deliver_to_inbox(folder, name, env, message)
            else:
                self._deliver_to_provider(counterpart, f"{stem}.xml", data)
            update_status(cur, log_id, StufStatus.DELIVERED, now=self.clock())
        self._log(
            "stuf-received",
            referentienummer=sg.referentienummer,
            functie=sg.functie,
            berichtcode=sg.berichtcode,
            gemeente=gemeente,
            counterpart=counterpart,
            message_id=message.message_id,
            delivered=name,
        )

    def _deliver_to_inbox(self, folder: Path, name: str, env: Envelope,
                          message: StoredMessage) -> None:  # fmt: skip
        """The payload (unwrapped) and then its sidecar: the sidecar means complete."""
        ensure_folder(folder)
        size, sha256 = atomic_write(folder, name, env.payload)
        sg = env.stuurgegevens
        sidecar = {
            "referentienummer": sg.referentienummer,
            "crossRefnummer": sg.cross_refnummer,
            "berichtcode": sg.berichtcode,
            "functie": sg.functie,
            "tijdstipBericht": sg.tijdstip_bericht,
            "zender": _systeem(sg.zender),
            "ontvanger": _systeem(sg.ontvanger),
            "functieVersie": env.parameters.functie_versie,
            "functieSubversie": env.parameters.functie_subversie,
            "bestandsnaam": env.bestandsnaam,
            "ebms": {
                "messageId": message.message_id,
                "cpaId": message.cpa_id,
                "conversationId": message.conversation_id,
            },
            "payload": {"file": name, "size": size, "sha256": sha256},
        }
        body = json.dumps(sidecar, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(folder, name.removesuffix(".xml") + ".json", body)
        fsync_folder(folder)

    def _deliver_to_provider(self, organisatie: str, file_name: str, data: bytes) -> None:
        """Write ``data`` to ``provider_outbox/<organisatie>/<file_name>`` (if configured)."""
        outbox = self.config.provider_outbox
        if outbox is None:
            return
        folder = outbox / safe_name(organisatie)
        ensure_folder(folder)
        atomic_write(folder, file_name, data)
        fsync_folder(folder)

    def _reject_inbound(self, cur: Cursor, message: StoredMessage, data: bytes, code: str,
                        reason: str, verdict: Verdict | None = None) -> None:  # fmt: skip
        env = verdict.envelope if verdict else None
        sg = env.stuurgegevens if env else None
        record_message(
            cur,
            _log_entry(
                StufDirection.IN,
                StufStatus.REJECTED,
                sg,
                ebms_message_id=message.message_id,
                cpa_id=message.cpa_id,
                reason_code=code[:20],
                reason=reason[:1000],
                size=len(data),
            ),
            now=self.clock(),
        )
        fo01_code = code
        if self.gemeente:
            if code == codes.NOT_AUTHORISED:
                # A message for a gemeente we do not serve is a configuration error
                # here, not the sender's: no Fo01 [research §3].
                self._log("stuf-misrouted", level=logging.ERROR,
                          message_id=message.message_id, code=code)  # fmt: skip
                return
            # Towards the chain the gemeente only speaks StUF055 [GGk21 §2.3].
            fo01_code = codes.PAYLOAD_INVALID
        zender = NODE_SYSTEEM if not self.gemeente else None
        try:
            fo01 = fo01_for(env if env else data, fo01_code, reason, zender=zender)
        except ValueError:
            self._log("stuf-unanswerable", level=logging.WARNING,
                      message_id=message.message_id, code=code)  # fmt: skip
            return
        mt = message_type(sg.functie) if sg else None
        fo01_ref = parse_fo01(fo01).stuurgegevens.referentienummer
        fo01_id = self._queue_ebms(
            cur,
            message.cpa_id,
            mt.standard.value if mt else "iwmo",
            self.config.action_for("Fo01"),
            fo01,
            fo01_ref,
            reply_to=message,
        )
        self._log(
            "stuf-refused-inbound",
            level=logging.WARNING,
            message_id=message.message_id,
            referentienummer=sg.referentienummer if sg else None,
            functie=sg.functie if sg else None,
            code=code,
            fo01=fo01_id,
        )

    def _fo01_received(self, cur: Cursor, message: StoredMessage, data: bytes) -> None:
        try:
            fo01 = parse_fo01(data, max_bytes=self.config.max_envelope_bytes)
        except EnvelopeError as exc:
            self._log("stuf-bad-fo01", level=logging.WARNING,
                      message_id=message.message_id, reason=str(exc)[:200])  # fmt: skip
            return
        sg = fo01.stuurgegevens
        record_message(
            cur,
            _log_entry(
                StufDirection.IN,
                StufStatus.RECEIVED,
                sg,
                ebms_message_id=message.message_id,
                cpa_id=message.cpa_id,
                reason_code=fo01.code[:20],
                reason=fo01.omschrijving[:1000],
                size=len(data),
            ),
            now=self.clock(),
        )
        refused = [
            item
            for item in (
                query_log(cur, referentienummer=sg.cross_refnummer, limit=10)
                if sg.cross_refnummer
                else []
            )
            if item.referentienummer == sg.cross_refnummer and item.direction is StufDirection.OUT
        ]
        for item in refused:
            moved = update_status(cur, item.id, StufStatus.FAILED, reason_code=fo01.code[:20],
                                  reason=fo01.omschrijving[:1000], now=self.clock())  # fmt: skip
            ours = find_message(cur, item.ebms_message_id or "", Direction.OUT)
            if moved and ours is not None:
                # The back office learns it as ebms-core clients learn a failure:
                # a FAILED event on the message it sent.
                add_event(
                    cur,
                    ours.pk,
                    ours.message_id,
                    EventType.FAILED,
                    now=self.clock(),
                    error_code=fo01.code[:20],
                    error_text=fo01.omschrijving[:1000],
                )
        if not self.gemeente and self.config.provider_outbox is not None:
            # The node passes a gemeente's Fo01 on to the provider it concerns.
            name = f"{safe_name(sg.zender.organisatie)}-{safe_name(sg.referentienummer)}.xml"
            self._deliver_to_provider(sg.ontvanger.organisatie, name, data)
        self._log(
            "stuf-fo01",
            level=logging.WARNING,
            message_id=message.message_id,
            cross_ref=sg.cross_refnummer,
            code=fo01.code,
            refused=",".join(i.ebms_message_id or "?" for i in refused) or None,
        )

    # -- housekeeping -------------------------------------------------------------------

    def sync_statuses(self) -> int:
        """Carry ebMS outcomes (acknowledged, failed, expired) into the message log."""
        moved = 0
        with self.db.transaction() as cur:
            rows = cur.execute(
                "SELECT DISTINCT s.ebms_message_id, m.status FROM stuf_message s "
                "JOIN ebms_message m ON m.message_id = s.ebms_message_id AND m.direction = 'out' "
                "WHERE s.status = 'sent' AND "
                + in_states("m.status", OUTBOUND.table[OutboundStatus.CREATED].values())
                + " LIMIT 500"
            ).fetchall()
            for ebms_id, status in rows:
                try:
                    with cur.savepoint():
                        moved += self._apply_outcome(cur, str(ebms_id), str(status))
                except Exception as exc:
                    moved += self._fail_outcome(cur, str(ebms_id), str(status), exc)
        return moved

    def _apply_outcome(self, cur: Cursor, ebms_id: str, status: str) -> int:
        if status == OutboundStatus.DELIVERED:
            return mark_by_ebms_id(cur, ebms_id, StufStatus.DELIVERED, now=self.clock())
        return mark_by_ebms_id(
            cur, ebms_id, StufStatus.FAILED, reason_code=status[:20],
            reason=f"ebMS {status.lower().replace('_', ' ')}", now=self.clock(),
        )  # fmt: skip

    def _fail_outcome(self, cur: Cursor, ebms_id: str, status: str, exc: Exception) -> int:
        """An outcome that cannot be applied fails its log rows alone, with the reason."""
        reason = f"The ebMS outcome {status} could not be applied: {failure_reason(exc)}"
        try:
            with cur.savepoint():
                # Plain SQL: the guarded move is what just failed.
                cur.execute(
                    "UPDATE stuf_message SET status = ?, reason_code = ?, reason = ?, "
                    "updated_at = ? WHERE ebms_message_id = ? AND status = ?",
                    (StufStatus.FAILED.value, codes.RELAY_FAILED, reason[:1000],
                     to_db(self.clock()), ebms_id, StufStatus.SENT.value),
                )  # fmt: skip
                moved = max(cur.rowcount, 0)
        except Exception:
            log.exception("event=stuf-error ebms_message_id=%s", ebms_id)
            return 0
        self._log("stuf-outcome-failed", level=logging.ERROR, ebms_message_id=ebms_id,
                  reason=reason)  # fmt: skip
        return moved

    def detect_read(self) -> int:
        """Mark delivered items whose file the recipient has taken away as read."""
        base = self.config.inbox if self.gemeente else self.config.provider_outbox
        if base is None:
            return 0
        read = 0
        with self.db.transaction() as cur:
            rows = cur.execute(
                "SELECT id, file_name FROM stuf_message WHERE direction = 'in' "
                "AND status = 'delivered' AND file_name IS NOT NULL ORDER BY id LIMIT 1000"
            ).fetchall()
            for log_id, name in rows:
                try:
                    with cur.savepoint():
                        if _taken_away(base, str(name)):
                            read += int(
                                update_status(cur, int(log_id), StufStatus.READ, now=self.clock())
                            )
                except Exception as exc:
                    self._fail_delivered(cur, int(log_id), exc)
        return read

    def _fail_delivered(self, cur: Cursor, log_id: int, exc: Exception) -> None:
        """A delivered item whose file cannot be looked at fails alone, with the reason."""
        reason = f"Whether its file was taken away cannot be checked: {failure_reason(exc)}"
        try:
            with cur.savepoint():
                update_status(cur, log_id, StufStatus.FAILED, reason_code=codes.RELAY_FAILED,
                              reason=reason[:1000], now=self.clock())  # fmt: skip
        except Exception:
            log.exception("event=stuf-error log_id=%s", log_id)
            return
        self._log("stuf-read-failed", level=logging.ERROR, log_id=str(log_id), reason=reason)

    def purge(self) -> PurgeCounts:
        """Apply retention (``read_retention_hours``, ``max_age_days``)."""
        with self.db.transaction() as cur:
            counts = purge(
                cur,
                self.clock(),
                read_after=timedelta(hours=self.config.read_retention_hours),
                max_age=timedelta(days=self.config.max_age_days),
            )
        if counts.messages or counts.batches:
            self._log("stuf-purged", read=str(counts.read), expired=str(counts.expired),
                      batches=str(counts.batches))  # fmt: skip
        return counts

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


def _taken_away(base: Path, name: str) -> bool:
    """Whether the file ``name`` (under ``base``) is gone; raises when it cannot tell."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError("the stored file name is outside the folder")
    try:
        (base / name).stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    return False


def _log_entry(
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


def _systeem(s: Systeem) -> dict[str, Any]:
    return {k: v for k, v in s.__dict__.items() if v is not None}


def _bericht_id(env: Envelope) -> str | None:
    """The payload's BerichtIdentificatie/Identificatie (header only; never client data)."""
    if env.bestandsnaam is not None:
        return None
    m = re.search(rb"<(?:\w+:)?Identificatie>\s*([^<\s]{1,40})\s*<", env.payload[:65536])
    return m.group(1).decode("utf-8", "replace") if m else None


def _refusal_text(exc: SendError, cpa_id: str) -> str:
    """The relay's wording of a refusal by the MSH (a Fo01's text, docs/stuf.md)."""
    if exc.refusal is Refusal.NO_CPA:
        return f"CPA {cpa_id} is not imported"
    if exc.refusal in (Refusal.CANNOT_SEND, Refusal.CANNOT_RECEIVE):
        verb = "send" if exc.refusal is Refusal.CANNOT_SEND else "receive"
        return f"CPA {cpa_id}: {exc.party} cannot {verb} {exc.action}"
    return str(exc)


# -- the seam of ``dkgw upload`` (gateway.commands.stuf) ---------------------------------


def upload_handler(args: Any, session: Any) -> Callable[[str, bytes], Accepted | Rejected]:
    """The per-file handler of ``dkgw upload``: send each message through the relay."""
    from gateway.config import load_config
    from gateway.material.load import load_message_security

    if getattr(args, "config", None) is None:
        raise ValueError("dkgw upload needs --config (the gateway's [stuf] section)")
    config = load_config(args.config)
    if not config.stuf.role:
        raise ValueError(f"{args.config}: [stuf] role is not set")
    security = load_message_security(config)
    relay = Relay(
        session.db,
        CpaRegistry(session.db),
        config.stuf,
        security=security,
        own_parties=config.party_ids,
        node_id=session.node,
    )

    def handle(name: str, data: bytes) -> Accepted | Rejected:
        try:
            sent = relay.send(data, file_name=name, batch_id=session.batch_id,
                              record_refusal=False)  # fmt: skip
        except Refused as refused:
            sg = refused.envelope.stuurgegevens if refused.envelope else None
            return Rejected(
                refused.code,
                refused.reason,
                referentienummer=sg.referentienummer if sg else None,
                functie=sg.functie if sg else None,
                berichtcode=sg.berichtcode if sg else None,
                sender_org=sg.zender.organisatie if sg else None,
                receiver_org=sg.ontvanger.organisatie if sg else None,
            )
        return Accepted(sent.referentienummer, sent.functie)

    return handle
