"""Signed and encrypted profiles between two real gateways, and hostile messages over the wire.

Part one runs the municipality and node gateways of :mod:`tests.gateways` with
``[security]`` keys and exchanges osb-be-s, osb-rm-s (signed acknowledgments,
sync and async), osb-be-e and osb-rm-e messages with 0, 1 and 3 payloads.
Part two checks our signatures with an independent verifier, the ``xmlsec1``
CLI.  Part three posts crafted messages to a node gateway over mutual TLS
(built with the gateway's own outbound code in a scratch store, then changed)
and asserts the SecurityFailure and its location (ebMS 2.0 §4.1; docs/security.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet.threads import deferToThread

from cpa.generate import make_cpa
from cpa.validate import ValidationOptions
from gateway.delivery import wire_body
from gateway.ebms.envelope import parse_envelope
from gateway.ebms.mime import OutgoingPart, build_swa
from gateway.ebms.model import DS_NS
from gateway.ebms.xmldsig import EBMS_XPATH, SigningKey
from gateway.ebms.xmlenc import AES256_CBC, encrypt_part, looks_encrypted
from gateway.msh.outbound import Payload, SendError, send_message
from gateway.msh.read import AckVerifier
from gateway.msh.security import MessageSecurity
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import Direction, StoredMessage, find_message, load_attachments
from gateway.store.migrate import apply_migrations
from tests.conftest import DIALECTS, load_cert
from tests.gateways import (
    GEMEENTE,
    NODE,
    SERVICE,
    Pair,
    Side,
    gateway_config,
    security_config,
    store_url,
    tls_toml,
    wait_until,
)
from tests.test_endpoint import Endpoint, error_of
from tests.test_xmldsig import XMLSEC1, xmlsec1_verify

pytestmark = pytest.mark.integration

A_DIR, B_DIR = "gemeente-voorbeeld", "ggk-rinis-test"
RM_FAST = {
    "retries": 3,
    "retry_interval": timedelta(seconds=1),
    "persist_duration": timedelta(hours=1),
}
SIGNATURE = f"{{{DS_NS}}}Signature"


def payloads(count: int) -> tuple[Payload, ...]:
    kinds = ("application/xml", "application/pdf", "application/octet-stream")
    return tuple(
        Payload(os.urandom(1000 + 7000 * n), kinds[n % 3], f"part{n}.bin") for n in range(count)
    )


def signatures(envelope: bytes) -> int:
    return sum(1 for _ in etree.fromstring(envelope).iter(SIGNATURE))


def stored(
    side: Side, message_id: str, direction: str
) -> tuple[bytes, list[tuple[str, str, bytes]]]:
    """The stored envelope and (content id, type, content) of each payload."""
    (envelope,) = side.rows(
        "SELECT envelope FROM ebms_message WHERE message_id = ? AND direction = ?",
        message_id,
        direction,
    )[0]
    parts = side.rows(
        "SELECT a.content_id, a.content_type, a.content FROM ebms_attachment a "
        "JOIN ebms_message m ON m.id = a.message_pk WHERE m.message_id = ? AND m.direction = ? "
        "ORDER BY a.order_nr",
        message_id,
        direction,
    )
    return bytes(envelope), [(r[0], r[1], bytes(r[2])) for r in parts]


def ack_of(side: Side, message_id: str, direction: str) -> bytes:
    rows = side.rows(
        "SELECT envelope FROM ebms_message WHERE action = 'Acknowledgment' "
        "AND ref_to_message_id = ? AND direction = ?",
        message_id,
        direction,
    )
    return bytes(rows[0][0])


# -- two gateways --------------------------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def secure_pair(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Any]:
    """Start a pair with [security] keys on both sides; CPA overrides as keywords."""
    pairs: list[Pair] = []

    async def start(dialect: str = "sqlite", legacy: bool = False, **overrides: Any) -> Pair:
        n = len(pairs)
        sides = []
        for name, slug in (("a", A_DIR), ("b", B_DIR)):
            config = gateway_config(
                pki,
                slug,
                tmp_path / f"{name}{n}",
                store_url(dialect, tmp_path, f"{name}{n}"),
                security=security_config(pki, slug, legacy_crypto=legacy),
            )
            sides.append(Side(name, config))
        for side in sides:
            side.start()
        pair = Pair(sides[0], sides[1], f"sec-cpa-{n}", make_spec, dict(overrides))
        pairs.append(pair)
        pair.import_cpa(legacy_crypto=legacy)
        return pair

    yield start
    for pair in pairs:
        await pair.stop()


CASES = [
    # (profile, CPA overrides, number of payloads)
    ("osb-be-s", {}, 0),
    ("osb-be-s", {}, 1),
    ("osb-be-s", {}, 3),
    ("osb-rm-s", {"ack_signed": True}, 1),
    ("osb-rm-s", {"ack_signed": True, "sync_reply": True}, 3),
    ("osb-rm-s", {}, 1),
    ("osb-be-e", {}, 1),
    ("osb-be-e", {}, 3),
    ("osb-rm-e", {}, 0),
    ("osb-rm-e", {"ack_signed": True}, 1),
    ("osb-rm-e", {"ack_signed": True, "sync_reply": True}, 3),
]


@pytest.mark.parametrize(
    ("profile", "overrides", "count"),
    CASES,
    ids=[
        f"{p}-{'sync' if o.get('sync_reply') else 'async'}"
        f"{'-signed-ack' if o.get('ack_signed') else ''}-{c}"
        for p, o, c in CASES
    ],
)
@pytest_twisted.ensureDeferred
async def test_secured_message_is_delivered(
    secure_pair, profile: str, overrides: dict[str, Any], count: int
) -> None:
    rm = RM_FAST if profile.startswith("osb-rm") else {}
    pair = await secure_pair(profile=profile, **rm, **overrides)
    sent = payloads(count)
    queued = await pair.send(sent)
    assert queued.profile == profile
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    assert pair.b.status(queued.message_id, "in") == "RECEIVED"

    envelope, wire_parts = stored(pair.a, queued.message_id, "out")
    assert signatures(envelope) == 1
    if profile.endswith("-e"):
        # The sender keeps the wire bytes: EncryptedData, application/xml.
        for _, content_type, content in wire_parts:
            assert content_type == "application/xml"
            assert looks_encrypted(content_type, content[:4096])
    _, received = stored(pair.b, queued.message_id, "in")
    assert [(t, hashlib.sha256(c).hexdigest()) for _, t, c in received] == [
        (p.content_type, hashlib.sha256(p.content).hexdigest()) for p in sent
    ]
    if overrides.get("ack_signed"):
        # The node signed its ack; the municipality checked it before DELIVERED.
        assert signatures(ack_of(pair.b, queued.message_id, "out")) == 1
        assert ack_of(pair.a, queued.message_id, "in") == ack_of(pair.b, queued.message_id, "out")


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest_twisted.ensureDeferred
async def test_encrypted_reliable_message_on_both_dialects(secure_pair, dialect: str) -> None:
    pair = await secure_pair(dialect, profile="osb-rm-e", ack_signed=True, **RM_FAST)
    there = await pair.send(payloads(2))
    back = await pair.send(payloads(1), from_a=False)
    await wait_until(lambda: pair.a.status(there.message_id, "out") == "DELIVERED")
    await wait_until(lambda: pair.b.status(back.message_id, "out") == "DELIVERED")


@pytest.mark.skipif(
    XMLSEC1 is None, reason="xmlsec1 CLI not installed: independent signature oracle absent"
)
@pytest_twisted.ensureDeferred
async def test_xmlsec1_verifies_a_received_message_and_its_signed_ack(
    secure_pair, pki: Path, tmp_path: Path
) -> None:
    """The oracle: what the node received (decrypted) and the ack it signed verify with xmlsec1."""
    pair = await secure_pair(profile="osb-rm-e", ack_signed=True, **RM_FAST)
    queued = await pair.send(payloads(3))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    envelope, parts = stored(pair.b, queued.message_id, "in")
    result = xmlsec1_verify(envelope, pki, tmp_path, {cid: content for cid, _, content in parts})
    assert result.returncode == 0, result.stderr
    assert "SignedInfo References (ok/all): 4/4" in result.stderr
    ack = ack_of(pair.a, queued.message_id, "in")
    (tmp_path / "ack").mkdir()
    result = xmlsec1_verify(ack, pki, tmp_path / "ack", {})
    assert result.returncode == 0, result.stderr


@pytest_twisted.ensureDeferred
async def test_a_tampered_or_unsigned_ack_is_not_accepted(secure_pair) -> None:
    pair = await secure_pair(profile="osb-rm-s", ack_signed=True, **RM_FAST)
    queued = await pair.send(payloads(1))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    ack = ack_of(pair.a, queued.message_id, "in")
    gateway = pair.a.gateway
    assert gateway is not None and gateway.registry is not None
    verifier = AckVerifier(gateway.registry, gateway.security)
    env, _ = parse_envelope(ack)
    root = etree.fromstring(ack)
    root.find(f".//{SIGNATURE}").getparent().remove(root.find(f".//{SIGNATURE}"))
    unsigned = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    other_refs = ack.replace(b"<ds:DigestValue>", b"<ds:DigestValue>AAAA", 1)
    with pair.a.db.transaction() as cur:
        ours = find_message(cur, queued.message_id, Direction.OUT)
        assert ours is not None
        assert verifier(cur, ours, env, ack) is None
        assert "Signature not found." in (verifier(cur, ours, env, unsigned) or "")
        assert verifier(cur, ours, env, other_refs) is not None


@pytest_twisted.ensureDeferred
async def test_an_ack_signed_with_an_unexpected_key_never_delivers(
    secure_pair, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node signs its acks with a key the CPA does not name: they are refused.

    Neither the CPA's certificate nor a mapped one (tests/test_rotation.py) fits,
    so the message is resent on every retry (each gets the same refused ack) and
    expires.
    """
    pair = await secure_pair(profile="osb-rm-s", ack_signed=True, **RM_FAST)
    await pair.b.stop()
    # The municipality's signing key: valid and trusted, but not the node's in the CPA.
    pair.b.config = replace(pair.b.config, security=security_config(pki, B_DIR, keys_of=A_DIR))
    pair.b.start()
    caplog.set_level(logging.WARNING, logger="dkgw.inbound")
    queued = await pair.send(payloads(1))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "EXPIRED", timeout=20)
    assert pair.b.status(queued.message_id, "in") == "RECEIVED"
    refused = [r.getMessage() for r in caplog.records if "not accepted" in r.getMessage()]
    assert refused and "KeyInfo" in refused[0], refused


@pytest_twisted.ensureDeferred
async def test_legacy_encryption_needs_the_switch_and_is_logged(
    secure_pair, caplog: pytest.LogCaptureFixture
) -> None:
    pair = await secure_pair(legacy=True, profile="osb-be-e", encryption_algorithm=AES256_CBC)
    gateway = pair.a.gateway
    assert gateway is not None and gateway.security is not None
    strict = replace(gateway.security, legacy=False)
    with pytest.raises(SendError, match="legacy"):
        await pair.send(payloads(1), security=strict)
    caplog.set_level(logging.WARNING, logger="dkgw.security")
    queued = await pair.send(payloads(1))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    legacy = [r.getMessage() for r in caplog.records if "legacy algorithm" in r.getMessage()]
    assert any("aes256-cbc used for encryption" in m for m in legacy), legacy
    assert any("aes256-cbc used for decryption" in m for m in legacy), legacy


# -- hostile messages over the wire --------------------------------------------------------


@dataclass
class Forger:
    """Builds messages with the gateway's own outbound code in a scratch store."""

    db: Database
    registry: CpaRegistry
    pki: Path

    def security(self, slug: str = A_DIR, key: str = "signing") -> MessageSecurity:
        base = self.pki / slug
        signing = SigningKey.from_pem(
            (base / f"{key}.key").read_bytes(), (base / f"{key}.pem").read_bytes()
        )
        return MessageSecurity(signing_key=signing)

    def build(
        self, cpa_id: str, count: int = 1, security: MessageSecurity | None = None, **kw: Any
    ) -> tuple[StoredMessage, list[OutgoingPart], list[bytes]]:
        """A message as the municipality would send it: stored, its parts, the plaintexts."""
        sent = payloads(count)
        if security is None:
            security = self.security()
        queued = send_message(
            self.db,
            self.registry,
            cpa_id=cpa_id,
            from_party=GEMEENTE,
            from_role="Gemeente",
            to_party=NODE,
            to_role="GGk",
            service=SERVICE,
            action="WMO301",
            payloads=sent,
            security=security,
            **kw,
        )
        with self.db.transaction() as cur:
            message = find_message(cur, queued.message_id, Direction.OUT)
            assert message is not None
            parts = [
                OutgoingPart(a.content_id, a.content_type, a.content, a.filename)
                for a in load_attachments(cur, message.pk)
            ]
        return message, parts, [p.content for p in sent]

    def wire(self, message: StoredMessage) -> tuple[str, bytes]:
        with self.db.transaction() as cur:
            return wire_body(message, cur)


def package(envelope: bytes, parts: list[OutgoingPart]) -> tuple[str, bytes]:
    if not parts:
        return "text/xml; charset=UTF-8", envelope
    content_type, chunks, _ = build_swa(envelope, parts)
    return content_type, b"".join(chunks)


@dataclass
class Hostile:
    endpoint: Endpoint
    forger: Forger

    async def post(self, content_type: str, body: bytes) -> tuple[str, str, str]:
        result = await self.endpoint.post(body, content_type=content_type)
        assert result.status == 200, result
        env, _ = parse_envelope(result.body)
        assert env.error_list is not None, result.body
        (error,) = env.error_list.errors
        code, location = error_of(result)
        return code, location, error.description or ""


@pytest_twisted.async_yield_fixture
async def hostile(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Hostile]:
    """A node gateway with CRLs; CPAs with synchronous replies so errors come back at once."""
    config = gateway_config(
        pki,
        B_DIR,
        tmp_path / "b",
        store_url("sqlite", tmp_path, "b"),
        security=security_config(pki, B_DIR, crl_dir=pki / "ca"),
    )
    side = Side("b", config)
    side.start()
    scratch = Database.sqlite(tmp_path / "forger.sqlite3")
    apply_migrations(scratch)
    url = f"https://localhost:{side.port}/ebms"
    negative = pki / "negative"
    variants: dict[str, Callable[[Any], Any]] = {
        "neg-s": lambda s: s,
        "neg-e": lambda s: replace(s, profile="osb-rm-e"),
        "neg-expired": lambda s: replace(
            s, a=replace(s.a, signing_cert=load_cert(negative / "expired-signing.pem"))
        ),
        "neg-revoked": lambda s: replace(
            s, a=replace(s.a, signing_cert=load_cert(negative / "revoked-signing.pem"))
        ),
        # The CPA names a TLS client certificate that the CA has since revoked.
        "neg-tls-revoked": lambda s: replace(
            s, a=replace(s.a, tls_client_cert=load_cert(negative / "revoked.pem"))
        ),
    }
    for cpa_id, change in variants.items():
        spec = make_spec(profile="osb-rm-s", sync_reply=True, ack_signed=True, cpa_id=cpa_id)
        spec = change(replace(spec, b=replace(spec.b, endpoint=url)))
        xml = make_cpa(spec)
        # Import refuses an expired certificate; a partner's may expire after import.
        signing = spec.a.signing_cert
        assert signing is not None
        expired = signing.not_valid_after_utc < datetime.now(UTC)
        options = ValidationOptions(
            now=signing.not_valid_after_utc - timedelta(minutes=1) if expired else None
        )
        CpaRegistry(side.db, options).insert(xml, overwrite=True)
        CpaRegistry(scratch, options).insert(xml, overwrite=True)
    endpoint = Endpoint(side, url, pki, [])
    endpoint.client()
    yield Hostile(endpoint, Forger(scratch, CpaRegistry(scratch), pki))
    for client in endpoint.clients:
        await client.close()
    await side.stop()
    side.close()
    scratch.close()


def _digest_location(uri: str) -> str:
    return f"//Header/Signature/SignedInfo/Reference[@URI='{uri}']/DigestValue"


@pytest_twisted.ensureDeferred
async def test_forged_messages_pass_unchanged(hostile: Hostile) -> None:
    """The baseline: the unchanged forgeries are accepted, a resend gets the same signed ack."""
    for cpa_id in ("neg-s", "neg-e"):
        message, _, _ = hostile.forger.build(cpa_id, count=2)
        content_type, body = hostile.forger.wire(message)
        first = await hostile.endpoint.post(body, content_type=content_type)
        env, _ = parse_envelope(first.body)
        assert env.header.action == "Acknowledgment", first.body
        assert signatures(first.body) == 1
        again = await hostile.endpoint.post(body, content_type=content_type)
        assert again.body == first.body
        assert hostile.endpoint.side.status(message.message_id, "in") == "RECEIVED"


@pytest_twisted.ensureDeferred
async def test_changed_header_byte_is_a_security_failure(hostile: Hostile) -> None:
    message, parts, _ = hostile.forger.build("neg-s", conversation_id="conv-AAAA")
    changed = message.envelope.replace(b"conv-AAAA", b"conv-AAAB")
    code, location, _ = await hostile.post(*package(changed, parts))
    assert (code, location) == ("SecurityFailure", _digest_location(""))
    assert hostile.endpoint.side.status(message.message_id, "in") == "FAILED"


@pytest_twisted.ensureDeferred
async def test_changed_attachment_byte_is_a_security_failure(hostile: Hostile) -> None:
    message, parts, _ = hostile.forger.build("neg-s")
    content = bytearray(parts[0].content)  # type: ignore[arg-type]
    content[10] ^= 1
    parts[0] = replace(parts[0], content=bytes(content))
    code, location, _ = await hostile.post(*package(message.envelope, parts))
    assert (code, location) == ("SecurityFailure", _digest_location(f"cid:{parts[0].content_id}"))


@pytest_twisted.ensureDeferred
async def test_signed_with_the_other_partys_key_is_a_security_failure(hostile: Hostile) -> None:
    message, _, _ = hostile.forger.build("neg-s", security=hostile.forger.security(B_DIR))
    code, location, _ = await hostile.post(*hostile.forger.wire(message))
    assert code == "SecurityFailure"
    assert location in ("//Header/Signature/KeyInfo", "//Header/Signature/SignatureValue")


@pytest.mark.parametrize(
    ("cpa_id", "key", "reason"),
    [("neg-expired", "expired-signing", "expired"), ("neg-revoked", "revoked-signing", "revoked")],
)
@pytest_twisted.ensureDeferred
async def test_untrusted_signing_certificate_is_a_security_failure(
    hostile: Hostile, cpa_id: str, key: str, reason: str
) -> None:
    security = hostile.forger.security("negative", key)
    message, _, _ = hostile.forger.build(cpa_id, security=security)
    code, location, description = await hostile.post(*hostile.forger.wire(message))
    assert (code, location) == ("SecurityFailure", "//Header/Signature")
    assert reason in description.lower(), description


@pytest_twisted.ensureDeferred
async def test_revoked_tls_client_certificate_is_refused(hostile: Hostile) -> None:
    # Chain and dates are fine, so the handshake succeeds; the CRL says revoked.
    message, _, _ = hostile.forger.build("neg-tls-revoked")
    revoked = hostile.endpoint.client("negative", "revoked")
    content_type, body = hostile.forger.wire(message)
    result = await hostile.endpoint.post(body, content_type=content_type, client=revoked)
    assert result.status == 500
    assert b"Invalid SSL Client Certificate!" in result.body
    assert hostile.endpoint.side.status(message.message_id, "in") is None
    # The same message over the CPA's (unrevoked) certificate is not refused for TLS.
    plain, _, _ = hostile.forger.build("neg-s")
    plain_type, plain_body = hostile.forger.wire(plain)
    accepted = await hostile.endpoint.post(plain_body, content_type=plain_type)
    assert accepted.status == 200 and b"Invalid SSL" not in accepted.body


@pytest_twisted.ensureDeferred
async def test_missing_signature_is_a_security_failure(hostile: Hostile) -> None:
    message, parts, _ = hostile.forger.build("neg-s")
    root = etree.fromstring(message.envelope)
    signature = root.find(f".//{SIGNATURE}")
    signature.getparent().remove(signature)
    unsigned = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    code, location, description = await hostile.post(*package(unsigned, parts))
    assert (code, location, description) == (
        "SecurityFailure",
        "//Header/Signature",
        "Signature not found.",
    )


@pytest_twisted.ensureDeferred
async def test_signature_over_another_xpath_is_a_security_failure(hostile: Hostile) -> None:
    message, parts, _ = hostile.forger.build("neg-s")
    assert EBMS_XPATH.encode() in message.envelope
    # Leaves the SOAP Body out of the signature: a generic verifier would still say "valid".
    changed = message.envelope.replace(EBMS_XPATH.encode(), b"not(ancestor-or-self::SOAP:Body)")
    code, location, _ = await hostile.post(*package(changed, parts))
    assert code == "SecurityFailure"
    assert location.startswith("//Header/Signature/SignedInfo/Reference[@URI='']"), location


@pytest_twisted.ensureDeferred
async def test_unencrypted_part_where_encryption_is_required(hostile: Hostile) -> None:
    message, parts, plain = hostile.forger.build("neg-e", count=2)
    parts[1] = replace(parts[1], content_type="application/octet-stream", content=plain[1])
    code, location, _ = await hostile.post(*package(message.envelope, parts))
    assert (code, location) == ("SecurityFailure", f"cid:{parts[1].content_id}")
    assert hostile.endpoint.side.status(message.message_id, "in") == "FAILED"


@pytest_twisted.ensureDeferred
async def test_encrypted_for_the_wrong_key_is_a_security_failure(
    hostile: Hostile, pki: Path
) -> None:
    message, parts, plain = hostile.forger.build("neg-e")
    wrong = encrypt_part(
        plain[0],
        content_id=parts[0].content_id,
        mime_type="application/xml",
        recipient_cert=load_cert(pki / A_DIR / "encryption.pem"),
        data_algorithm="http://www.w3.org/2009/xmlenc11#aes256-gcm",
    )
    parts[0] = replace(parts[0], content=wrong)
    code, location, _ = await hostile.post(*package(message.envelope, parts))
    assert (code, location) == ("SecurityFailure", f"cid:{parts[0].content_id}")


@pytest_twisted.ensureDeferred
async def test_dkgw_send_with_the_gateway_config_signs_and_encrypts(
    secure_pair, pki: Path, tmp_path: Path
) -> None:
    """``dkgw send --config`` loads the [security] keys; without them it refuses clearly."""
    pair = await secure_pair(profile="osb-rm-e", ack_signed=True, **RM_FAST)
    a = pair.a
    party = pki / A_DIR
    config = tmp_path / "a.toml"
    config.write_text(
        f"""[gateway]
store = "{a.config.store}"
{tls_toml(pki, A_DIR)}[security]
signing_certificate = "{party / "signing.pem"}"
signing_key = "{party / "signing.key"}"
encryption_certificate = "{party / "encryption.pem"}"
encryption_key = "{party / "encryption.key"}"
""",
        encoding="utf-8",
    )
    body = tmp_path / "bericht.xml"
    body.write_bytes(b"<bericht>" + os.urandom(16).hex().encode() + b"</bericht>")
    common = [
        "send", pair.cpa_id, "--from", GEMEENTE.key(), "--from-role", "Gemeente",
        "--to", NODE.key(), "--to-role", "GGk", "--service", f"urn:osb:services:{SERVICE.value}",
        "--action", "WMO301", "--file", str(body),
    ]  # fmt: skip

    def dkgw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    refused = await deferToThread(dkgw, "--store", a.config.store, *common)
    assert refused.returncode == 1 and "[security]" in refused.stderr
    sent = await deferToThread(dkgw, *common, "--config", str(config))
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    a.gateway.wake()
    await wait_until(lambda: a.status(message_id, "out") == "DELIVERED", timeout=20)
    envelope, parts = stored(a, message_id, "out")
    assert signatures(envelope) == 1 and b"EncryptedData" in parts[0][2]
    _, received = stored(pair.b, message_id, "in")
    assert received[0][2] == body.read_bytes()
