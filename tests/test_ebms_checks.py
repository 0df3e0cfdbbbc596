"""The §9 validation matrix: ebms-core's negative messages give ebms-core's errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cpa.model import Cpa
from cpa.parse import parse_cpa
from gateway.ebms.checks import CheckFailed, check_manifest, check_message
from gateway.ebms.envelope import EnvelopeError, build_envelope, parse_envelope
from tests.messages import ERROR_MATRIX, render


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


@pytest.mark.parametrize(("name", "values", "code", "location"), ERROR_MATRIX)
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
