"""What the fuzz targets and the wire fuzzer start from: a PKI, a CPA, valid messages.

Everything here is built from the example PKI (certs-example/make-pki), made
once per process into a temporary directory unless ``DKGW_FUZZ_PKI`` names one
already made (the test suite passes its session PKI).  A signed message is only
worth mutating when it verifies before the mutation, so the messages are signed
with the keys of the PKI in use, and the CPA names the certificates of that PKI.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from gateway.commands.demo import MUNICIPALITY, NODE, example_party
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.mime import OutgoingPart, build_swa
from gateway.ebms.model import (
    AckRequested,
    ManifestReference,
    MessageHeader,
    PartyId,
    Service,
    SyncReply,
)
from gateway.ebms.xmldsig import (
    RSA_SHA256,
    SHA256,
    SignaturePolicy,
    SigningKey,
    digest_stream,
    sign_envelope,
)

REPO = Path(__file__).resolve().parents[2]
MAKE_PKI = REPO / "certs-example" / "make-pki"
FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
REGRESSIONS_DIR = FUZZ_DIR / "regressions"

GEMEENTE = PartyId(MUNICIPALITY[2], "urn:osb:oin")
NODE_PARTY = PartyId(NODE[2], "urn:osb:oin")
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
CPA_ID = "fuzz-cpa"
CPA_START = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = SignaturePolicy(RSA_SHA256, SHA256)
#: A small iWmo-like payload (no real client data).
PAYLOAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<Bericht xmlns="http://www.istandaarden.nl/iwmo/3_2/wmo301/schema">'
    b"<Header><BerichtCode>414</BerichtCode></Header></Bericht>\n"
)
PAYLOAD_CID = "payload-1@fuzz.example"


@functools.cache
def pki() -> Path:
    """The example PKI: ``$DKGW_FUZZ_PKI``, else one made now in a temporary directory."""
    given = os.environ.get("DKGW_FUZZ_PKI")
    if given:
        return Path(given)
    base = Path(tempfile.mkdtemp(prefix="dkgw-fuzz-pki-", dir=os.environ.get("DKGW_FUZZ_SCRATCH")))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    out = base / "out"
    subprocess.run([sys.executable, str(MAKE_PKI), "--out", str(out), "--quiet"], check=True)
    return out


def load_cert(path: Path) -> x509.Certificate:
    """A PEM certificate."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_rsa_key(path: Path) -> rsa.RSAPrivateKey:
    """A PEM RSA private key (the example PKI's keys have no password)."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def gemeente_signing_key() -> SigningKey:
    """The municipality's signing key and certificate (the sender of the messages)."""
    party = pki() / MUNICIPALITY[0]
    return SigningKey.from_pem(
        (party / "signing.key").read_bytes(), (party / "signing.pem").read_bytes()
    )


@functools.cache
def node_encryption_key() -> rsa.RSAPrivateKey:
    """The node's encryption key (the receiver of encrypted parts)."""
    return load_rsa_key(pki() / NODE[0] / "encryption.key")


def cpa_bytes(
    *,
    a_endpoint: str = MUNICIPALITY[4],
    b_endpoint: str = NODE[4],
    profile: str = "osb-rm-s",
    sync_reply: bool = False,
    cpa_id: str = CPA_ID,
) -> bytes:
    """An iWmo CPA between the example municipality (a) and node (b), in force now.

    It starts at :data:`CPA_START`, so that a regression input with a fixed
    Timestamp (tests/fuzz/regressions/inbound) stays inside it.
    """
    start = CPA_START
    spec = CpaSpec(
        a=example_party(pki(), *MUNICIPALITY[:4], a_endpoint),
        b=example_party(pki(), *NODE[:4], b_endpoint),
        service=SERVICE.value,
        actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
        profile=profile,
        start=start,
        end=datetime.now(UTC).replace(microsecond=0) + timedelta(days=365),
        cpa_id=cpa_id,
        sync_reply=sync_reply,
    )
    return make_cpa(spec)


@dataclass(frozen=True)
class Message:
    """One ebMS message as it goes over the wire: the SOAP part and the package."""

    message_id: str
    envelope: bytes
    content_type: str
    body: bytes


def envelope_model(
    *,
    message_id: str | None = None,
    now: datetime | None = None,
    cids: tuple[str, ...] = (PAYLOAD_CID,),
    sync_reply: bool = False,
    cpa_id: str = CPA_ID,
) -> Envelope:
    """A WMO301 from the municipality to the node under the fuzz CPA (osb-rm)."""
    now = now or datetime.now(UTC)
    header = MessageHeader(
        from_ids=(GEMEENTE,),
        from_role=MUNICIPALITY[3],
        to_ids=(NODE_PARTY,),
        to_role=NODE[3],
        cpa_id=cpa_id,
        conversation_id=str(uuid.uuid4()),
        service=SERVICE,
        action="WMO301",
        message_id=message_id or f"{uuid.uuid4()}@fuzz.example",
        timestamp=now,
        time_to_live=now + timedelta(days=1),
        duplicate_elimination=True,
    )
    return Envelope(
        header=header,
        ack_requested=AckRequested(signed=False),
        sync_reply=SyncReply() if sync_reply else None,
        manifest=tuple(ManifestReference(f"cid:{c}") for c in cids) or None,
        manifest_version="2.0" if cids else None,
    )


def signed_message(
    *,
    message_id: str | None = None,
    payload: bytes = PAYLOAD,
    sign: bool = True,
    sync_reply: bool = False,
    cpa_id: str = CPA_ID,
    boundary: str | None = None,
) -> Message:
    """A valid WMO301 with one payload, signed with the municipality's key."""
    env = envelope_model(message_id=message_id, sync_reply=sync_reply, cpa_id=cpa_id)
    xml = build_envelope(env)
    if sign:
        digest = digest_stream(POLICY.digest_method, payload)
        xml = sign_envelope(xml, [(PAYLOAD_CID, digest)], gemeente_signing_key(), POLICY)
    content_type, chunks, _ = build_swa(
        xml,
        [OutgoingPart(PAYLOAD_CID, "application/xml", payload)],
        boundary=boundary or f"MIMEBoundary_{uuid.uuid4().hex}",
        start_cid=f"soap-{uuid.uuid4().hex}@fuzz.example",
    )
    return Message(env.header.message_id, xml, content_type, b"".join(chunks))
