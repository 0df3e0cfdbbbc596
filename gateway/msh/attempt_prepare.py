"""Claim-time preparation: from a claimed task to the bytes to POST and the facts to decide on.

Runs in the claim's transaction (each task in its own savepoint): it loads the
stored message and its payloads, rebuilds the exact wire body, looks up the
partner's server certificate and the URL mapping, and reads once what the
decisions need to know about the message (does it ask for an
acknowledgment?).  What the attempt then leads to is decided elsewhere
(:mod:`gateway.msh.attempt`); a task that cannot be prepared raises, and
:func:`refusal_reason` says why in one sentence.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from cryptography import x509

from gateway.ebms.envelope import MAX_ENVELOPE_BYTES
from gateway.ebms.mime import OutgoingPart, build_swa, parse_content_type
from gateway.ebms.model import EB_NS, SOAP_NS
from gateway.msh.attempt_facts import Claimed, MessageFacts, TaskFacts
from gateway.store.cpas import CpaNotFound
from gateway.store.database import Cursor
from gateway.store.messages import StoredMessage, Task, load_attachments, message_by_pk
from gateway.store.urlmap import check_url, resolve_url
from xmlsafe import parse_xml

__all__ = [
    "Body",
    "Outgoing",
    "Pin",
    "PinLookup",
    "Undeliverable",
    "asks_for_ack",
    "close_body",
    "message_facts",
    "prepare",
    "refusal_reason",
    "task_facts",
    "wire_body",
]


class Undeliverable(Exception):
    """A task that can never be sent as it stands; the text is the reason, one sentence."""


def refusal_reason(exc: Exception) -> str:
    """The plain sentence stored for a task that could not be prepared because of ``exc``.

    Never the message's content: exception texts of our own making only.
    """
    if isinstance(exc, Undeliverable):
        return str(exc)
    if isinstance(exc, CpaNotFound):
        return f"The CPA of this message no longer exists ({exc})."
    if isinstance(exc, LookupError):
        return f"The stored message is inconsistent: {exc}."
    return f"The message could not be prepared for sending ({type(exc).__name__})."


Pin = x509.Certificate | tuple[x509.Certificate, ...] | None
"""The partner's server certificate, or several during a rollover; None: no pin."""

Body = bytes | IO[bytes]
"""What is POSTed: bytes, or for a large message a file positioned at its start."""

#: The partner's server certificate for a message and URL, looked up in the
#: claim's transaction (the CPA registry reads the store).
PinLookup = Callable[[Cursor, StoredMessage, str], Pin]


@dataclass(frozen=True)
class Outgoing:
    """A claimed task with what to send, and the facts its attempt is decided on."""

    task: Task
    message: StoredMessage
    content_type: str
    body: Body
    claimed: Claimed
    pin: Pin = None

    @property
    def post_url(self) -> str:
        """Where this attempt goes: the task's CPA endpoint after URL mapping."""
        return self.claimed.url

    @property
    def size(self) -> int:
        """Length of the body; a file body is closed once sent, so it is measured at the claim."""
        return self.claimed.size

    @property
    def is_business(self) -> bool:
        """A business message, not an MSH signal: it has a status to keep."""
        return self.claimed.message.business

    @property
    def reliable(self) -> bool:
        """The message asks for an acknowledgment: 2xx alone does not deliver it."""
        return self.claimed.message.reliable


_ACK_REQUESTED = f"{{{SOAP_NS}}}Header/{{{EB_NS}}}AckRequested"


def asks_for_ack(envelope: bytes) -> bool:
    """Whether a stored envelope (one we built) carries ``eb:AckRequested``.

    Read once per claim; our own envelopes need no schema validation.
    """
    return (
        parse_xml(envelope, max_bytes=MAX_ENVELOPE_BYTES).getroot().find(_ACK_REQUESTED) is not None
    )


def wire_body(message: StoredMessage, cur: Cursor) -> tuple[str, Body]:
    """The exact bytes to POST: the stored envelope, with its payloads if any.

    The boundary and start part id are kept in the stored Content-Type, so every
    resend repeats the first attempt byte for byte (ebMS 2.0 §6.5.3).  A body
    with a payload stored in chunks is written to a temporary file, positioned
    at the start, instead of memory; the caller closes it (:func:`close_body`).
    """
    if not message.content_type.lower().startswith("multipart/"):
        return message.content_type, message.envelope
    _, params = parse_content_type(message.content_type)
    attachments = load_attachments(cur, message.pk)
    try:
        parts = [
            OutgoingPart(
                a.content_id,
                a.content_type,
                a.content if isinstance(a.content, bytes) else a.open(),
                a.filename,
            )
            for a in attachments
        ]
        start = params["start"].strip("<>")
        content_type, chunks, _ = build_swa(
            message.envelope, parts, boundary=params["boundary"], start_cid=start
        )
        if all(isinstance(a.content, bytes) for a in attachments):
            return content_type, b"".join(chunks)
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, who closes it
        try:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return content_type, spool
    finally:
        for a in attachments:
            a.close()


def _file_size(body: IO[bytes]) -> int:
    """Bytes from the current position to the end, leaving the position alone."""
    here = body.tell()
    end = body.seek(0, 2)
    body.seek(here)
    return end - here


def close_body(body: Body) -> None:
    """Release a body :func:`wire_body` spooled to a file; bytes need nothing."""
    if not isinstance(body, bytes):
        body.close()


def task_facts(task: Task) -> TaskFacts:
    """The decision's view of a claimed task."""
    return TaskFacts(
        id=task.id,
        message_pk=task.message_pk,
        url=task.url,
        attempt=task.attempts,
        max_attempts=task.max_attempts,
        retry_interval=task.retry_interval,
        expires_at=task.expires_at,
    )


def message_facts(message: StoredMessage, *, ack_requested: bool) -> MessageFacts:
    """The decision's view of a stored message; ``ack_requested`` as read from its envelope."""
    return MessageFacts(
        pk=message.pk,
        message_id=message.message_id,
        status=message.status,
        ack_requested=ack_requested,
        cpa_id=message.cpa_id,
        from_party=message.from_party,
        to_party=message.to_party,
        service=message.service,
        action=message.action,
        correlation_id=message.correlation_id,
        ref_to_message_id=message.ref_to_message_id,
    )


def prepare(cur: Cursor, task: Task, pin_lookup: PinLookup | None) -> Outgoing:
    """What to send for one claimed task; raises when it cannot be sent.

    The URL posted to is the task's CPA endpoint after the operator's URL
    mapping (:mod:`gateway.store.urlmap`), looked up at every claim.
    """
    message = message_by_pk(cur, task.message_pk)
    content_type, body = wire_body(message, cur)
    try:
        # The pin is looked up by the CPA endpoint, not the mapped URL: the
        # partner we must reach is the CPA's, whichever way we go to it.
        pin = pin_lookup(cur, message, task.url) if pin_lookup else None
        url = resolve_url(cur, task.url)
        if url != task.url:
            try:
                check_url(url, "mapped")
            except (TypeError, ValueError) as exc:
                raise Undeliverable(f"The URL mapping for {task.url} is invalid: {exc}.") from None
        # Only a business message can be reliable: a signal's envelope is not read.
        ack_requested = message.status is not None and asks_for_ack(message.envelope)
        size = len(body) if isinstance(body, bytes) else _file_size(body)
    except BaseException:
        close_body(body)
        raise
    claimed = Claimed(
        task_facts(task), message_facts(message, ack_requested=ack_requested), url, size
    )
    return Outgoing(task, message, content_type, body, claimed, pin)
