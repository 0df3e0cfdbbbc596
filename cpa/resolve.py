"""Resolve a message's header keys against a CPA to the channels that govern it.

CPPA 2.0 §8.4: the sender's *send* channel (its ``CanSend`` binding for
the service and action) decides acknowledgement, duplicate elimination, sync
reply and signing; the receiver's *receive* channel (its ``CanReceive``
binding) gives the endpoint, server certificate and encryption.  MSH signals
(Acknowledgment, MessageError, Ping, ...) use ``OverrideMshActionBinding`` or
the party's ``defaultMshChannelId`` instead of a binding.

Failures raise :class:`ResolutionError` carrying the ebMS 2.0 error code and
location that an MSH returns for them (ebms-core's endpoint test cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from cpa.model import (
    ALWAYS,
    MSH_SERVICE,
    ActionBinding,
    Certificate,
    CollaborationRole,
    Cpa,
    DeliveryChannel,
    DigitalEnvelope,
    DocExchange,
    NonRepudiation,
    PartyId,
    PartyInfo,
    ReliableMessaging,
    Service,
    Transport,
)

#: ``isConfidential`` values that ask for message-level encryption.
PERSISTENT_CONFIDENTIALITY = frozenset({"persistent", "transient-and-persistent"})

ErrorCode = Literal["ValueNotRecognized", "Inconsistent", "NotSupported", "Unknown"]


class ResolutionError(LookupError):
    """The header keys do not resolve in the CPA.

    ``code``/``location``/``description`` are what an ebMS MessageError carries.
    """

    def __init__(self, code: ErrorCode, location: str, description: str) -> None:
        super().__init__(f"{code} at {location}: {description}")
        self.code = code
        self.location = location
        self.description = description


@dataclass(frozen=True)
class Channel:
    """A delivery channel of one party with everything it points at resolved."""

    party: PartyInfo
    channel: DeliveryChannel
    transport: Transport
    doc_exchange: DocExchange
    binding: ActionBinding | None  # None for MSH signals

    @property
    def endpoint(self) -> str | None:
        """The first ``allPurpose`` endpoint (DK: exactly one per party)."""
        for ep in self.transport.endpoints:
            if ep.type == "allPurpose":
                return ep.uri
        return self.transport.endpoints[0].uri if self.transport.endpoints else None

    def certificate(self, cert_id: str | None) -> Certificate | None:
        """A certificate of this channel's party by id."""
        return self.party.certificates.get(cert_id) if cert_id else None

    @property
    def client_certificate(self) -> Certificate | None:
        """The TLS client certificate this party presents when it sends."""
        sec = self.transport.client_security
        return self.certificate(sec.certificate_id if sec else None)

    @property
    def server_certificate(self) -> Certificate | None:
        """The TLS server certificate this party's endpoint presents."""
        sec = self.transport.server_security
        return self.certificate(sec.certificate_id if sec else None)


@dataclass(frozen=True)
class Route:
    """The effective agreement for one (from, to, service, action)."""

    cpa: Cpa
    service: Service
    action: str
    send: Channel
    receive: Channel

    @property
    def from_party(self) -> PartyInfo:
        """The sending party."""
        return self.send.party

    @property
    def to_party(self) -> PartyInfo:
        """The receiving party."""
        return self.receive.party

    @property
    def is_signal(self) -> bool:
        """True for MSH signals (Acknowledgment, MessageError, Ping, Pong, Status*)."""
        return self.send.binding is None

    @property
    def endpoint(self) -> str | None:
        """Where to POST the message: the receiver's endpoint."""
        return self.receive.endpoint

    @property
    def ack_requested(self) -> bool:
        """The sender's channel asks for an Acknowledgment (RM profiles)."""
        return self.send.channel.messaging.ack_requested == ALWAYS

    @property
    def ack_signature_requested(self) -> bool:
        """Acknowledgments must be signed (``ackSignatureRequested="always"``)."""
        return self.send.channel.messaging.ack_signature_requested == ALWAYS

    @property
    def duplicate_elimination(self) -> bool:
        """The header carries ``eb:DuplicateElimination``."""
        return self.send.channel.messaging.duplicate_elimination == ALWAYS

    @property
    def sync_reply_mode(self) -> str:
        """``none`` or ``mshSignalsOnly`` on Digikoppeling."""
        return self.send.channel.messaging.sync_reply_mode

    @property
    def signing(self) -> NonRepudiation | None:
        """Signature settings when the message must be signed, else None.

        ebms-core signs when the binding says ``isNonRepudiationRequired`` and
        the sender binding has ``SenderNonRepudiation``; signals follow the
        channel alone, since they have no binding.
        """
        sender = self.send.doc_exchange.sender
        nr = sender.non_repudiation if sender else None
        if nr is None:
            return None
        binding = self.send.binding
        if binding is not None and not binding.characteristics.is_non_repudiation_required:
            return None
        return nr

    @property
    def signing_certificate(self) -> Certificate | None:
        """The sender's signing certificate (verification key on receipt)."""
        nr = self.signing
        return self.send.certificate(nr.certificate_id) if nr else None

    @property
    def encryption(self) -> DigitalEnvelope | None:
        """Encryption settings when payloads must be encrypted, else None.

        Needs ``isConfidential`` persistent on the binding and a
        ``ReceiverDigitalEnvelope`` on the receiver (Koppelvlakstandaard ebMS2);
        signals are never encrypted.
        """
        binding = self.receive.binding
        receiver = self.receive.doc_exchange.receiver
        if binding is None or receiver is None or receiver.digital_envelope is None:
            return None
        if binding.characteristics.is_confidential not in PERSISTENT_CONFIDENTIALITY:
            return None
        return receiver.digital_envelope

    @property
    def encryption_certificate(self) -> Certificate | None:
        """The receiver's encryption certificate."""
        de = self.encryption
        return self.receive.certificate(de.certificate_id) if de else None

    @property
    def retries(self) -> int:
        """Resends after the first attempt (0 when not reliable)."""
        rm = self._sender_rm()
        return rm.retries or 0 if rm else 0

    @property
    def retry_interval(self) -> timedelta | None:
        """Time between attempts."""
        rm = self._sender_rm()
        return rm.retry_interval if rm else None

    @property
    def persist_duration(self) -> timedelta | None:
        """How long the receiver keeps the message id (duplicate elimination)."""
        receiver = self.receive.doc_exchange.receiver
        if receiver and receiver.persist_duration is not None:
            return receiver.persist_duration
        sender = self.send.doc_exchange.sender
        return sender.persist_duration if sender else None

    def _sender_rm(self) -> ReliableMessaging | None:
        sender = self.send.doc_exchange.sender
        return sender.reliable_messaging if sender else None

    @property
    def profile(self) -> str:
        """The Digikoppeling profile name: osb-be, osb-rm, with -s or -e."""
        return profile_name(
            reliable=self.ack_requested and self.duplicate_elimination,
            signed=self.signing is not None,
            encrypted=self.encryption is not None,
        )


def profile_name(*, reliable: bool, signed: bool, encrypted: bool) -> str:
    """Name the Digikoppeling profile (Koppelvlakstandaard ebMS2)."""
    base = "osb-rm" if reliable else "osb-be"
    if encrypted:
        return base + "-e"
    return base + "-s" if signed else base


def channel_of(party: PartyInfo, channel_id: str, binding: ActionBinding | None) -> Channel:
    """Resolve a channel id of ``party`` with its transport and doc exchange."""
    channel = party.channels.get(channel_id)
    if channel is None:
        raise ResolutionError("Unknown", "//Header/MessageHeader", "No DeliveryChannel found.")
    transport = party.transports.get(channel.transport_id)
    doc_exchange = party.doc_exchanges.get(channel.doc_exchange_id)
    if transport is None or doc_exchange is None:
        raise ResolutionError("Unknown", "//Header/MessageHeader", "No DeliveryChannel found.")
    return Channel(party, channel, transport, doc_exchange, binding)


def msh_channel(party: PartyInfo, action: str) -> Channel:
    """The channel a party uses for an MSH signal ``action`` (§6.2 step 3)."""
    channel_id = party.msh_overrides.get(action, party.default_msh_channel_id)
    return channel_of(party, channel_id, None)


def _find_binding(
    party: PartyInfo, role: str | None, service: Service, action: str, *, sends: bool
) -> ActionBinding | None:
    for collab in party.roles:
        if not _role_matches(collab, role, service):
            continue
        for binding in collab.can_send if sends else collab.can_receive:
            if binding.action == action:
                return binding
    return None


def _role_matches(collab: CollaborationRole, role: str | None, service: Service) -> bool:
    return (role is None or collab.role == role) and collab.service == service


def _party(cpa: Cpa, ids: list[PartyId] | tuple[PartyId, ...], side: str) -> PartyInfo:
    party = cpa.party_by_ids(ids)
    if party is None:
        raise ResolutionError(
            "Inconsistent", f"//Header/MessageHeader/{side}/PartyId", "Value not found."
        )
    return party


def resolve(
    cpa: Cpa,
    *,
    from_ids: list[PartyId] | tuple[PartyId, ...],
    from_role: str | None,
    to_ids: list[PartyId] | tuple[PartyId, ...],
    to_role: str | None,
    service: Service,
    action: str,
) -> Route:
    """Find the send and receive channels for a message (CPPA 2.0 §8.4).

    For business messages both roles must be given and match the CPA; for the
    MSH service roles are ignored (signals carry none).
    """
    sender = _party(cpa, from_ids, "From")
    receiver = _party(cpa, to_ids, "To")
    if sender is receiver:
        raise ResolutionError(
            "Inconsistent", "//Header/MessageHeader/To/PartyId", "From and To are the same party."
        )
    if service.value == MSH_SERVICE and service.type is None:
        return Route(
            cpa, service, action, msh_channel(sender, action), msh_channel(receiver, action)
        )
    if from_role is None:
        raise ResolutionError("Inconsistent", "//Header/MessageHeader/From/Role", "Invalid value.")
    if to_role is None:
        raise ResolutionError("Inconsistent", "//Header/MessageHeader/To/Role", "Invalid value.")
    send = _find_binding(sender, from_role, service, action, sends=True)
    receive = _find_binding(receiver, to_role, service, action, sends=False)
    if send is None or receive is None or not send.channel_ids or not receive.channel_ids:
        raise ResolutionError(
            "ValueNotRecognized", "//Header/MessageHeader/Action", "Value not found."
        )
    return Route(
        cpa,
        service,
        action,
        channel_of(sender, send.channel_ids[0], send),
        channel_of(receiver, receive.channel_ids[0], receive),
    )
