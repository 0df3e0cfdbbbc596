"""The back-office message operations: send, resend, retry, list, fetch, process, ask.

ebms-core's ``EbMSMessageService`` as plain methods, mixed into
:class:`adapters.api.service.BackOffice`.  Sending, resending, retrying,
pinging and asking for a status go through the MSH's one door
(:class:`gateway.msh.service.MshService`); this module checks what only an
API client can get wrong (required properties, identifiers, the
correlation id) and turns the door's refusals into the API's
(:func:`adapters.api.errors.refused`).  :meth:`MessageOperations.ping` and
:meth:`MessageOperations.message_status` are coroutines because they wait
for the partner's answer.  Nothing here logs or returns payload content
except :meth:`MessageOperations.get_message`, which is the point of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from adapters.api.errors import BadRequest, NotFound, PartnerUnavailable, refused
from adapters.api.model import (
    IDENTIFIERS,
    DataSource,
    Message,
    MessageEvent,
    MessageRequest,
    MessageStatusInfo,
    properties_of,
    request_digest,
)
from gateway.logfmt import log_event
from gateway.msh.answers import Outcome
from gateway.msh.service import Addressing, MshService, Payload, Queued, Refusal, SendError
from gateway.msh.waiting import await_answer
from gateway.store.backoffice import (
    MessageFilter,
    business_message,
    process_event,
    process_message,
    unprocessed_events,
    unprocessed_message_ids,
)
from gateway.store.database import Cursor, Database
from gateway.store.identifiers import check_identifier, xml_safe
from gateway.store.messages import Direction, EventType, load_attachments
from gateway.store.queries import MessageQuery, MessageSummary, list_messages

log = logging.getLogger("dkgw.api")

__all__ = ["MAX_INLINE_BYTES", "MessageOperations", "addressing_of"]

#: The largest message ``getMessage`` returns inline (base64 in JSON or XML):
#: beyond it the answer itself becomes the problem.  The file drop has no limit.
MAX_INLINE_BYTES = 100 * 1024 * 1024


def addressing_of(
    request: MessageRequest, correlation_id: str | None
) -> tuple[Addressing, list[Payload]]:
    """Check what an API client wrote in a message request; its addressing and payloads.

    Raises :class:`BadRequest` for a missing property, an identifier that
    cannot go into an ebXML header or a MIME header, or a correlation id with
    a control character.  What the CPA says is the door's to check.
    """
    props = request.properties
    for name in ("cpa_id", "from_party_id", "service", "action"):
        if not getattr(props, name):
            raise BadRequest(f"properties.{_camel(name)} is required")
    if props.message_id is not None and not props.message_id.strip():
        raise BadRequest("properties.messageId must not be empty")
    # Every one of these goes into the ebXML header and every later listing.
    for name in IDENTIFIERS:
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
    addressing = Addressing(
        cpa_id=props.cpa_id,
        service=props.service,
        action=props.action,
        from_party=props.from_party_id,
        from_role=props.from_role or None,
        to_party=props.to_party_id or None,
        to_role=props.to_role or None,
        message_id=props.message_id or None,
    )
    return addressing, payloads


class MessageOperations:
    """Messages in and out, and questions to the partner (a part of :class:`BackOffice`)."""

    db: Database
    msh: MshService
    wait_timeout: float
    clock: Callable[[], datetime]

    # -- sending ----------------------------------------------------------------------

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

        def work(cur: Cursor) -> Queued:
            addressing, payloads = addressing_of(request, correlation_id)
            return self.msh.queue(
                cur,
                addressing,
                payloads=payloads,
                conversation_id=request.properties.conversation_id,
                ref_to_message_id=request.properties.ref_to_message_id,
                correlation_id=correlation_id,
            )

        keyed = idempotency_key is not None or bool(request.properties.message_id)
        try:
            sent = self.msh.send_once(
                work,
                message_id=request.properties.message_id,
                idempotency_key=idempotency_key,
                user=user,
                digest=request_digest(request) if keyed else "",
            )
        except SendError as exc:
            raise refused(exc) from None
        if sent.replayed is not None:
            _log("api-replayed", operation="sendMessage", message_id=sent.replayed)
        if sent.queued is not None:
            _sent(request.properties.cpa_id, request.properties.service, request.properties.action,
                  sent.queued, len(request.data_sources),
                  sum(len(ds.content) for ds in request.data_sources))  # fmt: skip
        return sent.answer

    def once(
        self,
        user: str,
        key: str,
        operation: str,
        digest: str,
        work: Callable[[Cursor], tuple[str, str]],
    ) -> str:
        """``work``'s answer, done at most once per (``user``, ``key``).

        See :meth:`gateway.msh.service.MshService.once`; a key that stands for
        another request is :class:`Unprocessable`.
        """
        try:
            answer, replayed = self.msh.once(user, key, operation, digest, work)
        except SendError as exc:
            raise refused(exc) from None
        if replayed is not None:
            _log("api-replayed", operation=operation, message_id=replayed)
        return answer

    def resend_message(self, message_id: str) -> str:
        """Send a stored outbound message again as a new message; returns the new id.

        See :meth:`gateway.msh.service.MshService.resend`: a pending original
        is retired in the same transaction, an encrypted one cannot be resent.
        """
        try:
            resent = self.msh.resend(message_id)
        except SendError as exc:
            raise refused(exc) from None
        original = resent.original
        _sent(original.cpa_id, original.service, original.action, resent.queued,
              resent.parts, resent.size)  # fmt: skip
        _log(
            "api-resend",
            message_id=resent.queued.message_id,
            original=message_id,
            superseded="yes" if resent.superseded else None,
        )
        return resent.queued.message_id

    def retry_message(self, message_id: str) -> MessageSummary:
        """Attempt our message now, same MessageId and bytes."""
        try:
            summary = self.msh.retry(message_id)
        except SendError as exc:
            raise refused(exc) from None
        _log("api-retry", message_id=message_id)
        return summary

    # -- the store's view -------------------------------------------------------------

    def list_messages(self, query: MessageQuery) -> list[MessageSummary]:
        """Business messages matching ``query``, newest first (the operator's list)."""
        try:
            with self.db.transaction() as cur:
                return list_messages(cur, query)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

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

    # -- asking the partner -----------------------------------------------------------

    def queue_ping(self, cpa_id: str, from_party_id: str, to_party_id: str) -> str:
        """Store a Ping with its delivery task; returns its message id."""
        try:
            return self.msh.ping(cpa_id, from_party_id, to_party_id).message_id
        except SendError as exc:
            # The CPA is the resource in the path (/ebms/ping/{cpaId}/...).
            raise refused(exc, missing_cpa=NotFound) from None

    def ping_answer(self, ping_id: str) -> bool | None:
        """True: Pong; None: not yet; raises :class:`PartnerUnavailable` on an error."""
        answer = self.msh.answer(ping_id, "Pong")
        if answer is None:
            return None
        if answer.outcome is Outcome.ERROR:
            raise PartnerUnavailable(f"the partner answered the Ping {ping_id} with an error")
        if answer.outcome is Outcome.UNDELIVERED:
            raise PartnerUnavailable(f"Ping {ping_id} not delivered: {answer.failure}")
        return True

    def queue_status_request(self, message_id: str) -> str:
        """Store a StatusRequest about our message ``message_id``; returns its id."""
        try:
            return self.msh.status_request(message_id).message_id
        except SendError as exc:
            if exc.refusal is Refusal.NO_CPA:
                raise BadRequest(str(exc)) from None
            raise refused(exc) from None

    def status_answer(self, request_id: str) -> MessageStatusInfo | None:
        """The StatusResponse to our StatusRequest, None while there is none."""
        answer = self.msh.answer(request_id, "StatusResponse")
        if answer is None:
            return None
        if answer.outcome is Outcome.UNDELIVERED:
            raise PartnerUnavailable(f"StatusRequest {request_id} not delivered: {answer.failure}")
        if answer.outcome is Outcome.ERROR:
            raise PartnerUnavailable(
                f"the partner answered StatusRequest {request_id} with an error"
            )
        assert answer.answer_id is not None
        response = self.msh.status_response(answer.answer_id)
        if response is None:
            raise PartnerUnavailable("the partner's StatusResponse is unreadable")
        # ebMS spells the status "NotRecognized"; ebms-core's API "NOT_RECOGNIZED".
        return MessageStatusInfo(response.message_status.name, response.timestamp)

    async def ping(
        self, run_in_thread: Any, reactor: Any, cpa_id: str, from_id: str, to_id: str
    ) -> None:
        """Ping the partner and wait for its Pong (ebms-core's synchronous ``ping``)."""
        ping_id = await run_in_thread(self.queue_ping, cpa_id, from_id, to_id)
        answer = await await_answer(
            run_in_thread, reactor, lambda: self.ping_answer(ping_id), self.wait_timeout
        )
        if answer is None:
            raise PartnerUnavailable(
                f"no Pong to {ping_id} within {self.wait_timeout:g} s", timed_out=True
            )

    async def message_status(
        self, run_in_thread: Any, reactor: Any, message_id: str
    ) -> MessageStatusInfo:
        """Ask the partner the status of our message (ebMS 2.0 §7.3) and wait for the answer."""
        request_id = await run_in_thread(self.queue_status_request, message_id)
        answer = await await_answer(
            run_in_thread, reactor, lambda: self.status_answer(request_id), self.wait_timeout
        )
        if answer is None:
            raise PartnerUnavailable(
                f"no StatusResponse to {request_id} within {self.wait_timeout:g} s",
                timed_out=True,
            )
        return answer


def _sent(cpa_id: str, service: str, action: str, queued: Queued, parts: int, size: int) -> None:
    _log(
        "api-send",
        message_id=queued.message_id,
        cpa=cpa_id,
        service=service,
        action=action,
        parts=str(parts),
        bytes=str(size),
    )


def _log(event: str, **fields: str | None) -> None:
    log_event(log, logging.INFO, {"event": event, **fields})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)
