"""Delivery failures in one sentence: per kind of exception, and on real sockets (127.0.0.1).

The real tests POST with the gateway's own :class:`EbmsClient` to a closed
port, to TLS servers that refuse our client certificate or present another
certificate than the CPA's, to a server that never answers, and to one that
answers 503; the sentence is what :func:`describe_failure` or
:func:`describe_http` makes of what came back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.http import _DataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.http.client import EbmsClient, ReplyTooLarge
from gateway.http.failures import NoResponse, describe_failure, describe_http
from gateway.tls import ClientTlsPolicy, TlsVerificationError, server_context_factory
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert
from tests.gateways import Pair, Side, free_port, gateway_config, store_url
from tests.test_cli_msh import RM_FAST, run
from tests.test_tls import GEMEENTE, GGK, identity, negative, root_and_intermediate

URL = "https://partner.example:8443/ebms"


def wrapped(exc: BaseException) -> ResponseNeverReceived:
    """``exc`` as twisted.web hands it over when the request never got an answer."""
    return ResponseNeverReceived([Failure(exc)])


# -- per kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "sentence"),
    [
        (error.ConnectionRefusedError(), "connection refused by partner.example:8443"),
        (wrapped(error.ConnectionRefusedError()), "connection refused by partner.example:8443"),
        (error.DNSLookupError("partner.example"), "DNS name not found: partner.example"),
        (error.TimeoutError(), "no connection to partner.example:8443 (timed out)"),
        (NoResponse(30), "no response within 30 s"),
        (wrapped(NoResponse(2.5)), "no response within 2.5 s"),
        (
            wrapped(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])),
            "partner rejected our client certificate (TLS alert unknown_ca)",
        ),
        (
            SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]),
            "partner rejected our client certificate (TLS alert certificate_required)",
        ),
        (
            SSL.Error([("SSL routines", "", "sslv3 alert certificate expired")]),
            "partner rejected our client certificate (TLS alert certificate_expired)",
        ),
        (
            SSL.Error([("SSL routines", "", "wrong version number")]),
            "partner.example:8443 does not speak TLS",
        ),
        (
            wrapped(
                TlsVerificationError(
                    "server certificate for partner.example is not the one in the CPA "
                    "(SHA-256 ab, expected cd)"
                )
            ),
            "partner's server certificate is not the one in the CPA",
        ),
        (
            TlsVerificationError(
                "server certificate chain for partner.example refused at depth 0 "
                "(CN=x): certificate has expired"
            ),
            "partner's server certificate is not trusted: certificate has expired",
        ),
        (
            wrapped(error.ConnectionDone()),
            "partner.example:8443 closed the connection without answering",
        ),
        (
            ResponseFailed([Failure(error.ConnectionLost()), Failure(_DataLoss())]),
            "partner.example:8443 closed the connection in the middle of its answer",
        ),
        (ReplyTooLarge("reply over 1048576 bytes"), "partner's reply is too large"),
        (ValueError("odd"), "delivery to partner.example:8443 failed: ValueError (odd)"),
    ],
)
def test_each_kind_is_one_sentence(exc: BaseException, sentence: str) -> None:
    assert describe_failure(exc, URL).startswith(sentence)
    assert "\n" not in describe_failure(exc, URL)


def test_a_failure_is_unwrapped() -> None:
    failure = Failure(error.ConnectionRefusedError())
    assert describe_failure(failure, "http://127.0.0.1/x") == "connection refused by 127.0.0.1:80"


def test_http_status_sentences() -> None:
    assert describe_http(503) == "HTTP 503 from partner"
    assert describe_http(500, "text/plain", b"Patient Jansen, BSN 123") == "HTTP 500 from partner"
    fault = (
        b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><S:Fault>'
        b"<faultcode>S:Client</faultcode><faultstring>Unknown CPA\n  x</faultstring>"
        b"</S:Fault></S:Body></S:Envelope>"
    )
    assert describe_http(500, "text/xml", fault) == "HTTP 500 from partner: Unknown CPA x"
    long = fault.replace(b"Unknown CPA\n  x", b"y" * 1000)
    assert len(describe_http(500, "text/xml", long)) < 200


# -- on real sockets --------------------------------------------------------------------


HALF_BODY = -1


class Answering(Resource):
    """Answers POSTs with ``code``, or never when ``code`` is None."""

    isLeaf = True

    def __init__(self, code: int | None) -> None:
        super().__init__()
        self.code = code
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        if self.code is None:
            self.held.append(request)
            return NOT_DONE_YET
        if self.code == HALF_BODY:  # headers and half the body, then nothing
            request.setHeader(b"content-length", b"100")
            request.write(b"x" * 50)
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"busy"


Listen = Callable[..., str]


@pytest_twisted.async_yield_fixture
async def listen(pki: Path):
    """Start TLS servers with the gemeente's server certificate; their URLs."""
    ports: list[IListeningPort] = []
    resources: list[Answering] = []

    def start(code: int | None = 200) -> str:
        options = server_context_factory(
            identity(pki, GEMEENTE, "tls-server"), root_and_intermediate(pki)
        )
        resource = Answering(code)
        resources.append(resource)
        port = reactor.listenSSL(0, Site(resource), options, interface="127.0.0.1")
        ports.append(port)
        return f"https://127.0.0.1:{port.getHost().port}/ebms"

    yield start
    for resource in resources:
        for request in resource.held:
            request.channel.transport.abortConnection()
    for port in ports:
        await defer.maybeDeferred(port.stopListening)


def node_client(pki: Path, *, client: str = "good", read_timeout: float = 5.0) -> EbmsClient:
    who = identity(pki, GGK, "tls-client") if client == "good" else negative(pki, client)
    return EbmsClient(
        reactor, ClientTlsPolicy(who, root_and_intermediate(pki)), read_timeout=read_timeout
    )


async def sentence_of(client: EbmsClient, url: str, pin: object = None) -> str:
    try:
        result = await client.post(url, {"Content-Type": "text/xml"}, b"<x/>", pin)  # type: ignore[arg-type]
    except Exception as exc:
        return describe_failure(exc, url)
    finally:
        await client.close()
    return describe_http(result.status, result.content_type, result.body)


@pytest_twisted.ensureDeferred
async def test_closed_port(pki: Path) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}/ebms"
    assert await sentence_of(node_client(pki), url) == f"connection refused by 127.0.0.1:{port}"


@pytest_twisted.ensureDeferred
async def test_partner_rejects_our_client_certificate(pki: Path, listen: Listen) -> None:
    sentence = await sentence_of(node_client(pki, client="foreign-client"), listen())
    assert sentence == "partner rejected our client certificate (TLS alert unknown_ca)"


@pytest_twisted.ensureDeferred
async def test_partner_rejects_our_expired_client_certificate(pki: Path, listen: Listen) -> None:
    sentence = await sentence_of(node_client(pki, client="expired"), listen())
    assert sentence == "partner rejected our client certificate (TLS alert certificate_expired)"


@pytest_twisted.ensureDeferred
async def test_server_certificate_not_the_one_in_the_cpa(pki: Path, listen: Listen) -> None:
    other = load_cert(pki / GGK / "tls-server.pem")
    sentence = await sentence_of(node_client(pki), listen(), other)
    assert sentence == "partner's server certificate is not the one in the CPA"


@pytest_twisted.ensureDeferred
async def test_server_that_never_answers(pki: Path, listen: Listen) -> None:
    sentence = await sentence_of(node_client(pki, read_timeout=0.5), listen(None))
    assert sentence == "no response within 0.5 s"


@pytest_twisted.ensureDeferred
async def test_server_that_accepts_tcp_and_never_starts_tls(pki: Path) -> None:
    # The read timeout runs out during the TLS handshake, while the request is
    # still being written: Twisted wraps that cancellation in RequestGenerationFailed.
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        url = f"https://127.0.0.1:{port.getHost().port}/ebms"
        sentence = await sentence_of(node_client(pki, read_timeout=0.5), url)
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert sentence == "no response within 0.5 s"


@pytest_twisted.ensureDeferred
async def test_server_that_stalls_in_the_middle_of_the_body(pki: Path, listen: Listen) -> None:
    # The headers came in time; the body never completes.  The attempt must end
    # (and drop the connection) instead of waiting for it for good.
    client = node_client(pki, read_timeout=0.5)
    sentence = await sentence_of(client, listen(HALF_BODY))
    assert sentence == "no response within 0.5 s"


@pytest_twisted.ensureDeferred
async def test_server_answering_503(pki: Path, listen: Listen) -> None:
    assert await sentence_of(node_client(pki), listen(503)) == "HTTP 503 from partner"


# -- through the gateway: a Ping refused at the TLS layer --------------------------------


@pytest_twisted.ensureDeferred
async def test_ping_refused_for_our_certificate_says_so(
    pki: Path, make_spec, tmp_path: Path
) -> None:
    """The partner trusts another CA than ours: "Ping expired: partner rejected ...", not bare."""
    a = Side("a", gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a",
                                 store_url("sqlite", tmp_path, "a")))  # fmt: skip
    b_config = gateway_config(
        pki, "ggk-rinis-test", tmp_path / "b", store_url("sqlite", tmp_path, "b")
    )
    foreign = replace(b_config.tls, trust_anchors=pki / "negative" / "foreign-ca.pem")
    b = Side("b", replace(b_config, tls=foreign))
    a.start()
    b.start()
    pair = Pair(a, b, "tls-cpa", make_spec, {"profile": "osb-rm", **RM_FAST})
    pair.import_cpa()
    try:
        done = await run("--store", a.config.store, "ping", pair.cpa_id,
                         "--from", GEMEENTE_OIN, "--to", NODE_OIN, "--timeout", "20")  # fmt: skip
    finally:
        await pair.stop()
    assert done.returncode == 2, done.stderr
    assert (
        "Ping not delivered (Ping expired: partner rejected our client certificate "
        "(TLS alert unknown_ca))"
    ) in done.stdout


def test_an_undelivered_ping_is_reported_with_its_last_failure() -> None:
    from gateway.monitor.pinger import ping_failure

    sentence = "partner rejected our client certificate (TLS alert unknown_ca)"
    assert ping_failure("expired", sentence) == f"Ping expired: {sentence}"
    assert ping_failure("expired", None) == "Ping expired"
