"""The delivery client: POST over mutual TLS with the partner's certificate pinned.

CPPA 2.0 §8.4: we present our TLS client certificate, verify the
partner's chain against our trust anchors and its host name, and require its
leaf certificate to be the CPA's ServerCertificateRef for that endpoint, so a
certificate the CPA does not name is refused even when it chains to a trusted
root.  Connections are kept alive per partner: a full mutual-TLS handshake
costs about 4 ms (toolchain notes §7).
"""

from __future__ import annotations

import hashlib
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers

from gateway.delivery import MAX_REPLY_BYTES, Body, HttpResult, Pin, Undeliverable
from gateway.http.body import read_body
from gateway.http.failures import NoResponse
from gateway.store.certmap import resolve_certificate
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor
from gateway.store.messages import StoredMessage
from gateway.store.timeutil import utcnow
from gateway.tls import ClientTlsPolicy


class ReplyTooLarge(Exception):
    """The partner answered with more than a signal's worth of bytes."""


def server_pin(registry: CpaRegistry, cur: Cursor, message: StoredMessage, url: str) -> Pin:
    """The CPA's server certificate for the endpoint ``url`` of the message's receiver.

    With a certificate mapping (:mod:`gateway.store.certmap`) for it, the CPA's
    certificate and the mapped one: during the partner's rollover either may
    answer (docs/operations.md, "Certificate rotation").

    Raises :class:`~gateway.delivery.Undeliverable` when the CPA is no longer
    in force or the certificate it names cannot be read: the task then fails
    alone, with that reason (the worker goes on with the others).
    """
    cpa = registry.get_cpa(message.cpa_id, cur)
    now = utcnow()
    if not cpa.in_force(now):
        raise Undeliverable(
            f"CPA {cpa.cpa_id} is not in force (status {cpa.status}, valid "
            f"{cpa.start.isoformat()} to {cpa.end.isoformat()})."
        )
    party = cpa.party_by_ids(message.to_ids)
    if party is None:
        return None
    for transport in party.transports.values():
        if any(ep.uri == url for ep in transport.endpoints) and transport.server_security:
            cert = party.certificates.get(transport.server_security.certificate_id or "")
            if cert is not None and cert.der:
                try:
                    named = x509.load_der_x509_certificate(cert.der)
                    mapped = resolve_certificate(cur, cert.der, cpa.cpa_id)
                    if mapped == cert.der:
                        return named
                    return (named, x509.load_der_x509_certificate(mapped))
                except ValueError:
                    raise Undeliverable(
                        f"The server certificate {cert.cert_id} of CPA {cpa.cpa_id} cannot be read."
                    ) from None
    return None


class EbmsClient:
    """POSTs stored messages; one connection pool, one agent per pinned certificate."""

    def __init__(
        self,
        reactor: Any,
        policy: ClientTlsPolicy,
        *,
        connect_timeout: float = 30.0,
        read_timeout: float = 30.0,
        max_persistent: int = 8,
    ) -> None:
        self.reactor = reactor
        self.policy = policy
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # As many kept-alive connections per partner as attempts in flight:
        # with fewer, every burst closes some and pays a new mutual-TLS
        # handshake on both sides for the next.
        self.pool.maxPersistentPerHost = max_persistent
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._agents: dict[str, Agent] = {}

    def use_policy(self, policy: ClientTlsPolicy) -> None:
        """Make new connections with ``policy`` (a reload of our TLS material).

        Kept-alive connections stay open and in use; they were checked when made.
        """
        self.policy = policy
        self._agents = {}

    def _agent(self, pin: Pin) -> Agent:
        pins = pin if isinstance(pin, tuple) else (pin,) if pin is not None else ()
        key = ",".join(
            sorted(hashlib.sha256(p.public_bytes(Encoding.DER)).hexdigest() for p in pins)
        )
        if key not in self._agents:
            policy = self.policy.with_pin(*pins) if pins else self.policy
            self._agents[key] = Agent(
                self.reactor,
                contextFactory=policy,
                pool=self.pool,
                connectTimeout=self.connect_timeout,
            )
        return self._agents[key]

    def post(self, url: str, headers: dict[str, str], body: Body, pin: Pin) -> Deferred[HttpResult]:
        """POST and read at most MAX_REPLY_BYTES of the answer.

        A file body is sent from where it stands in 64 KiB reads, with its
        length as Content-Length, and is closed once sent.
        """
        return Deferred.fromCoroutine(self._post_or_timeout(url, headers, body, pin))

    async def _post_or_timeout(
        self, url: str, headers: dict[str, str], body: Body, pin: Pin
    ) -> HttpResult:
        # treq's timeout cancels the request; the cancellation surfaces as a bare
        # CancelledError, or wrapped in ResponseNeverReceived, or, when it falls
        # while the request is still being written (a partner that accepts TCP
        # but never completes the TLS handshake), in RequestGenerationFailed or
        # RequestTransmissionFailed.  Only that timeout cancels it, so each means
        # the partner did not answer in time.
        try:
            return await self._post(url, headers, body, pin)
        except CancelledError:
            raise NoResponse(self.read_timeout) from None
        except (
            ResponseNeverReceived,
            ResponseFailed,
            RequestGenerationFailed,
            RequestTransmissionFailed,
        ) as exc:
            if any(r.check(CancelledError) for r in exc.reasons):
                raise NoResponse(self.read_timeout) from None
            raise

    async def _post(self, url: str, headers: dict[str, str], body: Body, pin: Pin) -> HttpResult:
        client = treq.client.HTTPClient(self._agent(pin))
        # treq adapts only some file types itself (not a TemporaryFile's
        # BufferedRandom), so a file gets its producer here.
        data: Any = body if isinstance(body, bytes) else FileBodyProducer(body)
        response = await client.post(
            url,
            data=data,
            headers=Headers({k: [v] for k, v in headers.items()}),
            timeout=self.read_timeout,
        )
        # treq's timeout ends with the response headers: a partner that sends
        # them and then stalls in the body would hold this attempt, its
        # connection and a delivery slot for good.  The body gets the same time.
        data = await read_body(
            response,
            self.reactor,
            max_bytes=MAX_REPLY_BYTES,
            timeout=self.read_timeout,
            too_large=lambda limit: ReplyTooLarge(f"reply over {limit} bytes"),
            timed_out=NoResponse,
        )
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return HttpResult(response.code, content_type.decode("latin-1"), data)

    def close(self) -> Deferred[None]:
        """Close kept-alive connections (at shutdown)."""
        result: Deferred[None] = self.pool.closeCachedConnections()
        return result
