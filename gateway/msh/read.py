"""Read what an inbound decision needs from the store, in the decision's transaction.

The only module of the receiving side that reads the store before deciding:
it turns the CPA, the certificate mappings, an earlier copy of the message and
the messages a signal refers to into the values of :mod:`gateway.msh.facts`.
What it reads is chosen by the envelope alone; every judgement is left to
:mod:`gateway.msh.receive` and :mod:`gateway.msh.correlate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.ebms.envelope import Envelope
from gateway.ebms.model import SignalAction
from gateway.msh.ack_check import AckTrust, check_signed_ack, signed_ack_asked
from gateway.msh.correlate import acknowledges, referenced_id
from gateway.msh.facts import CertificateMap, Duplicate, InboundFacts, ReplyFacts
from gateway.msh.keys import MessageSecurity
from gateway.msh.replying import REPLY_ACTIONS
from gateway.msh.security import decrypted_fingerprint
from gateway.store.certmap import certificate_map
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    OutboundStatus,
    StoredMessage,
    correlation_of,
    find_message,
    find_reply,
    fingerprint,
)

__all__ = ["AckCheck", "AckVerifier", "read_inbound", "read_reply"]

#: Checks an acknowledgment before it settles our message: None, or why it may not
#: (:class:`AckVerifier`).  Given the ack's bytes.
AckCheck = Callable[[Cursor, StoredMessage, Envelope, bytes], "str | None"]


def read_reply(
    cur: Cursor,
    env: Envelope,
    *,
    body: bytes = b"",
    verify: AckCheck | None = None,
    stored_before: bool = False,
    correlation: bool = True,
) -> ReplyFacts:
    """The facts about a signal that answers one of our messages.

    ``verify`` runs only for an acknowledgment that would settle our message
    (ebMS 2.0 §6.3.2.5: a signed ack is checked before it counts).
    ``stored_before``: look for an earlier copy of the signal itself (a
    synchronous reply the partner repeated).  ``correlation``: read the
    referenced message's correlation id (for the inbound log line).
    """
    if stored_before and find_message(cur, env.header.message_id, Direction.IN) is not None:
        return ReplyFacts(duplicate=True)
    action = env.header.action
    if action not in (SignalAction.ACKNOWLEDGMENT.value, SignalAction.MESSAGE_ERROR.value):
        return ReplyFacts(correlation_id=_correlation(cur, env) if correlation else None)
    ref = referenced_id(env)
    ours = find_message(cur, ref, Direction.OUT) if ref else None
    refusal = None
    if (
        verify is not None
        and action == SignalAction.ACKNOWLEDGMENT.value
        and ours is not None
        and acknowledges(ours, env)
        and ours.status == OutboundStatus.CREATED.value
    ):
        refusal = verify(cur, ours, env, body)
    return ReplyFacts(ours, refusal, _correlation(cur, env) if correlation else None)


def _correlation(cur: Cursor, env: Envelope) -> str | None:
    ref = env.header.ref_to_message_id
    return correlation_of(cur, ref) if ref else None


def read_inbound(
    cur: Cursor,
    registry: CpaRegistry,
    env: Envelope,
    envelope: bytes,
    attachments: Sequence[AttachmentRecord],
    *,
    security: MessageSecurity | None,
    screened: bool = True,
) -> InboundFacts:
    """The facts for an inbound request.

    A signed acknowledgment is checked by the decision
    (:func:`~gateway.msh.ack_check.check_signed_ack`) with the CPA and mappings
    read here: it must be under the CPA of the message it acknowledges.

    ``screened`` false (an identifier was refused): only the CPA and the
    certificate mappings, because the message is answered without being looked up.
    """
    header = env.header
    try:
        cpa = registry.get_cpa(header.cpa_id, cur)
    except CpaNotFound:
        return InboundFacts(cpa=None)
    certificates = CertificateMap(certificate_map(cur, cpa.cpa_id))
    if not screened:
        return InboundFacts(cpa, certificates)
    known = find_message(cur, header.message_id, Direction.IN)
    if known is not None:
        identical = known.fingerprint == fingerprint(envelope, attachments) or (
            # An encrypted message is stored decrypted: compare the plaintext.
            known.fingerprint == decrypted_fingerprint(envelope, attachments, security)
        )
        reply = find_reply(cur, header.message_id, REPLY_ACTIONS) if identical else None
        return InboundFacts(cpa, certificates, Duplicate(identical, reply))
    ref = header.ref_to_message_id
    if header.is_signal:
        asked = None
        if header.action == SignalAction.STATUS_REQUEST.value and env.status_request is not None:
            asked = find_message(cur, env.status_request.ref_to_message_id, Direction.IN)
        signal = read_reply(cur, env)
        return InboundFacts(cpa, certificates, asked=asked, signal=signal)
    ref_known = not ref or (
        find_message(cur, ref, Direction.OUT) is not None
        or find_message(cur, ref, Direction.IN) is not None
    )
    return InboundFacts(cpa, certificates, ref_known=ref_known)


class AckVerifier:
    """Decides whether an acknowledgment of one of our messages may settle it.

    Called in the transaction that takes the acknowledgment in: reads the CPA
    and certificate mappings of ``ours``, then :func:`check_signed_ack`.
    """

    def __init__(self, registry: CpaRegistry, security: MessageSecurity | None) -> None:
        self.registry = registry
        self.security = security

    def read(self, cur: Cursor, ours: StoredMessage) -> AckTrust:
        """The facts :func:`check_signed_ack` needs about ``ours``."""
        try:
            cpa = self.registry.get_cpa(ours.cpa_id, cur)
        except LookupError as exc:
            return AckTrust(None, CertificateMap(), str(exc))
        return AckTrust(cpa, CertificateMap(certificate_map(cur, ours.cpa_id)))

    def __call__(self, cur: Cursor, ours: StoredMessage, ack: Envelope, body: bytes) -> str | None:
        """None when the ack is acceptable, else why it is not.

        The CPA is read only for a message that asked for a signed ack.
        """
        asked = signed_ack_asked(ours)
        if asked is not True:
            return asked or None
        return check_signed_ack(self.security, self.read(cur, ours), ours, ack, body)
