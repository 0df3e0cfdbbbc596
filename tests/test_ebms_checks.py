"""The §9 validation matrix: ebms-core's negative messages give ebms-core's errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cpa.model import Cpa
from cpa.parse import parse_cpa
from gateway.ebms.checks import CheckFailed, check_manifest, check_message
from gateway.ebms.envelope import EnvelopeError, build_envelope, parse_envelope
from tests.messages import render


@pytest.fixture(scope="module")
def sync_rm_cpa(cpa_xml) -> Cpa:
    """osb-rm with mshSignalsOnly: the shape of ebms-core's integration-test CPA."""
    return parse_cpa(cpa_xml(profile="osb-rm", sync_reply=True))


def check(cpa: Cpa, name: str, **values) -> CheckFailed | None:
    env, _ = parse_envelope(render(name, **values))
    try:
        check_message(env, cpa, now=datetime.now(UTC))
        check_manifest(env, {"a@b"})
    except CheckFailed as exc:
        return exc
    return None


def test_valid_message_passes(sync_rm_cpa: Cpa) -> None:
    env, _ = parse_envelope(render("EbMSMessage"))
    checked = check_message(env, sync_rm_cpa, now=datetime.now(UTC))
    assert checked.route.profile == "osb-rm"
    assert checked.route.sync_reply_mode == "mshSignalsOnly"


@pytest.mark.parametrize(
    ("name", "values", "code", "location"),
    [
        (
            "EbMSMessageInvalidMessageHeaderVersion",
            {},
            "Inconsistent",
            "//Header/MessageHeader/@version",
        ),
        (
            "EbMSMessage",
            {"from_party": "00000001999999999000"},
            "Inconsistent",
            "//Header/MessageHeader/From/PartyId",
        ),
        (
            "EbMSMessage",
            {"party_type": "urn:other"},
            "Inconsistent",
            "//Header/MessageHeader/From/PartyId",
        ),
        ("EbMSMessageMissingFromRole", {}, "Inconsistent", "//Header/MessageHeader/From/Role"),
        ("EbMSMessageInvalidToPartyType", {}, "Inconsistent", "//Header/MessageHeader/To/PartyId"),
        (
            "EbMSMessage",
            {"from_role": "GGk"},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            "EbMSMessage",
            {"to_role": "Gemeente"},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            "EbMSMessage",
            {"service": "GGK:iJw:3.2"},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            "EbMSMessage",
            {"service_type": "urn:other"},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            "EbMSMessage",
            {"action": "WMO302"},
            "ValueNotRecognized",
            "//Header/MessageHeader/Action",
        ),
        (
            "EbMSMessage",
            {"time_to_live": timedelta(seconds=-1)},
            "TimeToLiveExpired",
            "//Header/MessageHeader/MessageData/TimeToLive",
        ),
        (
            "EbMSMessageMissingDuplicateElimination",
            {},
            "Inconsistent",
            "//Header/MessageHeader/DuplicateElimination",
        ),
        ("EbMSMessageMissingAckRequested", {}, "Inconsistent", "//Header/AckRequested"),
        (
            "EbMSMessageInvalidAckRequestedVersion",
            {},
            "Inconsistent",
            "//Header/AckRequested/@version",
        ),
        ("EbMSMessageNextMshAckRequested", {}, "NotSupported", "//Header/AckRequested/@actor"),
        ("EbMSMessageInvalidAckRequestedActor", {}, "Inconsistent", "//Header/AckRequested/@actor"),
        (
            "EbMSMessageInvalidAckRequestedSigned",
            {},
            "Inconsistent",
            "//Header/AckRequested/@signed",
        ),
        ("EbMSMessageMissingSyncReply", {}, "Inconsistent", "//Header/SyncReply"),
        ("EbMSMessageInvalidSyncReplyVersion", {}, "Inconsistent", "//Header/SyncReply/@version"),
        ("EbMSMessageInvalidSyncReplyActor", {}, "Inconsistent", "//Header/SyncReply/@actor"),
        ("EbMSMessageMessageOrder", {}, "NotSupported", "//Header/MessageOrder"),
        (
            "EbMSMessageInvalidManifestVersion",
            {"cids": ("a@b",)},
            "Inconsistent",
            "//Body/Manifest/@version",
        ),
        ("EbMSMessageWithAttachments", {"cids": ("missing@x",)}, "MimeProblem", "cid:missing@x"),
        (
            "EbMSMessage",
            {"timestamp": datetime(2001, 1, 1, tzinfo=UTC)},
            "Inconsistent",
            "//Header/MessageHeader/@cpaid",
        ),
    ],
)
def test_error_matrix(sync_rm_cpa: Cpa, name, values, code, location) -> None:
    failure = check(sync_rm_cpa, name, **values)
    assert failure is not None, "accepted"
    assert (failure.error.code.value, failure.error.location) == (code, location)
    assert failure.error.severity.value == "Error"


def test_non_cid_reference_is_a_mime_problem(sync_rm_cpa: Cpa) -> None:
    xml = render("EbMSMessageWithAttachments", cids=("a@b",)).replace(b'"cid:a@b"', b'"a@b"')
    env, _ = parse_envelope(xml)
    with pytest.raises(CheckFailed) as info:
        check_manifest(env, {"a@b"})
    assert info.value.error.code.value == "MimeProblem"
    assert info.value.error.location == "//Body/Manifest/Reference[@href='a@b']"


def test_manifest_returns_referenced_ids_in_order(sync_rm_cpa: Cpa) -> None:
    env, _ = parse_envelope(render("EbMSMessageWithAttachments", cids=("b@x", "a%40y@x")))
    assert check_manifest(env, {"a@y@x", "b@x", "unreferenced@x"}) == ("b@x", "a@y@x")


def test_missing_manifest_and_status_and_ping_pass(sync_rm_cpa: Cpa) -> None:
    for name in ("EbMSMessageMissingManifest",):
        assert check(sync_rm_cpa, name) is None
    for name, action in (("EbMSPing", "Ping"), ("EbMSMessageStatus", "StatusRequest")):
        env, _ = parse_envelope(render(name))
        assert env.header.action == action
        checked = check_message(env, sync_rm_cpa, now=datetime.now(UTC))
        assert checked.route.is_signal


@pytest.mark.parametrize(
    "name", ["EbMSMessageMissingFromPartyId", "EbMSMessageMissingReference", "EbMSPingXXE"]
)
def test_schema_invalid_and_hostile_envelopes_are_refused(name: str) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(render(name))


def test_envelope_round_trip(sync_rm_cpa: Cpa) -> None:
    for name in ("EbMSMessage", "EbMSMessageStatus", "EbMSPing", "EbMSMessageWithAttachments"):
        env, _ = parse_envelope(render(name, cids=("a@b", "c@d")))
        again, _ = parse_envelope(build_envelope(env))
        assert again == env
