"""Import-time validation of a CPA, with findings an operator can act on.

Runs in three layers and reports every problem it finds, not just the first:

1. the document: safe XML, CPPA 2.0 schema (:mod:`cpa.parse`);
2. the agreement: status, validity period, two parties, references between
   elements, roles, services and actions (CPPA 2.0; docs/decisions.md, ebms-core's
   CPAValidator);
3. Digikoppeling: HTTPS endpoints, two-way TLS, channel settings that form one
   of the six profiles (§2.2), algorithms and certificates (§5).

Errors refuse the import; warnings are shown and the CPA is accepted.  Each
finding names the element (a readable path) and its source line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from cryptography import x509

from cpa.certificates import CertificateFacts, facts, load_der
from cpa.model import (
    ALWAYS,
    NEVER,
    NEXT_MSH,
    TO_PARTY_MSH,
    ActionBinding,
    Certificate,
    CollaborationRole,
    Cpa,
    DeliveryChannel,
    PartyInfo,
)
from cpa.parse import NS, CpaReadError, build_cpa, read_document
from cpa.resolve import PERSISTENT_CONFIDENTIALITY, ResolutionError, Route, resolve

Severity = Literal["error", "warning"]

XMLDSIG = "http://www.w3.org/2000/09/xmldsig#"

#: Digest and signature algorithms by how Digikoppeling treats them [DK SIGN001-004].
DIGESTS_OK = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)
DIGESTS_LEGACY = frozenset(
    {
        "http://www.w3.org/2000/09/xmldsig#sha1",
        "http://www.w3.org/2001/04/xmldsig-more#sha224",
    }
)
SIGNATURES_OK = frozenset(
    {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    }
)
SIGNATURES_LEGACY = frozenset({"http://www.w3.org/2000/09/xmldsig#rsa-sha1"})
#: Data encryption [DK ENC001-004]: GCM required; CBC and 3DES only for legacy partners.
ENCRYPTION_OK = frozenset(
    {
        "http://www.w3.org/2009/xmlenc11#aes128-gcm",
        "http://www.w3.org/2009/xmlenc11#aes192-gcm",
        "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    }
)
ENCRYPTION_LEGACY = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
        "http://www.w3.org/2001/04/xmlenc#aes192-cbc",
        "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
        "http://www.w3.org/2001/04/xmlenc#tripledes-cbc",
    }
)

#: More resends than this is a typo, not a reliability setting (DK-BP uses 8).
MAX_RETRIES = 1000
ZERO = timedelta(0)

_OIN_PARTY_ID = re.compile(r"^\d{20}(_[OTA]{1,3})?$")
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, where (element path and line) and what."""

    severity: Severity
    location: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{self.severity}: {where}{self.location}: {self.message}"


@dataclass(frozen=True)
class ActionProfile:
    """Which Digikoppeling profile one action of the CPA follows."""

    from_party: str
    from_role: str
    to_party: str
    to_role: str
    service: str
    action: str
    profile: str
    endpoint: str | None


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_cpa`."""

    cpa: Cpa | None
    findings: list[Finding] = field(default_factory=list)
    actions: list[ActionProfile] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Findings that refuse the import."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that are reported but accepted."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when the CPA may be imported."""
        return self.cpa is not None and not self.errors

    @property
    def profiles(self) -> list[str]:
        """The distinct profiles used, in a stable order."""
        return sorted({a.profile for a in self.actions})


@dataclass(frozen=True)
class ValidationOptions:
    """Switches that relax Digikoppeling rules for tests and legacy partners."""

    allow_insecure: bool = False  # plain http endpoints (tests only)
    legacy_crypto: bool = False  # SHA-1, RSA-SHA1, AES-CBC, 3DES as found in old CPAs
    now: datetime | None = None  # the clock, for tests


def validate_cpa(xml: bytes, options: ValidationOptions | None = None) -> ValidationReport:
    """Validate CPA bytes and report every finding plus the profile of each action."""
    opts = options or ValidationOptions()
    try:
        tree = read_document(xml)
        cpa = build_cpa(tree)
    except CpaReadError as exc:
        return ValidationReport(
            None, [Finding("error", "document", p.message, p.line) for p in exc.problems]
        )
    except ValueError as exc:  # a value the schema admits but we cannot read (e.g. a date)
        return ValidationReport(None, [Finding("error", "document", str(exc))])
    package_ids = {
        el.get(f"{{{NS['tns']}}}id") for el in tree.getroot().findall("tns:Packaging", NS)
    }
    checker = _Checker(cpa, opts, {p for p in package_ids if p})
    checker.run()
    return ValidationReport(cpa, checker.findings, checker.actions)


def _party_path(party: PartyInfo) -> str:
    return f"PartyInfo[@partyName='{party.party_name}']"


class _Checker:
    """Collects findings for one CPA; one method per rule family."""

    def __init__(self, cpa: Cpa, opts: ValidationOptions, package_ids: set[str]) -> None:
        self.cpa = cpa
        self.opts = opts
        self.now = opts.now or datetime.now(UTC)
        self.package_ids = package_ids
        self.findings: list[Finding] = []
        self.actions: list[ActionProfile] = []
        self._parsed: dict[tuple[str, str], CertificateFacts | None] = {}

    def error(self, location: str, message: str, line: int | None = None) -> None:
        self.findings.append(Finding("error", location, message, line or None))

    def warn(self, location: str, message: str, line: int | None = None) -> None:
        self.findings.append(Finding("warning", location, message, line or None))

    def run(self) -> None:
        self.check_agreement()
        if len(self.cpa.parties) != 2:
            self.error(
                "CollaborationProtocolAgreement/PartyInfo",
                f"a CPA must have exactly two PartyInfo elements, found {len(self.cpa.parties)}",
            )
            return
        for party in self.cpa.parties:
            self.check_party(party)
        self.check_party_ids_distinct()
        for party in self.cpa.parties:
            self.check_certificates(party)
            self.check_bindings(party)
            self.check_channels(party)
        self.check_routes()

    # -- agreement -----------------------------------------------------------

    def check_agreement(self) -> None:
        cpa, where = self.cpa, "CollaborationProtocolAgreement"
        line = cpa.lines.get
        if cpa.status == "proposed":
            self.error(
                f"{where}/Status/@value",
                "status is 'proposed'; only an agreed CPA may be used",
                line("Status"),
            )
        elif cpa.status not in ("agreed", "signed"):
            self.error(f"{where}/Status/@value", f"unknown status {cpa.status!r}", line("Status"))
        if cpa.start >= cpa.end:
            self.error(
                f"{where}/End",
                f"End {cpa.end:%Y-%m-%d %H:%M:%SZ} is not after "
                f"Start {cpa.start:%Y-%m-%d %H:%M:%SZ}",
                line("End"),
            )
        elif cpa.end <= self.now:
            self.error(
                f"{where}/End", f"the CPA expired on {cpa.end:%Y-%m-%d %H:%M:%SZ}", line("End")
            )
        elif cpa.start > self.now:
            self.warn(
                f"{where}/Start",
                f"the CPA is not valid before {cpa.start:%Y-%m-%d %H:%M:%SZ}",
                line("Start"),
            )
        if _WHITESPACE.search(cpa.cpa_id):
            self.error(f"{where}/@cpaid", "the CPA id contains whitespace", line("root"))
        if cpa.has_conversation_constraints:
            self.warn(
                f"{where}/ConversationConstraints",
                "not supported; ignored",
                line("ConversationConstraints"),
            )

    # -- parties -------------------------------------------------------------

    def check_party(self, party: PartyInfo) -> None:
        where = _party_path(party)
        for pid in party.party_ids:
            loc = f"{where}/PartyId[.='{pid.value}']"
            if not pid.value:
                self.error(loc, "empty PartyId", party.line)
            elif pid.type is None and ":" not in pid.value:
                # ebMS 2.0 §3.1.1.1: an untyped PartyId must be a URI.
                self.error(loc, "PartyId has no type, so its value must be a URI", party.line)
            elif pid.type == "urn:osb:oin" and not _OIN_PARTY_ID.match(pid.value):
                self.warn(
                    loc,
                    "an urn:osb:oin PartyId should be a 20-digit OIN "
                    "(optionally with an _O/_T/_A suffix)",
                    party.line,
                )
        names = {r.role for r in party.roles}
        if len(names) > 1:
            self.error(
                f"{where}/CollaborationRole/Role",
                f"a party plays one role per CPA on Digikoppeling, found {sorted(names)}",
                party.line,
            )
        for collab in party.roles:
            self.check_names(party, collab)
        if party.default_msh_channel_id not in party.channels:
            self.error(
                f"{where}/@defaultMshChannelId",
                f"{party.default_msh_channel_id!r} is not a DeliveryChannel of this party",
                party.line,
            )
        if party.default_msh_package_id not in self.package_ids:
            self.error(
                f"{where}/@defaultMshPackageId",
                f"{party.default_msh_package_id!r} is not a Packaging id",
                party.line,
            )
        for action, channel_id in party.msh_overrides.items():
            if channel_id not in party.channels:
                self.error(
                    f"{where}/OverrideMshActionBinding[@action='{action}']",
                    f"{channel_id!r} is not a DeliveryChannel of this party",
                    party.line,
                )

    def check_names(self, party: PartyInfo, collab: CollaborationRole) -> None:
        where = f"{_party_path(party)}/CollaborationRole"
        checks = [("Role/@name", collab.role), ("ServiceBinding/Service", collab.service.value)]
        checks += [
            (f"ThisPartyActionBinding[@id='{b.binding_id}']/@action", b.action)
            for b in (*collab.can_send, *collab.can_receive)
        ]
        for path, value in checks:
            if _WHITESPACE.search(value):
                self.error(f"{where}/{path}", f"{value!r} contains whitespace [DK]", collab.line)
        service = collab.service
        if service.type is None and ":" not in service.value:
            self.error(
                f"{where}/ServiceBinding/Service",
                "Service has no type, so its value must be a URI",
                collab.line,
            )

    def check_party_ids_distinct(self) -> None:
        a, b = self.cpa.parties
        shared = set(a.party_ids) & set(b.party_ids)
        for pid in shared:
            self.error("PartyInfo/PartyId", f"{pid.key()} is listed for both parties")

    # -- certificates --------------------------------------------------------

    def cert_facts(self, party: PartyInfo, cert: Certificate) -> CertificateFacts | None:
        key = (party.party_name, cert.cert_id)
        if key not in self._parsed:
            parsed: CertificateFacts | None = None
            if cert.der:
                try:
                    parsed = facts(load_der(cert.der))
                except ValueError:
                    parsed = None
            self._parsed[key] = parsed
        return self._parsed[key]

    def check_certificates(self, party: PartyInfo) -> None:
        oins = {p.value[:20] for p in party.party_ids if p.type == "urn:osb:oin"}
        for cert in party.certificates.values():
            loc = f"{_party_path(party)}/Certificate[@certId='{cert.cert_id}']"
            if cert.der is None:
                continue  # only a KeyValue; an error only where it is used (see _cert_ref)
            info = self.cert_facts(party, cert)
            if info is None:
                self.error(loc, "X509Certificate is not a valid base64 DER certificate", cert.line)
                continue
            if info.not_after < self.now:
                self.error(
                    loc,
                    f"certificate expired on {info.not_after:%Y-%m-%d} ({info.subject})",
                    cert.line,
                )
            elif info.not_before > self.now:
                self.error(
                    loc,
                    f"certificate is not valid before {info.not_before:%Y-%m-%d} ({info.subject})",
                    cert.line,
                )
            elif info.not_after < self.cpa.end:
                self.warn(
                    loc,
                    f"certificate expires on {info.not_after:%Y-%m-%d}, before the "
                    f"CPA ends on {self.cpa.end:%Y-%m-%d}",
                    cert.line,
                )
            if info.oin and oins and info.oin not in oins:
                # DK-BP EB014 allows a gateway's certificate to serve other party ids,
                # so this is a warning; the runtime policy decides.
                self.warn(
                    loc,
                    f"certificate OIN {info.oin} differs from the party's "
                    f"OIN {', '.join(sorted(oins))}",
                    cert.line,
                )

    def _cert_ref(
        self, party: PartyInfo, cert_id: str | None, loc: str, purpose: str, line: int
    ) -> None:
        if cert_id is None:
            self.error(loc, f"no {purpose} certificate referenced", line)
            return
        cert = party.certificates.get(cert_id)
        if cert is None:
            self.error(
                loc, f"{purpose} certificate {cert_id!r} is not a Certificate of this party", line
            )
        elif not cert.der:
            self.error(loc, f"{purpose} certificate {cert_id!r} has no X509Certificate", line)

    # -- action bindings -----------------------------------------------------

    def check_bindings(self, party: PartyInfo) -> None:
        other = self.cpa.other_party(party)
        other_bindings = {
            b.binding_id: b for r in other.roles for b in (*r.can_send, *r.can_receive)
        }
        for collab in party.roles:
            for binding in (*collab.can_send, *collab.can_receive):
                self.check_binding(party, collab, binding, other, other_bindings)

    def check_binding(
        self,
        party: PartyInfo,
        collab: CollaborationRole,
        binding: ActionBinding,
        other: PartyInfo,
        other_bindings: dict[str, ActionBinding],
    ) -> None:
        kind = "CanSend" if binding.sends else "CanReceive"
        loc = (
            f"{_party_path(party)}/CollaborationRole/ServiceBinding/{kind}/"
            f"ThisPartyActionBinding[@id='{binding.binding_id}']"
        )
        if not binding.channel_ids:
            self.error(loc, "no ChannelId", binding.line)
        for channel_id in binding.channel_ids:
            if channel_id not in party.channels:
                self.error(
                    f"{loc}/ChannelId",
                    f"{channel_id!r} is not a DeliveryChannel of this party",
                    binding.line,
                )
        if len(binding.channel_ids) > 1:
            self.warn(
                f"{loc}/ChannelId",
                f"{len(binding.channel_ids)} channels; the first, "
                f"{binding.channel_ids[0]!r}, is used",
                binding.line,
            )
        if binding.package_id not in self.package_ids:
            self.error(
                f"{loc}/@packageId", f"{binding.package_id!r} is not a Packaging id", binding.line
            )
        if binding.other_party_binding_id is not None:
            target = other_bindings.get(binding.other_party_binding_id)
            if target is None:
                self.error(
                    f"{loc}/../OtherPartyActionBinding",
                    f"{binding.other_party_binding_id!r} is not an action binding of "
                    f"{other.party_name!r}",
                    binding.line,
                )
            elif target.action != binding.action or target.sends == binding.sends:
                self.error(
                    f"{loc}/../OtherPartyActionBinding",
                    f"{binding.other_party_binding_id!r} is not the "
                    f"{'CanReceive' if binding.sends else 'CanSend'} binding for action "
                    f"{binding.action!r}",
                    binding.line,
                )
        counterpart = [
            b
            for r in other.roles
            if r.service == collab.service
            for b in (r.can_receive if binding.sends else r.can_send)
            if b.action == binding.action
        ]
        if not counterpart:
            self.error(
                loc,
                f"{other.party_name!r} has no "
                f"{'CanReceive' if binding.sends else 'CanSend'} for service "
                f"{collab.service.key()!r} action {binding.action!r}",
                binding.line,
            )
        btc = binding.characteristics
        if btc.is_intelligible_check_required or (
            btc.is_non_repudiation_receipt_required and not btc.is_non_repudiation_required
        ):
            self.warn(
                loc,
                "business signals (receipt/intelligibility checks) are not supported; ignored",
                btc.line,
            )

    # -- delivery channels ---------------------------------------------------

    def channels_in_use(self, party: PartyInfo) -> Iterator[tuple[DeliveryChannel, bool]]:
        """(channel, carries business messages) for every channel something refers to."""
        business = {
            cid
            for r in party.roles
            for b in (*r.can_send, *r.can_receive)
            for cid in b.channel_ids[:1]
        }
        msh = {party.default_msh_channel_id, *party.msh_overrides.values()}
        for channel_id, channel in party.channels.items():
            if channel_id in business or channel_id in msh:
                yield channel, channel_id in business

    def check_channels(self, party: PartyInfo) -> None:
        for channel, business in self.channels_in_use(party):
            self.check_channel(party, channel, business)

    def check_channel(self, party: PartyInfo, channel: DeliveryChannel, business: bool) -> None:
        loc = f"{_party_path(party)}/DeliveryChannel[@channelId='{channel.channel_id}']"
        mc = channel.messaging
        mc_loc = f"{loc}/MessagingCharacteristics"
        transport = party.transports.get(channel.transport_id)
        if transport is None:
            self.error(
                f"{loc}/@transportId",
                f"{channel.transport_id!r} is not a Transport of this party",
                channel.line,
            )
        else:
            self.check_transport(party, channel, transport.transport_id)
        doc = party.doc_exchanges.get(channel.doc_exchange_id)
        if doc is None:
            self.error(
                f"{loc}/@docExchangeId",
                f"{channel.doc_exchange_id!r} is not a DocExchange of this party",
                channel.line,
            )
        if mc.sync_reply_mode not in ("none", "mshSignalsOnly"):
            self.error(
                f"{mc_loc}/@syncReplyMode",
                f"{mc.sync_reply_mode!r} is not allowed on "
                "Digikoppeling; use 'none' or 'mshSignalsOnly' (§2.4)",
                mc.line,
            )
        for attr, value in (
            ("ackRequested", mc.ack_requested),
            ("duplicateElimination", mc.duplicate_elimination),
            ("ackSignatureRequested", mc.ack_signature_requested),
        ):
            if value not in (ALWAYS, NEVER):
                self.error(
                    f"{mc_loc}/@{attr}",
                    f"{value!r} is not a Digikoppeling setting; use 'always' or 'never'",
                    mc.line,
                )
        if mc.actor == NEXT_MSH:
            self.error(
                f"{mc_loc}/@actor",
                "nextMSH acknowledgments are not supported on "
                "Digikoppeling (multi-hop is not used)",
                mc.line,
            )
        elif mc.actor not in (None, TO_PARTY_MSH):
            self.error(f"{mc_loc}/@actor", f"unknown actor {mc.actor!r}", mc.line)
        reliable = mc.ack_requested == ALWAYS
        if business and {mc.ack_requested, mc.duplicate_elimination} == {ALWAYS, NEVER}:
            self.error(
                mc_loc,
                "ackRequested and duplicateElimination must both be 'always' "
                "(osb-rm) or both 'never' (osb-be)",
                mc.line,
            )
        if business and mc.sync_reply_mode == "mshSignalsOnly" and not reliable:
            self.error(
                f"{mc_loc}/@syncReplyMode",
                "mshSignalsOnly is only allowed on reliable (osb-rm) channels [DK EB015]",
                mc.line,
            )
        if mc.ack_signature_requested == ALWAYS and not reliable:
            self.warn(
                f"{mc_loc}/@ackSignatureRequested",
                "signed acknowledgments requested on a channel that requests no acknowledgments",
                mc.line,
            )
        if doc is None:
            return
        dx = f"{_party_path(party)}/DocExchange[@docExchangeId='{doc.doc_exchange_id}']"
        sender = doc.sender
        if business and reliable:
            rm = sender.reliable_messaging if sender else None
            if rm is not None and rm.retries is not None and not 0 <= rm.retries <= MAX_RETRIES:
                self.error(
                    f"{dx}/ebXMLSenderBinding/ReliableMessaging/Retries",
                    f"Retries {rm.retries} is outside 0..{MAX_RETRIES}",
                    rm.line,
                )
                return
            if rm is not None and rm.retry_interval is not None and rm.retry_interval <= ZERO:
                self.error(
                    f"{dx}/ebXMLSenderBinding/ReliableMessaging/RetryInterval",
                    "RetryInterval must be positive",
                    rm.line,
                )
                return
            if rm is not None and rm.retries is not None and rm.retry_interval is not None:
                try:
                    # The sender's TimeToLive: Timestamp + RetryInterval x (Retries + 1).
                    self.now + rm.retry_interval * (rm.retries + 1)
                except OverflowError:
                    self.error(
                        f"{dx}/ebXMLSenderBinding/ReliableMessaging/RetryInterval",
                        f"RetryInterval x (Retries + 1) ends after the year 9999 "
                        f"(RetryInterval {rm.retry_interval.days} days, Retries {rm.retries})",
                        rm.line,
                    )
                    return
            if rm is None or rm.retries is None or rm.retry_interval is None:
                self.error(
                    f"{dx}/ebXMLSenderBinding/ReliableMessaging",
                    "a reliable channel needs Retries and RetryInterval",
                    doc.line,
                )
            elif rm.message_order_semantics == "Guaranteed":
                self.warn(
                    dx,
                    "Guaranteed message order is not supported; messages are delivered "
                    "NotGuaranteed",
                    rm.line,
                )
            persist = sender.persist_duration if sender else None
            if persist is None:
                self.error(
                    f"{dx}/ebXMLSenderBinding/PersistDuration",
                    "a reliable channel needs a PersistDuration",
                    doc.line,
                )
            elif rm and rm.retry_interval is not None and rm.retries is not None:
                # The last resend leaves Retries x RetryInterval after the first
                # attempt; a receiver that forgets the id sooner could deliver it twice.
                window = rm.retry_interval * rm.retries
                if persist < window:
                    self.warn(
                        f"{dx}/ebXMLSenderBinding/PersistDuration",
                        f"PersistDuration {persist} is shorter than the retry window "
                        f"{window} (Retries x RetryInterval); partners that purge "
                        "message ids after PersistDuration may deliver a resend twice",
                        doc.line,
                    )
        nr = sender.non_repudiation if sender else None
        if nr is not None:
            nr_loc = f"{dx}/ebXMLSenderBinding/SenderNonRepudiation"
            if nr.protocol != XMLDSIG:
                self.error(
                    f"{nr_loc}/NonRepudiationProtocol",
                    f"{nr.protocol!r} is not XML Signature",
                    nr.line,
                )
            self.check_algorithm(
                f"{nr_loc}/HashFunction",
                nr.hash_function,
                DIGESTS_OK,
                DIGESTS_LEGACY,
                "digest",
                nr.line,
            )
            self.check_algorithm(
                f"{nr_loc}/SignatureAlgorithm",
                nr.signature_algorithm,
                SIGNATURES_OK,
                SIGNATURES_LEGACY,
                "signature",
                nr.line,
            )
            self._cert_ref(
                party, nr.certificate_id, f"{nr_loc}/SigningCertificateRef", "signing", nr.line
            )
        de = doc.receiver.digital_envelope if doc.receiver else None
        if de is not None:
            de_loc = f"{dx}/ebXMLReceiverBinding/ReceiverDigitalEnvelope"
            if de.protocol.upper() != "XMLENC":
                self.error(
                    f"{de_loc}/DigitalEnvelopeProtocol", f"{de.protocol!r} is not XMLENC", de.line
                )
            self.check_algorithm(
                f"{de_loc}/EncryptionAlgorithm",
                de.algorithm,
                ENCRYPTION_OK,
                ENCRYPTION_LEGACY,
                "encryption",
                de.line,
            )
            self._cert_ref(
                party,
                de.certificate_id,
                f"{de_loc}/EncryptionCertificateRef",
                "encryption",
                de.line,
            )

    def check_algorithm(
        self, loc: str, alg: str, ok: frozenset[str], legacy: frozenset[str], what: str, line: int
    ) -> None:
        if alg in ok:
            return
        if alg in legacy:
            if self.opts.legacy_crypto:
                self.warn(loc, f"legacy {what} algorithm {alg} accepted (legacy_crypto)", line)
            else:
                self.error(
                    loc,
                    f"{what} algorithm {alg} is below the Digikoppeling minimum; "
                    "accept it only with the legacy crypto switch",
                    line,
                )
        else:
            self.error(loc, f"unsupported {what} algorithm {alg!r}", line)

    def check_transport(
        self, party: PartyInfo, channel: DeliveryChannel, transport_id: str
    ) -> None:
        key = (party.party_name, f"transport:{transport_id}")
        if key in self._parsed:
            return  # several channels share one transport; report it once
        self._parsed[key] = None
        transport = party.transports[transport_id]
        loc = f"{_party_path(party)}/Transport[@transportId='{transport_id}']"
        line = transport.line
        for side, proto in (
            ("TransportSender", transport.sender_protocol),
            ("TransportReceiver", transport.receiver_protocol),
        ):
            if proto is not None and proto.upper() != "HTTP":
                self.error(
                    f"{loc}/{side}/TransportProtocol",
                    f"{proto!r}: Digikoppeling ebMS runs over HTTP(S) only",
                    line,
                )
        client = transport.client_security
        # Without TLS settings the transport is plain http: acceptable only where
        # insecure endpoints are (tests), and then the endpoint check warns.
        missing = self.warn if self.opts.allow_insecure else self.error
        if client is None:
            missing(
                f"{loc}/TransportSender/TransportClientSecurity",
                "two-way TLS is mandatory: no TransportClientSecurity [DK TLS001]",
                line,
            )
        else:
            self.check_tls_protocol(
                f"{loc}/TransportSender/TransportClientSecurity",
                client.protocol,
                client.protocol_version,
                client.line,
            )
            self._cert_ref(
                party,
                client.certificate_id,
                f"{loc}/TransportSender/TransportClientSecurity/ClientCertificateRef",
                "TLS client",
                client.line,
            )
        server = transport.server_security
        if server is None:
            missing(
                f"{loc}/TransportReceiver/TransportServerSecurity",
                "HTTPS is mandatory: no TransportServerSecurity",
                line,
            )
        else:
            self.check_tls_protocol(
                f"{loc}/TransportReceiver/TransportServerSecurity",
                server.protocol,
                server.protocol_version,
                server.line,
            )
            self._cert_ref(
                party,
                server.certificate_id,
                f"{loc}/TransportReceiver/TransportServerSecurity/ServerCertificateRef",
                "TLS server",
                server.line,
            )
        self.check_endpoints(party, transport_id, loc)

    def check_tls_protocol(self, loc: str, protocol: str, version: str | None, line: int) -> None:
        if protocol.upper() == "TLS":
            return
        if protocol.upper() == "SSL":
            self.warn(
                f"{loc}/TransportSecurityProtocol",
                f"declares SSL {version or ''}".strip()
                + "; the gateway speaks TLS 1.2 or 1.3 regardless [DK TLS003]",
                line,
            )
        else:
            self.error(f"{loc}/TransportSecurityProtocol", f"{protocol!r} is not TLS", line)

    def check_endpoints(self, party: PartyInfo, transport_id: str, loc: str) -> None:
        transport = party.transports[transport_id]
        endpoints = transport.endpoints
        if not endpoints:
            self.error(f"{loc}/TransportReceiver/Endpoint", "no endpoint", transport.line)
            return
        if len(endpoints) > 1:
            self.warn(
                f"{loc}/TransportReceiver/Endpoint",
                f"{len(endpoints)} endpoints; the first allPurpose one is used",
                transport.line,
            )
        for ep in endpoints:
            ep_loc = f"{loc}/TransportReceiver/Endpoint[@uri='{ep.uri}']"
            try:
                url = urlsplit(ep.uri)
                port = url.port
            except ValueError:
                self.error(ep_loc, "not a valid URL", ep.line)
                continue
            if url.scheme == "http" and self.opts.allow_insecure:
                self.warn(
                    ep_loc,
                    "plain http endpoint accepted because insecure endpoints are "
                    "allowed (tests only)",
                    ep.line,
                )
            elif url.scheme != "https":
                self.error(ep_loc, "Digikoppeling requires an https endpoint", ep.line)
            if not url.hostname:
                self.error(ep_loc, "the endpoint URL has no host", ep.line)
            elif url.scheme == "https" and port not in (None, 443):
                self.warn(ep_loc, f"port {port}; Digikoppeling expects 443 [DK TLS005]", ep.line)
            if ep.type != "allPurpose":
                self.warn(
                    ep_loc, f"endpoint type {ep.type!r}; Digikoppeling uses allPurpose", ep.line
                )

    # -- routes and profiles -------------------------------------------------

    def check_routes(self) -> None:
        for party in self.cpa.parties:
            other = self.cpa.other_party(party)
            for collab in party.roles:
                for binding in collab.can_send:
                    for target in other.roles:
                        if target.service != collab.service or not any(
                            b.action == binding.action for b in target.can_receive
                        ):
                            continue
                        self.check_route(party, collab, other, target, binding)

    def check_route(
        self,
        party: PartyInfo,
        collab: CollaborationRole,
        other: PartyInfo,
        target: CollaborationRole,
        binding: ActionBinding,
    ) -> None:
        try:
            route = resolve(
                self.cpa,
                from_ids=party.party_ids,
                from_role=collab.role,
                to_ids=other.party_ids,
                to_role=target.role,
                service=collab.service,
                action=binding.action,
            )
        except ResolutionError:
            return  # the broken reference is already reported by check_binding/check_channel
        loc = (
            f"{_party_path(party)}/CollaborationRole/ServiceBinding/CanSend/"
            f"ThisPartyActionBinding[@id='{binding.binding_id}']"
        )
        btc = binding.characteristics
        sender = route.send.doc_exchange.sender
        if btc.is_non_repudiation_required and (sender is None or sender.non_repudiation is None):
            self.error(
                loc,
                "isNonRepudiationRequired is true but the sending channel has no "
                "SenderNonRepudiation",
                btc.line,
            )
        receive_btc = route.receive.binding.characteristics if route.receive.binding else None
        receiver = route.receive.doc_exchange.receiver
        confidential = (
            receive_btc is not None and receive_btc.is_confidential in PERSISTENT_CONFIDENTIALITY
        )
        if confidential and (receiver is None or receiver.digital_envelope is None):
            self.error(
                loc,
                "isConfidential asks for encryption but the receiving channel has "
                "no ReceiverDigitalEnvelope",
                btc.line,
            )
        if route.encryption is not None and route.signing is None:
            self.error(
                loc,
                "encrypted profiles (osb-*-e) are signed too; the sending channel does not sign",
                btc.line,
            )
        if route.ack_signature_requested:
            acker = route.receive.party
            ack_route_sender = acker.channels.get(acker.default_msh_channel_id)
            doc = (
                acker.doc_exchanges.get(ack_route_sender.doc_exchange_id)
                if ack_route_sender
                else None
            )
            if doc is None or doc.sender is None or doc.sender.non_repudiation is None:
                self.error(
                    loc,
                    f"signed acknowledgments are requested but {acker.party_name!r}"
                    " has no signing on its default MSH channel",
                    btc.line,
                )
        self.actions.append(self.action_profile(route, collab, target))

    @staticmethod
    def action_profile(
        route: Route, collab: CollaborationRole, target: CollaborationRole
    ) -> ActionProfile:
        return ActionProfile(
            from_party=route.from_party.party_name,
            from_role=collab.role,
            to_party=route.to_party.party_name,
            to_role=target.role,
            service=route.service.key(),
            action=route.action,
            profile=route.profile,
            endpoint=route.endpoint,
        )


def certificate_of(party: PartyInfo, cert_id: str) -> x509.Certificate | None:
    """The parsed certificate ``cert_id`` of ``party``, or None."""
    cert = party.certificates.get(cert_id)
    if cert is None or not cert.der:
        return None
    try:
        return load_der(cert.der)
    except ValueError:
        return None
