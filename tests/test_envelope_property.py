"""Property tests for the ebMS envelope: :func:`parse_envelope` reads back what
:func:`build_envelope` writes.

The strategies generate only what the SOAP 1.1 and ebMS 2.0 header schemas
admit (``parse_envelope`` validates, so a schema slip in ``build_envelope``
fails the round trip).  Element text is stripped by the parser, so text values
are generated strip-stable; attribute values are kept as they are.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ebms.envelope import Envelope, build_envelope, parse_envelope
from gateway.ebms.model import (
    EBMS_VERSION,
    ERROR_CODE_CONTEXT,
    MSH_SERVICE,
    NEXT_MSH,
    SOAP_ACTOR_NEXT,
    TO_PARTY_MSH,
    Acknowledgment,
    AckRequested,
    EbmsError,
    ErrorCode,
    ErrorList,
    ManifestReference,
    MessageHeader,
    MessageStatus,
    PartyId,
    Service,
    Severity,
    StatusRequest,
    StatusResponse,
    SyncReply,
)

# -- strategies ----------------------------------------------------------------------

#: Characters XML 1.0 can carry: no control characters (not even tab and
#: line breaks, which XML normalises), no surrogates, no non-characters.
_XML_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="\ufffe\uffff"
)

#: Element text: non-empty and unchanged by ``str.strip`` (the parser strips).
texts = st.text(_XML_CHARS, min_size=1, max_size=24).filter(lambda s: s == s.strip())
#: Attribute values of type non-empty-string: kept verbatim, spaces included.
attr_texts = st.text(_XML_CHARS, min_size=1, max_size=24)
_ascii_token = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
    min_size=1,
    max_size=16,
)
_host = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
uris = st.one_of(
    st.sampled_from([TO_PARTY_MSH, NEXT_MSH, SOAP_ACTOR_NEXT, MSH_SERVICE, "urn:osb:oin"]),
    st.builds(lambda a, b: f"urn:{a}:{b}", _ascii_token, _ascii_token),
    st.builds(lambda h, p: f"https://{h}/{p}", _host, _ascii_token),
)
message_ids = st.builds(lambda u, h: f"{u}@{h}", st.uuids(), _host)
actions = st.one_of(
    st.sampled_from(["Ping", "Pong", "Acknowledgment", "MessageError", "WMO301"]), _ascii_token
)
versions = st.one_of(st.just(EBMS_VERSION), attr_texts)
_TIMEZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))])


def _to_millis(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


any_timestamps = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2999, 1, 1), timezones=_TIMEZONES
)
#: What the gateway writes: aware timestamps to the millisecond.
timestamps = any_timestamps.map(_to_millis)

party_ids = st.builds(PartyId, texts, st.none() | attr_texts)
party_lists = st.lists(party_ids, min_size=1, max_size=2).map(tuple)


def message_headers(ts: st.SearchStrategy[datetime] = timestamps) -> st.SearchStrategy[Any]:
    return st.builds(
        MessageHeader,
        from_ids=party_lists,
        to_ids=party_lists,
        cpa_id=texts,
        conversation_id=st.one_of(texts, message_ids),
        service=st.one_of(
            st.just(Service(MSH_SERVICE)),
            st.builds(Service, st.one_of(texts, uris), st.none() | attr_texts),
        ),
        action=actions,
        message_id=message_ids,
        timestamp=ts,
        from_role=st.none() | st.one_of(texts, uris),
        to_role=st.none() | st.one_of(texts, uris),
        ref_to_message_id=st.none() | message_ids,
        time_to_live=st.none() | ts,
        duplicate_elimination=st.booleans(),
        version=versions,
    )


ack_requesteds = st.builds(
    AckRequested, signed=st.booleans(), actor=st.none() | uris, version=versions
)
sync_replies = st.builds(SyncReply, actor=uris, version=versions)
manifests = st.lists(
    st.builds(
        ManifestReference,
        href=st.builds(lambda c: f"cid:{c}", message_ids)
        | st.builds(lambda u, h: f"cid:{u}%40{h}", st.uuids(), _host),
        role=st.none() | uris,
    ),
    max_size=4,
).map(tuple)
errors = st.builds(
    EbmsError,
    code=st.sampled_from(ErrorCode),
    location=st.none() | attr_texts,
    description=st.none() | texts,
    severity=st.sampled_from(Severity),
    code_context=st.one_of(st.just(ERROR_CODE_CONTEXT), uris),
)
error_lists = st.builds(
    ErrorList, errors=st.lists(errors, min_size=1, max_size=3).map(tuple), version=versions
)
_DS = "http://www.w3.org/2000/09/xmldsig#"
ds_references = st.builds(
    lambda uri, digest: (
        f'<ds:Reference xmlns:ds="{_DS}" URI="{uri}">'
        f'<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>'
        f"<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"
    ).encode(),
    st.one_of(st.just(""), st.builds(lambda c: f"cid:{c}", message_ids)),
    st.binary(min_size=1, max_size=32).map(lambda b: base64.b64encode(b).decode()),
)


def acknowledgments(ts: st.SearchStrategy[datetime] = timestamps) -> st.SearchStrategy[Any]:
    return st.builds(
        Acknowledgment,
        timestamp=ts,
        ref_to_message_id=message_ids,
        from_ids=st.just(()) | party_lists,
        references=st.lists(ds_references, max_size=2).map(tuple),
        actor=st.none() | uris,
        version=versions,
    )


def status_responses(ts: st.SearchStrategy[datetime] = timestamps) -> st.SearchStrategy[Any]:
    return st.builds(
        StatusResponse,
        ref_to_message_id=message_ids,
        message_status=st.sampled_from(MessageStatus),
        timestamp=st.none() | ts,
        version=versions,
    )


def envelopes(ts: st.SearchStrategy[datetime] = timestamps) -> st.SearchStrategy[Envelope]:
    """Envelopes the builder can write.

    ``message_order``, ``signed`` and ``unknown_must_understand`` stay at their
    defaults: they describe received messages and ``build_envelope`` does not
    write them.
    """
    return st.builds(
        Envelope,
        header=message_headers(ts),
        ack_requested=st.none() | ack_requesteds,
        sync_reply=st.none() | sync_replies,
        acknowledgment=st.none() | acknowledgments(ts),
        error_list=st.none() | error_lists,
        manifest=st.none() | manifests,
        manifest_version=st.none() | versions,
        status_request=st.none() | st.builds(StatusRequest, message_ids, versions),
        status_response=st.none() | status_responses(ts),
    )


# -- normalisation -------------------------------------------------------------------


def normalised(env: Envelope) -> Envelope:
    """``env`` as it reads back: timestamps to the millisecond, Manifest defaults.

    An empty Manifest is not written; a Manifest without a version is written
    as version 2.0, and a version without a Manifest is lost.
    """
    header = env.header
    header = dataclasses.replace(
        header,
        timestamp=_to_millis(header.timestamp),
        time_to_live=_to_millis(header.time_to_live) if header.time_to_live else None,
    )
    ack = env.acknowledgment
    if ack is not None:
        ack = dataclasses.replace(ack, timestamp=_to_millis(ack.timestamp))
    response = env.status_response
    if response is not None and response.timestamp is not None:
        response = dataclasses.replace(response, timestamp=_to_millis(response.timestamp))
    manifest = env.manifest or None
    return dataclasses.replace(
        env,
        header=header,
        acknowledgment=ack,
        status_response=response,
        manifest=manifest,
        manifest_version=(env.manifest_version or EBMS_VERSION) if manifest else None,
    )


# -- properties ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(envelopes())
def test_build_then_parse_gives_the_envelope_back(env: Envelope) -> None:
    xml = build_envelope(env)
    parsed, tree = parse_envelope(xml)  # schema-validates: the builder writes valid envelopes
    assert parsed == normalised(env)
    assert tree.getroot().tag == "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
    assert parsed.signed is False and parsed.message_order is False
    assert parsed.unknown_must_understand == ()
    # Every timestamp is written in UTC with a Z, to the millisecond at most.
    for stamp in re.findall(rb"<eb:(?:Timestamp|TimeToLive)>([^<]*)<", xml):
        assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", stamp), stamp
    if parsed.acknowledgment is not None and env.acknowledgment is not None:
        # references are compare=False: check them explicitly.
        assert len(parsed.acknowledgment.references) == len(env.acknowledgment.references)


@settings(max_examples=150, deadline=None)
@given(envelopes())
def test_second_build_is_byte_identical(env: Envelope) -> None:
    first = build_envelope(env)
    parsed, _ = parse_envelope(first)
    second = build_envelope(parsed)
    assert second == first
    again, _ = parse_envelope(second)
    assert again == parsed
    if parsed.acknowledgment is not None:
        assert again.acknowledgment is not None
        assert again.acknowledgment.references == parsed.acknowledgment.references


@settings(max_examples=60, deadline=None)
@given(envelopes(any_timestamps))
def test_timestamps_are_read_back_to_the_millisecond(env: Envelope) -> None:
    parsed, _ = parse_envelope(build_envelope(env))
    assert parsed == normalised(env)
    for value in (parsed.header.timestamp, parsed.header.time_to_live):
        assert value is None or (value.tzinfo == UTC and value.microsecond % 1000 == 0)


@settings(max_examples=40, deadline=None)
@given(message_headers())
def test_a_bare_message_header_round_trips(header: MessageHeader) -> None:
    env = Envelope(header)
    xml = build_envelope(env)
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert parse_envelope(xml)[0] == env
    assert build_envelope(parse_envelope(xml)[0]) == xml
