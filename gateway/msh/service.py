"""The one door into the MSH: send, resend, retry, ping and ask, and read the answers.

REST, SOAP, the file drop, the StUF relay, the CLI and the in-process API
of :class:`gateway.serve.Gateway` all come through here.  Each operation
reads its facts from the store (the CPA, whether a MessageId is taken, the
first use of an idempotency key, the answer to a request), lets a plain
function decide (:mod:`gateway.msh.addressing`, :mod:`gateway.msh.plan`,
:mod:`gateway.msh.answers`) and applies the decision in one transaction
(:mod:`gateway.msh.outbound`); :mod:`gateway.msh.waiting` polls
:meth:`MshService.answer` until the partner has answered.  Refusals are :class:`SendError` with a
:class:`Refusal`; each front door words and maps them its own way (an HTTP
status, a SOAP fault, a StUF Fo01 code, a CLI exit).

The functions over a cursor (:func:`queue`, :func:`queue_ping`,
:func:`queue_status_request`) queue inside a transaction the caller owns,
as the file drop and the relay need to record their own rows with the
message; :class:`MshService` owns its transactions and wakes the delivery
worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cpa.model import MSH_SERVICE, Cpa, PartyId, Service, parse_party
from gateway.ebms.envelope import EnvelopeError, parse_envelope
from gateway.ebms.model import StatusResponse
from gateway.ebms.signals import ping, status_request
from gateway.msh.addressing import Addressing, Refusal, SendError, resolve_send, resolve_signal
from gateway.msh.answers import Answer, AnswerFacts, Outcome, Replay, replay, verdict
from gateway.msh.outbound import Queued, queue_message, queue_signal
from gateway.msh.plan import Payload
from gateway.msh.security import MessageSecurity
from gateway.store import idempotency
from gateway.store.backoffice import find_answer
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database, IntegrityConflict
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    StoredMessage,
    find_message,
    load_attachments,
    task_for_message,
)
from gateway.store.queries import MessageSummary, RetryRefused, retry_message, supersede
from gateway.store.timeutil import utcnow

__all__ = [
    "Addressing",
    "Answer",
    "MshService",
    "Outcome",
    "Payload",
    "Queued",
    "Refusal",
    "Resent",
    "SendError",
    "Sent",
    "queue",
    "queue_ping",
    "queue_status_request",
    "read_cpa",
    "send_message",
    "send_ping",
]

Clock = Callable[[], datetime]


# -- in the caller's transaction -------------------------------------------------------


def read_cpa(cur: Cursor, registry: CpaRegistry, cpa_id: str) -> Cpa:
    """The stored CPA; :class:`SendError` (:attr:`Refusal.NO_CPA`) if there is none."""
    try:
        return registry.get_cpa(cpa_id, cur)
    except CpaNotFound as exc:
        raise SendError(str(exc), Refusal.NO_CPA, cpa_id=cpa_id) from None


def queue(
    cur: Cursor,
    registry: CpaRegistry,
    addressing: Addressing,
    *,
    payloads: Sequence[Payload] = (),
    conversation_id: str | None = None,
    ref_to_message_id: str | None = None,
    correlation_id: str | None = None,
    clock: Clock = utcnow,
    security: MessageSecurity | None = None,
) -> Queued:
    """Resolve ``addressing`` once and queue the business message in ``cur``'s transaction.

    Raises :class:`SendError` when the CPA does not allow it (unknown CPA,
    service, parties or roles; a MessageId already sent; a CPA that is not in
    force) or it cannot be secured as the CPA demands.
    """
    cpa = read_cpa(cur, registry, addressing.cpa_id)
    message_id = addressing.message_id
    duplicate = message_id is not None and message_id != ""
    if duplicate:  # the client chose the MessageId: we may have sent it already
        duplicate = find_message(cur, message_id or "", Direction.OUT) is not None
    route = resolve_send(cpa, addressing, clock(), duplicate=duplicate)
    return queue_message(
        cur,
        route,
        payloads=payloads,
        conversation_id=conversation_id,
        message_id=addressing.message_id,
        ref_to_message_id=ref_to_message_id,
        correlation_id=correlation_id,
        clock=clock,
        security=security,
    )


def queue_ping(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: str | PartyId,
    to_party: str | PartyId,
    clock: Clock = utcnow,
) -> Queued:
    """Store and queue a Ping; its Pong arrives as an inbound message (ebMS 2.0 §8)."""
    route = resolve_signal(read_cpa(cur, registry, cpa_id), from_party, to_party, "Ping")
    return queue_signal(cur, route, lambda header, sync: ping(header, sync=sync), clock=clock)


def queue_status_request(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: str | PartyId,
    to_party: str | PartyId,
    ref_to_message_id: str,
    clock: Clock = utcnow,
) -> Queued:
    """Store and queue a StatusRequest about our message ``ref_to_message_id``.

    The StatusResponse arrives as an inbound message referring to the request
    (ebMS 2.0 §7.3).
    """
    route = resolve_signal(read_cpa(cur, registry, cpa_id), from_party, to_party, "StatusRequest")
    return queue_signal(
        cur,
        route,
        lambda header, sync: status_request(header, ref_to_message_id, sync=sync),
        clock=clock,
    )


def send_message(
    db: Database,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: str | PartyId,
    from_role: str | None,
    to_party: str | PartyId | None,
    to_role: str | None,
    service: str | Service,
    action: str,
    message_id: str | None = None,
    **kwargs: Any,
) -> Queued:
    """Queue a business message in a transaction of its own (the CLI's and tests' form).

    The keyword arguments after ``action`` are :func:`queue`'s.
    """
    addressing = Addressing(
        cpa_id=cpa_id,
        service=service,
        action=action,
        from_party=from_party,
        from_role=from_role,
        to_party=to_party,
        to_role=to_role,
        message_id=message_id,
    )
    with db.transaction() as cur:
        return queue(cur, registry, addressing, **kwargs)


def send_ping(db: Database, registry: CpaRegistry, **kwargs: Any) -> Queued:
    """:func:`queue_ping` in a transaction of its own."""
    with db.transaction() as cur:
        return queue_ping(cur, registry, **kwargs)


# -- the door over a store -------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """A send under an idempotency key: the answer, and the message if queued now."""

    answer: str
    queued: Queued | None  # None when the first answer was given again
    replayed: str | None = None  # then: the MessageId the first request stored


@dataclass(frozen=True)
class Resent:
    """A stored message sent again as a new one."""

    queued: Queued
    original: StoredMessage
    parts: int
    size: int
    superseded: bool  # the original was still pending and is retired


def _encrypted(part: AttachmentRecord) -> bool:
    return "xml" in part.content_type.lower() and b"EncryptedData" in part.head(4096)


class MshService:
    """The MSH's operations over one store, each in a transaction of its own.

    ``wake`` tells the delivery worker that a task is due (a no-op where none
    runs in this process: the CLI).
    """

    def __init__(
        self,
        db: Database,
        registry: CpaRegistry,
        *,
        security: MessageSecurity | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.registry = registry
        self.security = security
        self.wake = wake
        self.clock = clock

    # -- sending ------------------------------------------------------------------

    def queue(self, cur: Cursor, addressing: Addressing, **kwargs: Any) -> Queued:
        """:func:`queue` with this service's clock and security, in ``cur``."""
        kwargs.setdefault("security", self.security)
        return queue(cur, self.registry, addressing, clock=self.clock, **kwargs)

    def send(self, addressing: Addressing, **kwargs: Any) -> Queued:
        """:meth:`queue` in a transaction of its own; wakes the delivery worker."""
        with self.db.transaction() as cur:
            queued = self.queue(cur, addressing, **kwargs)
        self.wake()
        return queued

    def send_once(
        self,
        work: Callable[[Cursor], Queued],
        *,
        message_id: str | None,
        idempotency_key: str | None,
        user: str,
        digest: str,
    ) -> Sent:
        """Queue one message with ``work``, at most once per key (docs/api.md).

        The key is ``idempotency_key``, else the client-chosen ``message_id``:
        a retry of the same request (same ``digest``) gets the first answer,
        another request under an Idempotency-Key is refused
        (:attr:`Refusal.KEY_REUSED`), under a MessageId it is the duplicate it
        is (:attr:`Refusal.DUPLICATE`).  Without either key ``work`` just runs.
        """
        key = idempotency_key
        if key is None and message_id:
            key = f"messageId:{message_id}"
        if key is None:
            with self.db.transaction() as cur:
                queued = work(cur)
            self.wake()
            return Sent(queued.message_id, queued)
        done: list[Queued] = []

        def once_work(cur: Cursor) -> tuple[str, str]:
            queued = work(cur)
            done.append(queued)
            return queued.message_id, queued.message_id

        try:
            answer, replayed = self.once(user, key, "sendMessage", digest, once_work)
        except SendError as exc:
            if exc.refusal is not Refusal.KEY_REUSED or key == idempotency_key:
                raise
            # The client's own MessageId with another request: the duplicate it is.
            raise SendError(f"message {message_id} already exists", Refusal.DUPLICATE) from None
        if done:
            self.wake()
        return Sent(answer, done[0] if done else None, replayed)

    def once(
        self,
        user: str,
        key: str,
        operation: str,
        digest: str,
        work: Callable[[Cursor], tuple[str, str]],
    ) -> tuple[str, str | None]:
        """``work``'s answer, done at most once per (``user``, ``key``); and the replayed id.

        ``work`` stores an outbound message in the cursor's transaction and
        returns (its MessageId, the answer to give); the key is recorded in the
        same transaction.  A later call with the same key and ``digest`` gets
        the first answer without calling ``work`` (and the first MessageId as
        the second value); with another digest or operation it is refused
        (:attr:`Refusal.KEY_REUSED`).
        """
        for attempt in (1, 2):
            try:
                with self.db.transaction() as cur:
                    first = idempotency.find(cur, user, key)
                    decision = replay(
                        first.operation if first else None,
                        first.request_sha256 if first else None,
                        first is not None and first.answer is not None,
                        operation,
                        digest,
                    )
                    if decision is Replay.REFUSE:
                        raise SendError(
                            "Idempotency-Key was used before with another request; "
                            "use a new key for a new message",
                            Refusal.KEY_REUSED,
                        )
                    if decision is Replay.ANSWER:
                        assert first is not None and first.answer is not None
                        return first.answer, first.message_id or ""
                    idempotency.claim(cur, user, key, operation, digest, self.clock())
                    message_id, answer = work(cur)
                    stored = find_message(cur, message_id, Direction.OUT)
                    assert stored is not None  # stored by work in this transaction
                    idempotency.complete(cur, user, key, stored.pk, message_id, answer)
                    return answer, None
            except IntegrityConflict:
                # A concurrent request claimed the key first and has committed
                # (PostgreSQL waited for it): answer as it was answered.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def resend(self, message_id: str) -> Resent:
        """Send our stored message ``message_id`` again as a new message.

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
                raise SendError(f"message {message_id} not found", Refusal.UNKNOWN_MESSAGE)
            parts = load_attachments(cur, original.pk)
            try:
                if any(_encrypted(p) for p in parts):
                    raise SendError(
                        f"message {message_id} was encrypted for its receiver; "
                        "its plaintext is not kept, send it anew",
                        Refusal.REFUSED,
                    )
                payloads = tuple(Payload(p.data(), p.content_type, p.filename) for p in parts)
            finally:
                for p in parts:
                    p.close()
            queued = self.queue(
                cur,
                Addressing(
                    cpa_id=original.cpa_id,
                    service=original.service,
                    action=original.action,
                    from_party=original.from_party,
                    from_role=original.from_role,
                    to_party=original.to_party,
                    to_role=original.to_role,
                ),
                payloads=payloads,
                conversation_id=original.conversation_id,
                ref_to_message_id=original.ref_to_message_id,
                correlation_id=original.correlation_id,
            )
            try:
                retired = supersede(
                    cur, original.pk, message_id, queued.message_id, now=self.clock()
                )
            except RetryRefused as exc:
                raise SendError(str(exc), Refusal.REFUSED) from None
        self.wake()
        size = sum(len(p.content) for p in payloads if isinstance(p.content, bytes))
        return Resent(queued, original, len(payloads), size, retired)

    def retry(self, message_id: str) -> MessageSummary:
        """Attempt our message now, same MessageId and bytes (:func:`retry_message`)."""
        try:
            with self.db.transaction() as cur:
                summary = retry_message(cur, message_id, now=self.clock())
        except RetryRefused as exc:
            if exc.unknown:
                raise SendError(
                    f"message {message_id} not found", Refusal.UNKNOWN_MESSAGE
                ) from None
            raise SendError(str(exc), Refusal.REFUSED) from None
        self.wake()
        return summary

    # -- asking the partner -----------------------------------------------------------

    def ping(self, cpa_id: str, from_party: str | PartyId, to_party: str | PartyId) -> Queued:
        """Store a Ping with its delivery task; wakes the delivery worker."""
        with self.db.transaction() as cur:
            queued = queue_ping(
                cur,
                self.registry,
                cpa_id=cpa_id,
                from_party=from_party,
                to_party=to_party,
                clock=self.clock,
            )
        self.wake()
        return queued

    def status_request(self, message_id: str) -> Queued:
        """Store a StatusRequest about our business message ``message_id``."""
        with self.db.transaction() as cur:
            ours = find_message(cur, message_id, Direction.OUT)
            if ours is None or ours.service == MSH_SERVICE:
                if find_message(cur, message_id, Direction.IN) is not None:
                    raise SendError(
                        f"message {message_id} is not an outgoing message", Refusal.NOT_OUTGOING
                    )
                raise SendError(f"message {message_id} not found", Refusal.UNKNOWN_MESSAGE)
            queued = queue_status_request(
                cur,
                self.registry,
                cpa_id=ours.cpa_id,
                from_party=parse_party(ours.from_party.split(",")[0]),
                to_party=parse_party(ours.to_party.split(",")[0]),
                ref_to_message_id=message_id,
                clock=self.clock,
            )
        self.wake()
        return queued

    def answer(self, request_id: str, action: str) -> Answer | None:
        """How our request ``request_id`` ended (its ``action`` answer, an error, not
        delivered), or None while it may still be answered."""
        with self.db.transaction() as cur:
            reply = find_answer(cur, request_id, (action, "MessageError"))
            sent = find_message(cur, request_id, Direction.OUT)
            task = task_for_message(cur, sent.pk) if sent else None
        return verdict(
            AnswerFacts(
                answer_id=reply.message_id if reply else None,
                answer_action=reply.action if reply else None,
                task_state=task[0] if task else None,
                last_error=task[2] if task else None,
            )
        )

    def status_response(self, answer_id: str) -> StatusResponse | None:
        """The StatusResponse element of the stored signal ``answer_id``; None if unreadable."""
        with self.db.transaction() as cur:
            reply = find_message(cur, answer_id, Direction.IN)
        if reply is None:
            return None
        try:
            env, _ = parse_envelope(reply.envelope)
        except EnvelopeError:
            return None
        return env.status_response
