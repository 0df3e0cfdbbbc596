"""The relay's receiving side: what arrived over ebMS on the StUF CPAs.

* **gemeente role**, from the node: unwrapped and written to the ``[stuf] inbox``
  folder with a JSON sidecar; a payload that fails its XSD is answered with an
  Fo01 ``StUF055``; an Fo01 from the chain marks the message it refuses failed,
  with a FAILED event the back office sees.
* **node role**, from a gemeente: checked as the GGk checks it; refused with an
  Fo01 back over the same CPA, or routed to the care provider: written to
  ``provider_outbox/<AGB>/``.

Each message is one transaction: the log row (whose unique sender +
referentienummer is the duplicate check) and the ebMS message marked processed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.filedrop.files import atomic_write, ensure_folder, fsync_folder, safe_name
from adapters.stuf import codes
from adapters.stuf.catalogue import CATALOGUE, message_type
from adapters.stuf.envelope import Envelope, EnvelopeError, Systeem
from adapters.stuf.fo01 import fo01_for, parse_fo01
from adapters.stuf.relaybase import (
    GEMEENTECODE,
    NODE,
    NODE_SYSTEEM,
    RelayPart,
    bericht_id_of,
    failure_reason,
    is_fo01,
    log,
    log_row,
    verdict_reasons,
)
from adapters.stuf.rules import Role, Verdict, check
from adapters.stuf.store import (
    StufDirection,
    StufStatus,
    query_log,
    record_message,
    reference_used,
    update_status,
)
from gateway.msh.states import InboundStatus
from gateway.store.backoffice import process_message
from gateway.store.database import Cursor
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


class Receiver(RelayPart):
    """Relays the received ebMS messages of the StUF CPAs."""

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
            log_row(
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
            self._reject_inbound(cur, message, data, code, verdict_reasons(verdict), verdict)
            return
        sg = env.stuurgegevens
        entry = log_row(
            StufDirection.IN,
            StufStatus.RECEIVED,
            sg,
            bericht_id=bericht_id_of(env),
            ebms_message_id=message.message_id,
            cpa_id=message.cpa_id,
            size=len(data),
        )
        # A referentienummer is unique per sender only: the sender is in the name.
        stem = f"{safe_name(sg.zender.organisatie)}-{safe_name(sg.referentienummer)}"
        if self.gemeente:
            gemeente, counterpart = sg.ontvanger.organisatie, sg.zender.organisatie
            if not GEMEENTECODE.fullmatch(gemeente):
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

    def _reject_inbound(self, cur: Cursor, message: StoredMessage, data: bytes, code: str,
                        reason: str, verdict: Verdict | None = None) -> None:  # fmt: skip
        env = verdict.envelope if verdict else None
        sg = env.stuurgegevens if env else None
        record_message(
            cur,
            log_row(
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
                # here, not the sender's: no Fo01 (docs/stuf.md, rule 8).
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
            log_row(
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


def _systeem(s: Systeem) -> dict[str, Any]:
    return {k: v for k, v in s.__dict__.items() if v is not None}
