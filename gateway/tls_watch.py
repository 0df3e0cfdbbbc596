"""Refused TLS handshakes, reported with the peer and the reason in plain words.

A listener's context gets a :class:`HandshakeWatch` (gateway/tls.py): OpenSSL's
verify verdict and the alert sent are turned into a :class:`HandshakeFailure`
with a fixed label for metrics (docs/monitoring.md) and a sentence for the log.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL, crypto


@dataclass(frozen=True)
class HandshakeFailure:
    """A TLS handshake a listener refused, or that the client broke off with an alert."""

    peer: str
    """``host:port`` of the client."""
    reason: str
    """A short fixed label, for metrics: ``no-client-certificate``, ``untrusted-certificate``..."""
    text: str
    """The reason in plain words."""
    subject: str | None = None
    """The client certificate's subject, when it sent one."""


#: TLS alert descriptions (RFC 8446 §6.2, RFC 5246 §7.2) a server sends when it
#: refuses a handshake: label and plain words.  The client-certificate ones are
#: refined with the verify result where there is one.
_ALERTS = {
    40: ("handshake-failure", "handshake failure (no common cipher suite or parameters)"),
    42: ("bad-certificate", "client certificate refused"),
    43: ("unsupported-certificate", "client certificate of an unsupported type"),
    44: ("revoked-certificate", "client certificate revoked"),
    45: ("expired-certificate", "client certificate has expired"),
    46: ("bad-certificate", "client certificate refused"),
    48: ("untrusted-certificate", "client certificate not trusted (unknown CA)"),
    70: ("protocol-version", "protocol version too old (TLS 1.2 is the minimum)"),
    71: ("insufficient-security", "no cipher suite strong enough"),
    80: ("internal-error", "internal error"),
    86: ("inappropriate-fallback", "inappropriate fallback"),
    109: ("missing-extension", "a required TLS extension is missing"),
    110: ("unsupported-extension", "an unsupported TLS extension"),
    112: ("unrecognized-name", "unknown server name"),
    116: ("no-client-certificate", "no client certificate"),
    120: ("no-application-protocol", "no common application protocol"),
}

#: X.509 verify errors of a client certificate, as metric labels.
_VERIFY_LABELS = {
    9: "certificate-not-yet-valid",
    10: "expired-certificate",
    26: "wrong-purpose",
}

_FATAL = 2


class HandshakeWatch:
    """Reports every handshake a server context refuses, with the peer and the reason.

    Installed on a context by :meth:`install`; ``report`` is called on the reactor
    thread (OpenSSL calls back from Twisted's TLS protocol) and must not block.
    """

    def __init__(self, report: Callable[[HandshakeFailure], None]) -> None:
        self.report = report
        # Per connection: the first verify error (errno, depth, subject) and the leaf's
        # subject; dropped with the connection.
        self._verify: weakref.WeakKeyDictionary[SSL.Connection, tuple[int, int, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._leaf: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()
        self._done: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()

    def install(self, ctx: SSL.Context, mode: int) -> None:
        """Set ``mode`` with a verify callback that keeps OpenSSL's verdict, and the alerts hook."""
        ctx.set_verify(mode, self._on_verify)
        ctx.set_info_callback(self._on_info)

    def _on_verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        # OpenSSL's verdict stands; this only remembers it for the log line.
        try:
            subject = cert.to_cryptography().subject.rfc4514_string()
            if depth == 0:
                self._leaf[conn] = subject
            if not ok and conn not in self._verify:
                self._verify[conn] = (errno, depth, subject)
        except Exception:  # noqa: S110 - nothing may escape an OpenSSL callback
            pass
        return bool(ok)

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        try:
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                self._done.add(conn)
                return
            if not where & SSL.SSL_CB_ALERT or (ret >> 8) != _FATAL or conn in self._done:
                return
            failure = self._failure(conn, ret & 0xFF, sent=bool(where & SSL.SSL_CB_WRITE))
            self._done.add(conn)  # one report per connection
            self.report(failure)
        except Exception:  # noqa: S110 - nothing may escape an OpenSSL callback
            pass

    def _failure(self, conn: SSL.Connection, alert: int, *, sent: bool) -> HandshakeFailure:
        peer = "-"
        protocol = conn.get_app_data()
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            address = transport.getPeer()
            peer = f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
        subject = self._leaf.get(conn)
        label, text = _ALERTS.get(alert, ("alert", f"TLS alert {alert}"))
        if not sent:
            return HandshakeFailure(
                peer, "client-refused", f"the client broke off the handshake ({text})", subject
            )
        verified = self._verify.get(conn)
        if verified is not None:
            errno, depth, which = verified
            label = _VERIFY_LABELS.get(errno, "untrusted-certificate")
            what = "client certificate" if depth == 0 else f"client certificate's CA {which}"
            if errno == 10:
                text = f"{what} has expired"
            elif errno in _VERIFY_LABELS:
                text = f"{what}: {x509_error(errno)}"
            else:
                text = f"{what} not trusted ({x509_error(errno)})"
        elif alert in (40, 116) and subject is None and conn.get_peer_certificate() is None:
            # TLS 1.2 says handshake_failure, TLS 1.3 certificate_required.
            label, text = "no-client-certificate", "no client certificate"
        return HandshakeFailure(peer, label, text, subject)


#: The X.509 verification errors a misconfigured partner typically causes
#: (OpenSSL's X509_V_ERR_* numbers), to make refusals readable in the log.
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    12: "CRL is not yet valid",
    23: "certificate revoked",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


def x509_error(errno: int) -> str:
    return _X509_ERRORS.get(errno, f"X509 verify error {errno}")
