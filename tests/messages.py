"""Render the ebms-core message templates in tests/fixtures/messages for our tests.

The templates (Thymeleaf) are the inputs of ebms-core's own integration tests;
rendering them with the parties of our generated CPA lets the same negative
cases run against this gateway.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import GEMEENTE_OIN, NODE_OIN

MESSAGES = Path(__file__).resolve().parent / "fixtures" / "messages"


def render(
    name: str,
    *,
    cpa_id: str = "test-cpa",
    from_party: str = GEMEENTE_OIN,
    to_party: str = NODE_OIN,
    from_role: str = "Gemeente",
    to_role: str = "GGk",
    service: str = "GGK:iWmo:3.2",
    service_type: str = "urn:osb:services",
    action: str = "WMO301",
    party_type: str = "urn:osb:oin",
    timestamp: datetime | None = None,
    time_to_live: timedelta = timedelta(hours=1),
    ref_to_message_id: str = "unknown@localhost",
    cids: tuple[str, ...] = (),
) -> bytes:
    """The template ``name`` (e.g. "EbMSMessage") with the given values."""
    text = (MESSAGES / f"{name}.xml").read_text()
    ts = timestamp or datetime.now(UTC)
    values = {
        "cpaId": cpa_id,
        "fromPartyId": from_party,
        "toPartyId": to_party,
        "fromRole": from_role,
        "toRole": to_role,
        "service": service,
        "action": action,
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "timeToLive": (ts + time_to_live).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "refToMessageId": ref_to_message_id.removesuffix("@localhost"),
    }
    text = text.replace('th:eb:type="${partyType}"', f'eb:type="{party_type}"')
    text = text.replace('th:eb:type="${serviceType}"', f'eb:type="{service_type}"')
    text = text.replace('th:eb:type="type"', 'eb:type="type"')
    # One uuid per template: MessageId and ConversationId may share it.
    text = text.replace("[[${uuid}]]", str(uuid.uuid4()))
    # EbMSPing.xml spells its parties out instead of using placeholders.
    text = text.replace(">00000000000000000000<", f">{from_party}<")
    text = text.replace(">00000000000000000001<", f">{to_party}<")
    text = text.replace(">cpaStubEBF.rm.http.unsigned.sync<", f">{cpa_id}<")
    text = re.sub(r"\[\[\$\{(\w+)\}\]\]", lambda m: values[m.group(1)], text)
    reference = re.search(r"\s*<eb:Reference th:xlink:href=[^>]*/>", text)
    if reference:
        refs = "".join(
            f'\n            <eb:Reference xlink:href="cid:{cid}" xlink:type="simple"/>'
            for cid in cids
        )
        text = text.replace(reference.group(0), refs)
        text = text.replace(' th:each="cid: ${cids}"', "")
    assert "th:" not in text and "${" not in text, text
    return text.encode()


#: ebms-core's endpoint test cases: (template, values, errorCode, location) for a CPA with a
#: synchronous (mshSignalsOnly) reliable channel, the shape of ebms-core's
#: integration-test CPA.  Every row must be refused with exactly this error.
ERROR_MATRIX: list[tuple[str, dict[str, Any], str, str]] = [
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
]
