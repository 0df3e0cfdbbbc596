"""The back-office APIs' refusals, and how the MSH door's refusals become them.

:class:`BadRequest` (the request is wrong: the text says how) and
:class:`NotFound` (an unknown id), which the API layers turn into 400 and 404
(REST) or a SOAP fault; :class:`Conflict` 409, :class:`Unprocessable` 422 and
:class:`PartnerUnavailable` 502/504 likewise.
"""

from __future__ import annotations

from gateway.msh.addressing import Refusal, SendError

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "PartnerUnavailable",
    "Unprocessable",
    "refused",
]


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


def refused(exc: SendError, *, missing_cpa: type[ApiError] = BadRequest) -> ApiError:
    """The API's answer to a refusal of the MSH door.

    An unknown CPA is ``missing_cpa``: bad input in a message request
    (ebms-core answers 400), a resource that does not exist in a path (the
    ping's ``cpaId``).  An unknown message is 404, a reused Idempotency-Key
    422; every other refusal is the request's fault (400).
    """
    if exc.refusal is Refusal.NO_CPA:
        return missing_cpa(f"CPA {exc.cpa_id} not found")
    if exc.refusal is Refusal.UNKNOWN_MESSAGE:
        return NotFound(str(exc))
    if exc.refusal is Refusal.KEY_REUSED:
        return Unprocessable(str(exc))
    return BadRequest(str(exc))
