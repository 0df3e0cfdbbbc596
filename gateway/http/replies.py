"""The HTTP answer to an inbound ebMS request: where a decision's reply gets its status.

The MSH decides *what* to answer (:mod:`gateway.msh.effects`); this table is the
only place that says which HTTP status carries it (docs/msh.md, "Error
matrix").  No Twisted here, so the mapping is tested with values.

* a signal (acknowledgment, MessageError, Pong, StatusResponse) in the
  response: 200 ``text/xml`` (ebMS 2.0 §4.3, syncReplyMode; a MessageError is
  an ebMS message, not an HTTP error);
* a SOAP Fault: 500 ``text/xml`` (SOAP 1.1 §6.2: a Fault goes with 500);
* nothing to say: 204 (the answer, if any, goes in its own POST);
* a bare refusal: 500 with an empty body, as ebms-core answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.msh.effects import Decision, FaultReply, NoContent, Refusal, Reply, SignalReply
from gateway.msh.records import XML

__all__ = ["HttpReply", "http_reply", "status_of"]


@dataclass(frozen=True)
class HttpReply:
    """What to answer, plus what to log about it (ids and outcome, never content)."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    log: dict[str, str] = field(default_factory=dict)
    queued: bool = False  # a reply waits in the store for its own POST: wake the worker


def status_of(reply: Reply) -> int:
    """The HTTP status that carries ``reply``."""
    match reply:
        case SignalReply():
            return 200
        case NoContent():
            return 204
        case FaultReply() | Refusal():
            return 500


def http_reply(decision: Decision) -> HttpReply:
    """The status, body and log fields of the answer to ``decision``."""
    reply = decision.reply
    log = dict(decision.log)
    if isinstance(reply, SignalReply | FaultReply):
        return HttpReply(status_of(reply), reply.body, XML, log, decision.queued)
    return HttpReply(status_of(reply), log=log, queued=decision.queued)
