"""Resolving header keys against a CPA (CPPA 2.0 §8.4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.model import MSH_SERVICE, PartyId, Service
from cpa.parse import parse_cpa
from cpa.resolve import ResolutionError, Route, resolve
from tests.conftest import FIXTURES, GEMEENTE_OIN, NODE_OIN

OIN = "urn:osb:oin"
GEMEENTE = [PartyId(GEMEENTE_OIN, OIN)]
NODE = [PartyId(NODE_OIN, OIN)]
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")


def route(xml: bytes, **keys) -> Route:
    args = dict(
        from_ids=GEMEENTE,
        from_role="Gemeente",
        to_ids=NODE,
        to_role="GGk",
        service=SERVICE,
        action="WMO301",
    )
    args.update(keys)
    return resolve(parse_cpa(xml), **args)


def test_reliable_signed_route(cpa_xml, make_spec) -> None:
    spec = make_spec(
        profile="osb-rm-s",
        retries=5,
        retry_interval=timedelta(minutes=10),
        persist_duration=timedelta(hours=2),
    )
    r = route(
        cpa_xml(
            profile="osb-rm-s",
            retries=5,
            retry_interval=timedelta(minutes=10),
            persist_duration=timedelta(hours=2),
        )
    )
    assert r.profile == "osb-rm-s"
    assert r.endpoint == "https://localhost:18444/ebms"
    assert (r.ack_requested, r.duplicate_elimination, r.ack_signature_requested) == (
        True,
        True,
        False,
    )
    assert r.sync_reply_mode == "none"
    assert (r.retries, r.retry_interval, r.persist_duration) == (
        5,
        timedelta(minutes=10),
        timedelta(hours=2),
    )
    assert r.signing is not None and r.signing.hash_function.endswith("#sha256")
    assert r.signing_certificate.der == spec.a.signing_cert.public_bytes(Encoding.DER)
    assert r.send.client_certificate.der == spec.a.tls_client_cert.public_bytes(Encoding.DER)
    assert r.receive.server_certificate.der == spec.b.tls_server_cert.public_bytes(Encoding.DER)
    assert r.encryption is None and r.encryption_certificate is None
    assert not r.is_signal


def test_encrypted_route_uses_the_receivers_encryption_certificate(cpa_xml, make_spec) -> None:
    spec = make_spec()
    r = route(
        cpa_xml(profile="osb-be-e"),
        from_ids=NODE,
        from_role="GGk",
        to_ids=GEMEENTE,
        to_role="Gemeente",
        action="WMO302",
    )
    assert r.profile == "osb-be-e"
    assert r.endpoint == "https://localhost:18443/ebms"
    assert r.encryption.algorithm.endswith("aes256-gcm")
    assert r.encryption_certificate.der == spec.a.encryption_cert.public_bytes(Encoding.DER)
    assert r.signing_certificate.der == spec.b.signing_cert.public_bytes(Encoding.DER)
    assert (r.retries, r.retry_interval) == (0, None)


def test_sync_reply_and_signed_ack_settings(cpa_xml) -> None:
    r = route(cpa_xml(profile="osb-rm-e", sync_reply=True, ack_signed=True))
    assert (r.sync_reply_mode, r.ack_signature_requested, r.profile) == (
        "mshSignalsOnly",
        True,
        "osb-rm-e",
    )


def test_msh_signals_use_the_default_msh_channels(cpa_xml) -> None:
    r = route(
        cpa_xml(profile="osb-rm-s"),
        service=Service(MSH_SERVICE),
        action="Ping",
        from_role=None,
        to_role=None,
    )
    assert r.is_signal
    assert r.send.channel.channel_id == r.from_party.default_msh_channel_id
    assert r.receive.channel.channel_id == r.to_party.default_msh_channel_id
    assert not r.ack_requested  # signals are never acknowledged
    assert r.signing is not None  # but they are signed on a signed CPA
    assert r.encryption is None
    assert r.endpoint == "https://localhost:18444/ebms"


@pytest.mark.parametrize(
    ("keys", "code", "location"),
    [
        (
            {"from_ids": [PartyId("00000001999999999000", OIN)]},
            "Inconsistent",
            "//Header/MessageHeader/From/PartyId",
        ),
        (
            {"from_ids": [PartyId(GEMEENTE_OIN, "urn:other")]},
            "Inconsistent",
            "//Header/MessageHeader/From/PartyId",
        ),
        ({"from_ids": []}, "Inconsistent", "//Header/MessageHeader/From/PartyId"),
        ({"to_ids": [PartyId("x", None)]}, "Inconsistent", "//Header/MessageHeader/To/PartyId"),
        ({"to_ids": GEMEENTE}, "Inconsistent", "//Header/MessageHeader/To/PartyId"),
        ({"from_role": None}, "Inconsistent", "//Header/MessageHeader/From/Role"),
        ({"to_role": None}, "Inconsistent", "//Header/MessageHeader/To/Role"),
        ({"from_role": "GGk"}, "ValueNotRecognized", "//Header/MessageHeader/Action"),
        ({"to_role": "Gemeente"}, "ValueNotRecognized", "//Header/MessageHeader/Action"),
        (
            {"service": Service("GGK:iWmo:3.2")},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            {"service": Service("GGK:iJw:3.2", "urn:osb:services")},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        ({"action": "WMO302"}, "ValueNotRecognized", "//Header/MessageHeader/Action"),
        ({"action": "WMO999"}, "ValueNotRecognized", "//Header/MessageHeader/Action"),
    ],
)
def test_unresolvable_keys_give_the_ebms_error(cpa_xml, keys, code, location) -> None:
    with pytest.raises(ResolutionError) as info:
        route(cpa_xml(), **keys)
    assert (info.value.code, info.value.location) == (code, location)


def test_compliance_cpa_resolves_each_service_type_to_its_profile() -> None:
    cpa = parse_cpa((FIXTURES / "cpa" / "cpa-cv-https.xml").read_bytes())
    cv, consumer = cpa.parties
    seen = {}
    for collab in consumer.roles:
        r = resolve(
            cpa,
            from_ids=consumer.party_ids,
            from_role="Consumer",
            to_ids=cv.party_ids,
            to_role="ComplianceVoorziening",
            service=collab.service,
            action="EchoRequest",
        )
        seen[collab.service.type] = r.profile
    assert seen == {
        "urn:cv:be:services": "osb-be",
        "urn:cv:be:signed:services": "osb-be-s",
        "urn:cv:be:encrypted:services": "osb-be-e",
        "urn:cv:rm:services": "osb-rm",
        "urn:cv:rm:signed:services": "osb-rm-s",
        "urn:cv:rm:encrypted:services": "osb-rm-e",
    }
