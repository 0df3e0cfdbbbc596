"""Delivery failures in one plain sentence, for the store, the logs and the operator.

A failed POST reaches the delivery worker as a Twisted or OpenSSL exception,
often wrapped (``ResponseNeverReceived`` holds a list of Failures, an OpenSSL
error a list of ``(library, function, reason)`` tuples).  Their reprs mean
nothing to an operator, so every attempt's failure is stored as one sentence
that names what went wrong and where: "connection refused by host:port",
"partner rejected our client certificate (TLS alert unknown_ca)".

Pure functions over the exception and the URL: no I/O, no payload content.
The body of an HTTP error answer is read only for a SOAP Fault's
``faultstring`` (the partner's own refusal text, ebMS 2.0 §4.2.3.2), and that
only up to a short length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.web import _newclient

from gateway.tls import TlsVerificationError

__all__ = ["NoResponse", "describe_failure", "describe_http"]

#: Longest sentence stored; the partner's fault text is cut to fit.
MAX_SENTENCE = 300
_FAULT_TEXT = 160


class NoResponse(Exception):
    """The partner accepted the connection but did not answer within the read timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no response within {seconds:g} s")
        self.seconds = seconds


def _netloc(url: str) -> tuple[str, str]:
    """(host, host:port) of ``url``, the port filled in from the scheme."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    return host, f"{shown}:{port}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps, depth first: Twisted's reasons lists, Failures, causes."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reasons = getattr(current, "reasons", None)
        if isinstance(reasons, list):
            todo.extend(r.value for r in reasons if isinstance(r, Failure) and r.value is not None)
        if current.__cause__ is not None:
            todo.append(current.__cause__)


def _ssl_reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of an OpenSSL error: ``[[(lib, func, reason), ...]]``."""
    out: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            for item in arg:
                if isinstance(item, tuple) and item:
                    out.append(str(item[-1]))
        elif isinstance(arg, str):
            out.append(arg)
    return out


_ALERT = re.compile(r"(?:sslv3|tlsv1|tlsv13|tls) alert (.+)")
#: Alerts a server sends when it does not accept the certificate we presented
#: (RFC 8446 §6.2; OpenSSL's reason strings, spaces for underscores).
_CLIENT_CERT_ALERTS = frozenset(
    {
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "certificate expired",
        "certificate revoked",
        "unsupported certificate",
        "certificate required",
        "access denied",
        "decrypt error",
    }
)


def _describe_ssl(exc: SSL.Error, netloc: str) -> str:
    reasons = _ssl_reasons(exc)
    for reason in reasons:
        match = _ALERT.search(reason)
        if match is None:
            continue
        alert = match.group(1).strip()
        name = alert.replace(" ", "_")
        if alert in _CLIENT_CERT_ALERTS:
            return f"partner rejected our client certificate (TLS alert {name})"
        if alert in ("handshake failure", "protocol version", "insufficient security"):
            return (
                f"TLS handshake with {netloc} failed: no common protocol or cipher "
                f"(TLS alert {name})"
            )
        return f"partner ended the TLS handshake (TLS alert {name})"
    for reason in reasons:
        if "wrong version number" in reason or "packet length too long" in reason:
            return f"{netloc} does not speak TLS"
        if "certificate verify failed" in reason:
            return f"partner's server certificate at {netloc} was refused"
    shown = "; ".join(reasons) or "unknown error"
    return f"TLS error with {netloc}: {shown}"


def _describe_verification(exc: Exception, host: str) -> str:
    text = str(exc)
    if "not the one in the CPA" in text:
        return "partner's server certificate is not the one in the CPA"
    if "refused at depth" in text:
        # "server certificate chain for h refused at depth 0 (CN=..): unable to get ..."
        why = text.rsplit(": ", 1)[-1]
        return f"partner's server certificate is not trusted: {why}"
    if "revoked" in text.lower():
        return "partner's server certificate is revoked"
    return f"partner's server certificate was refused: {text}"


def describe_failure(exc: BaseException | Failure, url: str) -> str:
    """One sentence for why a POST to ``url`` failed without an HTTP answer.

    The innermost known cause wins: a ``ResponseNeverReceived`` around an
    OpenSSL alert is the alert; around a closed connection it is that.
    """
    if isinstance(exc, Failure):
        if exc.value is None:
            return f"delivery to {_netloc(url)[1]} failed"
        exc = exc.value
    host, netloc = _netloc(url)
    causes = list(_causes(exc))
    # Most telling first: our own refusals and OpenSSL's reasons beat the wrappers.
    for cause in causes:
        if isinstance(cause, TlsVerificationError):
            return _describe_verification(cause, host)
        if type(cause).__name__ in ("VerificationError", "CertificateError") and (
            type(cause).__module__.startswith("service_identity")
        ):
            return f"partner's server certificate does not name {host}"
        if isinstance(cause, SSL.Error):
            return _describe_ssl(cause, netloc)
    for cause in causes:
        if isinstance(cause, NoResponse):
            return str(cause)
        if isinstance(cause, error.ConnectionRefusedError):
            return f"connection refused by {netloc}"
        if isinstance(cause, error.DNSLookupError):
            return f"DNS name not found: {host}"
        if isinstance(cause, error.TCPTimedOutError | error.TimeoutError):
            return f"no connection to {netloc} (timed out)"
        if isinstance(cause, error.NoRouteError):
            return f"no route to {netloc}"
        if isinstance(cause, defer.CancelledError | error.ConnectingCancelledError):
            return f"attempt to {netloc} was cancelled"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {netloc}"
        if isinstance(cause, TimeoutError):
            return f"no connection to {netloc} (timed out)"
        if type(cause).__name__ == "ReplyTooLarge":
            return f"partner's reply is too large ({cause})"
    # twisted.web says ResponseFailed once some of the answer had arrived (a
    # status line, headers, part of the body), its subclass ResponseNeverReceived
    # when none had.
    partial = any(
        isinstance(c, _newclient.ResponseFailed)
        and not isinstance(c, _newclient.ResponseNeverReceived)
        for c in causes
    )
    for cause in causes:
        if isinstance(cause, error.ConnectionDone | error.ConnectionLost):
            if partial:
                return f"{netloc} closed the connection in the middle of its answer"
            return f"{netloc} closed the connection without answering"
        if isinstance(cause, _newclient.ResponseNeverReceived | _newclient.ResponseFailed):
            continue
        if isinstance(cause, _newclient.RequestTransmissionFailed):
            continue
        if isinstance(cause, error.ConnectError):
            return f"no connection to {netloc}: {cause.osError or cause}"
    if any(isinstance(c, _newclient.RequestTransmissionFailed) for c in causes):
        return f"sending to {netloc} failed"
    if any(isinstance(c, _newclient.ResponseNeverReceived) for c in causes):
        return f"{netloc} closed the connection without answering"
    name = type(exc).__name__
    text = str(exc)
    return _cut(f"delivery to {netloc} failed: {name}{f' ({text})' if text else ''}")


_FAULTSTRING = re.compile(rb"<(?:[\w.-]+:)?faultstring[^>]*>([^<]{1,2000})<", re.IGNORECASE)


def describe_http(status: int, content_type: str = "", body: bytes = b"") -> str:
    """One sentence for an HTTP answer that is not a success: "HTTP 503 from partner".

    A SOAP Fault's ``faultstring`` is added: it is the partner's reason, not
    message content.  Any other body is left out (it may echo the message).
    """
    sentence = f"HTTP {status} from partner"
    if b"faultstring" in body[:65536] and "xml" in content_type.lower():
        match = _FAULTSTRING.search(body[:65536])
        if match:
            text = " ".join(match.group(1).decode("utf-8", "replace").split())
            if text:
                if len(text) > _FAULT_TEXT:
                    text = text[: _FAULT_TEXT - 3] + "..."
                sentence += f": {text}"
    return _cut(sentence)


def _cut(sentence: str) -> str:
    return sentence if len(sentence) <= MAX_SENTENCE else sentence[: MAX_SENTENCE - 3] + "..."
