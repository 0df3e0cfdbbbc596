"""Plain data for an ebXML CPPA 2.0 Collaboration-Protocol Agreement.

Only what a Digikoppeling MSH acts on is modelled (CPPA 2.0).  The
objects are immutable and carry the source ``line`` of the element they came
from, so validation can point an operator at the exact place in the file.
References between elements (ChannelId → DeliveryChannel, certId →
Certificate, ...) stay as id strings; :mod:`cpa.resolve` follows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: ``MessagingCharacteristics`` values (CPPA 2.0 perMessageCharacteristics.type).
ALWAYS = "always"
NEVER = "never"
PER_MESSAGE = "perMessage"

#: The ebMS MSH service (ebMS 2.0 §3.1.4); signals use it without ``eb:type``.
MSH_SERVICE = "urn:oasis:names:tc:ebxml-msg:service"
TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"


#: CPA statuses under which messages may be exchanged (``proposed`` may not).
IN_FORCE_STATUSES = frozenset({"agreed", "signed"})


def in_force(status: str, start: datetime, end: datetime, when: datetime) -> bool:
    """True when a CPA with this status and period may carry a message at ``when``."""
    return status in IN_FORCE_STATUSES and start <= when <= end


@dataclass(frozen=True)
class PartyId:
    """An ``eb:PartyId``/``tns:PartyId``: a value and an optional type URI."""

    value: str
    type: str | None = None

    def key(self) -> str:
        """``type:value`` as ebms-core and its REST API spell a party id."""
        return f"{self.type}:{self.value}" if self.type else self.value


def parse_party(value: str) -> PartyId:
    """``urn:osb:oin:0000...`` (ebms-core's ``type:value``) or a bare id → PartyId.

    The type is everything before the last colon; an id without a colon is
    taken as an OIN, the Digikoppeling default [DK].
    """
    if ":" not in value:
        return PartyId(value, "urn:osb:oin")
    type_, _, ident = value.rpartition(":")
    return PartyId(ident, type_)


@dataclass(frozen=True)
class Service:
    """A ``Service`` with its optional ``type`` (``urn:osb:services`` on DK)."""

    value: str
    type: str | None = None

    def key(self) -> str:
        """``type:value``, the form ebms-core's APIs use."""
        return f"{self.type}:{self.value}" if self.type else self.value


@dataclass(frozen=True)
class Certificate:
    """A ``tns:Certificate``: its id and the DER bytes of its leaf, if present."""

    cert_id: str
    der: bytes | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class SecurityDetails:
    """A ``tns:SecurityDetails``: trust anchors named by certificate id."""

    security_id: str
    anchor_cert_ids: tuple[str, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class MessagingCharacteristics:
    """Per-channel ebMS behaviour; defaults are the CPPA 2.0 schema defaults."""

    sync_reply_mode: str = "none"
    ack_requested: str = PER_MESSAGE
    ack_signature_requested: str = PER_MESSAGE
    duplicate_elimination: str = PER_MESSAGE
    actor: str | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class DeliveryChannel:
    """A ``tns:DeliveryChannel``: a transport plus a document exchange."""

    channel_id: str
    transport_id: str
    doc_exchange_id: str
    messaging: MessagingCharacteristics
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class TransportSecurity:
    """``TransportClientSecurity`` or ``TransportServerSecurity``."""

    protocol: str
    protocol_version: str | None
    certificate_id: str | None
    security_details_id: str | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Endpoint:
    """A receiving endpoint URI with its ``type`` (``allPurpose`` on DK)."""

    uri: str
    type: str = "allPurpose"
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Transport:
    """A ``tns:Transport``: how this party sends and where it receives."""

    transport_id: str
    sender_protocol: str | None
    sender_protocol_version: str | None
    client_security: TransportSecurity | None
    receiver_protocol: str | None
    receiver_protocol_version: str | None
    endpoints: tuple[Endpoint, ...]
    server_security: TransportSecurity | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ReliableMessaging:
    """``tns:ReliableMessaging`` (ebMS 2.0 §6)."""

    retries: int | None
    retry_interval: timedelta | None
    message_order_semantics: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class NonRepudiation:
    """``SenderNonRepudiation``/``ReceiverNonRepudiation``: XML signature settings.

    ``certificate_id`` is the SigningCertificateRef (sender side);
    ``security_details_id`` the SigningSecurityDetailsRef (receiver side).
    """

    protocol: str
    hash_function: str
    signature_algorithm: str
    certificate_id: str | None
    security_details_id: str | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class DigitalEnvelope:
    """``SenderDigitalEnvelope``/``ReceiverDigitalEnvelope``: XML encryption settings.

    ``algorithm`` is the ``w3c`` attribute when present, else the element text.
    ``certificate_id`` is the EncryptionCertificateRef (receiver side).
    """

    protocol: str
    protocol_version: str | None
    algorithm: str
    minimum_strength: int | None
    certificate_id: str | None
    security_details_id: str | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class MessagingBinding:
    """``ebXMLSenderBinding`` or ``ebXMLReceiverBinding``."""

    version: str
    reliable_messaging: ReliableMessaging | None
    persist_duration: timedelta | None
    non_repudiation: NonRepudiation | None
    digital_envelope: DigitalEnvelope | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class DocExchange:
    """A ``tns:DocExchange`` with its sender and receiver bindings."""

    doc_exchange_id: str
    sender: MessagingBinding | None
    receiver: MessagingBinding | None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class BusinessTransactionCharacteristics:
    """The security-relevant attributes of ``BusinessTransactionCharacteristics``."""

    is_non_repudiation_required: bool = False
    is_non_repudiation_receipt_required: bool = False
    is_confidential: str | None = None
    is_authenticated: str | None = None
    is_tamper_proof: str | None = None
    is_authorization_required: bool = False
    is_intelligible_check_required: bool = False
    time_to_perform: timedelta | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ActionBinding:
    """A ``ThisPartyActionBinding`` inside ``CanSend`` or ``CanReceive``."""

    binding_id: str
    action: str
    package_id: str
    characteristics: BusinessTransactionCharacteristics
    channel_ids: tuple[str, ...]
    other_party_binding_id: str | None
    sends: bool
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class CollaborationRole:
    """One ``CollaborationRole``: a role played for one service."""

    role: str
    process_name: str
    service: Service
    can_send: tuple[ActionBinding, ...]
    can_receive: tuple[ActionBinding, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class PartyInfo:
    """One of the two parties of the agreement."""

    party_name: str
    party_ids: tuple[PartyId, ...]
    default_msh_channel_id: str
    default_msh_package_id: str
    roles: tuple[CollaborationRole, ...]
    certificates: Mapping[str, Certificate]
    security_details: Mapping[str, SecurityDetails]
    channels: Mapping[str, DeliveryChannel]
    transports: Mapping[str, Transport]
    doc_exchanges: Mapping[str, DocExchange]
    msh_overrides: Mapping[str, str]
    line: int = field(default=0, compare=False)

    def tls_client_certificates(self) -> tuple[bytes, ...]:
        """DER of every TLS client certificate this party's transports name.

        The certificate the party presents when it sends (docs/security.md).
        """
        ders = []
        for transport in self.transports.values():
            security = transport.client_security
            if security is None or security.certificate_id is None:
                continue
            cert = self.certificates.get(security.certificate_id)
            if cert is not None and cert.der is not None:
                ders.append(cert.der)
        return tuple(ders)

    def has_party_ids(self, ids: tuple[PartyId, ...] | list[PartyId]) -> bool:
        """True when every id in ``ids`` (non-empty) is one of this party's ids.

        A message header may list several PartyIds for one party; all must
        belong to the same PartyInfo (ebMS 2.0 §3.1.1, CPPA 2.0 §8.4).
        """
        return bool(ids) and all(i in self.party_ids for i in ids)

    def role_for(self, service: Service, action: str, *, sends: bool) -> str | None:
        """This party's role that sends (``sends``) or receives ``action`` of ``service``."""
        for role in self.roles:
            bindings = role.can_send if sends else role.can_receive
            if role.service == service and any(b.action == action for b in bindings):
                return role.role
        return None


@dataclass(frozen=True)
class Cpa:
    """A parsed Collaboration-Protocol Agreement."""

    cpa_id: str
    version: str | None
    status: str
    start: datetime
    end: datetime
    parties: tuple[PartyInfo, ...]
    has_conversation_constraints: bool = False
    #: Source lines of the top-level elements ("root", "Status", "Start", "End").
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)

    def party_by_ids(self, ids: tuple[PartyId, ...] | list[PartyId]) -> PartyInfo | None:
        """The PartyInfo holding all of ``ids``, or None."""
        for party in self.parties:
            if party.has_party_ids(ids):
                return party
        return None

    def service_by_key(self, key: str) -> Service | None:
        """The service whose ``type:value`` is ``key``, as ebms-core compares them.

        A service type may itself contain colons (``urn:osb:services``), so the
        string cannot be split without the CPA.
        """
        for party in self.parties:
            for role in party.roles:
                if role.service.key() == key:
                    return role.service
        return None

    def in_force(self, when: datetime) -> bool:
        """Agreed and ``when`` within the validity period (see :func:`in_force`)."""
        return in_force(self.status, self.start, self.end, when)

    def other_party(self, party: PartyInfo) -> PartyInfo:
        """The party that is not ``party`` (a CPA has exactly two)."""
        others = [p for p in self.parties if p is not party]
        if len(others) != 1:
            raise ValueError("a CPA has exactly two parties")
        return others[0]
