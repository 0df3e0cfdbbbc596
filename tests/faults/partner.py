"""A partner that misbehaves: a small TLS server on a real port, one misbehaviour at a time.

It presents the real partner's server certificate (or, for the certificate
faults, one from a foreign CA or another party's) and answers each request as
its current ``mode`` says.  A stalled connection stays open until the server is
closed: the gateway has to give up on it by itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import struct
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The misbehaviours, in the order a test walks through them.
MODES = (
    "silent",  # accepts TCP, never says a word (not even the TLS handshake)
    "half-headers",  # half a status line and headers, then nothing
    "half-body",  # complete headers, half the announced body, then nothing
    "reset",  # complete headers, part of the body, then a TCP reset
    "500",  # a SOAP Fault with HTTP 500
    "503",  # HTTP 503, empty body
    "foreign-ca",  # a server certificate from a CA we do not trust
    "wrong-party",  # a valid certificate, but another party's than the CPA names
)

FAULT_TEXT = "Service temporarily unable to process the message"
SOAP_FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    f"<soap:Fault><faultcode>soap:Server</faultcode><faultstring>{FAULT_TEXT}</faultstring>"
    "</soap:Fault></soap:Body></soap:Envelope>"
).encode()


def foreign_server_certificate(pki: Path, out: Path) -> tuple[Path, Path]:
    """A localhost server certificate issued by the example PKI's foreign CA."""
    ca_key = serialization.load_pem_private_key(
        (pki / "negative" / "foreign-ca.key").read_bytes(), None
    )
    ca = x509.load_pem_x509_certificate((pki / "negative" / "foreign-ca.pem").read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "foreign-server.pem", out / "foreign-server.key"
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class MisbehavingPartner:
    """A TLS server on ``port`` (127.0.0.1) whose misbehaviour is ``mode``."""

    def __init__(self, port: int, pki: Path, work: Path) -> None:
        self.mode = MODES[0]
        self.connections = 0
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._work = work
        work.mkdir(parents=True, exist_ok=True)
        real, wrong = pki / "ggk-rinis-test", pki / "gemeente-voorbeeld"
        intermediate = (pki / "ca" / "intermediate.pem").read_bytes()
        self._contexts = {
            name: self._context(name, party / "tls-server.pem", party / "tls-server.key",
                                intermediate)
            for name, party in (("real", real), ("wrong-party", wrong))
        }  # fmt: skip
        self._contexts["foreign-ca"] = self._context(
            "foreign-ca", *foreign_server_certificate(pki, work)
        )
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="misbehaving-partner")
        self._thread.start()

    def _context(self, name: str, cert: Path, key: Path, extra: bytes = b"") -> ssl.SSLContext:
        """A server context presenting ``cert`` followed by ``extra`` (intermediates)."""
        chain = self._work / f"{name}-chain.pem"
        chain.write_bytes(cert.read_bytes() + extra)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        return context

    def close(self) -> None:
        """Stop accepting and close every connection (stalled ones included)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with self._lock:
                self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _stall(self) -> None:
        self._stop.wait()

    def _handle(self, raw: socket.socket) -> None:
        mode = self.mode
        if mode == "silent":
            self._stall()
            return
        context = self._contexts.get(mode, self._contexts["real"])
        try:
            raw.settimeout(30)
            conn = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return  # the certificate faults end here: the gateway refused us
        with self._lock:
            self._open.append(conn)
        # One request per connection ("Connection: close"): the next attempt
        # connects anew and meets whatever misbehaviour is current by then.
        with contextlib.suppress(OSError, ssl.SSLError):
            if self._read_request(conn):
                self._answer(conn, mode)
                conn.close()

    @staticmethod
    def _read_request(conn: ssl.SSLSocket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def _answer(self, conn: ssl.SSLSocket, mode: str) -> None:
        """Answer one request as ``mode`` says."""
        if mode == "half-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Le")
            self._stall()
            return
        if mode in ("half-body", "reset"):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
                % len(SOAP_FAULT)
                + SOAP_FAULT[: len(SOAP_FAULT) // 2]
            )
            if mode == "half-body":
                self._stall()
                return
            # Let the gateway read what was sent: data still unread when the
            # RST arrives is discarded by the kernel, and no answer would have begun.
            self._stop.wait(0.5)
            # SO_LINGER with a zero timeout: close() sends a RST, not a FIN.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if mode == "500":
            conn.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/xml; charset=utf-8\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(SOAP_FAULT) + SOAP_FAULT
            )
            return
        if mode == "503":
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            return
        raise AssertionError(f"a request reached the partner in mode {mode}")
