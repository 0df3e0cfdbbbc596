"""The back-office operations, shared by the REST and SOAP APIs.

These are ebms-core's ``CPAService``, ``URLMappingService``,
``CertificateMappingService`` and ``EbMSMessageService`` operations as plain
methods over the store, with plain dataclasses in and out
(:mod:`adapters.api.model`); the REST and SOAP layers only translate JSON or
XML to and from them.  :class:`BackOffice` is the configuration operations
(:mod:`adapters.api.admin`) and the message operations
(:mod:`adapters.api.messages`, through the MSH's door
:class:`gateway.msh.service.MshService`) over one store.  Every blocking
method runs in the caller's thread (the API layers call them in the store's
thread pool).

Refusals are the :mod:`adapters.api.errors` classes, which the API layers
turn into HTTP statuses (REST) or SOAP faults.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from adapters.api.admin import AdminOperations
from adapters.api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PartnerUnavailable,
    Unprocessable,
)
from adapters.api.messages import MAX_INLINE_BYTES, MessageOperations
from adapters.api.model import (
    DataSource,
    Message,
    MessageEvent,
    MessageProperties,
    MessageRequest,
    MessageRequestProperties,
    MessageStatusInfo,
    decode_base64,
    properties_of,
    request_digest,
)
from gateway.msh.security import MessageSecurity
from gateway.msh.service import MshService
from gateway.store.backoffice import MessageFilter
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.timeutil import utcnow

__all__ = [
    "MAX_INLINE_BYTES",
    "ApiError",
    "BackOffice",
    "BadRequest",
    "Conflict",
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
    "decode_base64",
    "properties_of",
    "request_digest",
]


class BackOffice(AdminOperations, MessageOperations):
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
        #: The MSH's door: every message in or out of the store goes through it.
        self.msh = MshService(db, registry, security=security, wake=wake, clock=clock)
        #: The iWmo/iJw relay (adapters.stuf.relay.Relay) when ``[stuf]`` has a role.
        self.relay: Any = None
