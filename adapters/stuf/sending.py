"""The relay's sending side: from the back office, an upload, or a care provider.

At the gemeente a bare iWmo/iJw message (or an envelope) from the back office is
wrapped (:mod:`adapters.stuf.bare`), checked (:mod:`adapters.stuf.rules`), logged
and queued to the node over ``[stuf] cpa_id`` in one transaction; at the node
what a care provider sends is checked and routed by gemeentecode to that
gemeente's CPA.  A refusal is logged; at the node the provider gets an Fo01 in
its outbox folder.
"""

from __future__ import annotations

import logging

from adapters.filedrop.files import safe_name
from adapters.stuf import codes
from adapters.stuf.bare import BareError, BareMessage, read_bare, wrap_bare
from adapters.stuf.catalogue import message_type
from adapters.stuf.envelope import Envelope, wrap
from adapters.stuf.fo01 import fo01_for, parse_fo01
from adapters.stuf.relaybase import (
    BACK_OFFICE,
    GEMEENTECODE,
    NODE_SYSTEEM,
    Refused,
    RelayPart,
    Sent,
    bericht_id_of,
    is_envelope,
    log_row,
    verdict_reasons,
)
from adapters.stuf.rules import Role, check
from adapters.stuf.store import (
    StufDirection,
    StufStatus,
    record_message,
    reference_used,
    update_status,
)
from gateway.msh.service import SendError
from gateway.store.database import Cursor


class Sender(RelayPart):
    """Checks, logs and queues what this gateway sends into the chain."""

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
            raise Refused(first, verdict_reasons(verdict), env)
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
            if not GEMEENTECODE.fullmatch(gemeente):  # a retour to an aanbieder's heen
                gemeente, counterpart = counterpart, gemeente
        else:
            gemeente, counterpart = sg.ontvanger.organisatie, sg.zender.organisatie
            cpa_id = self._cpa_of(gemeente)
        log_id = record_message(
            cur,
            log_row(
                StufDirection.OUT,
                StufStatus.ACCEPTED,
                sg,
                gemeente=gemeente,
                counterpart=counterpart,
                bericht_id=bericht_id_of(env),
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

    def record_refusal(self, refused: Refused, data: bytes, *, file_name: str | None = None,
                       batch_id: int | None = None) -> None:  # fmt: skip
        """Log a refused message (its own transaction)."""
        sg = refused.envelope.stuurgegevens if refused.envelope else None
        with self.db.transaction() as cur:
            record_message(
                cur,
                log_row(
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
