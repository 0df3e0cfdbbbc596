"""The back-office operations, shared by the REST and SOAP APIs.

These are ebms-core's ``CPAService``, ``URLMappingService``,
``CertificateMappingService`` and ``EbMSMessageService`` operations (research
notes anchors-ebms §1.14) as plain methods over the store, with plain
dataclasses in and out; the REST and SOAP layers only translate JSON or XML
to and from them.  Every blocking method runs in the caller's thread (the
API layers call them in the store's thread pool); :meth:`BackOffice.ping`
and :meth:`BackOffice.message_status` are coroutines because they wait for
the partner's answer.

Refusals are :class:`BadRequest` (the request is wrong: the text says how)
and :class:`NotFound` (an unknown id), which the API layers turn into 400 and
404 (REST) or a SOAP fault.  Nothing here logs or returns payload content
except :meth:`BackOffice.get_message`, which is the point of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cpa.model import MSH_SERVICE, Cpa, PartyId, PartyInfo, Service, parse_party
from gateway.logfmt import log_event
from gateway.msh.outbound import (
    Payload,
    Queued,
    SendError,
    queue_message,
    queue_ping,
    queue_status_request,
)
from gateway.msh.security import MessageSecurity
from gateway.store import certmap, idempotency, urlmap
from gateway.store.backoffice import (
    MessageFilter,
    business_message,
    find_answer,
    process_event,
    process_message,
    unprocessed_events,
    unprocessed_message_ids,
)
from gateway.store.cpas import CpaExists, CpaInUse, CpaInvalid, CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database, IntegrityConflict
from gateway.store.identifiers import check_identifier, xml_safe
from gateway.store.messages import (
    Direction,
    EventType,
    StoredMessage,
    find_message,
    load_attachments,
    task_for_message,
)
from gateway.store.queries import (
    MessageQuery,
    MessageSummary,
    RetryRefused,
    list_messages,
    retry_message,
    supersede,
)
from gateway.store.timeutil import utcnow

log = logging.getLogger("dkgw.api")

__all__ = [
    "ApiError",
    "BackOffice",
    "BadRequest",
    "DataSource",
    "Message",
    "MessageEvent",
    "MessageFilter",
    "MessageProperties",
    "MessageRequest",
    "MessageRequestProperties",
    "MessageStatusInfo",
    "NotFound",
    "PartnerUnavailable",
    "Unprocessable",
    "request_digest",
]

#: The largest message ``getMessage`` returns inline (base64 in JSON or XML):
#: beyond it the answer itself becomes the problem.  The file drop has no limit.
MAX_INLINE_BYTES = 100 * 1024 * 1024


class ApiError(Exception):
    """A refusal meant for the caller; ``str()`` is the readable reason."""

    status = 400


class BadRequest(ApiError):
    """The request is wrong (HTTP 400)."""

    status = 400


class NotFound(ApiError):
    """An unknown CPA, message or mapping (HTTP 404)."""

    status = 404


class Conflict(ApiError):
    """The request clashes with the store's state (HTTP 409): a CPA still in use."""

    status = 409


class Unprocessable(ApiError):
    """An Idempotency-Key reused with another request (HTTP 422).

    422 as draft-ietf-httpapi-idempotency-key-header §2.7 advises: the request
    is well-formed, but the key already stands for a different one.
    """

    status = 422


class PartnerUnavailable(ApiError):
    """The partner did not answer a Ping or StatusRequest in time (HTTP 502/504)."""

    status = 502

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        if timed_out:
            self.status = 504


@dataclass(frozen=True)
class DataSource:
    """ebms-core's ``DataSource``: one payload."""

    content_type: str
    content: bytes
    name: str | None = None
    content_id: str | None = None


@dataclass(frozen=True)
class MessageRequestProperties:
    """ebms-core's ``MessageRequestProperties``; party ids and service are ``type:value``."""

    cpa_id: str
    from_party_id: str
    service: str
    action: str
    from_role: str | None = None
    to_party_id: str | None = None
    to_role: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    ref_to_message_id: str | None = None


@dataclass(frozen=True)
class MessageRequest:
    """ebms-core's ``MessageRequest``: properties and payloads."""

    properties: MessageRequestProperties
    data_sources: tuple[DataSource, ...] = ()


@dataclass(frozen=True)
class MessageProperties:
    """ebms-core's ``MessageProperties`` of a stored message."""

    cpa_id: str
    from_party_id: str
    from_role: str | None
    to_party_id: str
    to_role: str | None
    service: str
    action: str
    timestamp: datetime
    conversation_id: str
    message_id: str
    ref_to_message_id: str | None
    message_status: str | None


@dataclass(frozen=True)
class Message:
    """ebms-core's ``Message``: properties and payloads."""

    properties: MessageProperties
    data_sources: tuple[DataSource, ...] = field(default=())


@dataclass(frozen=True)
class MessageStatusInfo:
    """ebms-core's ``MessageStatus``: what the partner said about our message."""

    status: str
    timestamp: datetime | None


@dataclass(frozen=True)
class MessageEvent:
    """ebms-core's ``MessageEvent``, and why a FAILED one failed when that is known."""

    message_id: str
    type: str
    error_code: str | None = None
    error_text: str | None = None


def decode_base64(value: str, what: str) -> bytes:
    """Strict base64 (whitespace allowed, as line-wrapped encoders produce)."""
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def service_of(cpa: Cpa, value: str) -> Service:
    """The CPA's service whose ``type:value`` is ``value``; BadRequest if none."""
    service = cpa.service_by_key(value)
    if service is None:
        raise BadRequest(f"CPA {cpa.cpa_id} has no service {value!r}")
    return service


def _party(cpa: Cpa, party_id: str, what: str) -> tuple[PartyId, PartyInfo]:
    try:
        pid = parse_party(party_id)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
    info = cpa.party_by_ids((pid,))
    if info is None:
        raise BadRequest(f"CPA {cpa.cpa_id} has no party {party_id!r}")
    return pid, info


class BackOffice:
    """The operations of the back-office APIs over one store."""

    def __init__(
        self,
        db: Database,
        registry: CpaRegistry,
        *,
        security: MessageSecurity | None = None,
        wake: Callable[[], None] = lambda: None,
        wait_timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.registry = registry
        self.security = security
        self.wake = wake
        self.wait_timeout = wait_timeout
        self.clock = clock
        #: The iWmo/iJw relay (adapters.stuf.relay.Relay) when ``[stuf]`` has a role.
        self.relay: Any = None

    # -- CPAs -------------------------------------------------------------------------

    def validate_cpa(self, xml: bytes) -> None:
        """Raise :class:`BadRequest` with the findings unless the CPA is valid."""
        report = self.registry.validate(xml)
        if not report.ok:
            raise BadRequest(_findings(report.errors))

    def insert_cpa(self, xml: bytes, *, overwrite: bool = False) -> str:
        """Validate and store a CPA; returns its id."""
        try:
            row, replaced, _ = self.registry.insert(xml, overwrite=overwrite)
        except CpaInvalid as exc:
            raise BadRequest(_findings(exc.report.errors)) from None
        except CpaExists as exc:
            raise BadRequest(str(exc)) from None
        _log("cpa-imported", cpa=row.cpa_id, replaced=str(replaced).lower())
        return row.cpa_id

    def delete_cpa(self, cpa_id: str) -> None:
        """Delete a CPA; :class:`NotFound` if there is none.

        :class:`Conflict` while messages are pending on it: ebms-core's
        deleteCPA has no force flag, so the API refuses with the count and
        only the command line (``dkgw cpa delete --force``) fails them.
        """
        try:
            self.registry.delete(cpa_id)
        except CpaNotFound:
            raise NotFound(f"CPA {cpa_id} not found") from None
        except CpaInUse as exc:
            raise Conflict(
                f"{exc}; wait for them, or fail them with 'dkgw cpa delete --force {cpa_id}'"
            ) from None
        _log("cpa-deleted", cpa=cpa_id)

    def cpa_ids(self) -> list[str]:
        """Ids of every stored CPA."""
        return [row.cpa_id for row in self.registry.list()]

    def get_cpa(self, cpa_id: str) -> str:
        """The CPA's XML exactly as imported."""
        try:
            return self.registry.get_xml(cpa_id).decode("utf-8")
        except CpaNotFound:
            raise NotFound(f"CPA {cpa_id} not found") from None

    # -- URL mappings ---------------------------------------------------------------

    def set_url_mapping(self, source: str, destination: str) -> None:
        """Map CPA endpoint ``source`` to ``destination`` (replacing an existing mapping)."""
        try:
            with self.db.transaction() as cur:
                urlmap.set_url_mapping(cur, source, destination, now=self.clock())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        _log("url-mapping-set", source=source, destination=destination)

    def delete_url_mapping(self, source: str) -> None:
        """Remove the mapping of ``source``; :class:`NotFound` if there is none."""
        with self.db.transaction() as cur:
            if not urlmap.delete_url_mapping(cur, source):
                raise NotFound(f"URL mapping {source} not found")
        _log("url-mapping-deleted", source=source)

    def url_mappings(self) -> list[tuple[str, str]]:
        """(source, destination) of every mapping."""
        with self.db.transaction() as cur:
            return [(m.source, m.destination) for m in urlmap.list_url_mappings(cur)]

    # -- certificate mappings -----------------------------------------------------------

    def set_certificate_mapping(self, source: str, destination: str, cpa_id: str | None) -> None:
        """Map a certificate (base64 DER) to another, for one CPA or all (``cpa_id`` None)."""
        src = decode_base64(source, "source")
        dst = decode_base64(destination, "destination")
        try:
            with self.db.transaction() as cur:
                certmap.set_mapping(cur, src, dst, cpa_id or None, now=self.clock())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        _log("certificate-mapping-set", cpa=cpa_id or "*")

    def delete_certificate_mapping(self, source: str, cpa_id: str | None) -> None:
        """Remove a mapping; :class:`NotFound` if there is none."""
        src = decode_base64(source, "source certificate")
        try:
            with self.db.transaction() as cur:
                found = certmap.delete_mapping(cur, src, cpa_id or None)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not found:
            raise NotFound("certificate mapping not found")
        _log("certificate-mapping-deleted", cpa=cpa_id or "*")

    def certificate_mappings(self) -> list[tuple[str, str, str | None]]:
        """(source, destination, cpa id) of every mapping, certificates in base64 DER."""
        with self.db.transaction() as cur:
            return [
                (
                    base64.b64encode(m.source).decode("ascii"),
                    base64.b64encode(m.destination).decode("ascii"),
                    m.cpa_id,
                )
                for m in certmap.list_mappings(cur)
            ]

    # -- messages -------------------------------------------------------------------------

    def send_message(
        self,
        request: MessageRequest,
        *,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        user: str = "",
    ) -> str:
        """Store a message with its delivery task; returns its message id.

        With ``idempotency_key``, or a client-chosen MessageId, the request is
        done once per ``user``: a retry of the same request gets the first
        answer (the same message id), another request under the same key is
        :class:`Unprocessable` (docs/api.md, "Retrying safely").
        """
        key = idempotency_key
        if key is None and request.properties.message_id:
            key = f"messageId:{request.properties.message_id}"
        if key is None:
            with self.db.transaction() as cur:
                queued = self._queue(cur, request, correlation_id)
            self._sent(request, queued)
            return queued.message_id
        done: list[Queued] = []

        def work(cur: Cursor) -> tuple[str, str]:
            queued = self._queue(cur, request, correlation_id)
            done.append(queued)
            return queued.message_id, queued.message_id

        try:
            answer = self.once(user, key, "sendMessage", request_digest(request), work)
        except Unprocessable:
            if key == idempotency_key:
                raise
            # The client's own MessageId with another request: the duplicate it is.
            raise BadRequest(f"message {request.properties.message_id} already exists") from None
        if done:
            self._sent(request, done[0])
        return answer

    def once(
        self,
        user: str,
        key: str,
        operation: str,
        digest: str,
        work: Callable[[Cursor], tuple[str, str]],
    ) -> str:
        """``work``'s answer, done at most once per (``user``, ``key``).

        ``work`` stores an outbound message in the cursor's transaction and
        returns (its MessageId, the answer to give); the key is recorded in the
        same transaction.  A later call with the same key and ``digest`` (of the
        request) gets the first answer without calling ``work``; with another
        digest or operation it is :class:`Unprocessable`.
        """
        for attempt in (1, 2):
            try:
                with self.db.transaction() as cur:
                    first = idempotency.find(cur, user, key)
                    if first is not None:
                        if (
                            first.operation != operation
                            or first.request_sha256 != digest
                            or first.answer is None
                        ):
                            raise Unprocessable(
                                "Idempotency-Key was used before with another request; "
                                "use a new key for a new message"
                            )
                        _log("api-replayed", operation=operation, message_id=first.message_id)
                        return first.answer
                    idempotency.claim(cur, user, key, operation, digest, self.clock())
                    message_id, answer = work(cur)
                    stored = find_message(cur, message_id, Direction.OUT)
                    assert stored is not None  # stored by work in this transaction
                    idempotency.complete(cur, user, key, stored.pk, message_id, answer)
                    return answer
            except IntegrityConflict:
                # A concurrent request claimed the key first and has committed
                # (PostgreSQL waited for it): answer as it was answered.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _sent(self, request: MessageRequest, queued: Queued) -> None:
        props = request.properties
        _log(
            "api-send",
            message_id=queued.message_id,
            cpa=props.cpa_id,
            service=props.service,
            action=props.action,
            parts=str(len(request.data_sources)),
            bytes=str(sum(len(ds.content) for ds in request.data_sources)),
        )
        self.wake()

    def _queue(self, cur: Cursor, request: MessageRequest, correlation_id: str | None) -> Queued:
        """Check a message request and store it with its delivery task, in ``cur``."""
        props = request.properties
        for name in ("cpa_id", "from_party_id", "service", "action"):
            if not getattr(props, name):
                raise BadRequest(f"properties.{_camel(name)} is required")
        if props.message_id is not None and not props.message_id.strip():
            raise BadRequest("properties.messageId must not be empty")
        # Every one of these goes into the ebXML header and every later listing.
        for name in _IDENTIFIERS:
            value = getattr(props, name)
            if value is not None:
                try:
                    check_identifier(value, f"properties.{_camel(name)}")
                except ValueError as exc:
                    raise BadRequest(str(exc)) from None
        if correlation_id is not None and not xml_safe(correlation_id):
            raise BadRequest("X-Correlation-ID contains a control character")
        payloads = []
        for n, ds in enumerate(request.data_sources):
            if not ds.content_type:
                raise BadRequest(f"dataSources[{n}].contentType is required")
            # MIME headers of the package, and the stored payload's columns.
            for name, value in (
                ("contentType", ds.content_type),
                ("name", ds.name),
                ("contentId", ds.content_id),
            ):
                if value:
                    try:
                        check_identifier(value, f"dataSources[{n}].{name}")
                    except ValueError as exc:
                        raise BadRequest(str(exc)) from None
            payloads.append(Payload(ds.content, ds.content_type, ds.name, ds.content_id))
        cpa = self._cpa(cur, props.cpa_id, bad=True)
        service = service_of(cpa, props.service)
        from_party, from_info = _party(cpa, props.from_party_id, "fromPartyId")
        from_role = props.from_role or from_info.role_for(service, props.action, sends=True)
        if from_role is None:
            raise BadRequest(
                f"party {props.from_party_id} cannot send {props.service} {props.action}"
            )
        if props.to_party_id:
            to_party, to_info = _party(cpa, props.to_party_id, "toPartyId")
        else:
            to_info = cpa.other_party(from_info)
            to_party = to_info.party_ids[0]
        to_role = props.to_role or to_info.role_for(service, props.action, sends=False)
        if to_role is None:
            raise BadRequest(
                f"party {to_party.key()} cannot receive {props.service} {props.action}"
            )
        if props.message_id and find_message(cur, props.message_id, Direction.OUT):
            raise BadRequest(f"message {props.message_id} already exists")
        try:
            queued = queue_message(
                cur,
                self.registry,
                cpa_id=props.cpa_id,
                from_party=from_party,
                from_role=from_role,
                to_party=to_party,
                to_role=to_role,
                service=service,
                action=props.action,
                payloads=payloads,
                conversation_id=props.conversation_id,
                message_id=props.message_id,
                ref_to_message_id=props.ref_to_message_id,
                correlation_id=correlation_id,
                clock=self.clock,
                security=self.security,
            )
        except SendError as exc:
            raise BadRequest(str(exc)) from None
        return queued

    def resend_message(self, message_id: str) -> str:
        """Send a stored outbound message again as a new message; returns the new id.

        A message still pending is retired in the same transaction that queues
        the new one (:func:`gateway.store.queries.supersede`), so the partner
        never gets both; while an attempt of it is in flight the resend is
        refused.  The payloads of an encrypted message are stored as sent
        (encrypted for the receiver), so such a message cannot be resent from
        the store: the back office sends it anew instead.
        """
        with self.db.transaction() as cur:
            original = find_message(cur, message_id, Direction.OUT)
            if original is None or original.service == MSH_SERVICE:
                raise NotFound(f"message {message_id} not found")
            parts = load_attachments(cur, original.pk)
            try:
                if any(b"EncryptedData" in p.head(4096) for p in parts if _is_xml(p.content_type)):
                    raise BadRequest(
                        f"message {message_id} was encrypted for its receiver; "
                        "its plaintext is not kept, send it anew"
                    )
                request = MessageRequest(
                    MessageRequestProperties(
                        cpa_id=original.cpa_id,
                        from_party_id=original.from_party,
                        from_role=original.from_role,
                        to_party_id=original.to_party,
                        to_role=original.to_role,
                        service=original.service,
                        action=original.action,
                        conversation_id=original.conversation_id,
                        ref_to_message_id=original.ref_to_message_id,
                    ),
                    tuple(DataSource(p.content_type, p.data(), p.filename) for p in parts),
                )
            finally:
                for p in parts:
                    p.close()
            queued = self._queue(cur, request, original.correlation_id)
            try:
                retired = supersede(
                    cur, original.pk, message_id, queued.message_id, now=self.clock()
                )
            except RetryRefused as exc:
                raise BadRequest(str(exc)) from None
        self._sent(request, queued)
        _log(
            "api-resend",
            message_id=queued.message_id,
            original=message_id,
            superseded="yes" if retired else None,
        )
        return queued.message_id

    def list_messages(self, query: MessageQuery) -> list[MessageSummary]:
        """Business messages matching ``query``, newest first (the operator's list)."""
        try:
            with self.db.transaction() as cur:
                return list_messages(cur, query)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def retry_message(self, message_id: str) -> MessageSummary:
        """Attempt our message now, same MessageId and bytes (:func:`retry_message`)."""
        try:
            with self.db.transaction() as cur:
                summary = retry_message(cur, message_id, now=self.clock())
        except RetryRefused as exc:
            if exc.unknown:
                raise NotFound(f"message {message_id} not found") from None
            raise BadRequest(str(exc)) from None
        _log("api-retry", message_id=message_id)
        self.wake()
        return summary

    def unprocessed_message_ids(self, flt: MessageFilter, max_nr: int | None) -> list[str]:
        """Ids of received messages not yet processed, oldest first."""
        with self.db.transaction() as cur:
            return unprocessed_message_ids(cur, flt, max_nr)

    def get_message(self, message_id: str, *, process: bool = False) -> Message:
        """A stored business message with its payloads; ``process`` marks it PROCESSED."""
        with self.db.transaction() as cur:
            message = business_message(cur, message_id)
            if message is None:
                raise NotFound(f"message {message_id} not found")
            parts = load_attachments(cur, message.pk)
            try:
                if sum(p.size for p in parts) > MAX_INLINE_BYTES:
                    raise BadRequest(
                        f"message {message_id} is too large to return inline; "
                        "use a file-drop inbox for it"
                    )
                sources = tuple(
                    DataSource(p.content_type, p.data(), p.filename, p.content_id) for p in parts
                )
            finally:
                for p in parts:
                    p.close()
            if process and message.direction is Direction.IN:
                process_message(cur, message_id, now=self.clock())
                message = business_message(cur, message_id) or message
        _log(
            "api-get-message",
            message_id=message_id,
            parts=str(len(sources)),
            processed=str(process).lower(),
        )
        return Message(properties_of(message), sources)

    def process_message(self, message_id: str) -> None:
        """Mark a received message PROCESSED; :class:`NotFound` if there is none."""
        with self.db.transaction() as cur:
            if not process_message(cur, message_id, now=self.clock()):
                raise NotFound(f"message {message_id} not found")
        _log("api-processed", message_id=message_id)

    def unprocessed_events(
        self, flt: MessageFilter, event_types: Sequence[str], max_nr: int | None
    ) -> list[MessageEvent]:
        """Unprocessed message events, oldest first."""
        try:
            types = [EventType(t) for t in event_types]
        except ValueError:
            raise BadRequest(
                f"eventTypes must be among {', '.join(e.value for e in EventType)}"
            ) from None
        with self.db.transaction() as cur:
            return [
                MessageEvent(e.message_id, e.type.value, e.error_code, e.error_text)
                for e in unprocessed_events(cur, flt, types, max_nr)
            ]

    def process_event(self, message_id: str) -> None:
        """Mark a message's events processed; :class:`NotFound` if there is no such message."""
        with self.db.transaction() as cur:
            if not process_event(cur, message_id, now=self.clock()):
                raise NotFound(f"message {message_id} not found")
        _log("api-event-processed", message_id=message_id)

    # -- asking the partner -----------------------------------------------------------------

    def queue_ping(self, cpa_id: str, from_party_id: str, to_party_id: str) -> str:
        """Store a Ping with its delivery task; returns its message id."""
        with self.db.transaction() as cur:
            cpa = self._cpa(cur, cpa_id)
            from_party, _ = _party(cpa, from_party_id, "fromPartyId")
            to_party, _ = _party(cpa, to_party_id, "toPartyId")
            try:
                queued = queue_ping(
                    cur,
                    self.registry,
                    cpa_id=cpa_id,
                    from_party=from_party,
                    to_party=to_party,
                    clock=self.clock,
                )
            except SendError as exc:
                raise BadRequest(str(exc)) from None
        self.wake()
        return queued.message_id

    def ping_answer(self, ping_id: str) -> bool | None:
        """True: Pong; None: not yet; raises :class:`PartnerUnavailable` on an error."""
        with self.db.transaction() as cur:
            reply = find_answer(cur, ping_id, ("Pong", "MessageError"))
            if reply is not None:
                if reply.action == "Pong":
                    return True
                raise PartnerUnavailable(f"the partner answered the Ping {ping_id} with an error")
            self._raise_if_undeliverable(cur, ping_id, "Ping")
        return None

    def queue_status_request(self, message_id: str) -> str:
        """Store a StatusRequest about our message ``message_id``; returns its id."""
        with self.db.transaction() as cur:
            ours = find_message(cur, message_id, Direction.OUT)
            if ours is None or ours.service == MSH_SERVICE:
                if find_message(cur, message_id, Direction.IN) is not None:
                    raise BadRequest(f"message {message_id} is not an outgoing message")
                raise NotFound(f"message {message_id} not found")
            try:
                queued = queue_status_request(
                    cur,
                    self.registry,
                    cpa_id=ours.cpa_id,
                    from_party=parse_party(ours.from_party.split(",")[0]),
                    to_party=parse_party(ours.to_party.split(",")[0]),
                    ref_to_message_id=message_id,
                    clock=self.clock,
                )
            except (SendError, CpaNotFound) as exc:
                raise BadRequest(str(exc)) from None
        self.wake()
        return queued.message_id

    def status_answer(self, request_id: str) -> MessageStatusInfo | None:
        """The StatusResponse to our StatusRequest, None while there is none."""
        from gateway.ebms.envelope import EnvelopeError, parse_envelope

        with self.db.transaction() as cur:
            reply = find_answer(cur, request_id, ("StatusResponse", "MessageError"))
            if reply is None:
                self._raise_if_undeliverable(cur, request_id, "StatusRequest")
                return None
        if reply.action == "MessageError":
            raise PartnerUnavailable(
                f"the partner answered StatusRequest {request_id} with an error"
            )
        try:
            env, _ = parse_envelope(reply.envelope)
        except EnvelopeError:
            raise PartnerUnavailable("the partner's StatusResponse is unreadable") from None
        response = env.status_response
        if response is None:
            raise PartnerUnavailable("the partner's StatusResponse is unreadable")
        # ebMS spells the status "NotRecognized"; ebms-core's API "NOT_RECOGNIZED".
        return MessageStatusInfo(response.message_status.name, response.timestamp)

    async def ping(
        self, run_in_thread: Any, reactor: Any, cpa_id: str, from_id: str, to_id: str
    ) -> None:
        """Ping the partner and wait for its Pong (ebms-core's synchronous ``ping``)."""
        ping_id = await run_in_thread(self.queue_ping, cpa_id, from_id, to_id)
        answer = await self._await(run_in_thread, reactor, self.ping_answer, ping_id)
        if answer is None:
            raise PartnerUnavailable(
                f"no Pong to {ping_id} within {self.wait_timeout:g} s", timed_out=True
            )

    async def message_status(
        self, run_in_thread: Any, reactor: Any, message_id: str
    ) -> MessageStatusInfo:
        """Ask the partner the status of our message (ebMS 2.0 §7.3) and wait for the answer."""
        request_id = await run_in_thread(self.queue_status_request, message_id)
        answer = await self._await(run_in_thread, reactor, self.status_answer, request_id)
        if answer is None:
            raise PartnerUnavailable(
                f"no StatusResponse to {request_id} within {self.wait_timeout:g} s",
                timed_out=True,
            )
        return answer  # type: ignore[no-any-return]

    async def _await(self, run_in_thread: Any, reactor: Any, check: Any, ref: str) -> Any:
        from twisted.internet.task import deferLater

        deadline = time.monotonic() + self.wait_timeout
        delay = 0.02
        while True:
            answer = await run_in_thread(check, ref)
            if answer is not None or time.monotonic() >= deadline:
                return answer
            await deferLater(reactor, min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.25)

    # -- helpers ----------------------------------------------------------------------------

    def _cpa(self, cur: Cursor, cpa_id: str, *, bad: bool = False) -> Cpa:
        try:
            return self.registry.get_cpa(cpa_id, cur)
        except CpaNotFound:
            # An unknown CPA in a message request is bad input (ebms-core: 400);
            # in a path (ping) it is a resource that does not exist.
            if bad:
                raise BadRequest(f"CPA {cpa_id} not found") from None
            raise NotFound(f"CPA {cpa_id} not found") from None

    @staticmethod
    def _raise_if_undeliverable(cur: Cursor, message_id: str, what: str) -> None:
        sent = find_message(cur, message_id, Direction.OUT)
        state = task_for_message(cur, sent.pk) if sent else None
        if state is not None and state[0] in ("failed", "expired"):
            raise PartnerUnavailable(f"{what} {message_id} not delivered: {state[2] or state[0]}")


#: The message request properties stored and sent as they are.
_IDENTIFIERS = (
    "cpa_id",
    "from_party_id",
    "from_role",
    "to_party_id",
    "to_role",
    "service",
    "action",
    "conversation_id",
    "message_id",
    "ref_to_message_id",
)


def request_digest(request: MessageRequest) -> str:
    """Hex SHA-256 of a message request's canonical form: equal for equal requests.

    Properties and payloads (their bytes by digest), whatever JSON or XML
    formatting carried them.
    """
    props = request.properties
    canonical = {
        "properties": {name: getattr(props, name) for name in _IDENTIFIERS},
        "dataSources": [
            {
                "contentType": ds.content_type,
                "name": ds.name,
                "contentId": ds.content_id,
                "sha256": hashlib.sha256(ds.content).hexdigest(),
            }
            for ds in request.data_sources
        ],
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def _log(event: str, **fields: str | None) -> None:
    log_event(log, logging.INFO, {"event": event, **fields})


def properties_of(message: StoredMessage) -> MessageProperties:
    """The ebms-core properties of a stored message."""
    return MessageProperties(
        cpa_id=message.cpa_id,
        from_party_id=message.from_party.split(",")[0],
        from_role=message.from_role,
        to_party_id=message.to_party.split(",")[0],
        to_role=message.to_role,
        service=message.service,
        action=message.action,
        timestamp=message.sent_at,
        conversation_id=message.conversation_id,
        message_id=message.message_id,
        ref_to_message_id=message.ref_to_message_id,
        message_status=message.status,
    )


def _is_xml(content_type: str) -> bool:
    return "xml" in content_type.lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _findings(errors: Sequence[object]) -> str:
    shown = [str(e) for e in errors[:20]]
    more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
    return "invalid CPA:\n" + "\n".join(shown) + more
